"""Building a large, short-lived structure in a child process, for its result only.

Reading butterfly's nftables tables on a host of 10,000 vnics parses nft's
JSON into ~80 MB of Python objects, and leaves ~50 MB more in libnftables'
copy of the ruleset, to keep a fraction of it. A forked child does the
reading and parsing and sends back the result, pickled: the daemon only
allocates the result (measured after kill -9 at 10,000 vnics: 138 MB
instead of 242 MB once the first app_status and the reconcile's dump of
every link are done, 201 MB instead of 266 MB at the reconcile's peak).

The child inherits the parent's memory and threads' locks (only the forking
thread runs in it): ``work`` must not log or take locks other threads may
hold, only compute and talk to the kernel on sockets of its own.
"""

import os
import pickle
from collections.abc import Callable
from typing import TypeVar

from butterfly.errors import DataplaneError

__all__ = ["in_child"]

T = TypeVar("T")

_FAILED = 1


def in_child(work: Callable[[], T], what: str) -> T:
    """``work()``'s result, computed in a forked child; its DataplaneError
    raised here. ``what``: for the error when the child itself fails."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, exit without running the parent's clean-ups
        status = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps((True, work()), protocol=pickle.HIGHEST_PROTOCOL)
            except DataplaneError as exc:
                payload = pickle.dumps((False, str(exc)))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        except BaseException:
            status = _FAILED
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise DataplaneError(f"{what}: the child process doing it failed (status {status})")
    ok, result = pickle.loads(data)
    if not ok:
        raise DataplaneError(result)
    return result  # type: ignore[no-any-return]
