"""A butterflyd in a child process, for benchmarks and tests.

:class:`DaemonProcess` starts ``butterflyd`` (by default ``--no-dataplane``
on a free loopback port) with its state and sockets in a folder it is
given, waits until it answers, and stops it by pid (SIGTERM, or SIGKILL to
simulate a crash). It can start again on the same state file. It only ever
signals the process it started. Optionally it runs the daemon inside a
network namespace (``ip netns exec``, which execs the daemon in place, so
the pid is the daemon's), with the kernel data plane, and on a fixed
endpoint (an ``ipc://`` socket reaches a daemon in another namespace).
Imports nothing of butterfly but the API client.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

from butterfly.api.client import Client
from butterfly.errors import ClientError

__all__ = ["FAST_PATH_VARIABLE", "DaemonError", "DaemonProcess", "free_port", "resident_memory_kib"]

FAST_PATH_VARIABLE = "BUTTERFLY_FAST_PATH"
"""When set (auto, ebpf, off), daemons with a data plane start with that --fast-path:
the suites run once per path."""
_BIND_FAILURE = "cannot listen on endpoint"
_START_ATTEMPTS = 5


class DaemonError(Exception):
    """The daemon did not start, or did not stop, as expected."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def resident_memory_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise DaemonError(f"process {pid} has no VmRSS (a kernel thread, or gone)")


def butterflyd_command() -> list[str]:
    """The installed ``butterflyd`` beside this Python, else ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "butterflyd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "butterfly.daemon"]


class DaemonProcess:
    """One butterflyd, owned by the caller.

    ``directory`` holds ``state.db``, the vhost-user socket paths and
    ``butterflyd.log`` (its stdout and stderr, appended across restarts).
    ``netns``: run inside that named network namespace. ``dataplane``: drive
    the kernel (default: ``--no-dataplane``, the control plane alone).
    ``endpoint``: a fixed API endpoint (e.g. ``ipc://DIR/api.sock``) instead
    of a free loopback TCP port picked at each start; a TCP port lives in
    one network namespace, so a daemon in another one needs ``ipc://``.
    ``extra_args`` go last on the command line. ``wrapper``: a command that
    execs its arguments, run inside the namespace before the daemon (to give
    it a read-only ``/proc/sys`` or fewer capabilities, as a container would).
    """

    def __init__(
        self,
        directory: str,
        *,
        key_path: str | None = None,
        config_path: str | None = None,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
        state_path: str | None = None,
        netns: str | None = None,
        dataplane: bool = False,
        endpoint: str | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.wrapper = list(wrapper)
        self.state_path = state_path or os.path.join(directory, "state.db")
        self.socket_dir = directory
        self.log_path = os.path.join(directory, "butterflyd.log")
        self.key_path = key_path
        self.config_path = config_path
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.netns = netns
        self.dataplane = dataplane
        self.fixed_endpoint = endpoint
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.fixed_endpoint is not None:
            return self.fixed_endpoint
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise DaemonError("the daemon is not running")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        command = [
            *(["ip", "netns", "exec", self.netns] if self.netns is not None else []),
            *self.wrapper,
            *butterflyd_command(),
            *([] if self.dataplane else ["--no-dataplane"]),
            "--no-syslog",
            "--state",
            self.state_path,
            "--socket-dir",
            self.socket_dir,
            "--endpoint",
            self.endpoint,
            "-l",
            self.log_level,
        ]
        if self.key_path is not None:
            command += ["-k", self.key_path]
        if self.config_path is not None:
            command += ["-c", self.config_path]
        fast_path = os.environ.get(FAST_PATH_VARIABLE)
        if self.dataplane and fast_path:
            command += ["--fast-path", fast_path]
        return command + self.extra_args

    def log(self) -> str:
        """Everything the daemon wrote to stdout and stderr so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def spawn(self, *, port: int | None = None) -> None:
        """Start the process without waiting for it (see :meth:`start`)."""
        if self.alive():
            raise DaemonError(f"the daemon is already running (pid {self.pid})")
        self._reap()
        if self.fixed_endpoint is None:
            self.port = port if port is not None else free_port()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def start(self, *, timeout: float = 15.0, keep_port: bool = False) -> None:
        """Start and wait until it answers; DaemonError if it exits or hangs.

        A port taken by someone else between our pick and the daemon's bind
        is retried on another port, unless ``keep_port`` (or a fixed endpoint).
        """
        if self.fixed_endpoint is not None:
            self.spawn()
            self.wait_ready(timeout=timeout)
            return
        for _ in range(_START_ATTEMPTS):
            log_size = len(self.log())
            self.spawn(port=self.port if keep_port and self.port else None)
            try:
                self.wait_ready(timeout=timeout)
                return
            except DaemonError:
                fresh_log = self.log()[log_size:]
                if keep_port or _BIND_FAILURE not in fresh_log or self.alive():
                    raise
        raise DaemonError(f"no free port found in {_START_ATTEMPTS} attempts")

    def wait_ready(self, *, timeout: float = 15.0) -> None:
        """Until any frame gets an answer (an empty one: the reply is an error)."""
        deadline = time.monotonic() + timeout
        with Client(endpoint=self.endpoint, timeout_ms=100) as probe:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.wait_exit(timeout=5)
                    raise DaemonError(f"butterflyd exited with {code}:\n{self.log()}")
                try:
                    probe.send_frame(b"")
                    return
                except ClientError:
                    continue
        self.kill()
        raise DaemonError(f"butterflyd did not answer within {timeout} s:\n{self.log()}")

    def wait_exit(self, *, timeout: float = 15.0) -> int:
        """The exit code, once the process has ended (it is reaped)."""
        if self._process is None:
            raise DaemonError("the daemon was never started")
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise DaemonError(f"butterflyd (pid {self.pid}) did not exit in {timeout} s") from error
        self._close_log()
        return code

    def stop(self, *, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. The exit code."""
        if self._process is None:
            raise DaemonError("the daemon was never started")
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(f"butterflyd did not stop on SIGTERM in {timeout} s") from None
        return self.wait_exit()

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the daemon can tell) and reap."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait()
        self._close_log()

    def restart(self, *, timeout: float = 15.0) -> None:
        """Start again on the same state file and the same port."""
        if self.alive():
            self.stop()
        self.start(timeout=timeout, keep_port=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        self._close_log()

    def close(self) -> None:
        """Stop the daemon if it still runs (kill it if it will not stop)."""
        if self.alive():
            try:
                self.stop(timeout=5)
            except DaemonError:
                self.kill()
        self._reap()

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
