"""The port guard: what keeps filtering closed when butterfly's nftables tables are gone.

Another program on the host can remove butterfly's tables at any moment
(``nft flush ruleset``, what Debian's nftables.service does on every start
and reload). Without them a bridge forwards everything. So the verdict of
the tables is not only "not dropped" but also a positive proof carried in
the frame's mark: the rules that accept a frame set bits of it
(:data:`BRIDGE_OK` in the bridge family, :data:`INBOUND_OK` once the
receiver's groups accepted it, :data:`OUTBOUND_OK` once the sender's did),
and a guard outside nftables, a tc egress program on every butterfly port,
drops a frame whose mark lacks the bits its port needs. A flushed ruleset
sets no bit: frames towards a vnic are dropped, not forwarded, until the
tables are back. A filtered vnic's port needs the bridge's and the
receiver's bits (:data:`FILTERED`); the other ports (vnics bypassing
filtering, VXLAN devices) the bridge's (:data:`OPEN`). Every port also
needs the sender's side: :data:`OUTBOUND_OK` (its OUTBOUND rules accepted)
or :data:`SENDER_OPEN`, which no rule sets: a second program, on the
ingress of the ports without filtering only, marks what enters through
them (a sender with no OUTBOUND rules here). So a sender's filtering state
is a property of its port, not of a set or map element another program
can remove: a filtered vnic whose ``out_mac`` element or ``filtered``
element is gone gets neither bit, and its frames drop. The frames of
filtered vnics, the common path, meet no ingress program.

The guard is a 15-instruction eBPF program (cls_bpf in direct-action mode:
kernels without the tc fw/matchall classifiers or gact have it), written
here as bytecode so no compiler is needed; it also clears the bits, so the
mark a VXLAN device routes its packet with is the one it had before.
Loading needs CAP_BPF (root). The mark cannot come from a tenant: a tap's
frames start with none, and a veth clears it between namespaces.

Ports do not carry these programs one by one: every port of a kind is bound
to the same two shared tc blocks (:attr:`GuardKind.blocks`, one for its
ingress, one for its egress), which hold the programs (the fast path's too,
when it is on). A port's own blocks cost the kernel a walk over every block
of the host each time one is bound or unbound (``flow_indr_dev_setup_offload``,
5 ms per new port at 10,000 vnics); a shared block is one entry. A block
lives while a link is bound to it, so a persistent tap per kind that never
goes up (:attr:`GuardKind.anchor`) keeps both blocks and their programs
while no port of that kind exists, and across restarts.
"""

import ctypes
import errno
import os
import struct
from enum import Enum
from typing import NamedTuple

from butterfly.dataplane.naming import anchor_name
from butterfly.errors import DataplaneError

__all__ = [
    "ADMISSION_PRIO",
    "ALL_OK",
    "ANCHORS",
    "BRIDGE_OK",
    "FAST_PATH_PRIO",
    "GUARD_PRIO",
    "INBOUND_OK",
    "OUTBOUND_OK",
    "SENDER_MARK",
    "SENDER_OPEN",
    "SENDER_PRIO",
    "Blocks",
    "GuardKind",
    "GuardPrograms",
]

BRIDGE_OK = 0x10000000
"""The bridge table accepted the frame (anti-spoofing and frame types checked)."""
INBOUND_OK = 0x20000000
"""The receiver's security groups accepted the frame (or it is established)."""
OUTBOUND_OK = 0x40000000
"""The sender's OUTBOUND rules accepted the frame (or it is established)."""
ALL_OK = BRIDGE_OK | INBOUND_OK | OUTBOUND_OK
SENDER_OPEN = 0x08000000
"""The frame entered through a port without filtering: set by the sender mark
program on that port's ingress, never by a rule (see above)."""
_SENDER_BITS = OUTBOUND_OK | SENDER_OPEN
SENDER_MARK = "bf-sender-open"
"""The tc filter name of the ingress program that sets :data:`SENDER_OPEN`."""


SENDER_PRIO = 1
"""Where the sender mark sits in a port's ingress block, before the fast path."""
FAST_PATH_PRIO = 2
ADMISSION_PRIO = 1
"""Where the fast path's admissions sit in a port's egress block: before the
guard, which clears the bits they read."""
GUARD_PRIO = 2


class Blocks(NamedTuple):
    """The numbers of a port's shared tc blocks (``tc qdisc show`` prints them)."""

    ingress: int
    egress: int


class GuardKind(Enum):
    """Which bits a port needs; the value is the tc filter's name."""

    FILTERED = "bf-guard-filtered"
    OPEN = "bf-guard-open"

    @property
    def blocks(self) -> Blocks:
        """The shared tc blocks of this kind's ports."""
        return _BLOCKS[self]

    @property
    def anchor(self) -> str:
        """The tap that keeps :attr:`blocks` alive (see the module's docstring)."""
        return anchor_name(self.name.lower())

    @property
    def mask(self) -> int:
        """The bits all needed, besides one of the sender's (:data:`OUTBOUND_OK`
        or :data:`SENDER_OPEN`)."""
        return BRIDGE_OK | INBOUND_OK if self is GuardKind.FILTERED else BRIDGE_OK

    @property
    def marks_senders(self) -> bool:
        """The port's ingress carries the sender mark program (no filtering)."""
        return self is GuardKind.OPEN


