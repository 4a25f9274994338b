"""rtchange's messages are the very bytes pyroute2 sent for the same calls.

The expected bodies were captured with ``strace -xx`` of butterfly's former
pyroute2 calls on this kernel (the header fields, then the attributes in
pyroute2's order), or of ``tc`` for what pyroute2 cannot say (a qdisc bound
to shared blocks); the functional data plane tests apply them to real links.
"""

import pytest

from butterfly.dataplane import rtchange
from butterfly.dataplane.netlink import BRIDGE_OPTIONS

_RTM_NEWLINK, _RTM_NEWNEIGH, _RTM_NEWQDISC, _RTM_NEWTFILTER = 16, 28, 36, 44
_ACK = 0x1 | 0x4
_REPLACE_OR_CREATE = _ACK | 0x100 | 0x400
_CREATE_NEW = _ACK | 0x200 | 0x400


def test_a_priority_deletion_has_the_header_of_a_filter_there() -> None:
    """No capture (pyroute2 has no call for a shared block): the header of
    :func:`rtchange.bpf_filter`'s with no handle, and nothing else, which
    removes that priority whatever its kind (``tc filter del block N pref P``);
    the functional tests remove a stray filter from a block with it."""
    message = rtchange.delete_prio(rtchange.BLOCK, parent=101, prio=3)
    created = rtchange.bpf_filter(rtchange.BLOCK, parent=101, prio=3, handle=1, fd=8, name="x")
    assert (message.kind, message.flags) == (_RTM_NEWTFILTER + 1, _ACK)
    assert message.body == created.body[:4] + created.body[4:8] + b"\0" * 4 + created.body[12:20]


@pytest.mark.parametrize(
    ("message", "kind", "flags", "body"),
    [
        (
            rtchange.add_bridge("capbr", mtu=1450, options=BRIDGE_OPTIONS),
            _RTM_NEWLINK,
            _CREATE_NEW,
            "000000000000000000000000000000000a000300636170627200000008000400aa050000440012000b"
            "000100627269646765000034000200080005000000000008000100000000000500170000000000050024"
            "000100000005002500010000000600090000400000",
        ),
        (
            rtchange.add_vxlan(
                "capvx",
                vni=77,
                local="198.51.100.1",
                group="239.1.0.77",
                underlay_index=3,
                port=4789,
                mtu=1450,
                learning=True,
            ),
            _RTM_NEWLINK,
            _CREATE_NEW,
            "000000000000000000000000000000000a000300636170767800000008000400aa050000440012000a"
            "00010076786c616e00000034000200080001004d000000080003000300000006000f0012b500000500"
            "07000100000008000400c633640108000200ef01004d",
        ),
        (
            rtchange.set_link(3, alias="y", no_addrgen=True, mtu=1450),
            _RTM_NEWLINK,
            _ACK,
            "00000000030000000000000000000000060014007900000010001a000c000a0005000800010000000800"
            "0400aa050000",
        ),
        (
            rtchange.set_link(3, master=2, up=True),
            _RTM_NEWLINK,
            _ACK,
            "0000000003000000010000000100000008000a0002000000",
        ),
        (
            rtchange.set_link(3, up=False),
            _RTM_NEWLINK,
            _ACK,
            "00000000030000000000000001000000",
        ),
        (
            rtchange.set_link(3, queue=4096),
            _RTM_NEWLINK,
            _ACK,
            "0000000003000000000000000000000008000d0000100000",
        ),
        (
            rtchange.bridge_port(
                3, learning=False, unicast_flood=False, locked=True, neigh_suppress=False
            ),
            _RTM_NEWLINK,
            _ACK,
            "000000000300000000000000000000003c001200110004006272696467655f736c6176650000000024"
            "0005000500080000000000050009000000000005002700010000000500200000000000",
        ),
        (
            rtchange.fdb_pin(3, "52:54:00:00:00:01"),
            _RTM_NEWNEIGH,
            _REPLACE_OR_CREATE,
            "0700000003000000400044000a0002005254000000010000",
        ),
        (
            rtchange.clsact(3, (101, 102)),
            _RTM_NEWQDISC,
            _CREATE_NEW,
            "00000000030000000000fffff1ffffff000000000b000100636c736163740000"
            "08000d006500000008000e0066000000",
        ),
        (
            rtchange.bpf_filter(
                3, parent=0xFFFFFFF3, prio=1, handle=1, fd=8, name="bf-guard-filtered"
            ),
            _RTM_NEWTFILTER,
            _REPLACE_OR_CREATE,
            "000000000300000001000000f3ffffff0003010008000100627066002c000200080006000800000016"
            "00070062662d67756172642d66696c74657265640000000800080001000000",
        ),
    ],
)
def test_message_is_what_pyroute2_sent(
    message: rtchange.Message, kind: int, flags: int, body: str
) -> None:
    assert (message.kind, message.flags, message.body.hex()) == (kind, flags, body)
