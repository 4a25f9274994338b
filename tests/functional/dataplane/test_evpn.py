"""The EVPN underlay's kernel objects, without FRR: what zebra will read (VXLAN
devices, pinned MACs, neighbour entries), what it writes left alone, and
every request still all or nothing."""

import ipaddress
import json
from dataclasses import replace
from typing import Any

import pytest

from butterfly.dataplane.watch import Scope
from butterfly.errors import DataplaneError, NotSupported
from butterfly.model import State, Vnic, VnicType, make_vnic

from .conftest import Guest, Host, Lab, netns_vnic, open_sg, plug
from .test_atomicity import Faults, snapshot

pytestmark = pytest.mark.root

VNI = 14
_FLAGS = ("extern_learn", "router", "proxy")


def neighbours(host: Host, vni: int = VNI) -> dict[str, tuple[str, tuple[str, ...]]]:
    """IP -> (MAC, flags and state) of the unicast neighbour entries on the VNI's bridge."""
    found = {}
    for entry in json.loads(host.ip("-j", "neigh", "show", "dev", f"bfbr{vni}", "nud", "all")):
        if ipaddress.ip_address(entry["dst"]).is_multicast or "lladdr" not in entry:
            continue
        flags = tuple(sorted([*entry.get("state", []), *(f for f in _FLAGS if f in entry)]))
        found[entry["dst"]] = (entry["lladdr"], flags)
    return found


def port(host: Host, name: str) -> dict[str, Any]:
    shown = json.loads(host.exec("bridge", "-j", "-d", "link", "show", "dev", name))
    return dict(shown[0])


def fdb(host: Host, name: str) -> list[dict[str, Any]]:
    return list(json.loads(host.exec("bridge", "-j", "fdb", "show", "dev", name)))


def setup(lab: Lab, **options: Any) -> tuple[Host, Any, State, list[Guest]]:
    host = lab.host()
    dataplane = host.dataplane(evpn=True, **options)
    state = State()
    open_sg(dataplane, state)
    guests = [lab.guest(), lab.guest()]
    plug(
        dataplane,
        state,
        netns_vnic("f1", guests[0], "52:54:00:00:14:01", ("10.14.0.1", "2001:db8:14::1"),
                   vni=VNI, security_groups=("open",)),
    )  # fmt: skip
    return host, dataplane, state, guests


def test_what_zebra_reads(lab: Lab) -> None:
    host, dataplane, state, guests = setup(lab)
    bypass = netns_vnic("b1", guests[1], "52:54:00:00:14:02", ("10.14.0.2",), vni=VNI,
                        bypass_filtering=True)  # fmt: skip
    plug(dataplane, state, bypass)
    vxlan = json.loads(host.ip("-d", "-j", "link", "show", f"bfvx{VNI}"))[0]
    data = vxlan["linkinfo"]["info_data"]
    assert data["local"] == host.address and "group" not in data and data["learning"] is False
    assert port(host, f"bfvx{VNI}")["neigh_suppress"] is True
    assert port(host, f"bfvx{VNI}")["learning"] is False
    for name in ("bf-f1", "bf-b1"):
        # A request from a suppressing port is never answered by proxy.
        assert port(host, name)["neigh_suppress"] is False
    for name, mac in (("bf-f1", "52:54:00:00:14:01"), ("bf-b1", "52:54:00:00:14:02")):
        assert any(e["mac"] == mac and e.get("state") == "static" for e in fdb(host, name)), name
    assert neighbours(host) == {
        "10.14.0.1": ("52:54:00:00:14:01", ("PERMANENT",)),
        "2001:db8:14::1": ("52:54:00:00:14:01", ("PERMANENT",)),
        "10.14.0.2": ("52:54:00:00:14:02", ("PERMANENT",)),
    }
    moved = replace(bypass, ips=("10.14.0.3",))
    before = state.put_vnic(moved)
    assert before is not None
    dataplane.update(before, moved, state)
    assert set(neighbours(host)) == {"10.14.0.1", "2001:db8:14::1", "10.14.0.3"}
    state.remove_vnic("b1")
    dataplane.unplug(moved, state)
    assert set(neighbours(host)) == {"10.14.0.1", "2001:db8:14::1"}
    state.set_peers(VNI, ("198.51.100.9",))
    with pytest.raises(NotSupported, match="underlay evpn"):
        dataplane.update_peers(VNI, state)


