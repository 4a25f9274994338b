"""butterflyd's entry point and composition root.

This is the one place that picks implementations (SQLite store, kernel or
control-only data plane, the vhost-user backend the kernel data plane hands
vhost-user vnics to) and wires them together; the only place, with the CLI,
that exits the process.
"""

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial

from butterfly import __version__
from butterfly.api.crypto import load_key
from butterfly.api.curve import CurveServer, load_key_pair
from butterfly.api.server import ApiServer
from butterfly.api.v0 import V0Handlers
from butterfly.daemon.config import Config, parse_args
from butterfly.daemon.drift import DriftRepair
from butterfly.daemon.exposure import exposure_warning
from butterfly.daemon.frr import frr_config
from butterfly.daemon.logs import set_level, setup_logging
from butterfly.daemon.memory import MemoryReport
from butterfly.daemon.metrics import Metrics, MetricsServer, SwitchCollector, VnicCounters
from butterfly.daemon.observe import ObservedAnswer
from butterfly.daemon.systemd import Notifier
from butterfly.dataplane import Dataplane, VhostPorts
from butterfly.dataplane.cleanup import cleanup
from butterfly.dataplane.conntrack import memory_bytes, size_conntrack, zone_entries
from butterfly.dataplane.control_only import ControlOnlyDataplane
from butterfly.dataplane.drops import DropCounters
from butterfly.dataplane.evpn import FrrReader
from butterfly.dataplane.fastpath import FastPathMode, prepare
from butterfly.dataplane.kernel import KernelDataplane, open_kernel
from butterfly.dataplane.ruleset import ConnLimits
from butterfly.errors import ButterflyError, ConfigError, DataplaneError
from butterfly.service import Switch
from butterfly.service.drift import DriftReport
from butterfly.service.startup import ReconcileStatus, StartupReconcile
from butterfly.store import SqliteStore
from butterfly.vhost import VhostSupervisor, VhostUserServer

__all__ = ["SupervisedVhostPorts", "main"]

log = logging.getLogger("butterfly.daemon")


class Daemon:
    """The App the API reports on: start date, log level, quitting, start-up
    reconcile; and what signals ask of it (SIGHUP: read the log level again)."""

    def __init__(
        self,
        server_stop: "list[ApiServer]",
        startup: StartupReconcile,
        *,
        argv: list[str],
        drift: DriftRepair | None,
    ) -> None:
        self.started_at = time.time()
        self._servers = server_stop
        self._startup = startup
        self._argv = argv
        self._drift = drift

    def reconcile_status(self) -> ReconcileStatus:
        return self._startup.status()

    def drift_report(self) -> DriftReport | None:
        return self._drift.report() if self._drift is not None else None

    def set_log_level(self, level: str) -> None:
        set_level(level)
        log.warning("log level set to %s", level)

    def request_quit(self) -> None:
        log.info("app_quit received: stopping after this reply")
        for server in self._servers:
            server.stop_after_reply()

    def reload(self) -> None:
        """The log level from the command line and ini file as they are now (a
        file that no longer reads leaves the level as it was), and the CurveZMQ
        allowed clients folder."""
        for server in self._servers:
            server.reload_clients()
        try:
            level = parse_args(self._argv).log_level
        except ButterflyError as error:
            log.error("reload: %s; log level unchanged", error)
            return
        self.set_log_level(level)


class SupervisedVhostPorts:
    """The kernel data plane's vhost-user backend (:class:`VhostPorts`): one
    :class:`VhostUserServer` per vnic, on the supervisor's worker processes.

    The workers start with the first vnic served, so a daemon without
    vhost-user vnics runs none; stopping them is the daemon's job at exit.
    """

    def __init__(self, supervisor: VhostSupervisor) -> None:
        self._supervisor = supervisor
        self._servers: dict[str, VhostUserServer] = {}

    def serve(self, vnic_id: str, *, socket_path: str, tap_name: str) -> None:
        self._supervisor.start()
        server = VhostUserServer(
            supervisor=self._supervisor, vnic=vnic_id, socket_path=socket_path, tap_name=tap_name
        )
        server.start()
        self._servers[vnic_id] = server

    def stop(self, vnic_id: str) -> None:
        server = self._servers.pop(vnic_id, None)
        if server is not None:
            server.stop()


