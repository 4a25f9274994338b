"""Where the daemon's logs go (the journal, syslog or stderr) and at which level.

Under systemd (our stderr is the journal's stream) records go to the journal
with structured fields (:mod:`butterfly.daemon.journal`); otherwise to syslog,
or to stderr when asked or when there is no syslog.

The level can change at run time (app_config), so it is set on the
``butterfly`` logger, which every module's logger hangs under.
"""

import logging
import logging.handlers
import os
import sys

from butterfly.daemon.journal import (
    JOURNAL_SOCKET,
    JournalHandler,
    RequestFields,
    stderr_is_journal,
)
from butterfly.errors import BadRequest

__all__ = ["LEVELS", "set_level", "setup_logging"]

LEVELS = {
    "none": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

_root = logging.getLogger("butterfly")


def setup_logging(*, syslog: bool, level: str) -> bool:
    """Send the daemon's records to syslog, or to stderr; True when to stderr
    (so that the caller does not print what it logs a second time)."""
    handler: logging.Handler
    if stderr_is_journal() and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler()
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("butterflyd[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s butterflyd %(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(RequestFields())
    _root.handlers[:] = [handler]
    _root.propagate = False
    set_level(level)
    to_stderr = isinstance(handler, logging.StreamHandler)
    if syslog and to_stderr:
        _root.warning("no syslog socket at /dev/log: logging to stderr")
    return to_stderr


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise BadRequest(f"Bad log level: {level!r} is not one of {', '.join(LEVELS)}")
    _root.setLevel(LEVELS[level])
