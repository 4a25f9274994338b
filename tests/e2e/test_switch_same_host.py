"""One host, one real butterflyd, the README's six vnics in network namespaces "VMs".

Built through the CLI exactly as an operator would (``nic add --type netns --path``):
vnics of a VNI talk, VNIs are isolated although their IPs (and, for one pair, MACs)
are identical, and a deleted vnic stops talking until it is added again.
"""

from __future__ import annotations

import json

import pytest
from switch_helpers import neighbour_mac, open_sg

from butterfly.dataplane.naming import bridge_name, spare_name, tap_name, vxlan_name
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = pytest.mark.root

# The README example: id -> (ip, vni); MAC 52:54:00:12:34:0N.
README_VNICS = {
    "vnic_1": ("42.0.0.1", 42),
    "vnic_2": ("42.0.0.1", 51),
    "vnic_3": ("42.0.0.2", 51),
    "vnic_4": ("42.0.0.3", 51),
    "vnic_5": ("42.0.0.1", 1337),
    "vnic_6": ("42.0.0.2", 1337),
}
# Identical IP *and* MAC to vnic_4, in another VNI.
TWIN = ("vnic_7", "42.0.0.3", 1337, "52:54:00:12:34:04")


def mac(vnic_id: str) -> str:
    return f"52:54:00:12:34:0{vnic_id[-1]}"


def add(host: Host, vnic_id: str, vm: Vm, *, ip: str, vni: int, mac_address: str) -> None:
    host.cli(
        "nic", "add", "--id", vnic_id, "--mac", mac_address, "--vni", str(vni), "--ip", ip,
        "--type", "netns", "--path", vm.name, "--sg", "open",
    )  # fmt: skip


@pytest.fixture(scope="module")
def switch(lab: Lab) -> tuple[Host, dict[str, Vm]]:
    host = lab.host()
    open_sg(host)
    vms: dict[str, Vm] = {}
    for vnic_id, (ip, vni) in README_VNICS.items():
        vms[vnic_id] = lab.vm()
        add(host, vnic_id, vms[vnic_id], ip=ip, vni=vni, mac_address=mac(vnic_id))
    twin_id, twin_ip, twin_vni, twin_mac = TWIN
    vms[twin_id] = lab.vm()
    add(host, twin_id, vms[twin_id], ip=twin_ip, vni=twin_vni, mac_address=twin_mac)
    assert host.cli("nic", "list").split() == sorted(vms)
    vms["vnic_4"].listen("tcp", 7)
    vms["vnic_4"].listen("udp", 7)
    return host, vms


def test_same_vni_talks(switch: tuple[Host, dict[str, Vm]]) -> None:
    _, vms = switch
    result = vms["vnic_3"].ping("42.0.0.3")
    assert result.received == result.transmitted == 3, result.output
    assert vms["vnic_2"].reaches("icmp", "42.0.0.2")
    assert vms["vnic_6"].reaches("icmp", "42.0.0.1")
    assert vms["vnic_2"].reaches("tcp", "42.0.0.3", 7)
    assert vms["vnic_2"].reaches("udp", "42.0.0.3", 7)


def test_identical_ips_answer_in_their_own_vni_only(switch: tuple[Host, dict[str, Vm]]) -> None:
    """42.0.0.1 exists in VNIs 42, 51 and 1337: each VNI reaches its own."""
    _, vms = switch
    assert vms["vnic_3"].reaches("icmp", "42.0.0.1")
    assert neighbour_mac(vms["vnic_3"], "42.0.0.1") == mac("vnic_2")
    assert vms["vnic_6"].reaches("icmp", "42.0.0.1")
    assert neighbour_mac(vms["vnic_6"], "42.0.0.1") == mac("vnic_5")
    # vnic_1 is alone in VNI 42: the .2 and .3 of the other VNIs stay out of reach.
    assert vms["vnic_1"].blocked("icmp", "42.0.0.2")
    assert vms["vnic_1"].blocked("icmp", "42.0.0.3")
    assert neighbour_mac(vms["vnic_1"], "42.0.0.2") is None


def test_identical_ips_and_macs_stay_apart(switch: tuple[Host, dict[str, Vm]]) -> None:
    """vnic_4 (VNI 51) and vnic_7 (VNI 1337) share IP and MAC: only vnic_4 listens on
    TCP 7, so a connection from VNI 1337 is refused by vnic_7, never answered by vnic_4."""
    _, vms = switch
    assert vms["vnic_3"].reaches("tcp", "42.0.0.3", 7)
    assert vms["vnic_6"].reaches("icmp", "42.0.0.3")
    refused = vms["vnic_6"].agent.call("connect", proto="tcp", host="42.0.0.3", port=7, timeout=2)
    assert not refused["ok"] and "refused" in refused["error"], refused


