"""The daemon's settings: command line and ini file, merged into one Config.

As the original documents, a value in the configuration file overrides the
same option given on the command line. Every bad value is a ConfigError that
names the option and the file. Every option of the original daemon is
accepted, on the command line and in the file; those about DPDK are read by
:mod:`butterfly.daemon.original`.
"""

import argparse
import configparser
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from butterfly import __version__
from butterfly.daemon.original import DPDK_HELP, parse_cpu_list, parse_dpdk_args
from butterfly.errors import ConfigError
from butterfly.model import canonical_ip
from butterfly.vhost.fastloop import LOOPS as VHOST_LOOPS

__all__ = ["FAST_PATHS", "LOG_LEVELS", "UNDERLAYS", "Config", "EvpnConfig", "parse_args"]

LOG_LEVELS = ("none", "error", "warning", "info", "debug")
UNDERLAYS = ("multicast", "static", "evpn")
"""How hosts find each other: a multicast group per VNI, static peers, BGP EVPN (FRR)."""
FAST_PATHS = ("auto", "ebpf", "off")
DEFAULT_FAST_PATH = "auto"
"""The eBPF fast path where the kernel can (every suite passes on it, see README)."""
DEFAULT_ENDPOINT = "tcp://0.0.0.0:9999"
DEFAULT_STATE = "/var/lib/butterfly/state.db"
DEFAULT_SOCKET_DIR = "/run/butterfly"
DEFAULT_NICE = -10
"""As Open vSwitch's daemons: the switch keeps answering when the host is busy."""
DEFAULT_VNIC_MAX_CONNECTIONS = 10000
DEFAULT_VNIC_MAX_NEW_CONNECTIONS = 1000
LIMIT_MAX = 10_000_000


@dataclass(frozen=True, slots=True)
class EvpnConfig:
    """The ``[evpn]`` section: what FRR's BGP needs (``--frr-config`` writes it)."""

    asn: int | None = None
    router_id: str | None = None
    """None: the underlay address (--ip), when it is IPv4."""
    neighbors: tuple[str, ...] = ()
    """iBGP neighbours: the route reflectors, or every other host."""
    reflect_for: tuple[str, ...] = ()
    """Prefixes this host accepts iBGP sessions from and reflects routes to
    (``route-reflector-clients``): it is then a route reflector."""
    frr_instance: str | None = None
    """FRR's path space (its daemons' ``-N``), for ``vtysh -N``; None: the default."""


@dataclass(frozen=True, slots=True)
class Config:
    endpoint: str = DEFAULT_ENDPOINT
    ip: str | None = None
    """The underlay address VXLAN uses; None: the default route's interface."""
    socket_dir: str = DEFAULT_SOCKET_DIR
    state_path: str = DEFAULT_STATE
    log_level: str = "info"
    syslog: bool = True
    key_path: str | None = None
    packet_trace: bool = False
    nic_mtu: int | None = None
    vxlan_peers: tuple[str, ...] = field(default=())
    nice: int = DEFAULT_NICE
    vhost_workers: int | None = None
    """vhost-user worker processes; None: one per CPU."""
    vhost_loop: str = "auto"
    """One of VHOST_LOOPS: who does the vhost-user per-frame work."""
    dataplane: bool = True
    cleanup: bool = False
    offload: bool = True
    """False (--no-offload): vnics get no checksum or segmentation offloads."""
    graph_cpus: tuple[int, ...] = ()
    """The CPUs the vhost-user workers run on (-u/--graph-cpu-core); (): any."""
    underlay_interface: str | None = None
    """The underlay named by --dpdk-args' ``--vdev=...,iface=NAME``, for when --ip is not given."""
    not_applicable: tuple[str, ...] = ()
    """The original's options given that mean nothing here, said once at start-up."""
    underlay: str = "multicast"
    """One of UNDERLAYS; "static" when vxlan-peers are given and no underlay is."""
    evpn: EvpnConfig = field(default_factory=EvpnConfig)
    frr_config: str | None = None
    config_file: str | None = field(default=None, compare=False)
    """The -c file the values came from, to name it in messages."""
    """--frr-config FILE: write FRR's configuration for this host there ("-": stdout), exit."""

    sniff_cross_vni: bool = False
    """Whether a vnic may mirror its frames to a vnic of another VNI."""

    vnic_max_connections: int = DEFAULT_VNIC_MAX_CONNECTIONS
    """Connections a filtered vnic may have started at once, unless it says (0: no cap)."""
    vnic_max_new_connections: int = DEFAULT_VNIC_MAX_NEW_CONNECTIONS
    """Connections it may start per second, likewise."""
    conntrack_max: int | None = None
    """The host's connection table size; None: from its memory."""

    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (address, port); None: nowhere."""
    curve_secret_key_path: str | None = None
    """The daemon's CurveZMQ key pair (a ``.key_secret`` file); None: no CurveZMQ."""
    curve_allowed_clients_dir: str | None = None
    """Public keys of the clients CurveZMQ lets in, one file each."""

    report_drift_only: bool = False
    """Log and count what other software changes in butterfly's kernel objects,
    without putting it back (an operator debugging by hand)."""

    debug_memory: bool = False
    """Trace allocations; SIGUSR2 logs the largest sites (butterfly.daemon.memory)."""

    fast_path: str = DEFAULT_FAST_PATH
    """One of FAST_PATHS: the eBPF fast path (butterfly.dataplane.fastpath)."""


