"""The daemon's side of the vhost-user backend: worker processes and vnic handles.

Owns the worker processes (started, spread over, restarted when one dies,
stopped), which vnic each one serves, and the typed API the kernel data
plane calls: :class:`VhostSupervisor` and :class:`VhostUserServer`. Packet
work never runs in the daemon's process, so it can neither block the API
thread nor be blocked by the GIL it holds; counters are read from memory
the workers share, without asking them. Must not import the daemon,
service, api or store.
"""

import contextlib
import json
import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import butterfly
from butterfly.errors import ConfigError, DataplaneError

from . import fastloop
from .counters import SLOT_SIZE, SLOTS, VnicCounters, read_slot, write_slot

__all__ = ["VhostSupervisor", "VhostUserServer"]

log = logging.getLogger("butterfly.vhost")

_CONTROL_TIMEOUT = 10.0
_EXIT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class _Vnic:
    vnic: str
    socket_path: str
    tap_name: str
    slot: int


class _WorkerProcess:
    """One worker: its process, control channel, log channel and counter memory."""

    def __init__(
        self,
        number: int,
        on_death: "_DeathCallback",
        nice: int | None,
        cpus: tuple[int, ...],
        *,
        offload: bool,
        loop: str,
    ) -> None:
        self.number = number
        self._loop = loop
        self._nice = nice
        self._cpus = cpus
        self._offload = offload
        self.vnics: dict[str, _Vnic] = {}
        self._on_death = on_death
        self._lock = threading.Lock()
        self._stopping = False
        fd = os.memfd_create(f"butterfly-vhost-{number}", os.MFD_CLOEXEC)
        os.ftruncate(fd, SLOTS * SLOT_SIZE)
        self._counters_fd = fd
        self.counters = memoryview(mmap.mmap(fd, SLOTS * SLOT_SIZE))
        self._free = list(range(SLOTS - 1, -1, -1))
        self._spawn()

    def _spawn(self) -> None:
        control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        logs, logs_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (control_child.fileno(), logs_child.fileno(), self._counters_fd)
        root = os.path.dirname(os.path.dirname(os.path.abspath(butterfly.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        try:
            nice = [] if self._nice is None else [str(self._nice)]
            self.process = subprocess.Popen(
                [sys.executable, "-m", "butterfly.vhost.worker", *map(str, fds), *nice],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            control_child.close()
            logs_child.close()
        if self._cpus:
            try:
                os.sched_setaffinity(self.process.pid, self._cpus)
            except OSError:
                self.process.kill()
                self.process.wait()
                control.close()
                logs.close()
                raise
        control.settimeout(_CONTROL_TIMEOUT)
        self._control = control
        self._logs = logs
        self._reader = threading.Thread(
            target=self._read_logs,
            args=(logs, self.process),
            name=f"vhost-worker-{self.number}-logs",
            daemon=True,
        )
        self._reader.start()

    def _read_logs(self, logs: socket.socket, process: "subprocess.Popen[bytes]") -> None:
        """Re-emit the worker's records here; its socket closing means it died."""
        while True:
            try:
                data = logs.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                record = logging.makeLogRecord(json.loads(data))
                logger = logging.getLogger(record.name)
                if logger.isEnabledFor(record.levelno):
                    logger.handle(record)
            except (ValueError, TypeError):
                log.warning("vhost worker %d: unreadable log record", self.number)
        process.wait()
        if not self._stopping:
            log.error(
                "vhost worker %d (pid %d) died with status %s; restarting its %d vnics",
                self.number,
                process.pid,
                process.returncode,
                len(self.vnics),
            )
            self._on_death(self)

    def request(self, **request: Any) -> None:
        with self._lock:
            try:
                self._control.send(json.dumps(request).encode())
                reply = json.loads(self._control.recv(65536) or b"null")
            except (OSError, ValueError) as e:
                raise DataplaneError(
                    f"vhost worker {self.number}: no answer to {request['op']}: {e}"
                ) from None
        if reply is None:
            raise DataplaneError(f"vhost worker {self.number} exited during {request['op']}")
        if not reply["ok"]:
            raise DataplaneError(reply["error"])

    def add(self, vnic: str, socket_path: str, tap_name: str) -> None:
        slot = self.vnics[vnic].slot if vnic in self.vnics else self._free.pop()
        write_slot(self.counters, slot, [0] * 8)
        entry = _Vnic(vnic, socket_path, tap_name, slot)
        try:
            self.request(
                op="add",
                vnic=vnic,
                socket_path=socket_path,
                tap_name=tap_name,
                slot=slot,
                offload=self._offload,
                loop=self._loop,
            )
        except DataplaneError:
            self.vnics.pop(vnic, None)
            self._free.append(slot)
            raise
        self.vnics[vnic] = entry

    def remove(self, vnic: str) -> None:
        entry = self.vnics.pop(vnic)
        try:
            self.request(op="remove", vnic=vnic)
        finally:
            self._free.append(entry.slot)

    def restart(self) -> None:
        """A fresh process serving the same vnics, counters kept."""
        self._control.close()
        self._logs.close()
        self._spawn()
        for entry in list(self.vnics.values()):
            try:
                self.request(
                    op="add",
                    vnic=entry.vnic,
                    socket_path=entry.socket_path,
                    tap_name=entry.tap_name,
                    slot=entry.slot,
                    offload=self._offload,
                    loop=self._loop,
                )
            except DataplaneError as e:
                log.error("vnic %s: not served after the worker restart: %s", entry.vnic, e)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(DataplaneError):
            self.request(op="exit")
        try:
            self.process.wait(_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error(
                "vhost worker %d (pid %d) did not exit; killing it", self.number, self.process.pid
            )
            self.process.kill()
            self.process.wait()
        if self._reader is not threading.current_thread():
            self._reader.join()
        self._control.close()
        self._logs.close()
        self.counters.release()
        os.close(self._counters_fd)


class _DeathCallback:
    def __init__(self, supervisor: "VhostSupervisor") -> None:
        self._supervisor = supervisor

    def __call__(self, worker: _WorkerProcess) -> None:
        self._supervisor._worker_died(worker)


class VhostSupervisor:
    """Runs the vhost-user packet work of all vnics in ``workers`` processes.

    Vnics go to the worker serving the fewest, so several busy vnics use
    several cores; a worker that dies is restarted with its vnics (QEMU
    started with ``reconnect=1`` comes back by itself). ``nice``: the workers'
    niceness (None: the caller's), higher than the daemon's so that a CPU
    full of packet work still answers the API first. ``cpus``: the CPUs the
    workers may run on (the original's --graph-cpu-core), one worker per CPU
    unless ``workers`` says otherwise; () lets them run anywhere. ``offload``:
    False offers guests no checksum or segmentation offloads (--no-offload).
    ``loop``: which implementation moves the frames (--vhost-loop: auto, c,
    python; see :mod:`butterfly.vhost.fastloop`).

    Raises ConfigError when ``cpus`` names a CPU this process may not use, or
    ``loop`` is c and the C loop was not built.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        nice: int | None = None,
        cpus: tuple[int, ...] = (),
        offload: bool = True,
        loop: str = "auto",
    ) -> None:
        usable = os.sched_getaffinity(0)
        if not set(cpus) <= usable:
            raise ConfigError(
                f"graph-cpu-core: CPU {min(set(cpus) - usable)} is not one butterflyd may run on"
                f" (CPUs {','.join(map(str, sorted(usable)))})"
            )
        self._count = workers or len(cpus) or os.cpu_count() or 1
        self._nice = nice
        self._cpus = cpus
        self._offload = offload
        self.loop = fastloop.resolve(loop)
        """The loop the workers run: "c" or "python"."""
        self.loop_status = fastloop.describe(loop)
        """That loop and why, for ``butterfly status``."""
        self._workers: list[_WorkerProcess] = []
        self._where: dict[str, _WorkerProcess] = {}
        self._lock = threading.RLock()

    def start(self) -> None:
        """Start the workers (nothing if they run); DataplaneError if one cannot start."""
        with self._lock:
            if self._workers:
                return
            callback = _DeathCallback(self)
            started: list[_WorkerProcess] = []
            try:
                for number in range(self._count):
                    started.append(
                        _WorkerProcess(
                            number,
                            callback,
                            self._nice,
                            self._cpus,
                            offload=self._offload,
                            loop=self.loop,
                        )
                    )
            except OSError as e:
                for worker in started:
                    worker.stop()
                raise DataplaneError(f"vhost: cannot start a worker process: {e}") from None
            self._workers = started
        log.info("vhost: %d workers moving frames with the %s loop", len(started), self.loop)

    def stop(self) -> None:
        """Stop every vnic (sockets removed, frontends disconnected) and every worker."""
        with self._lock:
            workers, self._workers = self._workers, []
            self._where.clear()
        for worker in workers:
            worker.stop()

    def __enter__(self) -> "VhostSupervisor":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def add(self, vnic: str, *, socket_path: str, tap_name: str) -> None:
        """Serve ``socket_path`` for tap ``tap_name``; replaces a vnic of that id.

        Raises DataplaneError, naming the tap or the socket, when the worker
        cannot attach to the tap or listen on the socket.
        """
        with self._lock:
            if not self._workers:
                raise DataplaneError(f"vnic {vnic}: the vhost supervisor is not started")
            worker = self._where.get(vnic) or min(self._workers, key=lambda w: len(w.vnics))
            self._where[vnic] = worker
            try:
                worker.add(vnic, socket_path, tap_name)
            except DataplaneError:
                self._where.pop(vnic, None)
                raise

    def remove(self, vnic: str) -> None:
        """Stop serving ``vnic``: its frontend is disconnected and its socket removed."""
        with self._lock:
            worker = self._where.pop(vnic, None)
            if worker is not None:
                worker.remove(vnic)

    def counters(self, vnic: str) -> VnicCounters:
        with self._lock:
            worker = self._where.get(vnic)
            if worker is None:
                raise DataplaneError(f"vnic {vnic}: not served by the vhost backend")
            return read_slot(worker.counters, worker.vnics[vnic].slot)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    def _worker_died(self, worker: _WorkerProcess) -> None:
        with self._lock:
            if worker in self._workers:
                worker.restart()


class VhostUserServer:
    """One vnic's vhost-user server, as the kernel data plane sees it."""

    def __init__(
        self, *, supervisor: VhostSupervisor, vnic: str, socket_path: str, tap_name: str
    ) -> None:
        self.supervisor = supervisor
        self.vnic = vnic
        self.socket_path = socket_path
        self.tap_name = tap_name

    def start(self) -> None:
        """Create the socket and attach to the tap (DataplaneError if either fails)."""
        self.supervisor.add(self.vnic, socket_path=self.socket_path, tap_name=self.tap_name)

    def stop(self) -> None:
        self.supervisor.remove(self.vnic)

    def counters(self) -> VnicCounters:
        return self.supervisor.counters(self.vnic)