def test_deleted_vnic_stops_and_readded_vnic_talks_again(
    switch: tuple[Host, dict[str, Vm]],
) -> None:
    host, vms = switch
    assert vms["vnic_3"].reaches("icmp", "42.0.0.3")
    host.cli("nic", "del", "vnic_4")
    assert "vnic_4" not in host.cli("nic", "list").split()
    # Its interface left the VM with it, and nothing answers .3 in VNI 51 any more.
    assert tap_name("vnic_4") not in vms["vnic_4"].ip("-o", "link", "show")
    vms["vnic_3"].ip("neigh", "flush", "dev", tap_name("vnic_3"))
    assert vms["vnic_3"].blocked("icmp", "42.0.0.3")
    # VNI 1337's twin is untouched.
    assert vms["vnic_6"].reaches("icmp", "42.0.0.3")

    add(host, "vnic_4", vms["vnic_4"], ip="42.0.0.3", vni=51, mac_address=mac("vnic_4"))
    assert vms["vnic_3"].reaches("icmp", "42.0.0.3")
    result = vms["vnic_4"].ping("42.0.0.2")
    assert result.received == result.transmitted == 3, result.output


def _link(host: Host, name: str) -> dict[str, object] | None:
    shown = host.ip("-j", "link", "show", "dev", name, check=False).strip()
    links: list[dict[str, object]] = json.loads(shown) if shown else []
    return links[0] if links else None


def test_an_emptied_vnis_bridge_serves_the_next_new_vni_and_only_it(lab: Lab) -> None:
    """A VNI's last vnic deleted, its bridge waits as a spare (down, no port,
    renamed); the next new VNI takes it: its vnics talk (the positive control),
    while the old VNI, back on a bridge made anew, reaches none of them. Once
    the API has been quiet a second, no spare is left."""
    host = lab.host()
    open_sg(host)
    first, second, third = lab.vm(), lab.vm(), lab.vm()

    def add_vnic(vnic_id: str, vm: Vm, ip: str, vni: int, mac_address: str) -> None:
        host.add_vnic(vnic_id, mac=mac_address, vni=vni, ips=[ip], vm=vm, security_groups=["open"])

    add_vnic("old_1", first, "42.0.0.1", 60, "52:54:00:60:00:01")
    add_vnic("old_2", second, "42.0.0.2", 60, "52:54:00:60:00:02")
    assert first.reaches("icmp", "42.0.0.2")
    bridge = _link(host, bridge_name(60))
    assert bridge is not None
    index = int(str(bridge["ifindex"]))
    host.delete_vnic("old_1")
    host.delete_vnic("old_2")
    spare = _link(host, spare_name(index))
    assert spare is not None and spare["ifalias"] == "butterfly spare bridge"
    flags = spare["flags"]
    assert isinstance(flags, list) and "UP" not in flags
    assert host.ip("-o", "link", "show", "master", spare_name(index)).strip() == ""
    assert _link(host, bridge_name(60)) is None
    vxlan = _link(host, vxlan_name(60))  # gone, or off the bridge until the API is quiet
    assert vxlan is None or "master" not in vxlan

    add_vnic("new_1", first, "42.0.0.1", 61, "52:54:00:61:00:01")
    add_vnic("new_2", second, "42.0.0.2", 61, "52:54:00:61:00:02")
    taken = _link(host, bridge_name(61))
    assert taken is not None and taken["ifindex"] == index
    assert taken["ifalias"] == "butterfly vni 61"
    assert first.reaches("icmp", "42.0.0.2")
    assert second.reaches("icmp", "42.0.0.1")

    add_vnic("old_3", third, "42.0.0.3", 60, "52:54:00:60:00:03")
    remade = _link(host, bridge_name(60))
    assert remade is not None and remade["ifindex"] != index
    assert third.blocked("icmp", "42.0.0.1")
    assert third.blocked("icmp", "42.0.0.2")
    assert neighbour_mac(third, "42.0.0.1") is None

    host.delete_vnic("old_3")
    assert _link(host, spare_name(int(str(remade["ifindex"])))) is not None
    wait_for(
        lambda: not [n for n in host.ip("-o", "link", "show").split() if n.startswith("bfs")],
        "the spare bridge to go once the API is quiet",
    )