def test_reconcile_keeps_what_frr_installed_and_drops_stale_entries(lab: Lab) -> None:
    host, dataplane, state, _ = setup(lab)
    # What zebra installs for a remote vnic and a remote VTEP...
    host.ip("neigh", "add", "10.14.0.7", "lladdr", "52:54:00:00:14:07", "dev", f"bfbr{VNI}",
            "nud", "noarp", "extern_learn")  # fmt: skip
    host.exec("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", f"bfvx{VNI}",
              "dst", "198.51.100.9", "self", "permanent")  # fmt: skip
    host.exec("bridge", "fdb", "add", "52:54:00:00:14:07", "dev", f"bfvx{VNI}",
              "dst", "198.51.100.9", "self", "extern_learn")  # fmt: skip
    # ...and an entry of a vnic deleted while the daemon was down.
    host.ip("neigh", "add", "10.14.0.8", "lladdr", "52:54:00:00:14:08", "dev", f"bfbr{VNI}",
            "nud", "permanent")  # fmt: skip
    host.ip("neigh", "del", "10.14.0.1", "dev", f"bfbr{VNI}")
    dataplane.reconcile(state)
    found = neighbours(host)
    assert set(found) == {"10.14.0.1", "2001:db8:14::1", "10.14.0.7"}
    assert "extern_learn" in found["10.14.0.7"][1]
    vxlan = fdb(host, f"bfvx{VNI}")
    assert any(e["mac"] == "00:00:00:00:00:00" and e["dst"] == "198.51.100.9" for e in vxlan)
    assert any(e["mac"] == "52:54:00:00:14:07" for e in vxlan)


def test_a_failure_at_any_step_changes_nothing(lab: Lab) -> None:
    faults = Faults()
    host, dataplane, state, guests = setup(lab, fault_hook=faults)
    vnic = netns_vnic("f2", guests[1], "52:54:00:00:14:02", ("10.14.0.2", "2001:db8:14::2"),
                      vni=VNI, bypass_filtering=True)  # fmt: skip
    tap = make_vnic(Vnic(id="t3", mac="52:54:00:00:14:03", vni=VNI + 1, ips=("10.14.0.3",),
                         type=VnicType.TAP, security_groups=("open",)))  # fmt: skip

    def look() -> dict[str, Any]:
        return {
            **snapshot(host, guests),
            "neighbours": [neighbours(host, vni) for vni in (VNI, VNI + 1) if _has(host, vni)],
            # The kernel reorders a port's own multicast entries when it goes down.
            "fdb": sorted(host.exec("bridge", "fdb", "show").splitlines()),
            "ports": host.exec("bridge", "-d", "link", "show"),
        }

    for request in (vnic, tap):
        for forward in (True, False):
            before = look()
            failed = 0
            while True:
                faults.steps.clear()
                faults.fail_at = failed
                try:
                    if forward:
                        plug(dataplane, state, request)
                    else:
                        state.remove_vnic(request.id)
                        dataplane.unplug(request, state)
                except DataplaneError as exc:
                    assert "injected failure" in str(exc), exc
                    if forward:
                        state.remove_vnic(request.id)
                    else:
                        state.put_vnic(request)
                    assert look() == before, f"failing {faults.steps[-1]} left changes"
                    failed += 1
                    continue
                break
            faults.fail_at = None
            assert failed > 0


def _has(host: Host, vni: int) -> bool:
    return bool(host.ip("link", "show", f"bfbr{vni}", check=False).strip())


def test_a_mac_frr_moved_to_another_host_is_left_there_until_withdrawn(lab: Lab) -> None:
    """Live migration: for a while the vnic exists here and at its new host,
    which advertised its MAC with a higher sequence number, so zebra moved the
    MAC to the VXLAN device. zebra's entries are not drift, and a repair of the
    VNI leaves the MAC there: pinning it back would make the two hosts take it
    from each other until FRR calls it a duplicate. zebra withdrawing it gives
    it back to the vnic's port (the positive control)."""
    host, dataplane, state, _ = setup(lab)
    mac, vxlan = "52:54:00:00:14:01", f"bfvx{VNI}"
    watch = dataplane.watch()
    try:
        watch.drain(dataplane.take_touched())
        # What zebra does, in its order: static, then extern_learn, then the tunnel.
        host.exec("bridge", "fdb", "replace", mac, "dev", vxlan, "master", "static", "sticky")
        host.exec("bridge", "fdb", "replace", mac, "dev", vxlan, "master", "static", "sticky",
                  "extern_learn")  # fmt: skip
        host.exec("bridge", "fdb", "add", mac, "dev", vxlan, "dst", "198.51.100.9", "self",
                  "static")  # fmt: skip
        assert [change.what for change in watch.drain()] == []
        dataplane.repair(state, Scope(links=frozenset({vxlan})))
        assert [entry for entry in fdb(host, "bf-f1") if entry["mac"] == mac] == []
        watch.drain(dataplane.take_touched())
        host.exec("bridge", "fdb", "del", mac, "dev", vxlan, "dst", "198.51.100.9", "self")
        host.exec("bridge", "fdb", "del", mac, "dev", vxlan, "master")
        changes = watch.drain()
        assert [change.what for change in changes] == [f"{vxlan}: FRR withdrew {mac} (a vnic's)"]
        dataplane.repair(state, changes[0].scope)
        pinned = [entry for entry in fdb(host, "bf-f1") if entry["mac"] == mac]
        assert pinned and pinned[0].get("state") == "static", pinned
    finally:
        watch.close()
