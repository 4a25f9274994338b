"""Guest memory: table decoding and address translation stay inside the regions."""

import os
import struct

import pytest

from butterfly.errors import ProtocolError
from butterfly.vhost.memory import GuestMemory, Region, decode_memory_table


def _memfd(size: int) -> int:
    fd = os.memfd_create("vhost-unit")
    os.ftruncate(fd, size)
    return fd


def _table(*regions: tuple[int, int, int, int], count: int | None = None) -> bytes:
    n = len(regions) if count is None else count
    return struct.pack("<II", n, 0) + b"".join(struct.pack("<QQQQ", *r) for r in regions)


def test_decode() -> None:
    assert decode_memory_table(_table((0x1000, 0x2000, 0x7000, 0))) == [
        Region(0x1000, 0x2000, 0x7000, 0)
    ]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\0" * 4, "payload of 4 bytes"),
        (_table(count=0), "0 regions"),
        (_table((0, 4096, 0, 0), count=9), "9 regions"),
        (_table((0, 4096, 0, 0), count=2), "for 2 regions"),
        (_table((0, 0, 0, 0)), "size 0"),
        (_table((2**64 - 4096, 8192, 0, 0)), "overflows"),
        (_table((0, 8192, 0, 0), (4096, 4096, 0, 0)), "overlap"),
    ],
)
def test_bad_tables(payload: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        decode_memory_table(payload)


def test_translation_inside_and_outside() -> None:
    regions = [Region(0x10000, 0x4000, 0x7F0000, 0), Region(0x14000, 0x4000, 0x900000, 0)]
    memory = GuestMemory(regions, [_memfd(0x4000), _memfd(0x4000)])
    try:
        [view] = memory.guest(0x10010, 16)
        view[:] = b"x" * 16
        assert bytes(memory.frontend(0x7F0010, 16)) == b"x" * 16
        assert [len(v) for v in memory.guest(0x13FF0, 32)] == [16, 16]  # split at the edge
        with pytest.raises(ProtocolError, match="outside guest memory"):
            memory.guest(0x17FF0, 32)
        with pytest.raises(ProtocolError, match="outside guest memory"):
            memory.guest(0x1000, 1)
        with pytest.raises(ProtocolError, match="frontend address"):
            memory.frontend(0x7F3FF0, 32)  # frontend ranges must not straddle regions
        del view
    finally:
        memory.close()


def test_fd_count_must_match_and_fds_are_closed() -> None:
    fd = _memfd(4096)
    with pytest.raises(ProtocolError, match="2 regions but 1 fds"):
        GuestMemory([Region(0, 4096, 0, 0), Region(4096, 4096, 4096, 0)], [fd])
    with pytest.raises(OSError):
        os.fstat(fd)


def test_region_larger_than_its_file_is_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot be mapped"):
        GuestMemory([Region(0, 1 << 20, 0, 0)], [_memfd(4096)])