WORKERS_NICER = 10
"""How much nicer vhost workers are than the daemon: the API before the packets."""


def _make_dataplane(config: Config, vhost: VhostPorts, vhost_loop: str) -> Dataplane:
    if not config.dataplane:
        return ControlOnlyDataplane(
            socket_dir=config.socket_dir, packet_trace_default=config.packet_trace
        )
    sizings = size_conntrack(config.conntrack_max, memory=memory_bytes())
    log.info("connection tracking: %s", ", ".join(str(sizing) for sizing in sizings))
    log.info(
        "a vnic may start %s connections, %s per second, unless it says otherwise",
        config.vnic_max_connections or "any number of",
        config.vnic_max_new_connections or "any number",
    )
    mode = FastPathMode(config.fast_path)
    # Loaded by the start-up reconcile, once the API serves (0.1-0.35 s of verifier).
    fast_path, fast_path_status = prepare(mode, repaired=not config.report_drift_only)
    log.info("fast path: %s", fast_path_status)
    return KernelDataplane(
        underlay_ip=config.ip,
        socket_dir=config.socket_dir,
        underlay_interface=config.underlay_interface,
        nic_mtu=config.nic_mtu,
        offload=config.offload,
        packet_trace_default=config.packet_trace,
        static_peers=config.vxlan_peers,
        multicast=config.underlay == "multicast",
        evpn=config.underlay == "evpn",
        frr=_frr_reader(config),
        vhost=vhost,
        vhost_loop=vhost_loop,
        sniff_cross_vni=config.sniff_cross_vni,
        limits=ConnLimits(config.vnic_max_connections, config.vnic_max_new_connections),
        defer_deletes=True,
        fast_path=fast_path,
        fast_path_status=fast_path_status,
        kernel=open_kernel(),  # last: opened once every other argument is made
    )


