"""The fast path's maps through the real bpf(2) calls: what a long-running daemon does to them."""

from dataclasses import replace
from typing import Any

import pytest

from butterfly.dataplane.fastpath import FastPath, FastPathMode, FastPort, choose
from butterfly.errors import DataplaneError
from butterfly.model import State, Vnic, VnicType, make_vnic

from .conftest import Lab, only_on, open_sg, plug

pytestmark = [
    pytest.mark.root,
    pytest.mark.needs("ebpf-fast-path"),
    only_on(FastPathMode.EBPF),
]


def _port(ifindex: int, check_ip: bool = False) -> FastPort:
    return FastPort(
        ifindex=ifindex, vni=7, zone=3, mac="52:54:00:00:00:01", check_ip=check_ip,
        addresses=("10.0.0.1",) if check_ip else (),
    )  # fmt: skip


def test_ports_come_and_go_without_filling_the_maps(lab: Lab) -> None:
    """More vnics plugged and unplugged over time than any map holds (65,536):
    every entry of a port that went is removed, its counter too."""
    netns = lab.netns()
    fast = netns.run(FastPath)
    try:
        for ifindex in range(1, 70_001):
            fast.set({"a": _port(ifindex, check_ip=ifindex % 2 == 0)})
        fast.set({"a": None})
        assert fast.served() == {}
    finally:
        fast.close()


def test_an_updated_vnic_keeps_its_port_and_its_counter(lab: Lab) -> None:
    fast = lab.netns().run(FastPath)
    try:
        fast.set({"a": _port(5)})
        fast.set({"a": _port(5, check_ip=True)})
        assert fast.served() == {"a": _port(5, check_ip=True)}
        assert fast.forwarded(5) == (0, 0)
    finally:
        fast.close()


def test_a_request_makes_again_only_the_entries_of_the_vnics_it_names(lab: Lab) -> None:
    """A VNI holds up to 1,000 vnics: a request's plan makes entries for the
    vnics it remade or changed; the VNI's others keep theirs, and a vnic that
    left the VNI loses its."""
    fast = lab.netns().run(FastPath)
    state = State()
    vnics = [
        make_vnic(
            Vnic(
                id=vnic_id,
                mac=f"52:54:00:00:00:0{n}",
                vni=7,
                type=VnicType.TAP,
                ips=(f"10.0.0.{n}",),
                ip_anti_spoof=True,
            )
        )
        for n, vnic_id in enumerate("abc", 1)
    ]
    for vnic in vnics:
        state.put_vnic(vnic)
    indexes = {"a": 11, "b": 12, "c": 13}

    def plan(**names: Any) -> dict[str, FastPort | None]:
        return fast.plan(
            state, {7}, ported=lambda vnic: True, zones={7: 3}, port_index=indexes.get, **names
        )

    try:
        fast.set(plan(remade=None))
        served = fast.served()
        assert served["b"].addresses[0] == "10.0.0.2"
        state.put_vnic(replace(vnics[1], ips=("10.0.0.8",)))
        state.remove_vnic("c")
        wanted = plan(remade=(), changed={"b"})
        assert wanted["a"] is served["a"]
        assert wanted["b"] is not None and wanted["b"].addresses[0] == "10.0.0.8"
        assert wanted["c"] is None
        fast.set(wanted)
        assert set(fast.served()) == {"a", "b"}
        assert plan(remade=None) == {"a": served["a"], "b": wanted["b"]}
    finally:
        fast.close()


class _FailAt:
    """Fails the named step of the next request, once."""

    def __init__(self) -> None:
        self.step: str | None = None

    def __call__(self, step: str) -> None:
        if step == self.step:
            self.step = None
            raise DataplaneError(f"injected failure at {step}")


def test_requests_keep_the_maps_as_a_full_reconcile_would_make_them(lab: Lab) -> None:
    """A request looks at its own vnics only, while its VNI's zone and sniffing
    stay; through adds, updates, moves, sniffing, a VNI emptied and failed
    requests, the maps hold what a reconcile, looking at every vnic, makes:
    its vnics' ports, and the VXLAN devices of the VNIs every vnic of which
    it serves."""
    host = lab.host()
    fast, status = host.run(lambda: choose(FastPathMode.EBPF))
    faults = _FailAt()
    dataplane = host.dataplane(fast_path=fast, fast_path_status=status, fault_hook=faults)
    state = State()
    open_sg(dataplane, state)
    assert fast is not None

    def tap(vnic_id: str, vni: int, n: int, **fields: Any) -> Vnic:
        return make_vnic(
            Vnic(
                id=vnic_id,
                mac=f"52:54:00:00:01:{n:02x}",
                vni=vni,
                type=VnicType.TAP,
                ips=(f"10.0.1.{n}",),
                ip_anti_spoof=True,
                security_groups=("open",),
                **fields,
            )
        )

    def served_as_reconciled(*expected: str, tunnels_of: set[int]) -> None:
        served, tunnels = fast.served(), fast.tunnels()
        assert set(served) == set(expected)
        assert set(tunnels) == tunnels_of
        dataplane.reconcile(state)
        assert fast.served() == served and fast.tunnels() == tunnels

    def update(after: Vnic) -> None:
        before = state.put_vnic(after)
        assert before is not None
        dataplane.update(before, after, state)

    def unplug(vnic_id: str) -> None:
        vnic = state.remove_vnic(vnic_id)
        assert vnic is not None
        dataplane.unplug(vnic, state)

    for n, vnic_id in enumerate("abc", 1):
        plug(dataplane, state, tap(vnic_id, 7, n))
    plug(dataplane, state, tap("d", 8, 4))
    served_as_reconciled("a", "b", "c", "d", tunnels_of={7, 8})
    update(tap("b", 7, 9))
    assert fast.served()["b"].addresses[0] == "10.0.1.9"
    served_as_reconciled("a", "b", "c", "d", tunnels_of={7, 8})
    plug(dataplane, state, tap("c", 8, 3))  # moved to VNI 8
    assert fast.served()["c"].vni == 8
    served_as_reconciled("a", "b", "c", "d", tunnels_of={7, 8})
    update(tap("a", 7, 1, bypass_filtering=True))
    served_as_reconciled("b", "c", "d", tunnels_of={8})
    plug(dataplane, state, tap("e", 7, 5, sniff_target_nic_id="b"))  # VNI 7 sniffed
    served_as_reconciled("c", "d", tunnels_of={8})
    unplug("e")
    served_as_reconciled("b", "c", "d", tunnels_of={8})
    update(tap("a", 7, 1))
    served_as_reconciled("a", "b", "c", "d", tunnels_of={7, 8})
    unplug("c")
    served_as_reconciled("a", "b", "d", tunnels_of={7, 8})
    unplug("d")  # VNI 8 empty: its zone is freed
    served_as_reconciled("a", "b", tunnels_of={7})
    plug(dataplane, state, tap("d", 8, 4))
    served_as_reconciled("a", "b", "d", tunnels_of={7, 8})
    faults.step = "fast path maps"
    with pytest.raises(DataplaneError, match="injected failure"):
        plug(dataplane, state, tap("f", 8, 6, bypass_filtering=True))
    state.remove_vnic("f")  # the service's undo
    served_as_reconciled("a", "b", "d", tunnels_of={7, 8})
