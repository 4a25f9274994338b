"""A worker process: one event loop serving the packet work of several vnics.

Owns the epoll loop (the :class:`~butterfly.vhost.device.Poller` devices
use), the control channel from the supervisor (add or remove a vnic, exit)
and the forwarding of log records to the daemon. It sleeps in epoll when no
ring or tap has work, so an idle worker costs no CPU.

A worker never outlives its daemon: the kernel closes the daemon's end of
the control channel however the daemon ends (SIGKILL included), and the
worker, which watches that channel on every turn, busy or not, then stops
its vnics and exits, so a restarted daemon can make the sockets again.
(PR_SET_PDEATHSIG would not do: it fires when the *thread* that spawned the
worker ends, and replacements of dead workers are spawned from short-lived
threads.) Started by
:mod:`butterfly.vhost.supervisor` as ``python -m butterfly.vhost.worker
CONTROL_FD LOG_FD COUNTERS_FD``; it must not import the daemon, service, api
or store.
"""

import contextlib
import json
import logging
import mmap
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from butterfly.errors import ButterflyError

from .counters import SLOT_SIZE, SLOTS, read_values, write_slot
from .device import NetDevice

__all__ = ["Worker", "main"]

log = logging.getLogger("butterfly.vhost")


class Worker:
    """The event loop of one worker process."""

    def __init__(self, control: socket.socket, counters: memoryview) -> None:
        self._control = control
        self._counters = counters
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._again: dict[NetDevice, None] = {}
        self._devices: dict[str, NetDevice] = {}
        self._running = True
        control.setblocking(False)
        self.watch(control.fileno(), select.EPOLLIN, self._on_control)

    # Poller
    def watch(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self._epoll.register(fd, events)
        self._callbacks[fd] = callback

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unwatch(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def again(self, device: NetDevice) -> None:
        self._again[device] = None

    def serve(self) -> None:
        """Run until told to exit; then stop every vnic (their sockets go away)."""
        try:
            while self._running:
                try:
                    events = self._epoll.poll(0 if self._again else -1)
                except InterruptedError:
                    continue
                for fd, mask in events:
                    callback = self._callbacks.get(fd)
                    if callback is not None:
                        callback(mask)
                again, self._again = self._again, {}
                for device in again:
                    if self._devices.get(device.vnic) is device:
                        device.run()
        finally:
            for vnic in list(self._devices):
                self._remove(vnic)

    def _on_control(self, _events: int) -> None:
        try:
            data = self._control.recv(65536)
        except BlockingIOError:
            return
        if not data:
            log.info("vhost worker %d: supervisor gone, exiting", os.getpid())
            self._running = False
            return
        request = json.loads(data)
        reply: dict[str, Any] = {"ok": True}
        try:
            op = request["op"]
            if op == "add":
                self._add(
                    request["vnic"],
                    request["socket_path"],
                    request["tap_name"],
                    request["slot"],
                    offload=bool(request.get("offload", True)),
                    loop=str(request.get("loop", "python")),
                )
            elif op == "remove":
                self._remove(request["vnic"])
            elif op == "exit":
                self._running = False
            else:
                reply = {"ok": False, "error": f"vhost worker: unknown operation {op!r}"}
        except ButterflyError as e:
            reply = {"ok": False, "error": str(e)}
        self._control.send(json.dumps(reply).encode())

    def _add(
        self, vnic: str, socket_path: str, tap_name: str, slot: int, *, offload: bool, loop: str
    ) -> None:
        if vnic in self._devices:
            self._remove(vnic)
        counters = self._counters

        def publish(values: list[int]) -> None:
            write_slot(counters, slot, values)

        device = NetDevice(
            vnic=vnic,
            socket_path=socket_path,
            tap_name=tap_name,
            poller=self,
            publish_counters=publish,
            counters=read_values(counters, slot),
            offload=offload,
            loop=loop,
        )
        device.start()
        self._devices[vnic] = device

    def _remove(self, vnic: str) -> None:
        device = self._devices.pop(vnic, None)
        if device is not None:
            device.stop()
            self._again.pop(device, None)


class _LogForwarder(logging.Handler):
    """Hands records to the daemon, whose logging configuration applies; a
    record that does not fit in the socket buffer is dropped, never waited for."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        sock.setblocking(False)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        fields = {
            "name": record.name,
            "levelno": record.levelno,
            "levelname": record.levelname,
            "msg": message,
            "pathname": record.pathname,
            "filename": record.filename,
            "module": record.module,
            "lineno": record.lineno,
            "funcName": record.funcName,
            "created": record.created,
            "msecs": record.msecs,
            "process": record.process,
            "processName": "vhost-worker",
        }
        with contextlib.suppress(OSError):
            self._sock.send(json.dumps(fields).encode()[:60000])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    control_fd, log_fd, counters_fd = (int(a) for a in args[:3])
    # Signals for the whole process group (^C, a service manager stopping the
    # daemon's cgroup) are the daemon's to act on: it stops its workers itself,
    # and a worker that died first would be taken for a crash and restarted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logger = logging.getLogger("butterfly")
    logger.addHandler(_LogForwarder(socket.socket(fileno=log_fd)))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if len(args) > 3:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, int(args[3]))
        except PermissionError:
            niceness = os.getpriority(os.PRIO_PROCESS, 0)
            log.warning(
                "vhost worker: niceness %s needs CAP_SYS_NICE; keeping %d", args[3], niceness
            )
    counters = memoryview(mmap.mmap(counters_fd, SLOTS * SLOT_SIZE))
    os.close(counters_fd)
    Worker(socket.socket(fileno=control_fd), counters).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