def _give_back_memory() -> None:
    """After the start-up reconcile: its copies of the kernel's state (every
    link, forwarding entry and nftables object) are garbage, but glibc keeps
    freed heap for reuse; a host of 10,000 vnics stayed at twice its size."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _frr_reader(config: Config) -> FrrReader:
    return FrrReader(instance=config.evpn.frr_instance)


def _check_frr(config: Config) -> None:
    """Say at start-up when FRR does not answer: the switch runs on, and other
    hosts learn its vnics once FRR does."""
    if config.underlay != "evpn" or not config.dataplane:
        return
    status = _frr_reader(config).status()
    if status.error is not None:
        log.warning(
            "underlay evpn: FRR %s; vnics work on this host, other hosts reach them once FRR runs",
            status.error,
        )
    else:
        log.info("underlay evpn: %s", status.sessions_line())


def _write_frr_config(config: Config) -> None:
    """--frr-config: bgpd's configuration from [evpn], to a file or stdout."""
    source = "the command line"
    text = frr_config(config.evpn, underlay_ip=config.ip, source=config.config_file or source)
    if config.frr_config == "-":
        sys.stdout.write(text)
        return
    assert config.frr_config is not None
    try:
        with open(config.frr_config, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise ConfigError(f"frr-config {config.frr_config}: {error.strerror}") from error


def _watch(
    config: Config, dataplane: Dataplane, switch: Switch, startup: StartupReconcile
) -> DriftRepair | None:
    """Repair (or only report) what other software changes in the kernel data
    plane; repairs wait for the end of the start-up reconcile (which makes
    everything right anyway, and which a repair would otherwise fight)."""
    if not isinstance(dataplane, KernelDataplane):
        return None
    try:
        return DriftRepair(
            dataplane=dataplane,
            repair=lambda scope: dataplane.repair(switch.state, scope),
            report_only=config.report_drift_only,
            hold=lambda: startup.running,
            primed_by_reconcile=True,
        )
    except DataplaneError as error:
        # The API still answers, and explains each refusal (without
        # CAP_NET_ADMIN, say: every change is refused the same way).
        log.error("%s; other programs' changes are neither seen nor repaired", error)
        return None


def _conntrack_per_vni(dataplane: KernelDataplane) -> dict[int, int]:
    zones = dataplane.conntrack_zones()
    entries = zone_entries()
    return {vni: entries.get(zone, 0) for vni, zone in zones.items()}


def _serve_metrics(
    config: Config,
    metrics: Metrics,
    switch: Switch,
    dataplane: Dataplane,
    supervisor: VhostSupervisor,
    *,
    daemon: Daemon,
) -> MetricsServer | None:
    if config.metrics is None:
        return None
    conntrack: Callable[[], dict[int, int]] | None = None
    drops: Callable[[], dict[str, int]] | None = None
    if isinstance(dataplane, KernelDataplane):  # what only the kernel counts
        conntrack = partial(_conntrack_per_vni, dataplane)
        drops = DropCounters().read
    collector = SwitchCollector(
        state=switch.state,
        worker_pids=supervisor.worker_pids,
        conntrack=conntrack,
        drops=drops,
        drift=daemon.drift_report,
    )
    server = MetricsServer(
        metrics, config.metrics, collector=collector, vnics=VnicCounters(switch.state)
    )
    log.info("metrics on http://%s:%d/metrics", *config.metrics)
    return server


def _signals_to_fd() -> int:
    """A pipe that receives the number of each SIGTERM/SIGINT/SIGHUP/SIGUSR2, for
    the server's poll (whichever thread the kernel delivers it to)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(signum, lambda *_: None)
    return read_fd


def _renice(nice: int) -> None:
    """Before any thread starts: a Linux thread's niceness is its own, and what the
    threads and processes it starts inherit."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        log.warning(
            "niceness %d needs CAP_SYS_NICE; running at %d",
            nice,
            os.getpriority(os.PRIO_PROCESS, 0),
        )


def _on_signal(
    daemon: Daemon,
    notifier: Notifier,
    status: Callable[[], str],
    memory: MemoryReport,
    signum: int,
) -> bool:
    """SIGHUP reloads (systemd's ExecReload), SIGUSR2 logs the memory report
    (or says how to enable it): serving goes on. Other signals stop."""
    if signum == signal.SIGUSR2:
        memory.log()
        return True
    if signum != signal.SIGHUP:
        return False
    notifier.reloading()
    daemon.reload()
    notifier.ready(status())
    return True


def _protection(aes: bool, curve: bool) -> str:
    if curve:
        return "CurveZMQ and AES" if aes else "CurveZMQ"
    return "encrypted" if aes else "clear text"


def _curve(config: Config) -> CurveServer | None:
    if config.curve_secret_key_path is None or config.curve_allowed_clients_dir is None:
        return None
    keys = load_key_pair(config.curve_secret_key_path, "curve_secret_key_path")
    return CurveServer(keys, config.curve_allowed_clients_dir)