class _DpdkHelp(argparse.Action):
    """--dpdk-help: say there is no DPDK and exit, as --version does."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(DPDK_HELP, end="")
        parser.exit()


def _values_attached(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--opt VALUE`` as ``--opt=VALUE`` for every option that takes a value.

    The original (GLib) takes the next argument as the value whatever it
    looks like; argparse would take ``--dpdk-args "-c1 -n1 ..."``'s value
    for options of its own. Nothing after ``--`` is touched.
    """
    takes_value = {
        option
        for action in parser._actions
        if action.nargs is None
        for option in action.option_strings
    }
    joined: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            joined += [word, *words]
            break
        value = next(words, None) if word in takes_value else None
        joined.append(word if value is None else f"{word}={value}")
    return joined


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="butterflyd",
        description="butterfly virtual switch daemon: VXLAN networks, security groups,"
        " vhost-user/tap/netns vnics, driven over a ZeroMQ API.",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="ini file ([general], [security]); its values override options",
    )
    parser.add_argument(
        "-i",
        "--ip",
        help="underlay IP address for VXLAN"
        " (default: the address of the interface with the default route)",
    )
    parser.add_argument("-e", "--endpoint", help=f"API endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument(
        "-s",
        "--socket-dir",
        metavar="DIR",
        help=f"vhost-user sockets and traces (default {DEFAULT_SOCKET_DIR})",
    )
    parser.add_argument("-l", "--log-level", choices=LOG_LEVELS, help="default: info")
    parser.add_argument(
        "-k", "--key", metavar="FILE", help="AES-256 key file (32 bytes in base64): encrypt the API"
    )
    parser.add_argument(
        "-t",
        "--packet-trace",
        action="store_true",
        default=None,
        help="trace every vnic's packets to pcap files by default",
    )
    parser.add_argument(
        "--no-syslog", action="store_true", default=None, help="log to stderr instead of syslog"
    )
    parser.add_argument(
        "--fast-path",
        choices=FAST_PATHS,
        help="established (and admitted one-way UDP) flows between local vnics through an eBPF"
        " program instead of the bridge and nftables: auto (when built and the kernel loads"
        f" it), ebpf, off (default {DEFAULT_FAST_PATH})",
    )
    parser.add_argument(
        "--sniff-cross-vni",
        action="store_true",
        default=None,
        help="let a vnic's sniff_target_nic_id name a vnic of another VNI",
    )
    parser.add_argument(
        "--state", metavar="FILE", help=f"SQLite state file (default {DEFAULT_STATE})"
    )
    parser.add_argument(
        "-m",
        "--nic-mtu",
        metavar="MTU",
        help="MTU of vnics; 'max' (the default): the underlay's MTU minus VXLAN's overhead",
    )
    parser.add_argument(
        "--no-offload",
        action="store_true",
        default=None,
        help="vnics without checksum or segmentation offloads: none offered to vhost-user"
        " guests, none on netns vnics' veths",
    )
    parser.add_argument(
        "-u",
        "--graph-cpu-core",
        metavar="CPUS",
        help="run the vhost-user workers on these CPUs (e.g. 0 or 0-3,6; default: any)",
    )
    parser.add_argument(
        "--dpdk-args",
        metavar="ARGS",
        help="the original's DPDK arguments: a --vdev=...,iface=NAME names the underlay"
        " interface when --ip is not given; the rest is ignored",
    )
    parser.add_argument(
        "--dpdk-port", metavar="PORT", help="the original's DPDK port: accepted and ignored"
    )
    parser.add_argument(
        "--dpdk-help", nargs=0, action=_DpdkHelp, help="say that there is no DPDK, and exit"
    )
    parser.add_argument(
        "--vxlan-peers",
        metavar="IP[,IP...]",
        help="static VXLAN peers of every VNI, for underlays without multicast",
    )
    parser.add_argument(
        "--underlay",
        choices=UNDERLAYS,
        help="how hosts find each other: a multicast group per VNI (the default), static"
        " peers (--vxlan-peers, vni_peer_add), or BGP EVPN through FRR",
    )
    parser.add_argument(
        "--frr-config",
        metavar="FILE",
        help="write FRR's BGP EVPN configuration for this host (the ini file's [evpn]"
        " section) to FILE, '-' for stdout, then exit",
    )
    parser.add_argument(
        "--nice",
        type=int,
        metavar="N",
        help=f"niceness of the daemon (default {DEFAULT_NICE}); its vhost-user workers run"
        " 10 levels nicer, so that requests come first when packets fill the CPUs",
    )
    parser.add_argument(
        "--vhost-workers",
        type=int,
        metavar="N",
        help="processes moving vhost-user frames (default: one per CPU)",
    )
    parser.add_argument(
        "--vhost-loop",
        choices=VHOST_LOOPS,
        help="what moves vhost-user frames: the C extension built by pip install (c),"
        " the Python loop (python), or c when it was built (auto, the default)",
    )
    parser.add_argument(
        "--vnic-max-connections",
        type=int,
        metavar="N",
        help="connections a vnic may have started at once, unless it says otherwise"
        f" (default {DEFAULT_VNIC_MAX_CONNECTIONS}; 0: no cap)",
    )
    parser.add_argument(
        "--vnic-max-new-connections",
        type=int,
        metavar="N",
        help="connections a vnic may start per second, unless it says otherwise"
        f" (default {DEFAULT_VNIC_MAX_NEW_CONNECTIONS}; 0: no cap)",
    )
    parser.add_argument(
        "--conntrack-max",
        type=int,
        metavar="N",
        help="raise the host's connection table to N entries (default: one per 16 KiB of memory)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="authenticate and encrypt the API with CurveZMQ: the daemon's .key_secret file",
    )
    parser.add_argument(
        "--curve-allowed-clients",
        metavar="DIR",
        help="with --curve-secret-key: the public keys (.key files) of the clients let in",
    )
    parser.add_argument(
        "--no-dataplane",
        action="store_true",
        default=None,
        help="control plane only: program nothing in the kernel (tests)",
    )
    parser.add_argument(
        "--report-drift-only",
        action="store_true",
        default=None,
        help="log and count changes other software makes to butterfly's kernel objects,"
        " without repairing them",
    )
    parser.add_argument(
        "--debug-memory",
        action="store_true",
        default=None,
        help="trace memory allocations (costs CPU and memory); SIGUSR2 then logs"
        " the largest allocation sites and their growth since the last SIGUSR2",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove every kernel object butterfly created, then exit",
    )
    parser.add_argument("-V", "--version", action="version", version=f"butterflyd {__version__}")
    return parser


