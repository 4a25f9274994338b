"""BGP EVPN underlay (``underlay = evpn``) with real FRR, on a fabric without multicast.

Three hosts, each with a real butterflyd and its own FRR (Debian's ``zebra`` +
``bgpd`` in the host's namespace, FRR path space ``-N``); host 0 is also the
route reflector of the other two. bgpd's configuration is what ``butterflyd
--frr-config`` writes from each host's ini file. The fabric drops every
multicast frame, so only what FRR learned lets hosts find each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from switch_helpers import BackgroundPing, open_sg

from butterfly.dataplane.naming import bridge_name, vxlan_name
from butterfly_lab.bench.evpn import INNER_SOLICITATION, captured, resolve
from butterfly_lab.bench.frr import Frr, evpn_hosts, wait_seconds
from butterfly_lab.lab import Host, Lab, LabError, Vm, wait_for

pytestmark = pytest.mark.root

VNI, OTHER_VNI = 1400, 1401
ASN = 65014


class Evpn:
    """The three hosts, their FRR, and the VMs the tests share."""

    def __init__(self, lab: Lab, hosts: list[Host], frrs: list[Frr]) -> None:
        self.lab = lab
        self.hosts = hosts
        self.frrs = frrs

    def vm(self, host: int, vnic_id: str, *, vni: int, mac: str, ip: str, **extra: object) -> Vm:
        vm = self.lab.vm()
        groups = () if extra.get("bypass_filtering") else ("open",)
        self.hosts[host].add_vnic(
            vnic_id,
            vm=vm,
            mac=mac,
            vni=vni,
            ips=[ip],
            security_groups=extra.pop("security_groups", groups),  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        )
        return vm

    def learned_everywhere(self, mac: str, vni: int, vtep: str | None, but: int) -> bool:
        """Whether every host but ``but`` forwards ``mac`` to ``vtep`` (None: nowhere)."""
        return all(
            _fdb_vtep(host, vni, mac) == vtep
            for index, host in enumerate(self.hosts)
            if index != but
        )


def _fdb_vtep(host: Host, vni: int, mac: str) -> str | None:
    """The VTEP the VNI's VXLAN device sends ``mac`` to (an FRR extern_learn entry);
    LabError when the host does not carry the VNI."""
    entries = json.loads(host.exec("bridge", "-j", "fdb", "show", "dev", vxlan_name(vni)))
    for entry in entries:
        if entry.get("mac") == mac and "dst" in entry:
            return str(entry["dst"])
    return None


@pytest.fixture(scope="module")
def evpn(lab: Lab) -> Iterator[Evpn]:
    hosts, frrs = evpn_hosts(lab, 3, asn=ASN)
    try:
        made = Evpn(lab, hosts, frrs)
        for index, host in enumerate(hosts):
            open_sg(host)
            # Every host keeps carrying the VNI, whichever tests run.
            made.vm(index, f"anc{index}", vni=VNI, mac=f"52:54:00:14:01:0{index}",
                    ip=f"10.14.0.{200 + index}")  # fmt: skip
        yield made
    finally:
        for frr in frrs:
            frr.close()


@pytest.mark.needs("frr")
def test_frr_config_is_generated_from_the_ini_file(evpn: Evpn) -> None:
    reflector = Path(evpn.frrs[0].folder, "bgpd.conf").read_text()
    client = Path(evpn.frrs[1].folder, "bgpd.conf").read_text()
    assert f"router bgp {ASN}" in client and "advertise-all-vni" in client
    assert f"neighbor {evpn.hosts[0].address} peer-group butterfly" in client
    assert "route-reflector-client" in reflector and "bgp listen range" in reflector


@pytest.mark.needs("frr")
def test_one_vni_on_three_hosts(evpn: Evpn) -> None:
    """The MACs are advertised before any VM speaks; then everyone reaches everyone."""
    vms = [
        evpn.vm(i, f"a{i}", vni=VNI, mac=f"52:54:00:14:00:0{i}", ip=f"10.14.0.{i + 1}")
        for i in range(3)
    ]
    for i, host in enumerate(evpn.hosts):
        vxlan = json.loads(host.ip("-d", "-j", "link", "show", vxlan_name(VNI)))[0]
        data = vxlan["linkinfo"]["info_data"]
        assert "group" not in data and data["learning"] is False, data
        groups = host.ip("maddr", "show", "dev", host.underlay)
        assert "230." not in groups and "ff05::" not in groups, groups
        wait_for(
            lambda i=i: evpn.learned_everywhere(
                f"52:54:00:14:00:0{i}", VNI, evpn.hosts[i].address, i
            ),
            f"every other host learning vnic a{i} from FRR, before any VM spoke",
        )
    for i, vm in enumerate(vms):
        for j in range(3):
            if i != j:
                result = vm.ping(f"10.14.0.{j + 1}", count=2)
                assert result.received == 2, (i, j, result.output)


@pytest.mark.needs("frr")
def test_other_vnis_with_the_same_addresses_stay_apart(evpn: Evpn) -> None:
    """VNI 1401 reuses VNI 1400's MACs and IPs on hosts 0 and 1 only."""
    near = evpn.vm(0, "o0", vni=OTHER_VNI, mac="52:54:00:14:00:00", ip="10.14.0.1")
    far = evpn.vm(1, "o1", vni=OTHER_VNI, mac="52:54:00:14:00:01", ip="10.14.0.2")
    far.listen("tcp", 1401)
    assert near.reaches("tcp", "10.14.0.2", 1401), "the positive control"
    # 10.14.0.3 exists in VNI 1400 only (host 2): nothing answers in VNI 1401.
    assert near.blocked("icmp", "10.14.0.3", timeout=1)
    assert _fdb_vtep(evpn.hosts[0], OTHER_VNI, "52:54:00:14:00:02") is None
    assert far.reaches("icmp", "10.14.0.1")