def run(config: Config, argv: list[str], notifier: Notifier) -> None:
    for option in config.not_applicable:
        log.info("option %s: accepted, and not applicable here (butterflyd has no DPDK)", option)
    memory = MemoryReport()
    if config.debug_memory:
        memory.start()
    _renice(config.nice)
    key = load_key(config.key_path) if config.key_path else None
    curve = _curve(config)
    warning = exposure_warning(config.endpoint, encrypted=key is not None or curve is not None)
    if warning:
        log.warning("%s", warning)
    os.makedirs(config.socket_dir, exist_ok=True)
    store = SqliteStore(config.state_path)
    supervisor = VhostSupervisor(
        workers=config.vhost_workers,
        nice=min(19, config.nice + WORKERS_NICER),
        cpus=config.graph_cpus,
        offload=config.offload,
        loop=config.vhost_loop,
    )
    try:
        notifier.status("loading the state")
        state = store.load()
        dataplane = _make_dataplane(
            config, SupervisedVhostPorts(supervisor), supervisor.loop_status
        )
        metrics = Metrics()

        def reconciled() -> None:
            metrics.reconciled(startup.status().seconds)
            _give_back_memory()
            notifier.status(status())

        notifier.status(f"reconciling the kernel with {state.vnic_count()} vnics")
        # The kernel is made to match the store between requests: the API
        # answers at once, and existing vnics' traffic flows on meanwhile.
        startup = StartupReconcile(dataplane.reconcile_steps(state), on_done=reconciled)
        try:
            _check_frr(config)
            switch = Switch(store=store, dataplane=dataplane, state=state)
            drift = _watch(config, dataplane, switch, startup)
            servers: list[ApiServer] = []
            daemon = Daemon(servers, startup, argv=argv, drift=drift)
            handlers = V0Handlers(switch=switch, app=daemon)
            server = ApiServer(
                endpoint=config.endpoint,
                key=key,
                answer=ObservedAnswer(handlers.answer, metrics.observe_answer),
                curve=curve,
            )
            servers.append(server)
            metrics_server = None
            try:
                metrics_server = _serve_metrics(
                    config, metrics, switch, dataplane, supervisor, daemon=daemon
                )
                wakeup = _signals_to_fd()
                protection = _protection(key is not None, curve is not None)

                def status() -> str:
                    progress = startup.status()
                    reconciling = (
                        f"; reconciling the kernel ({progress.done}/{progress.total} objects)"
                        if progress.running
                        else ""
                    )
                    return (
                        f"serving on {config.endpoint}: {state.vnic_count()} vnics,"
                        f" {len(switch.sg_ids())} security groups, {protection}{reconciling}"
                    )

                log.info("butterflyd %s ready: %s", __version__, status())
                notifier.ready(status())
                server.serve(
                    wakeup,
                    drift,
                    idle=startup.work,
                    on_signal=partial(_on_signal, daemon, notifier, status, memory),
                    tick=notifier.tick,
                    tick_every=notifier.watchdog_interval,
                )
                notifier.stopping()
            finally:
                if metrics_server is not None:
                    metrics_server.close()
                server.close()
                if drift is not None:
                    drift.close()
        finally:
            startup.close()
            dataplane.close()
    finally:
        # vhost-user guests are disconnected and their sockets removed; with
        # reconnect=1 they come back by themselves when the daemon does.
        supervisor.stop()
        store.close()
    log.info("butterflyd stopped; the kernel data path keeps running")


def main(argv: list[str] | None = None) -> int:
    """Every error is said once on stderr: a bad option before the log exists, a
    later error through the log (and printed as well when the log is syslog)."""
    arguments = sys.argv[1:] if argv is None else argv
    notifier = Notifier()
    try:
        config = parse_args(arguments)
    except ButterflyError as error:
        print(f"butterflyd: {error}", file=sys.stderr)
        notifier.status(f"failed: {error}")
        notifier.close()
        return 1
    logs_to_stderr = setup_logging(syslog=config.syslog, level=config.log_level)
    try:
        if config.frr_config is not None:
            _write_frr_config(config)
        elif config.cleanup:
            cleanup(socket_dir=config.socket_dir)
            log.info("removed every kernel object of butterfly")
        else:
            run(config, arguments, notifier)
    except ButterflyError as error:
        if not logs_to_stderr:
            print(f"butterflyd: {error}", file=sys.stderr)
        log.error("%s", error)
        notifier.status(f"failed: {error}")
        return 1
    finally:
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
