"""The daemon's settings: command line and ini file, merged into one Config.

As the original documents, a value in the configuration file overrides the
same option given on the command line. Every bad value is a ConfigError that
names the option and the file.
"""

import argparse
import configparser
from dataclasses import dataclass, field

from butterfly import __version__
from butterfly.errors import ConfigError
from butterfly.model import canonical_ip

__all__ = ["LOG_LEVELS", "Config", "parse_args"]

LOG_LEVELS = ("none", "error", "warning", "info", "debug")
DEFAULT_ENDPOINT = "tcp://0.0.0.0:9999"
DEFAULT_STATE = "/var/lib/butterfly/state.db"
DEFAULT_SOCKET_DIR = "/run/butterfly"
DEFAULT_NICE = -10
"""As Open vSwitch's daemons: the switch keeps answering when the host is busy."""


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
    dataplane: bool = True
    cleanup: bool = False
    debug_memory: bool = False
    """Trace allocations; SIGUSR2 logs the largest sites (butterfly.daemon.memory)."""


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
        "--state", metavar="FILE", help=f"SQLite state file (default {DEFAULT_STATE})"
    )
    parser.add_argument(
        "--nic-mtu",
        type=int,
        metavar="MTU",
        help="MTU of vnics (default: underlay MTU minus VXLAN overhead)",
    )
    parser.add_argument(
        "--vxlan-peers",
        metavar="IP[,IP...]",
        help="static VXLAN peers of every VNI, for underlays without multicast",
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
        "--no-dataplane",
        action="store_true",
        default=None,
        help="control plane only: program nothing in the kernel (tests)",
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
            "debug-memory",
        },
        "security": {"encryption_key_path"},
    }
    for section in parser.sections():
        if section not in known:
            raise ConfigError(f"config file {path}: unknown section [{section}]")
        for name, value in parser.items(section):
            if name not in known[section]:
                raise ConfigError(f"config file {path}: unknown option {name!r} in [{section}]")
            values[name] = value.strip()
    return values


def parse_args(argv: list[str]) -> Config:
    """The merged configuration; argparse exits on bad usage, the rest is ConfigError."""
    args = _parser().parse_args(argv)
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
        "debug-memory": args.debug_memory,
        "encryption_key_path": args.key,
    }
    where = "command line"
    if args.config:
        where = f"config file {args.config}"
        options.update(_read_file(args.config))

    def text(name: str) -> str | None:
        value = options[name]
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

    nic_mtu = number("nic-mtu", 576, 65535)
    nice = number("nice", -20, 19)
    peers: list[str] = []
    for peer in filter(None, (p.strip() for p in (text("vxlan-peers") or "").split(","))):
        canonical = canonical_ip(peer)
        if canonical is None:
            raise ConfigError(f"{where}: vxlan-peers entry {peer!r} is not an IP address")
        peers.append(canonical)
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
        dataplane=not args.no_dataplane,
        cleanup=args.cleanup,
        debug_memory=flag("debug-memory"),
    )