@pytest.mark.needs("frr")
def test_security_groups_apply_across_hosts(evpn: Evpn) -> None:
    host = evpn.hosts[2]
    host.cli(
        "sg", "add", "web14",
        "+", "sg", "rule", "add", "web14", "--ip-proto", "tcp", "--port", "80",
        "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    server = evpn.vm(
        2, "srv14", vni=VNI, mac="52:54:00:14:00:10", ip="10.14.0.10", security_groups=["web14"]
    )
    client = evpn.vm(0, "cli14", vni=VNI, mac="52:54:00:14:00:11", ip="10.14.0.11")
    for port in (80, 81):
        server.listen("tcp", port)
    assert client.reaches("tcp", "10.14.0.10", 80)
    assert client.blocked("tcp", "10.14.0.10", 81)
    assert client.blocked("icmp", "10.14.0.10")


@pytest.mark.needs("frr")
def test_deleted_vnic_is_withdrawn_everywhere_within_2_s(evpn: Evpn) -> None:
    mac = "52:54:00:14:00:20"
    evpn.vm(2, "gone14", vni=VNI, mac=mac, ip="10.14.0.20")
    wait_for(lambda: evpn.learned_everywhere(mac, VNI, evpn.hosts[2].address, 2), "learning")
    evpn.hosts[2].delete_vnic("gone14")
    wait_seconds(lambda: evpn.learned_everywhere(mac, VNI, None, 2), "withdrawal", 2)
    for host in evpn.hosts[:2]:
        neighbours = host.ip("neigh", "show", "dev", bridge_name(VNI), "nud", "all")
        assert "10.14.0.20 " not in neighbours


@pytest.mark.needs("frr")
def test_kill_9_of_butterflyd_keeps_traffic(evpn: Evpn) -> None:
    left = evpn.vm(0, "k0", vni=VNI, mac="52:54:00:14:00:30", ip="10.14.0.30")
    evpn.vm(1, "k1", vni=VNI, mac="52:54:00:14:00:31", ip="10.14.0.31")
    ping = BackgroundPing(left, "10.14.0.31", interval=0.05)
    try:
        ping.wait_replies(5)
        evpn.hosts[1].kill()
        before = ping.replies
        ping.wait_replies(before + 20)
        evpn.hosts[1].start()
        ping.wait_replies(ping.replies + 20)
    finally:
        output = ping.stop()
    assert "bytes from" in output
    assert evpn.frrs[0].remote_macs(VNI).get("52:54:00:14:00:31") == evpn.hosts[1].address


@pytest.mark.needs("frr")
def test_frr_restarted_comes_back_to_the_same_state(evpn: Evpn) -> None:
    left = evpn.vm(1, "f1", vni=VNI, mac="52:54:00:14:00:40", ip="10.14.0.40")
    evpn.vm(2, "f2", vni=VNI, mac="52:54:00:14:00:41", ip="10.14.0.41")
    frr = evpn.frrs[1]
    wait_for(
        lambda: frr.remote_macs(VNI).get("52:54:00:14:00:41") == evpn.hosts[2].address, "learning"
    )
    assert left.reaches("icmp", "10.14.0.41")
    before = frr.remote_macs(VNI)
    frr.kill()
    # The kernel keeps forwarding while FRR is gone.
    assert left.reaches("icmp", "10.14.0.41")
    frr.start()
    frr.wait_established()
    wait_for(lambda: frr.remote_macs(VNI) == before, "FRR relearning the same MACs", timeout=30)
    assert left.reaches("icmp", "10.14.0.41")
    assert "52:54:00:14:00:40" in evpn.frrs[0].remote_macs(VNI)


