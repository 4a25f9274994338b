"""Packet tracing: every frame to and from a vnic, into a pcap file.

Owns the tracing processes: one ``tcpdump`` per traced vnic, capturing on
the vnic's host-side interface (so both directions, and also what the
anti-spoofing drops) and writing a pcap file flushed packet by packet, which
tcpdump and Wireshark read even while the trace runs. A vnic that is not
traced costs nothing.

Traces outlive the daemon like the rest of the data path: each process's
pid and command line are kept in a pid file in the socket folder, and a
restarted daemon adopts a trace that still runs as it should instead of
restarting it (tcpdump cannot append, a restart would lose the file).
:class:`VnicTraces` decides which vnics are traced and where, for a request
or a reconcile; :class:`Tracer` runs the processes.
"""

import contextlib
import glob
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import partial

from butterfly.dataplane.journal import Journal, best_effort, step
from butterfly.dataplane.naming import tap_name, trace_path, trace_pidfile, trace_pidfiles
from butterfly.dataplane.settings import what
from butterfly.errors import DataplaneError
from butterfly.model import Vnic

__all__ = ["TRACER", "Tracer", "VnicTraces", "trace_settings"]

log = logging.getLogger(__name__)

TRACER = "tcpdump"
_START_WAIT = 5.0
_STOP_WAIT = 3.0
_POLL = 0.02


def trace_settings(vnic: Vnic, *, default: bool, socket_dir: str) -> tuple[bool, str]:
    """Whether ``vnic`` is traced and to which file: its own settings, else the
    daemon's (``-t``, the socket folder). nic_details reports both, always."""
    traced = default if vnic.packet_trace is None else vnic.packet_trace
    return traced, vnic.packet_trace_path or trace_path(socket_dir, vnic.id)


@dataclass(frozen=True, slots=True)
class _Trace:
    pid: int
    argv: tuple[str, ...]

    @property
    def path(self) -> str:
        return self.argv[self.argv.index("-w") + 1]


