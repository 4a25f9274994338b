"""Static VXLAN peers, on a fabric that drops multicast (an underlay without it).

Two hosts get their peers from the ini file's ``vxlan-peers``; two others have none
configured, so their VNIs flood to a multicast group the fabric drops: they are cut off
until ``vni peer add`` (the API on one host, the CLI on the other) names the other side.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from switch_helpers import open_sg

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import vxlan_name
from butterfly_lab.lab import Host, Lab, Vm

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> list[Host]:
    """Hosts 0-1: vxlan-peers of each other in their ini file; hosts 2-3: none."""
    lab.fabric.block_multicast()
    made = [lab.host(start=False) for _ in range(4)]
    for me, other in ((made[0], made[1]), (made[1], made[0])):
        config = Path(me.folder, "butterflyd.ini")
        config.write_text(f"[general]\nvxlan-peers = {other.address}\n")
        me.daemon.extra_args += ["-c", str(config)]
    for host in made:
        host.spawn()
    for host in made:
        host.wait_ready()
        open_sg(host)
    return made


def add(host: Host, lab: Lab, vnic_id: str, *, vni: int, ip: str, index: int) -> Vm:
    vm = lab.vm()
    host.add_vnic(
        vnic_id, vm=vm, mac=f"52:54:00:00:{vni & 0xFF:02x}:0{index}", vni=vni, ips=[ip],
        security_groups=["open"],
    )  # fmt: skip
    vm.listen("tcp", 7)
    return vm


def flood_entries(host: Host, vni: int) -> list[str]:
    """The unicast flooding destinations of the VNI's VXLAN device (its group left out)."""
    found = []
    for line in host.exec("bridge", "fdb", "show", "dev", vxlan_name(vni)).splitlines():
        if line.startswith("00:00:00:00:00:00"):
            destination = line.split(" dst ")[1].split()[0]
            if not ipaddress.ip_address(destination).is_multicast:
                found.append(destination)
    return found


def test_peers_from_the_config_file(lab: Lab, hosts: list[Host]) -> None:
    one = add(hosts[0], lab, "c0", vni=30, ip="10.30.0.1", index=1)
    add(hosts[1], lab, "c1", vni=30, ip="10.30.0.2", index=2)
    assert flood_entries(hosts[0], 30) == [hosts[1].address]
    vxlan = json.loads(hosts[0].ip("-d", "-j", "link", "show", vxlan_name(30)))[0]
    assert "group" not in vxlan["linkinfo"]["info_data"], "multicast flooding is on"
    result = one.ping("10.30.0.2")
    assert result.received == result.transmitted == 3, result.output
    assert one.reaches("tcp", "10.30.0.2", 7)


def test_vni_peer_add_and_del_through_the_api_and_the_cli(lab: Lab, hosts: list[Host]) -> None:
    left, right = hosts[2], hosts[3]
    one = add(left, lab, "p0", vni=31, ip="10.31.0.1", index=1)
    add(right, lab, "p1", vni=31, ip="10.31.0.2", index=2)
    # Multicast flooding cannot cross this fabric: no way to find the other side yet.
    assert one.blocked("icmp", "10.31.0.2", timeout=1)

    request = MessageV0.Request()
    request.vni_peer_add.vni = 31
    request.vni_peer_add.peer = right.address
    left.call(request)
    right.cli("vni", "peer", "add", "31", left.address)
    assert flood_entries(left, 31) == [right.address]
    assert flood_entries(right, 31) == [left.address]
    assert left.address in right.cli("vni", "peer", "list")
    listed = left.call(MessageV0.Request(vni_peer_list=True)).vni_peer_list
    assert [(entry.vni, list(entry.peer)) for entry in listed] == [(31, [right.address])]
    assert one.reaches("icmp", "10.31.0.2")
    assert one.reaches("tcp", "10.31.0.2", 7)

    right.cli("vni", "peer", "del", "31", left.address)
    request = MessageV0.Request()
    request.vni_peer_del.vni = 31
    request.vni_peer_del.peer = right.address
    left.call(request)
    assert flood_entries(left, 31) == [] and flood_entries(right, 31) == []
    assert left.call(MessageV0.Request(vni_peer_list=True)).vni_peer_list == []