@pytest.mark.needs("frr")
def test_vm_moved_is_reached_at_its_new_host_within_2_s(evpn: Evpn) -> None:
    mac, ip = "52:54:00:14:00:50", "10.14.0.50"
    watcher = evpn.vm(1, "w14", vni=VNI, mac="52:54:00:14:00:51", ip="10.14.0.51")
    # Host 0 keeps the VNI after the VM left: it must learn where the VM went.
    evpn.vm(0, "stay14", vni=VNI, mac="52:54:00:14:00:52", ip="10.14.0.52")
    evpn.vm(0, "mv14", vni=VNI, mac=mac, ip=ip)
    assert watcher.reaches("icmp", ip)
    evpn.hosts[0].delete_vnic("mv14")
    evpn.vm(2, "mv14", vni=VNI, mac=mac, ip=ip)
    start = time.monotonic()
    wait_seconds(lambda: watcher.probe("icmp", ip, timeout=0.1), "the moved VM answering", 2)
    assert time.monotonic() - start < 2
    wait_seconds(
        lambda: evpn.learned_everywhere(mac, VNI, evpn.hosts[2].address, 2),
        "every other host forwarding the moved VM's MAC to its new host",
        2,
    )


@pytest.mark.needs("frr")
def test_a_vnic_bypassing_filtering_is_advertised_before_it_speaks(evpn: Evpn) -> None:
    mac = "52:54:00:14:00:60"
    evpn.vm(2, "byp14", vni=VNI, mac=mac, ip="10.14.0.60", bypass_filtering=True)
    port = json.loads(evpn.hosts[2].exec("bridge", "-j", "fdb", "show", "dev", "bf-byp14"))
    assert any(e["mac"] == mac and "static" in e.get("state", "") for e in port), port
    wait_for(lambda: evpn.learned_everywhere(mac, VNI, evpn.hosts[2].address, 2), "learning")
    client = evpn.vm(0, "byc14", vni=VNI, mac="52:54:00:14:00:61", ip="10.14.0.61")
    assert client.reaches("icmp", "10.14.0.60")


@pytest.mark.needs("frr")
def test_status_shows_sessions_and_what_each_vni_learned(evpn: Evpn, tmp_path: Path) -> None:
    reflector = evpn.hosts[0]
    wait_for(
        lambda: all(
            evpn.frrs[0].remote_macs(VNI).get(f"52:54:00:14:01:0{i}") == evpn.hosts[i].address
            for i in (1, 2)
        ),
        "the anchors learned",
    )
    status = reflector.cli("status")
    for client in evpn.hosts[1:]:
        assert f"{client.address} Established" in status, status
    assert f"EVPN: remote VTEPs {evpn.hosts[1].address}, {evpn.hosts[2].address};" in status
    assert f'"vtep:{evpn.hosts[2].address}" [shape=box3d' in status
    svg = tmp_path / "status.svg"
    reflector.cli("status", "--svg", str(svg))
    assert f"remote VTEP {evpn.hosts[1].address}" in svg.read_text()


def test_butterflyd_runs_without_frr(lab: Lab) -> None:
    """No FRR at all: the daemon starts, serves, keeps vnics of one host
    together, and its status says FRR is not running."""
    host = lab.host(start=False)
    ini = Path(host.folder, "butterflyd.ini")
    ini.write_text(f"[general]\nunderlay = evpn\n[evpn]\nfrr-instance = {host.name}\n")
    host.daemon.extra_args += ["-c", str(ini)]
    host.start()
    open_sg(host)
    one, two = lab.vm(), lab.vm()
    host.add_vnic("nf1", vm=one, mac="52:54:00:14:02:01", vni=VNI, ips=["10.14.2.1"],
                  security_groups=["open"])  # fmt: skip
    host.add_vnic("nf2", vm=two, mac="52:54:00:14:02:02", vni=VNI, ips=["10.14.2.2"],
                  security_groups=["open"])  # fmt: skip
    assert one.reaches("icmp", "10.14.2.2")
    assert "FRR: not running" in host.cli("status")


