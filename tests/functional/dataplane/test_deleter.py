"""The deletion thread, in a test host's namespace: links queued back to back are
deleted together (one group deletion), and none but them."""

import pytest

from butterfly.dataplane.deleter import LinkDeleter
from butterfly.dataplane.rtlink import LinkReader

from .conftest import Lab

pytestmark = pytest.mark.root


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