_BLOCKS = {
    GuardKind.FILTERED: Blocks(0xBF000001, 0xBF000002),
    GuardKind.OPEN: Blocks(0xBF000003, 0xBF000004),
}
"""Numbers no other tool of the host is likely to pick (3204448257 to 3204448260)."""
ANCHORS = frozenset(kind.anchor for kind in GuardKind)

_SYS_BPF = 321
"""x86-64's bpf(2) (the only architecture this project runs on)."""
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SKB_MARK = 8
"""offsetof(struct __sk_buff, mark)."""
_SKB_INGRESS_IFINDEX = 36
"""offsetof(struct __sk_buff, ingress_ifindex): 0 for a frame no device received."""
_TC_ACT_UNSPEC = -1
"""The next filter decides (the fast path's after the sender mark)."""
_TC_ACT_OK = 0
_TC_ACT_SHOT = 2


def _insn(code: int, dst: int, src: int, off: int, imm: int) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _signed(value: int) -> int:
    return int(struct.unpack("<i", struct.pack("<I", value & 0xFFFFFFFF))[0])


def program(mask: int) -> bytes:
    """The guard's bytecode: pass (with the bits cleared) when mark & mask == mask
    and the mark has one of the sender's bits, or when the host itself made
    the frame (no device received it): the bridge's answers to ARP and
    neighbour solicitations for the addresses in its neighbour table (EVPN's
    suppression) go straight out of a port, past every table. A tenant's
    frame always entered through a device."""
    return b"".join(
        [
            _insn(0x61, 2, 1, _SKB_MARK, 0),  # w2 = skb->mark
            _insn(0x61, 3, 1, _SKB_INGRESS_IFINDEX, 0),  # w3 = skb->ingress_ifindex
            _insn(0x16, 3, 0, 6, 0),  # if w3 == 0 goto pass (the host made it)
            _insn(0xBC, 0, 2, 0, 0),  # w0 = w2
            _insn(0x54, 0, 0, 0, mask),  # w0 &= mask
            _insn(0x56, 0, 0, 7, mask),  # if w0 != mask goto drop
            _insn(0xBC, 0, 2, 0, 0),  # w0 = w2
            _insn(0x54, 0, 0, 0, _SENDER_BITS),  # w0 &= O | U
            _insn(0x16, 0, 0, 4, 0),  # if w0 == 0 goto drop
            _insn(0x54, 2, 0, 0, _signed(~(ALL_OK | SENDER_OPEN))),  # pass: clear the bits
            _insn(0x63, 1, 2, _SKB_MARK, 0),  # skb->mark = w2
            _insn(0xB7, 0, 0, 0, _TC_ACT_OK),
            _insn(0x95, 0, 0, 0, 0),  # exit
            _insn(0xB7, 0, 0, 0, _TC_ACT_SHOT),  # drop:
            _insn(0x95, 0, 0, 0, 0),  # exit
        ]
    )


def sender_program() -> bytes:
    """The sender mark's bytecode: mark |= SENDER_OPEN, and on to the port's next
    ingress filter (the fast path's, when it is on)."""
    return b"".join(
        [
            _insn(0x61, 2, 1, _SKB_MARK, 0),  # w2 = skb->mark
            _insn(0x44, 2, 0, 0, _signed(SENDER_OPEN)),  # w2 |= SENDER_OPEN
            _insn(0x63, 1, 2, _SKB_MARK, 0),  # skb->mark = w2
            _insn(0xB7, 0, 0, 0, _TC_ACT_UNSPEC),
            _insn(0x95, 0, 0, 0, 0),  # exit
        ]
    )


def _load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack(
        "<IIQQIIQI",
        _BPF_PROG_TYPE_SCHED_CLS,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log),
        ctypes.addressof(log),
        0,
    ).ljust(128, b"\0")
    buffer = ctypes.create_string_buffer(attr, len(attr))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, buffer, len(attr)))
    if fd < 0:
        code_ = ctypes.get_errno()
        reason = log.value.decode(errors="replace").strip() or os.strerror(code_)
        hint = " (needs CAP_BPF: run as root)" if code_ in (errno.EPERM, errno.EACCES) else ""
        raise DataplaneError(f"port guard: the kernel refused the eBPF program: {reason}{hint}")
    return fd


class GuardPrograms:
    """The two guard programs and the sender mark, loaded once; a port's tc
    filter holds its own reference, so these descriptors are only needed to
    attach new ports."""

    def __init__(self) -> None:
        self._fds: dict[GuardKind | str, int] = {}
        try:
            for kind in GuardKind:
                self._fds[kind] = _load(program(kind.mask))
            self._fds[SENDER_MARK] = _load(sender_program())
        except BaseException:
            self.close()
            raise

    def fd(self, kind: GuardKind) -> int:
        return self._fds[kind]

    def sender_fd(self) -> int:
        return self._fds[SENDER_MARK]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
