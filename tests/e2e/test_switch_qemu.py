"""A real QEMU guest on a TAP vnic of a real butterflyd, talking to namespace VMs.

The daemon creates the persistent tap ``bf-<id>`` in its host namespace; QEMU, started
in that namespace, attaches to it. The guest pings a NETNS vnic of its VNI (and is
pinged back), and gets nothing from one of another VNI in the same IP subnet.
"""

from __future__ import annotations

import os

import pytest
from switch_helpers import open_sg

from butterfly.dataplane.naming import tap_name
from butterfly_lab.guest import GuestFactory, TapNic
from butterfly_lab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.qemu]

GUEST_MAC = "52:54:00:00:70:01"


def test_guest_on_a_tap_vnic_reaches_its_vni_only(lab: Lab, guests: GuestFactory) -> None:
    host = lab.host()
    open_sg(host)
    host.add_vnic("qemu", mac=GUEST_MAC, vni=700, ips=["10.70.0.1"], security_groups=["open"])
    same, other = lab.vm(), lab.vm()
    host.add_vnic(
        "same", vm=same, mac="52:54:00:00:70:02", vni=700, ips=["10.70.0.2"],
        security_groups=["open"],
    )  # fmt: skip
    host.add_vnic(
        "other", vm=other, mac="52:54:00:00:70:03", vni=701, ips=["10.70.0.3"],
        security_groups=["open"],
    )  # fmt: skip
    guest = guests.create(
        f"bfl{os.getpid()}q",
        nic=TapNic(tap_name("qemu"), mac=GUEST_MAC),
        ipv4="10.70.0.1/24",
        netns=host.name,
    )
    guest.boot()

    guest.check("ping -c 3 -W 2 10.70.0.2", timeout=20)
    result = same.ping("10.70.0.1")
    assert result.received == result.transmitted == 3, result.output
    code, output = guest.run("ping -c 2 -W 1 10.70.0.3", timeout=20)
    assert code != 0 and " 0 packets received" in output, output
    assert other.blocked("icmp", "10.70.0.1", timeout=1)
