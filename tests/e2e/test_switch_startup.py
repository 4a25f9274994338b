"""The API answers during the start-up reconcile, and answers right.

A host with a few hundred vnics (taps, security groups, several VNIs) is
restarted, after ``kill -9`` and after a clean stop: the first request, sent
while the daemon starts, is answered, and once the reconcile ends the kernel
is exactly as before (nothing recreated). When the reconcile has real
repairs to make (every tap and a bridge deleted behind the dead daemon's
back), the first request is answered while it still runs (``app_status``
says so, and how far it is), requests sent meanwhile are answered correctly
and in order, and the kernel ends as a full reconcile of the final state
makes it: a further restart changes nothing.
"""

from __future__ import annotations

import os
import signal

import pytest
from switch_helpers import open_sg

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import bridge_name, tap_name
from butterfly_lab.lab import Host, Lab, kernel_snapshot, wait_for

pytestmark = pytest.mark.root

VNICS = 300
VNIS = 30
FIRST_VNI = 4000


def _status(host: Host, client: Client | None = None) -> MessageV0.ReconcileStatus:
    request = MessageV0.Request(app_status=True, app_status_reconcile=True, app_status_graph=False)
    response = (client or host.client).call(request).response
    assert response.status.status
    return response.app_status.reconcile


def _build(host: Host) -> None:
    open_sg(host)
    host.cli("sg", "add", "web", "+", "sg", "add", "db")
    for n in range(VNICS):
        host.add_vnic(
            f"s{n}", mac=f"52:54:00:40:{n // 256:02x}:{n % 256:02x}", vni=FIRST_VNI + n % VNIS,
            ips=[f"10.40.{n // 250}.{n % 250 + 1}"], security_groups=["open", "web", "db"],
        )  # fmt: skip


def _restart_answering_at_once(host: Host, *, kill: bool) -> MessageV0.ReconcileStatus:
    """Restart; the first status, asked by a client waiting before the daemon is up."""
    if kill:
        host.kill()
    else:
        host.stop()
    with Client(endpoint=host.endpoint, timeout_ms=20_000) as early:
        host.spawn()
        first = _status(host, early)
    return first


def _wait_reconciled(host: Host) -> MessageV0.ReconcileStatus:
    wait_for(lambda: not _status(host).running, "the start-up reconcile", timeout=120)
    return _status(host)


@pytest.fixture(scope="module")
def big(lab: Lab) -> Host:
    host = lab.host()
    _build(host)
    return host


@pytest.mark.parametrize("kill", [True, False], ids=["kill-9", "clean-stop"])
def test_a_restart_answers_and_changes_nothing(big: Host, kill: bool) -> None:
    """With nothing to repair the reconcile only reads (it may end before the
    first request arrives): the answers are right and nothing is recreated."""
    before = kernel_snapshot(big)
    first = _restart_answering_at_once(big, kill=kill)
    assert first.done <= first.total and not first.problems, first
    assert len(big.call(MessageV0.Request(nic_list=True)).nic_list) == VNICS
    done = _wait_reconciled(big)
    assert done.done == done.total >= VNICS + VNIS and not done.problems, done
    assert kernel_snapshot(big) == before


