"""Kernel errors as sentences, and the multicast limits raised ahead of need.

The sentences are pure logic on real exception objects (pyroute2's
NetlinkError, OSError); the limits are read and written in a folder laid
out as /proc/sys, with one real read-only sysctl linked in for the case
where butterflyd may not raise them.
"""

import errno
import logging
import os
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from butterfly.dataplane.kernel_errors import code_of, explain, explain_text
from butterfly.dataplane.limits import MEMBERSHIP_BYTES, MulticastLimits

COMMON = [
    errno.ENOBUFS,
    errno.EEXIST,
    errno.ENODEV,
    errno.EPERM,
    errno.ENOSPC,
    errno.ENAMETOOLONG,
    errno.ENOMEM,
    errno.EROFS,
    errno.EINVAL,
    errno.EXFULL,
]


@pytest.mark.parametrize("code", COMMON)
@pytest.mark.parametrize("make", [NetlinkError, lambda code: OSError(code, None)])
def test_every_common_errno_names_object_cause_and_remedy(code: int, make: type) -> None:
    message = explain("netlink: creating bridge bfbr7", code_of(make(code)))
    assert message.startswith("netlink: creating bridge bfbr7: ")
    cause, remedy = message.removeprefix("netlink: creating bridge bfbr7: ").split("; ", 1)
    assert f"({errno.errorcode[code]}: {os.strerror(code)})" in cause
    assert len(remedy) > 20
    assert "[Errno" not in message and "None" not in message


def test_an_operation_gives_its_own_remedy() -> None:
    message = explain("x", errno.ENOBUFS, {errno.ENOBUFS: "do this"})
    assert message.endswith("; do this")
    assert explain("x", errno.EEXIST, {errno.ENOBUFS: "do this"}).endswith("then retry")


def test_an_error_without_errno_still_says_what_to_do() -> None:
    assert code_of(NetlinkError(0)) is None
    assert explain("x", None) == (
        "x: the kernel refused it without saying why; see butterflyd's log and retry"
    )


def test_an_unlisted_errno_is_said_in_words() -> None:
    assert explain("x", errno.ETIMEDOUT).startswith("x: connection timed out (ETIMEDOUT")


def test_nft_messages_get_the_remedy_of_the_errno_they_quote() -> None:
    text = "Error: Could not process rule: No space left on device"
    assert explain_text("nftables refused the change", text) == (
        f"nftables refused the change: {text} (ENOSPC); remove objects that are no longer "
        "used or raise the table's limit, then retry"
    )
    assert explain_text("nft", "syntax error") == "nft: syntax error"


def _proc_sys(root: Path, igmp: int = 20, optmem: int = 131072) -> Path:
    for name, value in (("net/ipv4/igmp_max_memberships", igmp), ("net/core/optmem_max", optmem)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{value}\n")
    return root


def _value(root: Path, name: str) -> int:
    return int((root / name).read_text())


def test_the_21st_group_raises_the_count_for_4096_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _proc_sys(tmp_path)
    limits = MulticastLimits(4, proc_sys=str(root))
    limits.ensure(20)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 20
    with caplog.at_level(logging.INFO):
        limits.ensure(21)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 4096
    assert _value(root, "net/core/optmem_max") == 131072, "21 groups fit in 128 KiB"
    assert "raised net.ipv4.igmp_max_memberships from 20 to 4096" in caplog.text


def test_option_memory_follows_the_groups_and_is_never_lowered(tmp_path: Path) -> None:
    root = _proc_sys(tmp_path)
    MulticastLimits(6, proc_sys=str(root)).ensure(3000)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 20, "IPv6 has no count limit"
    assert _value(root, "net/core/optmem_max") >= 4096 * MEMBERSHIP_BYTES
    MulticastLimits(4, proc_sys=str(_proc_sys(root, igmp=100_000, optmem=1 << 24))).ensure(5000)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 100_000
    assert _value(root, "net/core/optmem_max") == 1 << 24


def test_the_limits_are_read_again_only_beyond_what_they_were_seen_to_hold(
    tmp_path: Path,
) -> None:
    """Four /proc reads were a tenth of a new VNI's request: once raised for
    4,096 groups, nothing is read up to 4,096 (a lower value written behind
    butterfly's back then shows in the kernel's refusal, whose advice reads
    the files); beyond, they are read and raised again."""
    root = _proc_sys(tmp_path, optmem=1 << 24)
    limits = MulticastLimits(4, proc_sys=str(root))
    limits.ensure(21)
    (root / "net/ipv4/igmp_max_memberships").write_text("30\n")
    limits.ensure(4096)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 30, "not read again"
    remedies = limits.remedies()
    assert set(remedies) == {errno.ENOBUFS, errno.ENOMEM} and errno.EPERM not in remedies
    assert "net.ipv4.igmp_max_memberships = 30" in remedies[errno.ENOBUFS], "read when asked"
    limits.ensure(4097)
    assert _value(root, "net/ipv4/igmp_max_memberships") == 5120


def test_a_limit_that_cannot_be_raised_is_in_the_advice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _proc_sys(tmp_path)
    target = root / "net/ipv4/igmp_max_memberships"
    target.unlink()
    target.symlink_to("/proc/sys/fs/file-nr")  # a real sysctl nobody may write
    limits = MulticastLimits(4, proc_sys=str(root))
    limits.ensure(10_000_000)  # beyond the open files file-nr counts
    advice = limits.advice()
    assert "net.ipv4.igmp_max_memberships = " in advice
    assert "which butterflyd could not raise (EACCES: Permission denied)" in advice
    assert "--vxlan-peers" in advice
    assert "cannot raise net.ipv4.igmp_max_memberships" in caplog.text
