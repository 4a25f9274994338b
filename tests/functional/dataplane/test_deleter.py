"""The deletion thread, in a test host's namespace: links queued back to back are
deleted together (one group deletion), and none but them; deletions wait for a
quiet API, unless waited for or queued too long."""

import time
from collections.abc import Callable

import pytest

from butterfly.dataplane.deleter import LinkDeleter
from butterfly.dataplane.fastpath import FastPathMode
from butterfly.dataplane.rtlink import LinkReader
from butterfly_lab.lab import wait_for

from .conftest import Host, Lab, only_on

pytestmark = [pytest.mark.root, only_on(FastPathMode.OFF)]  # no data plane here


def test_links_queued_together_are_deleted_and_no_other(lab: Lab) -> None:
    host = lab.host()
    names = [f"zz{n}" for n in range(6)]
    for name in [*names, "keep0"]:
        host.ip("link", "add", name, "type", "bridge")

    def delete_all() -> set[int]:
        reader = LinkReader()
        deleter = LinkDeleter()
        try:
            indexes = set()
            for name in names:
                link = reader.get(name)
                assert link is not None
                deleter.delete(name, link["index"])
                indexes.add(link["index"])
            assert deleter.wait(indexes)
            assert deleter.take_deleted() == indexes
            return indexes
        finally:
            deleter.close()
            reader.close()

    assert len(host.run(delete_all)) == len(names)
    shown = host.ip("-o", "link", "show")
    assert "keep0" in shown
    assert not any(f"{name}:" in shown for name in names)


def _indexes(names: list[str]) -> dict[str, int]:
    reader = LinkReader()
    try:
        indexes = {}
        for name in names:
            link = reader.get(name)
            assert link is not None
            indexes[name] = link["index"]
        return indexes
    finally:
        reader.close()


def _bridges(host: Host, names: list[str]) -> Callable[[str], bool]:
    """Bridges ``names`` made in ``host``, and whether one of them still exists."""
    for name in names:
        host.ip("link", "add", name, "type", "bridge")

    def exists(name: str) -> bool:
        return f"{name}:" in host.ip("-o", "link", "show")

    return exists


def test_deletions_wait_for_a_quiet_api_unless_someone_waits_for_them(lab: Lab) -> None:
    """A link's deletion holds the RTNL lock that requests need: none starts while a
    request runs, nor until the API has been quiet a while; a request that needs
    the links gone has them deleted at once; links older than max_delay are
    deleted once a request ends, even if another follows at once."""
    host = lab.host()
    names = ["qa0", "qb0", "qc0"]
    exists = _bridges(host, names)

    def scenario() -> None:
        indexes = _indexes(names)
        deleter = LinkDeleter(idle=0.3, max_delay=3600.0)
        try:
            with deleter.busy():
                deleter.delete("qa0", indexes["qa0"])
                time.sleep(0.6)
                assert deleter.pending([indexes["qa0"]]) and exists("qa0")
            time.sleep(0.05)
            assert deleter.pending([indexes["qa0"]]) and exists("qa0")
            wait_for(lambda: not exists("qa0"), "the deletion once the API is quiet")
            with deleter.busy():
                deleter.delete("qb0", indexes["qb0"])
                assert deleter.wait([indexes["qb0"]])
                assert not exists("qb0")
        finally:
            deleter.close()
        hurried = LinkDeleter(idle=3600.0, max_delay=0.3)
        try:
            with hurried.busy():
                hurried.delete("qc0", indexes["qc0"])
                time.sleep(0.6)
                assert exists("qc0")
            with hurried.busy():
                wait_for(lambda: not exists("qc0"), "the overdue deletion after a request")
        finally:
            hurried.close()

    host.run(scenario)


def test_a_kept_link_waits_for_a_long_quiet_and_can_be_taken_back(lab: Lab) -> None:
    """A spare bridge is kept through short pauses and overdue batches (a new VNI
    may take it back), deleted once the API has been quiet ``spare_idle``, and
    at once when the thread closes."""
    host = lab.host()
    names = ["ka0", "kb0", "kc0", "kd0"]
    exists = _bridges(host, names)

    def scenario() -> None:
        indexes = _indexes(names)
        deleter = LinkDeleter(idle=0.05, max_delay=0.1, spare_idle=1.0)
        try:
            with deleter.busy():
                deleter.keep("ka0", indexes["ka0"])
                deleter.keep("kb0", indexes["kb0"])
                deleter.delete("kc0", indexes["kc0"])
            time.sleep(0.4)
            assert not exists("kc0"), "a queued link goes after a short quiet"
            assert exists("ka0") and exists("kb0"), "kept ones wait longer"
            for _ in range(3):  # overdue batches leave them too
                with deleter.busy():
                    time.sleep(0.2)
            assert exists("ka0") and exists("kb0")
            assert deleter.reclaim(indexes["kb0"]) and not deleter.reclaim(indexes["kb0"])
            wait_for(lambda: not exists("ka0"), "the kept link after a long quiet", timeout=5)
            assert deleter.take_deleted() >= {indexes["ka0"], indexes["kc0"]}
            time.sleep(1.2)
            assert exists("kb0"), "a reclaimed link is the caller's again"
            deleter.keep("kd0", indexes["kd0"])
        finally:
            deleter.close()
        assert not exists("kd0"), "closing deletes what is kept"

    host.run(scenario)
