"""A failure in the middle of a request, anywhere in its nftables or netlink steps, leaves
the store and the kernel exactly as they were.

The whole service runs in-process inside a host namespace, as butterflyd composes it: the
v0 API handlers, the Switch, a real SqliteStore on a file, and a KernelDataplane whose
fault hook makes its N-th kernel step fail. For each request, the test fails step 0,
1, 2... until the request has fewer steps and succeeds; after every failure the reply
says so, the store file (read back by a fresh SqliteStore) holds what it held, and the
kernel (links, addresses inside the VMs, flooding entries, nft ruleset) is unchanged.
A fresh data plane reconciling the final store must then find nothing to change.
"""

from __future__ import annotations

import difflib
import json
import os
import time
from typing import Any

import pytest

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.v0 import V0Handlers
from butterfly.dataplane.kernel import KernelDataplane
from butterfly.errors import DataplaneError
from butterfly.service import Switch
from butterfly.store import SqliteStore
from butterfly_lab.lab import Host, Lab, Vm, kernel_snapshot

pytestmark = pytest.mark.root

Request = MessageV0.Request


class Faults:
    """The data plane's fault hook: records step names, fails the ``fail_at``-th one."""

    def __init__(self) -> None:
        self.fail_at: int | None = None
        self.steps: list[str] = []

    def __call__(self, step: str) -> None:
        self.steps.append(step)
        if self.fail_at is not None and len(self.steps) == self.fail_at + 1:
            raise DataplaneError(f"injected failure at {step}")


class App:
    """The daemon's part of the API (status, log level, quit): not under test here."""

    started_at = time.time()

    def set_log_level(self, level: str) -> None:
        pass

    def request_quit(self) -> None:
        pass

    def reconcile_status(self) -> None:
        return None

    def drift_report(self) -> None:
        return None


class Service:
    """butterflyd's composition, in the host's namespace thread (the lab's ``run``)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.state_path = os.path.join(host.folder, "state.db")
        self.faults = Faults()

        def compose() -> tuple[SqliteStore, KernelDataplane, V0Handlers]:
            store = SqliteStore(self.state_path)
            state = store.load()
            dataplane = KernelDataplane(
                underlay_ip=host.address, socket_dir=host.folder, fault_hook=self.faults
            )
            dataplane.reconcile(state)
            switch = Switch(store=store, dataplane=dataplane, state=state)
            return store, dataplane, V0Handlers(switch=switch, app=App())

        self.store, self.dataplane, self.handlers = host.run(compose)

    def ask(self, request: Request) -> MessageV0.Response:
        message = MessageV0()
        message.request.CopyFrom(request)
        return self.host.run(lambda: self.handlers.answer(message)).response

    def stored(self) -> dict[str, Any]:
        """What the state file holds, through a store of its own."""
        store = SqliteStore(self.state_path)
        try:
            state = store.load()
        finally:
            store.close()
        return {
            "vnics": list(state.vnics()),
            "sgs": list(state.sgs()),
            "peers": state.all_peers(),
        }

    def close(self) -> None:
        self.host.run(self.dataplane.close)
        self.host.run(self.store.close)


def kernel(host: Host, vms: list[Vm]) -> dict[str, Any]:
    """The host's kernel objects and the VMs' interfaces: index, name, MAC, MTU, flags,
    addresses (link-local ones left out: the kernel adds them when it gets to it)."""
    inside = {
        vm.name: [
            (link["ifindex"], link["ifname"], link["address"], link["mtu"],
             sorted(set(link["flags"]) - {"LOWER_UP", "NO-CARRIER"}),
             sorted(address["local"] for address in link["addr_info"]
                    if not address["local"].startswith("fe80:")))
            for link in json.loads(vm.ip("-j", "addr", "show"))
        ]
        for vm in vms
    }  # fmt: skip
    snapshot = kernel_snapshot(host)
    snapshot["nft"] = canonical_ruleset(snapshot["nft"])
    return {**snapshot, "inside": inside}


def canonical_ruleset(listing: str) -> str:
    """``nft list ruleset`` with each table's sets, maps and chains sorted by name.

    A rollback that has to re-create a chain the request deleted (a profile chain no
    vnic used any more) restores it whole, but nft lists objects in creation order:
    the listing then differs in order only. Everything else stays compared as listed.
    """
    out: list[str] = []
    blocks: list[list[str]] = []
    for line in listing.splitlines():
        if line.startswith("table ") or line == "}":
            out += [text for block in sorted(blocks) for text in block]
            blocks = []
            out.append(line)
        elif line.startswith("\t") and not line.startswith("\t\t") and line.endswith("{"):
            blocks.append([line])
        elif line.strip() and blocks:
            blocks[-1].append(line)
    return "\n".join(out)


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A readable difference of two kernel snapshots (a unified diff per part)."""

    def lines(value: Any) -> list[str]:
        text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True)
        return text.splitlines()

    parts = []
    for key, old in before.items():
        if old != after[key]:
            diff = difflib.unified_diff(lines(old), lines(after[key]), lineterm="", n=1)
            parts.append(f"--- {key}\n" + "\n".join(list(diff)[2:]))
    return "\n".join(parts)


