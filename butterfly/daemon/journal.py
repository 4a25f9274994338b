"""Logs to systemd's journal with structured fields, by the journal's native protocol.

Under systemd, a record becomes one datagram on ``/run/systemd/journal/socket``
holding its fields: ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, the
code location, and what the request being answered is about (``VNIC``,
``VNI``, ``SG``, ``REQUEST_ID``, ``REQUEST``), so that ``journalctl
VNIC=vnic_1`` finds every line about one vnic. The protocol is small: a
field is ``NAME=value\\n``, or, when the value holds a newline, ``NAME\\n``,
its length as 64-bit little-endian, the value and ``\\n``; a datagram too
large for the socket goes in a sealed memfd passed along with SCM_RIGHTS.
(python3-systemd would do the same but needs a C toolchain and libsystemd's
headers to install from PyPI.)

What a request is about is kept in a context variable that the daemon sets
around each answer (:func:`request_context`); :class:`RequestFields` copies
it onto every record logged meanwhile, for whichever handler.
"""

import contextlib
import contextvars
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator, Mapping

__all__ = [
    "JOURNAL_SOCKET",
    "JournalHandler",
    "RequestFields",
    "request_context",
    "stderr_is_journal",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "butterflyd"

_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "butterfly_request_fields", default=None
)

_PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
"""syslog priorities: err, warning, info; anything lower is debug (7)."""
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_FORMATTER = logging.Formatter()


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether systemd connected our stderr to the journal.

    ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of that stream; it is inherited by
    children whose stderr may be elsewhere, so it counts only when it names
    our stderr (the check sd_journal_stream_fd's documentation asks for).
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


@contextlib.contextmanager
def request_context(fields: Mapping[str, str]) -> Iterator[None]:
    """Journal fields (upper-case names) for every record logged inside the block."""
    token = _context.set(fields)
    try:
        yield
    finally:
        _context.reset(token)


class RequestFields(logging.Filter):
    """Puts the current request's fields on each record (as ``journal_fields``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        if fields:
            record.journal_fields = fields
        return True


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode("ascii") + b"=" + data + b"\n"
    return name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def _priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


class JournalHandler(logging.Handler):
    """A handler that writes each record as one journal entry."""

    def __init__(self, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def entry(self, record: logging.LogRecord) -> bytes:
        """The datagram for one record."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + _FORMATTER.formatException(record.exc_info)
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "SYSLOG_PID": str(record.process),
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            **getattr(record, "journal_fields", {}),
        }
        return b"".join(_field(name, value) for name, value in fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.entry(record)
            try:
                self._socket.sendto(data, self.address)
            except OSError as error:
                if error.errno != errno.EMSGSIZE:
                    raise
                self._send_large(data)
        except Exception:
            self.handleError(record)

    def _send_large(self, data: bytes) -> None:
        """What journald accepts for entries larger than a datagram: a sealed memfd."""
        fd = os.memfd_create("butterfly-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._socket.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.address
            )
        finally:
            os.close(fd)

    def close(self) -> None:
        self._socket.close()
        super().close()
