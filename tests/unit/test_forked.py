"""in_child: a result computed in a forked child process comes back whole, an error as one."""

import os

import pytest

from butterfly.dataplane.forked import in_child
from butterfly.errors import DataplaneError


def test_the_result_comes_from_a_child() -> None:
    parent = os.getpid()
    pid, big = in_child(lambda: (os.getpid(), {n: str(n) for n in range(100_000)}), "test")
    assert pid != parent
    assert len(big) == 100_000 and big[99_999] == "99999"


def test_a_dataplane_error_is_raised_in_the_parent() -> None:
    def fail() -> None:
        raise DataplaneError("nftables: no table")

    with pytest.raises(DataplaneError, match="nftables: no table"):
        in_child(fail, "reading")


def test_a_child_that_dies_is_an_error_naming_the_work() -> None:
    with pytest.raises(DataplaneError, match="reading the tables: the child process"):
        in_child(lambda: os._exit(3), "reading the tables")
