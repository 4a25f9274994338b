"""``butterfly-bench evpn``: the BGP EVPN underlay with real FRR, data plane on.

Three lab hosts (butterflyd + FRR each, host 0 the route reflector; the
fabric drops multicast) and ``--vnis`` VNIs (100). Two measures:

* time from ``nic_add`` on host 0 to the new vnic answering a ping from a
  VM of the same VNI on each other host (FRR advertising, the other hosts
  installing, ARP answered), against the ``nic_add`` reply alone, measured
  in the same run;
* broadcast frames that cross the underlay per ARP resolution of a remote
  vnic, with butterfly's neighbour suppression and, as the baseline, with
  it turned off by hand on host 0's VXLAN port (``bridge link set ...
  neigh_suppress off``), counted by tcpdump on host 0's underlay.

The vnics bypass filtering (no security group to set up on 300 of them).
"""

import argparse
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from butterfly.dataplane.naming import VXLAN_PREFIX, vxlan_name
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table
from butterfly_lab.bench.frr import evpn_hosts, frr_available
from butterfly_lab.lab import Host, Lab, Vm, wait_for

__all__ = ["BumCapture", "add_arguments", "resolve", "run"]

INNER_BROADCAST = "udp dst port 4789 and ether[50:4] = 0xffffffff and ether[54:2] = 0xffff"
"""VXLAN over IPv4 (no options): the inner Ethernet destination starts at byte 50."""
INNER_SOLICITATION = (
    "udp dst port 4789 and ether[62:2] = 0x86dd and ether[70] = 58 and ether[104] = 135"
)
"""An inner IPv6 packet (no extension header) carrying an ICMPv6 neighbour solicitation."""


class BumCapture:
    """tcpdump on a host's underlay, counting the VXLAN frames it sends that
    match ``what`` (default: inner broadcast, ARP requests flooded to remote VTEPs)."""

    def __init__(self, host: Host, what: str = INNER_BROADCAST) -> None:
        self._process = host.popen("tcpdump", "-i", host.underlay, "-n", "-l", "-Q", "out", what)
        self._lines: list[str] = []
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if "listening on" in line:
                break
            self._lines.append(line)
        else:
            raise BenchError(f"tcpdump did not start: {''.join(self._lines)}")

    def stop(self) -> int:
        """Stop tcpdump (SIGINT, by pid); how many frames it saw."""
        time.sleep(0.2)
        self._process.send_signal(signal.SIGINT)
        output, _ = self._process.communicate(timeout=10)
        match = re.search(r"(\d+) packets captured", output)
        if match is None:
            raise BenchError(f"tcpdump said no count: {output}")
        return int(match.group(1))


@contextmanager
def captured(host: Host, what: str = INNER_BROADCAST) -> Iterator[list[int]]:
    """``with captured(host) as frames:`` ... ``frames[0]`` once the block ends."""
    capture = BumCapture(host, what)
    counted: list[int] = []
    try:
        yield counted
    finally:
        counted.append(capture.stop())