def every_step_fails_cleanly(service: Service, vms: list[Vm], request: Request) -> int:
    """Fail each step of ``request`` in turn; the number of steps that were failed."""
    before = (service.stored(), kernel(service.host, vms))
    failed = 0
    while True:
        service.faults.steps.clear()
        service.faults.fail_at = failed
        response = service.ask(request)
        if response.status.status:
            break
        step = service.faults.steps[-1]
        assert "injected failure" in response.status.error.description, response
        assert service.stored() == before[0], f"failing {step!r} left the store changed"
        after = kernel(service.host, vms)
        assert after == before[1], (
            f"{request}failing {step!r} left the kernel changed:\n{changes(before[1], after)}"
        )
        failed += 1
    service.faults.fail_at = None
    assert failed > 0, "the request made no kernel step"
    assert service.stored() != before[0], "the request, once through, changed nothing"
    return failed


def nic(  # noqa: PLR0917 (reads as the nic's fields, in the protocol's order)
    vnic_id: str, vm: Vm | None, mac: str, vni: int, ips: list[str], sgs: list[str]
) -> Request:
    request = Request()
    request.nic_add.id = vnic_id
    request.nic_add.mac = mac
    request.nic_add.vni = vni
    request.nic_add.ip.extend(ips)
    request.nic_add.security_group.extend(sgs)
    request.nic_add.ip_anti_spoof = True
    if vm is None:
        request.nic_add.type = MessageV0.Nic.TAP
    else:
        request.nic_add.type = MessageV0.Nic.NETNS
        request.nic_add.path = vm.name
    return request


def rule(request_field: str, sg_id: str, **fields: Any) -> Request:
    request = Request()
    message = getattr(request, request_field)
    message.sg_id = sg_id
    message.rule.direction = fields.pop("direction", MessageV0.Rule.INBOUND)
    cidr = fields.pop("cidr", None)
    if cidr is not None:
        message.rule.cidr.address, mask = cidr.split("/")
        message.rule.cidr.mask_size = int(mask)
    for name, value in fields.items():
        setattr(message.rule, name, value)
    return request


def member(request_field: str, sg_id: str, address: str) -> Request:
    request = Request()
    getattr(request, request_field).sg_id = sg_id
    getattr(request, request_field).member = address
    return request


def peer(request_field: str, vni: int, address: str) -> Request:
    request = Request()
    getattr(request, request_field).vni = vni
    getattr(request, request_field).peer = address
    return request


def update(vnic_id: str, ips: list[str], sgs: list[str]) -> Request:
    request = Request()
    request.nic_update.id = vnic_id
    request.nic_update.ip.extend(ips)
    request.nic_update.security_group.extend(sgs)
    return request


def requests(vms: list[Vm]) -> list[Request]:
    """A switch's life, request by request: every kind of change that keeps the ports."""
    return [
        nic("a", vms[0], "52:54:00:00:60:01", 60, ["10.60.0.1"], ["web"]),  # the bootstrap
        rule("sg_rule_add", "web", protocol=6, port_start=80, port_end=80,
             security_group="clients"),
        rule("sg_rule_add", "web", protocol=17, port_start=53, port_end=60,
             cidr="2001:db8::/32"),
        rule("sg_rule_add", "web", protocol=-1, cidr="10.0.0.0/8",
             direction=MessageV0.Rule.OUTBOUND),
        member("sg_member_add", "clients", "10.60.0.2"),
        nic("b", vms[1], "52:54:00:00:60:02", 60, ["10.60.0.2", "2001:db8:60::2"],
            ["web", "clients"]),
        nic("c", vms[2], "52:54:00:00:61:03", 61, ["10.61.0.3"], []),  # a new VNI
        nic("t", None, "52:54:00:00:61:04", 61, [], ["clients"]),
        update("b", ["10.60.0.22"], ["clients"]),
        nic("b", vms[1], "52:54:00:00:60:02", 60, ["10.60.0.2"], ["web"]),  # a replacement
        peer("vni_peer_add", 60, "198.51.100.77"),
        member("sg_member_del", "clients", "10.60.0.2"),
        rule("sg_rule_del", "web", protocol=6, port_start=80, port_end=80,
             security_group="clients"),
        peer("vni_peer_del", 60, "198.51.100.77"),
        Request(sg_del="web"),
    ]  # fmt: skip


def test_a_failure_at_any_step_changes_neither_store_nor_kernel(lab: Lab) -> None:
    host = lab.host(start=False)
    vms = [lab.vm(), lab.vm(), lab.vm()]
    service = Service(host)
    try:
        sg = Request()
        sg.sg_add.id = "web"
        sg.sg_add.member.append("10.60.0.9")
        assert service.ask(sg).status.status
        for request in requests(vms):
            every_step_fails_cleanly(service, vms, request)
        before = kernel(host, vms)
        stored = service.stored()
    finally:
        service.close()
    # What a restarted daemon does: its reconcile finds the kernel right, changes nothing.
    again = Service(host)
    try:
        assert again.stored() == stored
        after = kernel(host, vms)
        assert after == before, changes(before, after)
    finally:
        again.close()


def test_a_failure_after_a_port_was_removed_restores_that_port(lab: Lab) -> None:
    host = lab.host(start=False)
    vms = [lab.vm(), lab.vm()]
    service = Service(host)
    try:
        for request in (
            nic("n", vms[0], "52:54:00:00:70:01", 70, ["10.70.0.1"], []),
            nic("m", vms[1], "52:54:00:00:70:02", 70, ["10.70.0.2"], []),
            nic("t", None, "52:54:00:00:70:03", 70, [], []),
        ):
            assert service.ask(request).status.status
        for request in (
            nic("n", None, "52:54:00:00:71:01", 71, [], []),  # netns replaced by a tap
            Request(nic_del="t"),  # a tap deleted
            Request(nic_del="m"),  # a netns vnic deleted
        ):
            every_step_fails_cleanly(service, vms, request)
    finally:
        service.close()
