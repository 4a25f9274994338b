"""Smoke tests of the guest tooling itself: real guests boot, talk, and are driven reliably.

Two guests on taps of a Linux bridge, all inside a network namespace this test creates,
ping each other over IPv4 and IPv6 and run a short iperf3. No butterfly code is involved:
when this fails, the tooling (or the host) is broken, not the switch.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from butterfly_lab.guest import (
    Guest,
    GuestCommandTimeout,
    GuestFactory,
    GuestImage,
    GuestState,
    TapNic,
    VhostUserNic,
)

# Documentation prefixes, and only inside the test's own namespace.
A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


@dataclasses.dataclass(frozen=True)
class Lan:
    netns: str
    bridge: str
    taps: tuple[str, str]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A netns holding a bridge and two taps; every name starts with a run-unique prefix."""
    _reap_stale_netns()
    prefix = f"bfg{os.getpid()}"
    lan = Lan(netns=prefix, bridge=f"{prefix}br", taps=(f"{prefix}t0", f"{prefix}t1"))
    try:
        _ip("netns", "add", lan.netns)
        _ip("-n", lan.netns, "link", "add", lan.bridge, "type", "bridge")
        _ip("-n", lan.netns, "link", "set", lan.bridge, "up")
        for tap in lan.taps:
            _ip("-n", lan.netns, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip("-n", lan.netns, "link", "set", tap, "master", lan.bridge, "up")
        yield lan
    finally:
        for link in (*lan.taps, lan.bridge):
            _ip("-n", lan.netns, "link", "del", link, check=False)
        _ip("netns", "del", lan.netns, check=False)
        # Nothing of ours may survive in the root namespace either.
        for link in (*lan.taps, lan.bridge):
            if Path(f"/sys/class/net/{link}").exists():
                _ip("link", "del", link, check=False)


def _reap_stale_netns() -> None:
    """Delete namespaces of earlier runs killed before their teardown (taps and bridge go
    with them); a namespace is stale only if the pid in its name is gone."""
    for line in _ip("netns", "list").stdout.splitlines():
        m = re.fullmatch(r"bfg(\d+)", line.split(" ", 1)[0])
        if m is not None and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", m.group(0), check=False)


def _report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[guest smoke] {text}")


def _rtt(ping_output: str) -> str:
    """min/avg/max round trip (the first packet also waits for ARP/ND)."""
    m = re.search(r"min/avg/max = ([\d.]+/[\d.]+/[\d.]+) ms", ping_output)
    assert m is not None, ping_output
    return m.group(1)


@pytest.mark.qemu
@pytest.mark.root
def test_two_guests_on_a_bridge_ping_and_iperf3(
    guests: GuestFactory,
    lan: Lan,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    a = guests.create(
        f"{lan.netns}a", nic=TapNic(lan.taps[0]), ipv4=f"{A4}/24", ipv6=f"{A6}/64",
        netns=lan.netns,
    )  # fmt: skip
    b = guests.create(
        f"{lan.netns}b", nic=TapNic(lan.taps[1]), ipv4=f"{B4}/24", ipv6=f"{B6}/64",
        netns=lan.netns,
    )  # fmt: skip
    started = time.monotonic()
    guests.boot(a, b)
    both = time.monotonic() - started
    assert a.boot_seconds is not None and b.boot_seconds is not None
    _report(capsys, f"boot to ready: a {a.boot_seconds:.2f} s, b {b.boot_seconds:.2f} s, "
                    f"both in parallel {both:.2f} s")  # fmt: skip

    # QEMU itself holds the tap (ip netns exec execs it), so killing by pid frees it.
    assert Path(f"/proc/{a.pid}/comm").read_text().strip().startswith("qemu")
    assert a.check("cat /sys/class/net/eth0/address").strip() == a.mac

    rtt4 = _rtt(a.check(f"ping -c 5 -i 0.2 -w 10 {B4}", timeout=20))
    rtt6 = _rtt(b.check(f"ping6 -c 5 -i 0.2 -w 10 {A6}", timeout=20))
    _report(capsys, f"ping rtt min/avg/max: IPv4 {rtt4} ms, IPv6 {rtt6} ms")

    b.check(
        f"iperf3 -s -1 -B {B4} >/tmp/iperf3.log 2>&1 &"
        " for i in $(seq 50); do netstat -ltn | grep -q ':5201 ' && exit 0; sleep 0.1; done;"
        " exit 1"
    )
    out = a.check(f"iperf3 -c {B4} -t 2 -f m", timeout=30)
    m = re.search(r"([\d.]+) Mbits/sec.*receiver", out)
    assert m is not None, out
    mbps = float(m.group(1))
    record_property("iperf3_mbit_s", mbps)
    record_property("ping4_rtt_ms_min_avg_max", rtt4)
    _report(capsys, f"iperf3 TCP a->b through the bridge: {mbps:.0f} Mbit/s")


@pytest.mark.qemu
@pytest.mark.root
def test_console_reports_exit_codes_survives_timeouts_and_restarts(
    guests: GuestFactory,
) -> None:
    g = guests.create(f"bfg{os.getpid()}c")
    g.boot()
    assert g.run("echo out; echo err >&2; exit 7") == (7, "out\nerr\n")
    # Quotes, tabs and long commands arrive intact (the command travels base64-encoded).
    assert g.run("printf '%s\\t%s\\n' \"a b\" 'c'\"'\"'d'") == (0, "a b\tc'd\n")
    assert g.run(f"x={'y' * 9000}; echo ${{#x}}") == (0, "9000\n")
    with pytest.raises(GuestCommandTimeout) as timed_out:
        g.run("echo started; sleep 60", timeout=1)
    assert timed_out.value.output == "started\n"
    assert g.run("echo still here") == (0, "still here\n")

    pid = g.pid
    g.restart()
    assert g.pid != pid and not Path(f"/proc/{pid}").exists()
    assert g.run("cat /proc/uptime")[0] == 0
    g.close()
    assert g.state is GuestState.CLOSED and not g.workdir.exists()


@pytest.fixture
def vhost_user_wire(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two vhost-user sockets of DPDK's own backend, forwarding between each other.

    Stands in for butterfly's backend to prove the guest side of vhost-user works. testpmd
    polls a core at 100 %: one of the two, leaving the other to the guests.
    """
    prefix = f"bfg{os.getpid()}vhu"
    socks = (tmp_path / "vhu0.sock", tmp_path / "vhu1.sock")
    argv = [
        "dpdk-testpmd", "-l", "0,1", "--no-pci", "--no-huge", "-m", "512",
        "--file-prefix", prefix,
        "--vdev", f"net_vhost0,iface={socks[0]}", "--vdev", f"net_vhost1,iface={socks[1]}",
        "--", "--total-num-mbufs=8192", "--forward-mode=io", "--auto-start",
    ]  # fmt: skip
    log = tmp_path / "testpmd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not all(s.exists() for s in socks):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "testpmd made no sockets in 20 s"
            time.sleep(0.05)
        yield socks
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


@pytest.mark.qemu
@pytest.mark.root
@pytest.mark.needs("dpdk-testpmd")
def test_two_guests_over_vhost_user_ping(
    guests: GuestFactory,
    vhost_user_wire: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"bfg{os.getpid()}"
    a = guests.create(f"{prefix}va", nic=VhostUserNic(vhost_user_wire[0]), ipv4=f"{A4}/24")
    b = guests.create(f"{prefix}vb", nic=VhostUserNic(vhost_user_wire[1]), ipv4=f"{B4}/24")
    guests.boot(a, b)
    assert a.boot_seconds is not None and b.boot_seconds is not None
    rtt = _rtt(a.check(f"ping -c 5 -i 0.2 -w 10 {B4}", timeout=20))
    _report(
        capsys,
        f"vhost-user (testpmd backend): boot {a.boot_seconds:.2f}/{b.boot_seconds:.2f} s, "
        f"ping rtt min/avg/max {rtt} ms",
    )


def test_vhost_user_command_line(tmp_path: Path) -> None:
    """What Debian 12's QEMU needs for vhost-user under TCG; no boot, no root."""
    image = GuestImage(kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd", manifest={})
    sock = tmp_path / "vhu.sock"
    nic = VhostUserNic(sock, mac="52:54:00:00:00:01")
    with Guest(image, name="argv", nic=nic, run_dir=tmp_path) as g:
        argv = " ".join(g.argv())
    assert "memory-backend-memfd,id=mem,size=128M,share=on" in argv
    assert "-numa node,memdev=mem" in argv
    assert f"socket,id=c0,path={sock},reconnect=1" in argv
    assert "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:00:00:01" in argv
