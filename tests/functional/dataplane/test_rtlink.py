"""The fast link reader reads what pyroute2 reads, on real links of each kind butterfly makes."""

from typing import Any

import pytest
from pyroute2 import IPRoute

from butterfly.dataplane.fastpath import FastPathMode
from butterfly.dataplane.netlink import Netlink
from butterfly.dataplane.rtlink import LinkReader
from butterfly.dataplane.underlay import Underlay, find_underlay

from .conftest import Lab, only_on

pytestmark = [pytest.mark.root, only_on(FastPathMode.OFF)]  # no data plane here


def _pyroute2(name: str) -> dict[str, Any]:
    with IPRoute() as ipr:
        msg = ipr.link("get", ifname=name)[0]
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    port = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    stats = msg.get_attr("IFLA_STATS64") or {}
    return {
        "index": msg["index"],
        "flags": msg["flags"],
        "name": msg.get_attr("IFLA_IFNAME"),
        "mac": msg.get_attr("IFLA_ADDRESS"),
        "mtu": msg.get_attr("IFLA_MTU"),
        "master": msg.get_attr("IFLA_MASTER"),
        "alias": msg.get_attr("IFLA_IFALIAS"),
        "netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
        "data": dict(data["attrs"]) if data is not None else {},
        "port": dict(port["attrs"]) if port is not None else {},
        "rx_bytes": stats.get("rx_bytes"),
    }


def _ours(reader: LinkReader, name: str) -> dict[str, Any]:
    raw = reader.get(name)
    assert raw is not None
    info = raw.get("IFLA_LINKINFO", {})
    return {
        "index": raw["index"],
        "flags": raw["flags"],
        "name": raw["IFLA_IFNAME"],
        "mac": raw.get("IFLA_ADDRESS"),
        "mtu": raw["IFLA_MTU"],
        "master": raw.get("IFLA_MASTER"),
        "alias": raw.get("IFLA_IFALIAS"),
        "netnsid": raw.get("IFLA_LINK_NETNSID"),
        "kind": info.get("IFLA_INFO_KIND"),
        "data": info.get("IFLA_INFO_DATA", {}),
        "port": info.get("IFLA_INFO_SLAVE_DATA", {}),
        "rx_bytes": raw.get("IFLA_STATS64", {}).get("rx_bytes"),
    }


def test_every_attribute_read_matches_pyroute2(lab: Lab) -> None:
    host = lab.host()
    vm = lab.guest()
    for command in (
        "link add bftbr type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
        "link set bftbr type bridge nf_call_iptables 1 nf_call_ip6tables 1 group_fwd_mask 16384",
        f"link add bftv4 type vxlan id 77 local {host.address4} group 230.0.0.77 dev ul0 "
        "dstport 4789",
        f"link add bftv6 type vxlan id 78 local {host.address6} group ff05::e600:4e dev ul0 "
        "dstport 4789 nolearning",
        "tuntap add dev bfttap mode tap",
        "link set bfttap master bftbr up",
        "link set bfttap type bridge_slave learning off flood off locked on neigh_suppress on",
        "link set bfttap alias butterfly-test-alias",
        f"link add bftveth type veth peer name inside netns {vm.name}",
        "link set bftveth master bftbr",
    ):
        host.ip(*command.split())
    names = ["lo", "ul0", "bftbr", "bftv4", "bftv6", "bfttap", "bftveth"]

    def compare() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        reader = LinkReader()
        try:
            pairs = [(_ours(reader, name), _pyroute2(name)) for name in names]
            dumped = {raw["IFLA_IFNAME"] for raw in reader.dump()}
            assert set(names) <= dumped
            assert reader.get("bft-missing") is None
            for name in names:
                raw = reader.get(name)
                assert raw is not None
                by_index = reader.get(index=raw["index"])
                assert by_index is not None and by_index["IFLA_IFNAME"] == name
        finally:
            reader.close()
        return pairs

    for ours, theirs in host.run(compare):
        wanted = {key: value for key, value in theirs["data"].items() if key in ours["data"]}
        assert ours["data"] == wanted, ours["name"]
        wanted = {key: value for key, value in theirs["port"].items() if key in ours["port"]}
        assert ours["port"] == wanted, ours["name"]
        assert {k: v for k, v in ours.items() if k not in ("data", "port")} == {
            k: v for k, v in theirs.items() if k not in ("data", "port")
        }
        if ours["kind"] in ("vxlan", "bridge"):
            assert len(ours["data"]) >= 5, ours
        if ours["name"] == "bfttap":
            assert ours["port"] == {
                "IFLA_BRPORT_LEARNING": 0,
                "IFLA_BRPORT_UNICAST_FLOOD": 0,
                "IFLA_BRPORT_LOCKED": 1,
                "IFLA_BRPORT_NEIGH_SUPPRESS": 1,
            }
        if ours["name"] == "bftbr":
            # What the drift watch and the reconcile compare (LLDP_FORWARD_MASK).
            assert ours["data"]["IFLA_BR_GROUP_FWD_MASK"] == 1 << 14


def test_forwarding_entries_match_the_bridge_command(lab: Lab) -> None:
    host = lab.host()
    for command in (
        "link add bftbr type bridge",
        "tuntap add dev bfttap mode tap",
        "link set bfttap master bftbr up",
        f"link add bftv4 type vxlan id 77 local {host.address4} dev ul0 dstport 4789",
    ):
        host.ip(*command.split())
    for command in (
        "fdb replace 52:54:00:00:00:01 dev bfttap master static sticky",
        "fdb append 00:00:00:00:00:00 dev bftv4 dst 198.51.100.9",
    ):
        host.exec("bridge", *command.split())

    def read() -> tuple[list[Any], list[Any], int]:
        reader = LinkReader()
        try:
            tap = reader.get("bfttap")
            assert tap is not None
            return reader.fdb(tap["index"]), reader.fdb(), tap["index"]
        finally:
            reader.close()

    port, everything, index = host.run(read)
    assert {entry.ifindex for entry in port} == {index}
    pinned = [entry for entry in port if entry.mac == "52:54:00:00:00:01"]
    assert len(pinned) == 1 and pinned[0].state & 0x40 and pinned[0].flags & 0x40
    flooding = [entry for entry in everything if entry.dst is not None]
    assert [(entry.mac, entry.dst) for entry in flooding] == [("00:00:00:00:00:00", "198.51.100.9")]
    assert set(port) <= set(everything)


def test_the_underlay_is_found_by_address_or_default_route(lab: Lab) -> None:
    host = lab.host()
    host.ip("route", "add", "default", "via", "198.51.100.254", "dev", host.underlay)

    def find() -> tuple[Underlay, Underlay]:
        with Netlink() as netlink:
            return find_underlay(netlink, None), find_underlay(netlink, host.address6)

    by_route, by_address = host.run(find)
    assert (by_route.ifname, by_route.address) == (host.underlay, host.address4)
    assert (by_address.ifname, by_address.address) == (host.underlay, host.address6)