def _bool(value: str, name: str, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: {name} {value!r} is not true or false")


def _read_file(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot be read: {error.strerror}") from error
    except configparser.Error as error:
        raise ConfigError(f"config file {path}: {error}") from error
    values: dict[str, str] = {}
    known = {
        "general": {
            "ip",
            "endpoint",
            "socket-dir",
            "log-level",
            "nic-mtu",
            "packet-trace",
            "state",
            "vxlan-peers",
            "no-syslog",
            "nice",
            "vhost-workers",
            "vhost-loop",
            "no-offload",
            "graph-cpu-core",
            "graph-core-id",
            "dpdk-args",
            "dpdk-port",
            "sniff-cross-vni",
            "vnic-max-connections",
            "vnic-max-new-connections",
            "conntrack-max",
            "metrics",
            "underlay",
            "report-drift-only",
            "debug-memory",
            "fast-path",
        },
        "security": {
            "encryption_key_path",
            "curve_secret_key_path",
            "curve_allowed_clients_dir",
        },
        "evpn": {"asn", "router-id", "neighbors", "route-reflector-clients", "frr-instance"},
    }
    for section in parser.sections():
        if section not in known:
            raise ConfigError(f"config file {path}: unknown section [{section}]")
        for name, value in parser.items(section):
            if name not in known[section]:
                raise ConfigError(
                    f"config file {path}: unknown option {name!r} in [{section}]"
                    f" (known: {', '.join(sorted(known[section]))})"
                )
            # The original's sample file says graph-cpu-core, its code read graph-core-id.
            key = "graph-cpu-core" if name == "graph-core-id" else name
            values[f"evpn.{key}" if section == "evpn" else key] = value.strip()
    return values


def parse_args(argv: list[str]) -> Config:
    """The merged configuration; argparse exits on bad usage, the rest is ConfigError."""
    parser = _parser()
    args = parser.parse_args(_values_attached(argv, parser))
    options: dict[str, str | bool | int | None] = {
        "ip": args.ip,
        "endpoint": args.endpoint,
        "socket-dir": args.socket_dir,
        "log-level": args.log_level,
        "nic-mtu": args.nic_mtu,
        "packet-trace": args.packet_trace,
        "state": args.state,
        "vxlan-peers": args.vxlan_peers,
        "no-syslog": args.no_syslog,
        "nice": args.nice,
        "vhost-workers": args.vhost_workers,
        "vhost-loop": args.vhost_loop,
        "no-offload": args.no_offload,
        "graph-cpu-core": args.graph_cpu_core,
        "dpdk-args": args.dpdk_args,
        "dpdk-port": args.dpdk_port,
        "sniff-cross-vni": args.sniff_cross_vni,
        "vnic-max-connections": args.vnic_max_connections,
        "vnic-max-new-connections": args.vnic_max_new_connections,
        "conntrack-max": args.conntrack_max,
        "metrics": args.metrics,
        "report-drift-only": args.report_drift_only,
        "debug-memory": args.debug_memory,
        "encryption_key_path": args.key,
        "curve_secret_key_path": args.curve_secret_key,
        "curve_allowed_clients_dir": args.curve_allowed_clients,
        "underlay": args.underlay,
        "fast-path": args.fast_path,
    }
    where = "command line"
    if args.config:
        where = f"config file {args.config}"
        options.update(_read_file(args.config))

    def text(name: str) -> str | None:
        value = options.get(name)
        return None if value is None else str(value)

    def flag(name: str) -> bool:
        value = options[name]
        return _bool(value, name, where) if isinstance(value, str) else bool(value)

    log_level = text("log-level") or "info"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{where}: log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    ip = text("ip")
    if ip is not None and canonical_ip(ip) is None:
        raise ConfigError(f"{where}: ip {ip!r} is not an IPv4 or IPv6 address")

    def number(name: str, low: int, high: int) -> int | None:
        value = text(name)
        if value is None:
            return None
        try:
            parsed = int(value)
        except ValueError:
            raise ConfigError(f"{where}: {name} {value!r} is not a number") from None
        if not low <= parsed <= high:
            raise ConfigError(f"{where}: {name} {parsed} is out of range {low}-{high}")
        return parsed

    nic_mtu = None if (text("nic-mtu") or "").lower() == "max" else number("nic-mtu", 576, 65535)
    nice = number("nice", -20, 19)
    max_connections = number("vnic-max-connections", 0, LIMIT_MAX)
    max_new_connections = number("vnic-max-new-connections", 0, LIMIT_MAX)
    peers: list[str] = []
    for peer in filter(None, (p.strip() for p in (text("vxlan-peers") or "").split(","))):
        canonical = canonical_ip(peer)
        if canonical is None:
            raise ConfigError(f"{where}: vxlan-peers entry {peer!r} is not an IP address")
        peers.append(canonical)
    dpdk = parse_dpdk_args(text("dpdk-args") or "", where)
    not_applicable = []
    if dpdk.unused:
        not_applicable.append(f"dpdk-args {' '.join(dpdk.unused)!r}")
    if text("dpdk-port") is not None:
        number("dpdk-port", 0, 65535)
        not_applicable.append(f"dpdk-port {text('dpdk-port')}")
    cpus = text("graph-cpu-core")
    curve_key, curve_clients = text("curve_secret_key_path"), text("curve_allowed_clients_dir")
    if (curve_key is None) != (curve_clients is None):
        raise ConfigError(
            f"{where}: curve_secret_key_path and curve_allowed_clients_dir go together"
            " (--curve-secret-key and --curve-allowed-clients)"
        )
    vhost_loop = text("vhost-loop") or "auto"
    if vhost_loop not in VHOST_LOOPS:
        raise ConfigError(
            f"{where}: vhost-loop {vhost_loop!r} is not one of {', '.join(VHOST_LOOPS)}"
        )
    underlay = text("underlay") or ("static" if peers else "multicast")
    if underlay not in UNDERLAYS:
        raise ConfigError(f"{where}: underlay {underlay!r} is not one of {', '.join(UNDERLAYS)}")
    if underlay == "evpn" and peers:
        raise ConfigError(f"{where}: vxlan-peers cannot be given with underlay evpn (FRR floods)")
    evpn = _evpn_config(text, number, where)
    fast_path = text("fast-path") or DEFAULT_FAST_PATH
    if fast_path not in FAST_PATHS:
        raise ConfigError(f"{where}: fast-path {fast_path!r} is not one of {', '.join(FAST_PATHS)}")
    return Config(
        endpoint=text("endpoint") or DEFAULT_ENDPOINT,
        ip=canonical_ip(ip) if ip else None,
        socket_dir=text("socket-dir") or DEFAULT_SOCKET_DIR,
        state_path=text("state") or DEFAULT_STATE,
        log_level=log_level,
        syslog=not flag("no-syslog"),
        key_path=text("encryption_key_path"),
        packet_trace=flag("packet-trace"),
        nic_mtu=nic_mtu,
        vxlan_peers=tuple(dict.fromkeys(peers)),
        nice=DEFAULT_NICE if nice is None else nice,
        vhost_workers=number("vhost-workers", 1, 1024),
        vhost_loop=vhost_loop,
        dataplane=not args.no_dataplane,
        cleanup=args.cleanup,
        offload=not flag("no-offload"),
        graph_cpus=parse_cpu_list(cpus, where) if cpus is not None else (),
        underlay_interface=dpdk.interface,
        not_applicable=tuple(not_applicable),
        sniff_cross_vni=flag("sniff-cross-vni"),
        vnic_max_connections=(
            DEFAULT_VNIC_MAX_CONNECTIONS if max_connections is None else max_connections
        ),
        vnic_max_new_connections=(
            DEFAULT_VNIC_MAX_NEW_CONNECTIONS if max_new_connections is None else max_new_connections
        ),
        conntrack_max=number("conntrack-max", 1024, 1 << 31),
        metrics=_listen_address(text("metrics"), where),
        curve_secret_key_path=curve_key,
        curve_allowed_clients_dir=curve_clients,
        underlay=underlay,
        evpn=evpn,
        frr_config=args.frr_config,
        config_file=args.config,
        report_drift_only=flag("report-drift-only"),
        debug_memory=flag("debug-memory"),
        fast_path=fast_path,
    )


def _listen_address(value: str | None, where: str) -> tuple[str, int] | None:
    """``ADDR:PORT`` (an IPv6 address in brackets) as (address, port)."""
    if not value:
        return None
    host, colon, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid_host = (bracketed or ":" not in host) and canonical_ip(host) is not None
    if not colon or not valid_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{where}: metrics {value!r} is not ADDR:PORT"
            " (an IP address and a port, e.g. 127.0.0.1:9477 or [::1]:9477)"
        )
    return canonical_ip(host) or host, int(port)


def _evpn_config(
    text: Callable[[str], str | None],
    number: Callable[[str, int, int], int | None],
    where: str,
) -> EvpnConfig:
    """The ``[evpn]`` section (its keys are ``evpn.NAME`` in the merged options)."""
    router_id = text("evpn.router-id")
    if router_id is not None and not _is_ipv4(router_id):
        raise ConfigError(f"{where}: [evpn] router-id {router_id!r} is not an IPv4 address")
    neighbors = []
    for entry in _items(text("evpn.neighbors")):
        canonical = canonical_ip(entry)
        if canonical is None:
            raise ConfigError(f"{where}: [evpn] neighbors entry {entry!r} is not an IP address")
        neighbors.append(canonical)
    clients = []
    for entry in _items(text("evpn.route-reflector-clients")):
        try:
            clients.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ConfigError(
                f"{where}: [evpn] route-reflector-clients entry {entry!r} is not a prefix"
            ) from None
    instance = text("evpn.frr-instance")
    if instance is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", instance):
        raise ConfigError(f"{where}: [evpn] frr-instance {instance!r} is not a plain name")
    return EvpnConfig(
        asn=number("evpn.asn", 1, 4294967295),
        router_id=router_id,
        neighbors=tuple(dict.fromkeys(neighbors)),
        reflect_for=tuple(dict.fromkeys(clients)),
        frr_instance=instance,
    )


def _items(value: str | None) -> list[str]:
    return [item for item in (part.strip() for part in (value or "").split(",")) if item]


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True
