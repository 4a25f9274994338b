"""Networks and ports: bridges, VXLAN devices, taps and veths as the kernel holds them."""

import json
from dataclasses import replace
from typing import Any

import pytest

from butterfly.dataplane.guard import ANCHORS
from butterfly.dataplane.naming import bridge_name, tap_name, vxlan_name
from butterfly.dataplane.vni import SPARE_BRIDGES
from butterfly.errors import ConfigError, DataplaneError
from butterfly.model import State, Vnic, VnicType, make_vnic

from .conftest import Dataplane, Lab, link_index, netns_vnic, plug, wait_for

pytestmark = pytest.mark.root


def _links(netns_ip: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in json.loads(netns_ip)}


def test_a_vni_has_a_bridge_and_vxlan_from_its_first_vnic_to_its_last(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    tap = make_vnic(Vnic(id="t1", mac="52:54:00:00:00:01", vni=1337, type=VnicType.TAP))
    plug(dataplane, state, tap)
    links = _links(host.ip("-d", "-j", "link", "show"))
    assert links[bridge_name(1337)]["linkinfo"]["info_kind"] == "bridge"
    vxlan, port = links[vxlan_name(1337)], links[tap_name("t1")]
    info = vxlan["linkinfo"]["info_data"]
    assert info["id"] == 1337
    assert info["group"] == "230.0.5.57"
    assert info["port"] == 4789
    assert info["local"] == host.address
    assert info["learning"] is True
    assert vxlan["master"] == port["master"] == bridge_name(1337)
    assert vxlan["mtu"] == port["mtu"] == 1450
    assert port["linkinfo"]["info_kind"] == "tun"
    assert dataplane.attachment(tap).path == tap_name("t1")
    assert dataplane.attachment(tap).mtu == 1450
    second = make_vnic(Vnic(id="t2", mac="52:54:00:00:00:02", vni=1337, type=VnicType.TAP))
    plug(dataplane, state, second)
    state.remove_vnic("t1")
    dataplane.unplug(tap, state)
    links = _links(host.ip("-j", "link", "show"))
    assert tap_name("t1") not in links and bridge_name(1337) in links
    state.remove_vnic("t2")
    dataplane.unplug(second, state)
    links = _links(host.ip("-j", "link", "show"))
    assert not [name for name in links if name.startswith("bf") and name not in ANCHORS]


def test_butterflys_links_carry_no_ipv6_of_the_host(lab: Lab) -> None:
    """No route of the host's IPv6 per link: every link event and MTU change
    of the namespace walks them all (8,192 at 4,096 VNIs)."""
    host = lab.host()
    guest = lab.guest()
    dataplane = host.dataplane()
    state = State()
    plug(
        dataplane,
        state,
        make_vnic(Vnic(id="t1", mac="52:54:00:00:00:01", vni=7, type=VnicType.TAP)),
    )
    plug(dataplane, state, netns_vnic("n1", guest, "52:54:00:aa:00:01", ("2001:db8:1::1",)))
    names = (bridge_name(7), vxlan_name(7), tap_name("t1"), tap_name("n1"))
    for name in names:
        assert _ipv6_disabled(host, name), name
    routes = host.ip("-6", "route", "show", "table", "all")
    assert not [line for line in routes.splitlines() if any(f"dev {n} " in line for n in names)]
    assert "ff00::/8" in routes, "the control: the underlay keeps its own IPv6 routes"
    inside = json.loads(guest.ip("-j", "-6", "addr", "show", tap_name("n1")))[0]
    assert "2001:db8:1::1" in {a["local"] for a in inside["addr_info"]}, "the vnic keeps its IPv6"
    for name in names:  # as an earlier version left them
        host.exec("sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=0")
    dataplane.reconcile(state)
    for name in names:
        assert _ipv6_disabled(host, name), f"{name} after the reconcile"


def _ipv6_disabled(host: Any, name: str) -> bool:
    return host.exec("cat", f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").strip() == "1"


def test_a_netns_vnic_gets_a_veth_with_its_mac_ips_and_mtu(lab: Lab) -> None:
    host = lab.host()
    guest = lab.guest()
    dataplane = host.dataplane(nic_mtu=1400)
    state = State()
    vnic = netns_vnic("n1", guest, "52:54:00:aa:00:01", ("10.1.0.1", "2001:db8:1::1"))
    plug(dataplane, state, vnic)
    inside = json.loads(guest.ip("-j", "addr", "show", tap_name("n1")))[0]
    assert inside["address"] == "52:54:00:aa:00:01"
    assert inside["mtu"] == 1400
    assert inside["operstate"] in ("UP", "UNKNOWN")
    addresses = {(a["local"], a["prefixlen"]) for a in inside["addr_info"]}
    assert {("10.1.0.1", 24), ("2001:db8:1::1", 64)} <= addresses
    assert dataplane.attachment(vnic).path == guest.name
    assert dataplane.attachment(vnic).mtu == 1400
    updated = make_vnic(replace(vnic, ips=("10.1.0.9",)))
    state.put_vnic(updated)
    dataplane.update(vnic, updated, state)
    inside = json.loads(guest.ip("-j", "addr", "show", tap_name("n1")))[0]
    addresses = {(a["local"], a["prefixlen"]) for a in inside["addr_info"]}
    assert ("10.1.0.9", 24) in addresses
    assert ("10.1.0.1", 24) not in addresses and ("2001:db8:1::1", 64) not in addresses


def test_replacing_a_tap_vnic_keeps_the_tap(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    plug(
        dataplane, state, make_vnic(Vnic(id="t", mac="52:54:00:00:00:01", vni=1, type=VnicType.TAP))
    )
    index = link_index(host, "t")
    plug(
        dataplane, state, make_vnic(Vnic(id="t", mac="52:54:00:00:00:07", vni=2, type=VnicType.TAP))
    )
    assert link_index(host, "t") == index
    links = _links(host.ip("-j", "link", "show"))
    assert links[tap_name("t")]["master"] == bridge_name(2)
    assert bridge_name(1) not in links and vxlan_name(1) not in links


def test_replacing_a_tap_by_a_netns_vnic_moves_the_port(lab: Lab) -> None:
    host = lab.host()
    guest = lab.guest()
    dataplane = host.dataplane()
    state = State()
    plug(
        dataplane, state, make_vnic(Vnic(id="x", mac="52:54:00:00:00:01", vni=1, type=VnicType.TAP))
    )
    plug(dataplane, state, netns_vnic("x", guest, "52:54:00:00:00:01", ("10.0.0.1",), vni=1))
    links = _links(host.ip("-d", "-j", "link", "show"))
    assert links[tap_name("x")]["linkinfo"]["info_kind"] == "veth"
    assert tap_name("x") in _links(guest.ip("-j", "link", "show"))


def test_a_missing_namespace_fails_cleanly(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    vnic = make_vnic(
        Vnic(id="n", mac="52:54:00:00:00:01", vni=3, type=VnicType.NETNS, netns="bft-nowhere")
    )
    state.put_vnic(vnic)
    before = host.exec("nft", "list", "ruleset")
    with pytest.raises(DataplaneError, match=r"nic 'n'.*bft-nowhere"):
        dataplane.plug(vnic, None, state)
    links = _links(host.ip("-j", "link", "show"))
    assert not [name for name in links if name.startswith("bf") and name not in ANCHORS]
    after = host.exec("nft", "list", "ruleset")
    assert after == before


def test_the_underlay_is_the_default_routes_interface_without_ip(lab: Lab) -> None:
    host = lab.host()
    host.ip("route", "add", "default", "via", "198.51.100.254")
    dataplane = host.dataplane(underlay_ip=None)
    assert f"underlay {host.underlay} {host.address}" in dataplane.graph(State())


def test_an_ip_no_interface_holds_is_a_start_up_error(lab: Lab) -> None:
    host = lab.host()
    with pytest.raises(ConfigError, match=r"192\.0\.2\.99.*no interface"):
        host.dataplane(underlay_ip="192.0.2.99")


def test_static_peers_must_be_of_the_underlays_family(lab: Lab) -> None:
    host = lab.host()
    with pytest.raises(ConfigError, match="vxlan-peers: peer 2001:db8::1"):
        host.dataplane(static_peers=("2001:db8::1",))


def test_an_ipv6_underlay_uses_an_ipv6_group_and_overhead(lab: Lab) -> None:
    host = lab.host(v6=True)
    dataplane = host.dataplane()
    state = State()
    plug(
        dataplane,
        state,
        make_vnic(Vnic(id="t", mac="52:54:00:00:00:01", vni=1337, type=VnicType.TAP)),
    )
    vxlan = _links(host.ip("-d", "-j", "link", "show", vxlan_name(1337)))[vxlan_name(1337)]
    info = vxlan["linkinfo"]["info_data"]
    assert info["group6"] == "ff05::e600:539"
    assert info["local6"] == host.address
    assert vxlan["mtu"] == 1430


def _forwarding(host: Any, vnic_id: str) -> tuple[bool, bool, bool, set[str]]:
    """A vnic's port as the bridge holds it: learning, unicast flooding, locked,
    pinned MACs."""
    name = tap_name(vnic_id)
    (port,) = json.loads(host.exec("bridge", "-d", "-j", "link", "show", "dev", name))
    entries = json.loads(host.exec("bridge", "-j", "fdb", "show", "br", port["master"]))
    pinned = {
        entry["mac"]
        for entry in entries
        if entry.get("ifname") == name
        and "sticky" in entry.get("flags", [])
        and entry.get("state") == "static"
    }
    return port["learning"], port["flood"], port["locked"], pinned


def test_a_filtered_vnics_port_is_locked_to_its_pinned_mac_and_learns_nothing(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    mac = "52:54:00:00:00:01"
    filtered = make_vnic(Vnic(id="f", mac=mac, vni=1, type=VnicType.TAP))
    plug(dataplane, state, filtered)
    assert _forwarding(host, "f") == (False, False, True, {mac})
    plug(dataplane, state, replace(filtered, bypass_filtering=True))
    assert _forwarding(host, "f") == (True, True, False, set())
    plug(dataplane, state, filtered)
    host.exec("bridge", "fdb", "del", mac, "dev", tap_name("f"), "master")
    host.exec("bridge", "link", "set", "dev", tap_name("f"), "flood", "on", "locked", "off")
    dataplane.reconcile(state)
    assert _forwarding(host, "f") == (False, False, True, {mac})


def test_emptied_bridges_wait_as_spares_up_to_a_cap_and_a_reconcile_deletes_them(
    lab: Lab,
) -> None:
    host = lab.host()
    dataplane = host.dataplane(defer_deletes=True)
    state = State()
    vnics = _alone_in_vnis(dataplane, state, "s", 500)
    _empty(dataplane, state, vnics)

    assert len(_spares(host)) == SPARE_BRIDGES, "the emptied bridge beyond the cap is deleted"
    dataplane.reconcile(state)
    assert _spares(host) == []
    assert not [name for name in _links(host.ip("-j", "link", "show")) if name.startswith("bfbr")]


def _alone_in_vnis(dataplane: Dataplane, state: State, tag: str, first_vni: int) -> list[Vnic]:
    """One more TAP vnic than :data:`SPARE_BRIDGES`, each alone in a VNI of its own."""
    vnics = [
        make_vnic(
            Vnic(
                id=f"{tag}{n}",
                mac=f"52:54:00:00:{first_vni // 100:02x}:{n:02x}",
                vni=first_vni + n,
                type=VnicType.TAP,
            )
        )
        for n in range(SPARE_BRIDGES + 1)
    ]
    for vnic in vnics:
        plug(dataplane, state, vnic)
    return vnics


def _empty(dataplane: Dataplane, state: State, vnics: list[Vnic]) -> None:
    """nic_del of each, as the service does it: state first, then the data plane."""
    for vnic in vnics:
        state.remove_vnic(vnic.id)
        dataplane.unplug(vnic, state)


def _spares(host: Any) -> list[str]:
    links = _links(host.ip("-j", "link", "show", "type", "bridge"))
    return [name for name in links if name.startswith("bfs")]


def test_spares_the_quiet_deleted_no_longer_count_against_the_cap(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane(defer_deletes=True)
    state = State()
    vnics = _alone_in_vnis(dataplane, state, "q", 600)
    _empty(dataplane, state, vnics[:SPARE_BRIDGES])
    assert len(_spares(host)) == SPARE_BRIDGES
    wait_for(lambda: _spares(host) == [], "the spares to go after a quiet second", 10)
    _empty(dataplane, state, vnics[SPARE_BRIDGES:])
    assert len(_spares(host)) == 1, "an emptied bridge after a quiet spell waits as a spare"
