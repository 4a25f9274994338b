"""Two hypervisors, each with its own data plane, joined by VXLAN over a veth underlay."""

import json
from dataclasses import replace
from typing import Any

import pytest

from butterfly.dataplane.naming import vxlan_name
from butterfly.model import State, Vnic, VnicType, make_vnic

from .conftest import Dataplane, Guest, Host, Lab, netns_vnic, open_sg, plug

pytestmark = pytest.mark.root

GROUPS = 100


def two_hosts(
    lab: Lab, *, v6: bool = False, options: Any = None, vni: int = 7
) -> tuple[list[Host], list[Dataplane], list[State], list[Guest]]:
    hosts = [lab.host(v6=v6), lab.host(v6=v6)]
    dataplanes, states, guests = [], [], []
    for index, host in enumerate(hosts):
        dataplane = host.dataplane(**(options(hosts, index) if options else {}))
        state = State()
        open_sg(dataplane, state)
        guest = lab.guest()
        plug(
            dataplane,
            state,
            netns_vnic(
                f"v{index}",
                guest,
                f"52:54:00:00:07:0{index + 1}",
                (f"10.7.0.{index + 1}", f"2001:db8:7::{index + 1}"),
                vni=vni,
                security_groups=("open",),
            ),
        )
        guest.listen("tcp", 80)
        guest.listen("tcp", 80, family=6)
        dataplanes.append(dataplane)
        states.append(state)
        guests.append(guest)
    return hosts, dataplanes, states, guests


def test_multicast_flooding_joins_two_hosts(lab: Lab) -> None:
    _, _, _, guests = two_hosts(lab)
    assert guests[0].reaches("tcp", "10.7.0.2", 80)
    assert guests[1].reaches("tcp", "2001:db8:7::1", 80)


def test_static_peers_join_two_hosts_without_multicast(lab: Lab) -> None:
    hosts, _, _, guests = two_hosts(
        lab, options=lambda hosts, i: {"static_peers": (hosts[1 - i].address,)}
    )
    vxlan = json.loads(hosts[0].ip("-d", "-j", "link", "show", vxlan_name(7)))[0]
    assert "group" not in vxlan["linkinfo"]["info_data"]
    assert guests[0].reaches("tcp", "10.7.0.2", 80)


def test_peers_added_and_removed_per_vni(lab: Lab) -> None:
    hosts, dataplanes, states, guests = two_hosts(
        lab, options=lambda hosts, i: {"multicast": False}
    )
    assert guests[0].blocked("tcp", "10.7.0.2", 80), "flooded with no peer at all"
    for index in (0, 1):
        states[index].set_peers(7, (hosts[1 - index].address,))
        dataplanes[index].update_peers(7, states[index])
    shown = hosts[0].exec("bridge", "fdb", "show", "dev", vxlan_name(7))
    assert f"00:00:00:00:00:00 dst {hosts[1].address}" in shown
    assert guests[0].reaches("tcp", "10.7.0.2", 80)
    states[0].set_peers(7, ())
    dataplanes[0].update_peers(7, states[0])
    shown = hosts[0].exec("bridge", "fdb", "show", "dev", vxlan_name(7))
    assert "00:00:00:00:00:00" not in shown


def test_an_ipv6_underlay_carries_ipv4_and_ipv6(lab: Lab) -> None:
    _, _, _, guests = two_hosts(lab, v6=True)
    assert guests[0].reaches("tcp", "10.7.0.2", 80)
    assert guests[1].reaches("tcp", "2001:db8:7::1", 80)


def test_an_ipv6_underlay_with_static_peers(lab: Lab) -> None:
    _, _, _, guests = two_hosts(
        lab, v6=True, options=lambda hosts, i: {"static_peers": (hosts[1 - i].address,)}
    )
    assert guests[0].reaches("tcp", "10.7.0.2", 80)


def test_an_ipv6_underlay_holds_more_groups_than_its_option_memory_allowed(lab: Lab) -> None:
    """IPv6 has no count limit, but each membership takes 56 bytes of the shared
    socket's option memory (128 KiB by default: ENOMEM at the 2,341st VNI).
    With the namespace's net.core.optmem_max lowered to room for ~70 groups,
    100 VNIs work because butterflyd raises it."""
    host = lab.host(v6=True)
    host.exec("sysctl", "-qw", "net.core.optmem_max=4096")
    dataplane = host.dataplane()
    state = State()
    for vni in range(1, GROUPS + 1):
        vnic = Vnic(id=f"t{vni}", mac=f"52:54:00:60:00:{vni:02x}", vni=vni, type=VnicType.TAP)
        plug(dataplane, state, make_vnic(replace(vnic, bypass_filtering=True)))
    joined = host.exec("cat", "/proc/net/igmp6").count("ff0500000000000000000000e6")
    assert joined == GROUPS
    assert int(host.exec("cat", "/proc/sys/net/core/optmem_max")) >= 4096 * 64
