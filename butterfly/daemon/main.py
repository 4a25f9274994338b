"""butterflyd's entry point and composition root.

This is the one place that picks implementations (SQLite store, kernel or
control-only data plane, the vhost-user backend the kernel data plane hands
vhost-user vnics to) and wires them together; the only place, with the CLI,
that exits the process.
"""

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from butterfly import __version__
from butterfly.api.crypto import load_key
from butterfly.api.server import ApiServer
from butterfly.api.v0 import V0Handlers
from butterfly.daemon.config import Config, parse_args
from butterfly.daemon.logs import set_level, setup_logging
from butterfly.daemon.memory import MemoryReport
from butterfly.dataplane import Dataplane, VhostPorts
from butterfly.dataplane.control_only import ControlOnlyDataplane
from butterfly.dataplane.kernel import KernelDataplane, cleanup
from butterfly.errors import ButterflyError, DataplaneError
from butterfly.model import State
from butterfly.service import Switch
from butterfly.store import SqliteStore
from butterfly.vhost import VhostSupervisor, VhostUserServer

__all__ = ["SupervisedVhostPorts", "main"]

log = logging.getLogger("butterfly.daemon")


class Daemon:
    """The App the API reports on: start date, log level, quitting."""

    def __init__(self, server_stop: "list[ApiServer]") -> None:
        self.started_at = time.time()
        self._servers = server_stop

    def set_log_level(self, level: str) -> None:
        set_level(level)
        log.warning("log level set to %s", level)

    def request_quit(self) -> None:
        log.info("app_quit received: stopping after this reply")
        for server in self._servers:
            server.stop_after_reply()


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


def _make_dataplane(config: Config, vhost: VhostPorts) -> Dataplane:
    if not config.dataplane:
        return ControlOnlyDataplane(socket_dir=config.socket_dir)
    return KernelDataplane(
        underlay_ip=config.ip,
        socket_dir=config.socket_dir,
        nic_mtu=config.nic_mtu,
        packet_trace_default=config.packet_trace,
        static_peers=config.vxlan_peers,
        vhost=vhost,
    )


def _reconcile(dataplane: Dataplane, state: State) -> None:
    """Make the kernel match the store; what cannot be repaired (a vnic whose
    namespace is gone, say) is logged, and the daemon serves all the rest."""
    try:
        dataplane.reconcile(state)
    except DataplaneError as error:
        log.error("start-up: %s", error)


def _signals_to_fd() -> int:
    """A pipe that receives the number of each SIGTERM/SIGINT/SIGHUP/SIGUSR2, for
    the server's poll (whichever thread the kernel delivers it to)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(signum, lambda *_: None)
    return read_fd


def _on_signal(memory: MemoryReport) -> Callable[[int], bool]:
    """SIGUSR2 logs the memory report (or says how to enable it); the others stop."""

    def on_signal(signum: int) -> bool:
        if signum == signal.SIGUSR2:
            memory.log()
            return False
        return True

    return on_signal


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


def run(config: Config) -> None:
    memory = MemoryReport()
    if config.debug_memory:
        memory.start()
    _renice(config.nice)
    key = load_key(config.key_path) if config.key_path else None
    os.makedirs(config.socket_dir, exist_ok=True)
    store = SqliteStore(config.state_path)
    supervisor = VhostSupervisor(
        workers=config.vhost_workers, nice=min(19, config.nice + WORKERS_NICER)
    )
    try:
        state = store.load()
        dataplane = _make_dataplane(config, SupervisedVhostPorts(supervisor))
        try:
            _reconcile(dataplane, state)
            switch = Switch(store=store, dataplane=dataplane, state=state)
            servers: list[ApiServer] = []
            daemon = Daemon(servers)
            handlers = V0Handlers(switch=switch, app=daemon)
            server = ApiServer(endpoint=config.endpoint, key=key, answer=handlers.answer)
            servers.append(server)
            try:
                wakeup = _signals_to_fd()
                log.info(
                    "butterflyd %s ready on %s (%d vnics, %d security groups, %s)",
                    __version__,
                    config.endpoint,
                    state.vnic_count(),
                    len(switch.sg_ids()),
                    "encrypted" if key else "clear text",
                )
                server.serve(wakeup, on_signal=_on_signal(memory))
            finally:
                server.close()
        finally:
            dataplane.close()
    finally:
        # vhost-user guests are disconnected and their sockets removed; with
        # reconnect=1 they come back by themselves when the daemon does.
        supervisor.stop()
        store.close()
    log.info("butterflyd stopped; the kernel data path keeps running")


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        setup_logging(syslog=config.syslog, level=config.log_level)
        if config.cleanup:
            cleanup(socket_dir=config.socket_dir)
            log.info("removed every kernel object of butterfly")
        else:
            run(config)
    except ButterflyError as error:
        print(f"butterflyd: {error}", file=sys.stderr)
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
