"""kill -9 of butterflyd while traffic runs: the kernel keeps forwarding, and the restarted
daemon finds its state and leaves every kernel object exactly as it was.

Two VMs on one host exchange a fast ping (every 10 ms) and a paced iperf3 TCP stream;
the daemon is killed with SIGKILL mid-stream and started again on the same state file.
Not one ping may be lost, the stream may never stall or reset, and the daemon's view
(``nic_details ""``, ``sg_details ""``) and the kernel's (every bf* link with its ifindex
and ``ip -d`` details, static-peer entries, ``nft list ruleset``) must be identical
before the kill, while the daemon is dead, and after the restart.
"""

from __future__ import annotations

import os

import pytest
from switch_helpers import BackgroundPing, Iperf3, open_sg

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly_lab.lab import Lab, kernel_snapshot

pytestmark = pytest.mark.root

PINGS = 600  # 6 s at 10 ms: the kill and the restart happen in the first second or two


def test_kill_9_loses_no_packet_and_changes_nothing(lab: Lab) -> None:
    host = lab.host()
    open_sg(host)
    host.cli(
        "sg", "add", "web",
        "+", "sg", "rule", "add", "web", "--ip-proto", "tcp", "--port", "5201",
        "--sg-members", "clients",
        "+", "sg", "rule", "add", "web", "--ip-proto", "icmp", "--cidr", "10.50.0.0/24",
        "+", "sg", "member", "add", "clients", "10.50.0.1", "2001:db8:50::1",
    )  # fmt: skip
    one, two = lab.vm(), lab.vm()
    host.add_vnic(
        "one", vm=one, mac="52:54:00:00:50:01", vni=500, ips=["10.50.0.1", "2001:db8:50::1"],
        security_groups=["open"], ip_anti_spoof=True,
    )  # fmt: skip
    host.add_vnic(
        "two", vm=two, mac="52:54:00:00:50:02", vni=500, ips=["10.50.0.2", "2001:db8:50::2"],
        security_groups=["web"],
    )  # fmt: skip
    host.add_vnic("tap", mac="52:54:00:00:50:03", vni=501, security_groups=["web", "open"])
    peer = MessageV0.Request()
    peer.vni_peer_add.vni = 500
    peer.vni_peer_add.peer = "198.51.100.99"
    host.call(peer)
    before = host.snapshot()
    assert set(before["links"]) >= {"bf-one", "bf-two", "bf-tap", "bfbr500", "bfvx500"}

    stream = Iperf3(two, one, "10.50.0.2", seconds=PINGS / 100)
    ping = BackgroundPing(one, "10.50.0.2", interval=0.01, count=PINGS)
    ping.wait_replies(50)
    pid = host.daemon.pid
    host.kill()
    assert not os.path.exists(f"/proc/{pid}")
    assert kernel_snapshot(host) == {key: before[key] for key in ("links", "fdb", "nft")}
    host.start()
    assert host.daemon.pid != pid
    assert host.snapshot() == before
    assert ping.running(), "the traffic ended before the restart: lengthen PINGS"

    transmitted, received, output = ping.wait()
    assert (transmitted, received) == (PINGS, PINGS), output
    report = stream.result()
    assert Iperf3.stalls(report) == [], report["intervals"]
    assert report["end"]["sum_received"]["bytes"] > 0
    # Still the same after the traffic (and the restarted daemon answers).
    assert host.snapshot() == before