def test_requests_during_a_reconcile_with_repairs_are_applied_in_order(big: Host) -> None:
    big.kill()
    deletions = "".join(f"link del {tap_name(f's{n}')}\n" for n in range(VNICS))
    big.exec("ip", "-batch", "-", input=deletions + f"link del {bridge_name(FIRST_VNI + 5)}\n")
    with Client(endpoint=big.endpoint, timeout_ms=20_000) as early:
        big.spawn()
        first = _status(big, early)
        requests = [
            MessageV0.Request(nic_del="s1"),
            MessageV0.Request(nic_list=True),
            MessageV0.Request(sg_member_list="web"),
        ]
        add = MessageV0.Request()
        add.nic_add.id = "late"
        add.nic_add.mac = "52:54:00:41:00:01"
        add.nic_add.vni = FIRST_VNI + 99
        add.nic_add.type = MessageV0.Nic.TAP
        add.nic_add.security_group.extend(["web"])
        update = MessageV0.Request()
        update.nic_update.id = "s2"
        update.nic_update.security_group.extend(["db"])
        member = MessageV0.Request()
        member.sg_member_add.sg_id = "web"
        member.sg_member_add.member = "10.41.0.1"
        requests[1:1] = [add, update, member]
        replies = [early.call(request).response for request in requests]
    assert first.running, first
    assert all(reply.status.status for reply in replies), replies
    listed = set(replies[4].nic_list)
    assert "late" in listed and "s1" not in listed and len(listed) == VNICS
    assert list(replies[5].sg_member_list) == ["10.41.0.1"]
    _wait_reconciled(big)

    links = big.ip("link", "show")
    assert f"{tap_name('late')}:" in links and f"{tap_name('s1')}:" not in links
    for n in range(2, VNICS):
        assert f"{tap_name(f's{n}')}:" in links, n
    assert f"{bridge_name(FIRST_VNI + 5)}:" in links
    nic = big.call(MessageV0.Request(nic_details="s2")).nic_details[0]
    assert list(nic.security_group) == ["db"]
    settled = kernel_snapshot(big)
    big.restart()
    _wait_reconciled(big)
    assert kernel_snapshot(big) == settled


def test_links_a_request_left_unused_are_deleted_after_its_reply(lab: Lab) -> None:
    """nic_del answers before the kernel deletes the port (~25 ms a link): the port is
    renamed aside at once, then deleted, with its VNI's devices unless a vnic came back."""
    host = lab.host()
    for n, vni in enumerate((4500, 4501)):
        host.add_vnic(f"d{n}", mac=f"52:54:00:45:00:0{n}", vni=vni)
    host.delete_vnic("d0")
    host.delete_vnic("d1")
    host.add_vnic("d2", mac="52:54:00:45:00:02", vni=4501)
    assert f"{tap_name('d0')}:" not in host.ip("link", "show")

    def settled() -> bool:
        names = {line.split(": ")[1].split("@")[0] for line in host.ip("-o", "link").splitlines()}
        return not any(name.startswith("bfz") for name in names) and not names & {
            bridge_name(4500),
            "bfvx4500",
        }

    wait_for(settled, "the deferred deletions")
    shown = host.ip("-o", "link", "show", tap_name("d2"))
    assert f"master {bridge_name(4501)} " in shown and "state" in shown
    assert "bfvx4501" in host.ip("-o", "link", "show", "master", bridge_name(4501))


def _links(host: Host) -> set[str]:
    return {line.split(": ")[1].split("@")[0] for line in host.ip("-o", "link").splitlines()}


def test_deletions_pending_at_a_kill_9_are_done_by_the_restart(lab: Lab) -> None:
    """Removed links wait for a quiet API before they are deleted (a deletion holds
    the kernel's RTNL lock ~25 ms, which every request's netlink work needs): a
    daemon killed while some still wait leaves them to the restart's reconcile.
    A removed port waits off its bridge.
    The daemon is frozen (SIGSTOP) as soon as nic_del answers, before its quiet
    delay ends; an attempt whose deletion already ran is made again."""
    host = lab.host()
    pending: set[str] = set()
    for n in range(5):
        vni = 4600 + n
        host.add_vnic(f"k{n}", mac=f"52:54:00:46:00:0{n}", vni=vni)
        host.delete_vnic(f"k{n}")
        os.kill(host.daemon.pid, signal.SIGSTOP)
        pending = {
            name
            for name in _links(host)
            if name.startswith("bfz") or name in (bridge_name(vni), f"bfvx{vni}")
        }
        if pending:
            break
        os.kill(host.daemon.pid, signal.SIGCONT)
    assert pending, "every deletion ran before the daemon could be frozen"
    for name in pending:
        if name.startswith("bfz"):  # off its bridge while it waits (a bridge holds 1,023 ports)
            assert " master " not in host.ip("-o", "link", "show", name)
    host.kill()
    assert pending <= _links(host)
    host.start()
    _wait_reconciled(host)
    assert not pending & _links(host)
    assert not any(name.startswith("bfz") for name in _links(host))