def resolve(vm: Vm, ip: str) -> bool:
    """One ARP (or, for IPv6, neighbour solicitation) resolution of ``ip``
    from ``vm`` (its neighbour cache emptied first), checked by a ping that
    must get its reply."""
    vm.ip("neigh", "flush", "all")
    done = subprocess.run(
        ["ip", "netns", "exec", vm.name, "ping", "-n", "-q", "-c", "1", "-W", "1", ip],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def set_suppression(host: Host, vni: int, on: bool) -> None:
    """Neighbour suppression of the VNI's VXLAN port (the only port butterfly sets it on)."""
    flag = "on" if on else "off"
    host.exec("bridge", "link", "set", "dev", vxlan_name(vni), "neigh_suppress", flag)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vnis", type=int, default=100, help="VNIs, one measured vnic each")
    parser.add_argument("--arps", type=int, default=20, help="ARP resolutions per case")


def _mac(vni: int, host: int) -> str:
    return f"52:54:00:{vni >> 8 & 0xFF:02x}:{vni & 0xFF:02x}:{host:02x}"


def _ip(vni: int, host: int) -> str:
    return f"10.{vni >> 8 & 0xFF}.{vni & 0xFF}.{host + 1}"


def run(args: argparse.Namespace) -> int:
    if not frr_available():
        raise SystemExit("butterfly-bench evpn: FRR is not installed (apt-get install frr)")
    busy = busy_elsewhere()
    with Lab() as lab:
        hosts, frrs = evpn_hosts(lab, 3)
        try:
            rows = _measure(lab, hosts, args.vnis, args.arps)
        finally:
            for frr in frrs:
                frr.close()
    print(
        f"EVPN underlay, data plane on: 3 lab hosts with FRR, {args.vnis} VNIs "
        f"(CPUs {busy:.0%} busy elsewhere before the run; a shared 2-core VM: noisy)"
    )
    print(table(("measure", "p50", "max", "samples"), rows, right={1, 2, 3}))
    return 0


def _measure(lab: Lab, hosts: list[Host], count: int, arps: int) -> list[tuple[str, ...]]:
    vnis = [2000 + n for n in range(count)]
    watchers: dict[int, list[Vm]] = {}
    for vni in vnis:
        watchers[vni] = []
        for index in (1, 2):
            vm = lab.vm()
            hosts[index].add_vnic(
                f"w{index}-{vni}", vm=vm, mac=_mac(vni, index), vni=vni, ips=[_ip(vni, index)],
                bypass_filtering=True,
            )  # fmt: skip
            watchers[vni].append(vm)
    replies, installed, reachable = [], [], []
    for vni in vnis:
        vm = lab.vm()
        start = time.monotonic()
        hosts[0].add_vnic(
            f"m-{vni}", vm=vm, mac=_mac(vni, 0), vni=vni, ips=[_ip(vni, 0)],
            bypass_filtering=True,
        )  # fmt: skip
        replies.append(time.monotonic() - start)
        wait_for(
            lambda: all(_forwards(host, vni, _mac(vni, 0)) for host in hosts[1:]),  # noqa: B023
            f"vni {vni} installed",
            timeout=30,
        )
        installed.append(time.monotonic() - start)
        address = _ip(vni, 0)
        wait_for(
            lambda: all(_ping(watcher, address) for watcher in watchers[vni]),  # noqa: B023
            f"vni {vni} reachable",
            timeout=30,
        )
        reachable.append(time.monotonic() - start)
    rows = [
        _row("nic_add reply (baseline)", replies),
        _row("nic_add to its MAC in both other hosts' FDB (FRR)", installed),
        _row("nic_add to reachable from both other hosts", reachable),
    ]
    vni = vnis[0]
    client = lab.vm()
    hosts[0].add_vnic(
        "arp-client", vm=client, mac=_mac(vni, 9), vni=vni, ips=[_ip(vni, 9)],
        bypass_filtering=True,
    )  # fmt: skip
    for on in (False, True):
        set_suppression(hosts[0], vni, on)
        with captured(hosts[0]) as frames:
            for n in range(arps):
                if not resolve(client, _ip(vni, 1 + n % 2)):
                    raise BenchError(f"vni {vni}: ARP resolution {n} failed")
        per_arp = frames[0] / arps
        name = "with neighbour suppression" if on else "suppression off (baseline)"
        rows.append(
            (f"underlay broadcast frames per ARP, {name}", f"{per_arp:.2f}", "-", str(arps))
        )
    _check_rules(hosts[0])
    return rows


def _forwards(host: Host, vni: int, mac: str) -> bool:
    """Whether the VNI's VXLAN device on ``host`` sends ``mac`` to a remote VTEP."""
    entries = json.loads(host.exec("bridge", "-j", "fdb", "show", "dev", vxlan_name(vni)))
    return any(entry.get("mac") == mac and "dst" in entry for entry in entries)


def _ping(vm: Vm, ip: str) -> bool:
    """One ping after emptying the VM's neighbour cache: a failed ARP would
    otherwise hold the next tries for the kernel's 1 s retransmission."""
    vm.ip("neigh", "flush", "all")
    done = subprocess.run(
        ["ip", "netns", "exec", vm.name, "ping", "-n", "-q", "-c", "1", "-W", "0.2", ip],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _row(name: str, seconds: list[float]) -> tuple[str, ...]:
    return (
        name,
        f"{percentile(seconds, 0.5) * 1000:.0f} ms",
        f"{max(seconds) * 1000:.0f} ms",
        str(len(seconds)),
    )


def _check_rules(host: Host) -> None:
    """The suppression the bench turned off and on again is butterfly's setting."""
    links = json.loads(host.exec("bridge", "-j", "-d", "link", "show"))
    off = [
        link["ifname"]
        for link in links
        if link["ifname"].startswith(VXLAN_PREFIX) and not link.get("neigh_suppress")
    ]
    if off:
        raise BenchError(f"neighbour suppression left off on {off}")
