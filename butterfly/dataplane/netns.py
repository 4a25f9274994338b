"""Entering another network namespace, for the inside end of NETNS vnics.

Owns entering a namespace (``setns(2)``, through pyroute2: Python 3.11 has
no ``os.setns``) and the rule that makes it safe in a multi-threaded daemon:
only a short-lived thread ever changes namespace, so the caller's own
sockets, netlink and nftables contexts stay where they are. Work done inside a namespace is a
function run in that thread; its result or exception comes back.
"""

import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2.netns import setns

from butterfly.dataplane.kernel_errors import code_of, explain
from butterfly.errors import DataplaneError, shown

__all__ = ["NETNS_RUN_DIR", "netns_path", "open_netns", "run_in_netns"]

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    """A vnic's path as a file: a name under /run/netns, or already a path."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def open_netns(netns: str, what: str) -> int:
    """A file descriptor of ``netns`` (the caller closes it); ``what`` names the vnic."""
    path = netns_path(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DataplaneError(
            explain(
                f"{what}: path {shown(netns)} is not a network namespace",
                code_of(exc),
                {errno.ENOENT: "create it first (ip netns add NAME) or give an existing one"},
            )
        ) from exc


def run_in_netns(netns: str, what: str, work: Callable[[], T]) -> T:
    """``work()`` run by a thread inside ``netns``; raises what it raises."""
    fd = open_netns(netns, what)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def enter_and_work() -> None:
        try:
            try:
                setns(fd, flags=0)
            except OSError as exc:
                raise DataplaneError(
                    explain(
                        f"{what}: cannot enter network namespace {shown(netns)}",
                        code_of(exc),
                        {errno.EINVAL: "give a namespace name (ip netns list) or /proc/PID/ns/net"},
                    )
                ) from exc
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    try:
        thread = threading.Thread(target=enter_and_work, name="butterfly-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return outcome[0]
