"""More VNIs than any default kernel cap, on real butterflyd hosts.

The kernel lets one socket join 20 IPv4 multicast groups
(``net.ipv4.igmp_max_memberships``) and charges each membership to
``net.core.optmem_max``; every multicast VNI's VXLAN device joins one group
on a socket they all share. A host of 64 VNIs therefore needs butterflyd to
raise those limits in its own namespace: on an IPv4 underlay, on an IPv6 one
and (no group at all) with static peers. The 64th VNI must carry traffic
between two hosts, and the root namespace's settings stay as they were.
"""

from __future__ import annotations

import pytest
from switch_helpers import open_sg

from butterfly.dataplane.naming import vxlan_name
from butterfly.dataplane.underlay import flood_group
from butterfly_lab.lab import Host, Lab

pytestmark = pytest.mark.root

VNIS = 64
FIRST_VNI = 2000


def _sysctl(host: Host | None, name: str) -> int:
    path = "/proc/sys/" + name.replace(".", "/")
    if host is None:
        with open(path, encoding="ascii") as file:
            return int(file.read())
    return int(host.exec("cat", path))


def _joined(host: Host, v6: bool) -> set[str]:
    """The multicast groups the host's underlay has joined."""
    shown = host.ip("maddr", "show", "dev", host.underlay)
    family = "inet6" if v6 else "inet"
    return {line.split()[1] for line in shown.splitlines() if line.split()[:1] == [family]}


@pytest.mark.parametrize("mode", ["ipv4", "ipv6", "static-peers"])
def test_64_vnis_on_one_host_and_the_last_carries_traffic(lab: Lab, mode: str) -> None:
    v6 = mode == "ipv6"
    root_igmp = _sysctl(None, "net.ipv4.igmp_max_memberships")
    root_optmem = _sysctl(None, "net.core.optmem_max")
    big, small = lab.host(v6=v6, start=False), lab.host(v6=v6, start=False)
    for host, other in ((big, small), (small, big)):
        if mode == "static-peers":
            host.daemon.extra_args += ["--vxlan-peers", other.address]
        host.start()
        open_sg(host)
    vnis = range(FIRST_VNI, FIRST_VNI + VNIS)
    for n, vni in enumerate(vnis[:-1]):
        big.add_vnic(f"t{vni}", mac=f"52:54:00:20:{n // 256:02x}:{n % 256:02x}", vni=vni)
    last = vnis[-1]
    one, two = lab.vm(), lab.vm()
    for host, vm, n in ((big, one, 1), (small, two, 2)):
        host.add_vnic(
            f"m{last}-{n}", vm=vm, mac=f"52:54:00:21:00:0{n}", vni=last,
            ips=[f"10.64.0.{n}"], security_groups=["open"],
        )  # fmt: skip

    for vni in vnis:
        assert "UP" in big.ip("link", "show", vxlan_name(vni)), f"vni {vni}"
    assert one.ping("10.64.0.2").received == 3
    if mode == "static-peers":
        assert not _joined(big, v6) & {flood_group(vni, 4) for vni in vnis}
    else:
        assert {flood_group(vni, 6 if v6 else 4) for vni in vnis} <= _joined(big, v6)
        if not v6:  # IPv6 has no count limit; its memory limit covers ~2,300 groups
            assert "raised net.ipv4.igmp_max_memberships from 20" in big.daemon.log()
            assert _sysctl(big, "net.ipv4.igmp_max_memberships") >= VNIS
    assert _sysctl(None, "net.ipv4.igmp_max_memberships") == root_igmp
    assert _sysctl(None, "net.core.optmem_max") == root_optmem