@pytest.mark.needs("frr")
def test_arp_for_a_remote_vnic_is_answered_on_its_own_host(evpn: Evpn) -> None:
    """Neighbour suppression: the VM's ARP for a vnic of another host gets its
    answer from its own host's bridge; no broadcast crosses the underlay. The
    positive control: an ARP for an address no vnic has is flooded to the
    two other VTEPs, and the capture counts it."""
    client = evpn.vm(0, "arp14", vni=VNI, mac="52:54:00:14:00:70", ip="10.14.0.70")
    wait_for(
        lambda: evpn.learned_everywhere("52:54:00:14:01:01", VNI, evpn.hosts[1].address, 1),
        "the anchor of host 1 learned",
    )
    with captured(evpn.hosts[0]) as frames:
        assert not resolve(client, "10.14.0.250")
    assert frames[0] >= 2, "the unknown address's ARP was not seen flooded"
    with captured(evpn.hosts[0]) as frames:
        for _ in range(5):
            assert resolve(client, "10.14.0.201")
    assert frames[0] == 0


@pytest.mark.needs("frr")
def test_neighbour_solicitation_for_a_remote_vnic_is_answered_on_its_own_host(
    evpn: Evpn,
) -> None:
    """The same for IPv6: the solicitation for a remote vnic's address is answered
    by the host's bridge; one for an address nobody has crosses (the control)."""
    client = evpn.lab.vm()
    evpn.hosts[0].add_vnic("nd14c", vm=client, mac="52:54:00:14:00:80", vni=VNI,
                           ips=["2001:db8:14::80"], security_groups=["open"])  # fmt: skip
    target = evpn.lab.vm()
    evpn.hosts[1].add_vnic("nd14t", vm=target, mac="52:54:00:14:00:81", vni=VNI,
                           ips=["2001:db8:14::81"], security_groups=["open"])  # fmt: skip
    wait_for(
        lambda: (
            "2001:db8:14::81 "
            in evpn.hosts[0].ip("neigh", "show", "dev", bridge_name(VNI), "nud", "all")
        ),
        "host 0 holding FRR's neighbour entry for the remote vnic",
    )
    with captured(evpn.hosts[0], INNER_SOLICITATION) as frames:
        assert not resolve(client, "2001:db8:14::fe")
    assert frames[0] >= 2, "the unknown address's solicitation was not seen flooded"
    with captured(evpn.hosts[0], INNER_SOLICITATION) as frames:
        for _ in range(5):
            assert resolve(client, "2001:db8:14::81")
    assert frames[0] == 0


@pytest.mark.needs("frr")
def test_vm_added_at_its_new_host_before_leaving_the_old_one(evpn: Evpn) -> None:
    """Live migration's order: the vnic exists on both hosts for a while, and the
    new host's advertisement wins, also when the old host repairs the VNI
    meanwhile (taking the MAC back would make the hosts take it from each other
    until FRR calls it a duplicate); once it is deleted at the old host, every
    host forwards to the new one within 2 s."""
    mac, ip = "52:54:00:14:00:90", "10.14.0.90"
    old, new = evpn.hosts[0], evpn.hosts[2]
    watcher = evpn.vm(1, "w14b", vni=VNI, mac="52:54:00:14:00:91", ip="10.14.0.91")
    evpn.vm(0, "mv14b", vni=VNI, mac=mac, ip=ip)
    # The new host must know the VM at its old host, as in a real migration: a MAC
    # claimed at both hosts before either heard of the other has no winner (both
    # advertise sequence number 0), and a ping can cross by flooding before that.
    wait_for(
        lambda: evpn.learned_everywhere(mac, VNI, old.address, 0), "the VM learned at its old host"
    )
    assert watcher.reaches("icmp", ip)
    evpn.vm(2, "mv14b", vni=VNI, mac=mac, ip=ip)
    wait_for(lambda: _fdb_vtep(old, VNI, mac) == new.address, "the old host forwarding to the new")
    old.exec("bridge", "link", "set", "dev", vxlan_name(VNI), "learning", "on")
    wait_for(lambda: not _learning(old, vxlan_name(VNI)), "the old host's repair of the VNI")
    time.sleep(0.5)
    moved = evpn.frrs[2].vtysh(f"show evpn mac vni {VNI} mac {mac} json").get(mac, {})
    assert moved.get("type") == "local" and not moved.get("isDuplicate"), moved
    assert _fdb_vtep(old, VNI, mac) == new.address
    old.delete_vnic("mv14b")
    wait_seconds(lambda: watcher.probe("icmp", ip, timeout=0.1), "the moved VM answering", 2)
    try:
        wait_seconds(lambda: evpn.learned_everywhere(mac, VNI, new.address, 2), "", 2)
    except LabError:
        seen = [_fdb_vtep(host, VNI, mac) for host in evpn.hosts]
        pytest.fail(f"hosts forward {mac} to {seen} 2 s after the move, not to {new.address}")


def _learning(host: Host, port: str) -> bool:
    return bool(
        json.loads(host.exec("bridge", "-j", "-d", "link", "show", "dev", port))[0]["learning"]
    )