class Tracer:
    """The tracing processes of one daemon, keyed by vnic id.

    tcpdump runs detached (its parent is init, not the daemon): traces belong
    to the data path, which outlives the daemon.
    """

    def __init__(self, *, tracer: str = TRACER) -> None:
        self._tracer = tracer
        self._traces: dict[str, _Trace] = {}

    def command(self, ifname: str, path: str) -> tuple[str, ...]:
        """Immediate and packet-buffered (-U): every frame is in the file at
        once, readable while the trace runs and complete when it stops; -Z root
        keeps the file writable where the daemon chose it."""
        return (
            self._tracer,
            "-i",
            ifname,
            "-w",
            path,
            "--immediate-mode",
            "-U",
            "-n",
            "-p",
            "-s",
            "0",
            "-Z",
            "root",
        )

    def tracing(self, vnic_id: str) -> str | None:
        """The file ``vnic_id`` is being traced to, or None (also when the trace died)."""
        trace = self._traces.get(vnic_id)
        if trace is None:
            return None
        if not _alive(trace):
            del self._traces[vnic_id]
            return None
        return trace.path

    def start(self, vnic_id: str, ifname: str, path: str, pidfile: str) -> None:
        """Start tracing, once tcpdump listens (the file exists), then end the
        vnic's previous trace if any; raises DataplaneError (the previous runs on)."""
        argv = self.command(ifname, path)
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise DataplaneError(f"packet_trace_path {path!r}: folder {directory} does not exist")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        logfile = _logfile(pidfile)
        try:
            launched = subprocess.run(
                ["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>"$0" & echo $!', logfile, *argv],
                capture_output=True,
                text=True,
                timeout=_START_WAIT,
                start_new_session=True,
                check=True,
            )
            trace = _Trace(int(launched.stdout.strip()), argv)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise DataplaneError(f"packet trace: cannot run {self._tracer}: {exc}") from exc
        deadline = time.monotonic() + _START_WAIT
        while not os.path.exists(path):
            if not _alive(trace) or time.monotonic() > deadline:
                _terminate(trace)
                raise DataplaneError(
                    f"packet trace to {path!r} did not start: {_last_line(logfile)}"
                )
            time.sleep(_POLL)
        previous = self._traces.get(vnic_id)
        if previous is not None:
            _terminate(previous)
        self._traces[vnic_id] = trace
        _write_pidfile(pidfile, trace.pid, argv)

    def stop(self, vnic_id: str, pidfile: str) -> None:
        """Stop tracing ``vnic_id`` (tcpdump flushes the file on SIGTERM)."""
        trace = self._traces.pop(vnic_id, None)
        if trace is not None:
            _terminate(trace)
        _forget(pidfile)

    def adopt(self, vnic_id: str, ifname: str, path: str, pidfile: str) -> bool:
        """Take over a trace a previous daemon left running, if it is the one wanted."""
        wanted = self.command(ifname, path)
        if vnic_id in self._traces:
            return self._traces[vnic_id].argv == wanted and self.tracing(vnic_id) is not None
        found = _read_pidfile(pidfile)
        if found is None:
            return False
        trace = _Trace(*found)
        if trace.argv != wanted or not _alive(trace):
            return False
        self._traces[vnic_id] = trace
        return True

    def orphan(self, pidfile: str) -> None:
        """Stop a trace left by a previous daemon for a vnic that no longer wants one."""
        found = _read_pidfile(pidfile)
        if found is not None:
            _terminate(_Trace(*found))
        _forget(pidfile)

    def close(self) -> None:
        """Let the traces run on (the daemon's successor adopts them)."""
        self._traces.clear()


class VnicTraces:
    """The vnics' traces: ``default`` for vnics whose ``packet_trace`` is None,
    files and pid files in ``socket_dir`` unless a vnic names its file."""

    def __init__(self, *, socket_dir: str, default: bool) -> None:
        self._socket_dir = socket_dir
        self._default = default
        self.tracer = Tracer()

    def tracing(self, vnic_id: str) -> str | None:
        """The file the vnic's trace writes, if one runs."""
        return self.tracer.tracing(vnic_id)

    def _file(self, vnic: Vnic) -> str | None:
        traced, path = trace_settings(vnic, default=self._default, socket_dir=self._socket_dir)
        return path if traced else None

    def apply(self, j: Journal, vnic: Vnic) -> None:
        """Start, move or stop the vnic's trace: the last step of a request, so
        its own failure is the only one it has to survive (the old trace runs on)."""
        wanted = self._file(vnic)
        current = self.tracer.tracing(vnic.id)
        if wanted == current:
            return
        pidfile = trace_pidfile(self._socket_dir, vnic.id)
        if wanted is not None:
            step(
                j,
                f"trace {vnic.id} to {wanted}",
                partial(self.tracer.start, vnic.id, tap_name(vnic.id), wanted, pidfile),
            )
        else:
            self.tracer.stop(vnic.id, pidfile)

    def stop(self, vnic: Vnic) -> None:
        self.tracer.stop(vnic.id, trace_pidfile(self._socket_dir, vnic.id))

    def reconcile(self, vnics: list[Vnic], problems: list[str]) -> None:
        """Adopt the traces ``vnics`` want that still run as they should, start the
        others, stop every other trace a previous daemon left in the socket folder."""
        kept = set()
        for vnic in vnics:
            pidfile = trace_pidfile(self._socket_dir, vnic.id)
            wanted = self._file(vnic)
            if wanted is None:
                self.tracer.stop(vnic.id, pidfile)
                self.tracer.orphan(pidfile)
                continue
            kept.add(pidfile)
            if self.tracer.adopt(vnic.id, tap_name(vnic.id), wanted, pidfile):
                continue
            self.tracer.stop(vnic.id, pidfile)
            self.tracer.orphan(pidfile)
            best_effort(
                problems,
                what(vnic),
                partial(self.tracer.start, vnic.id, tap_name(vnic.id), wanted, pidfile),
            )
        for pidfile in glob.glob(trace_pidfiles(self._socket_dir)):
            if pidfile not in kept:
                self.tracer.orphan(pidfile)

    def close(self) -> None:
        self.tracer.close()


def _terminate(trace: _Trace) -> None:
    """SIGTERM (tcpdump flushes), then SIGKILL; only a process still running ``argv``."""
    if not _alive(trace):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(trace.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_WAIT
    while time.monotonic() < deadline:
        if not _alive(trace):
            return
        time.sleep(_POLL)
    log.warning("trace process %d ignored SIGTERM; killing it", trace.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(trace.pid, signal.SIGKILL)


def _logfile(pidfile: str) -> str:
    """tcpdump's own messages, read when it fails to start."""
    return pidfile.removesuffix(".pid") + ".log"


def _forget(pidfile: str) -> None:
    for path in (pidfile, _logfile(pidfile)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _last_line(logfile: str) -> str:
    try:
        with open(logfile, errors="replace") as file:
            lines = [line.strip() for line in file if line.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "tcpdump never opened the file"


def _alive(trace: _Trace) -> bool:
    return _cmdline(trace.pid) == trace.argv


def _cmdline(pid: int) -> tuple[str, ...] | None:
    """A live process's command line (None for a zombie or a missing pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    if not raw:
        return None
    return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))


def _write_pidfile(path: str, pid: int, argv: tuple[str, ...]) -> None:
    try:
        with open(path, "w") as file:
            file.write("\0".join([str(pid), *argv]))
    except OSError as exc:
        log.warning("cannot keep the trace pid file %s: %s", path, exc)


def _read_pidfile(path: str) -> tuple[int, tuple[str, ...]] | None:
    try:
        with open(path) as file:
            pid, *argv = file.read().split("\0")
        return int(pid), tuple(argv)
    except (OSError, ValueError):
        return None
