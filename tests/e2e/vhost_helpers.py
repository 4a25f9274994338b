"""What the vhost-user end-to-end tests share: vhost-user vnics made through the CLI as an
orchestrator would, QEMU guests attached to them (one that can reboot), and a look at
the daemon's worker processes.

The lab (hosts with a real butterflyd in a network namespace, namespace VMs, the fabric)
is butterfly_lab.lab; the guests are guest.py's.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from butterfly_lab.guest import (
    Guest,
    GuestBootError,
    GuestError,
    GuestImage,
    GuestState,
    VhostUserNic,
)
from butterfly_lab.lab import Host, LabError, wait_for

__all__ = [
    "GUEST_MTU",
    "RebootableGuest",
    "add_vhost_vnic",
    "is_socket",
    "open_sg",
    "pings",
    "set_mtu",
    "tcp_reaches",
    "vhost_guest",
    "wait_gone",
    "wait_pings",
    "worker_pids",
]

GUEST_MTU = 1450
"""The vnics' MTU in a lab (veth underlay of 1500 less VXLAN's 50): the guest's eth0
must not send larger frames, which the bridge would drop (the backend does not offer
VIRTIO_NET_F_MTU, whose value QEMU, not the backend, would set anyway)."""
_READY = re.compile(rb":bfg:ready:([^:\r\n]*):")


def open_sg(host: Host, sg_id: str = "open") -> None:
    """A security group letting everything in (IPv4), through one chained CLI call."""
    host.cli(
        "sg", "add", sg_id,
        "+", "sg", "rule", "add", sg_id, "--ip-proto", "all", "--cidr", "0.0.0.0/0",
    )  # fmt: skip


def add_vhost_vnic(
    host: Host, vnic_id: str, *, mac: str, vni: int, ip: str, sgs: tuple[str, ...] = ("open",)
) -> Path:
    """``butterfly nic add`` without ``--type`` (vhost-user, the default): the socket path
    it answers, as the original's CLI prints it."""
    argv = ["nic", "add", "--id", vnic_id, "--mac", mac, "--vni", str(vni), "--ip", ip]
    for sg in sgs:
        argv += ["--sg", sg]
    return Path(host.cli(*argv).strip())


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class RebootableGuest(Guest):
    """A guest whose ``reboot -f`` resets the machine instead of ending QEMU
    (``-action reboot=reset`` overrides guest.py's ``-no-reboot``): same QEMU process,
    same vhost-user connection, a device reset and a new kernel behind it."""

    def __init__(self, image: GuestImage, **kwargs: Any) -> None:
        extra = (*kwargs.pop("extra_qemu_args", ()), "-action", "reboot=reset")
        super().__init__(image, extra_qemu_args=extra, **kwargs)

    def reboot(self, timeout: float = 60.0) -> None:
        """Reboot from inside and wait for /init to report ready again."""
        pid = self.pid
        with self._lock:
            if self.state is not GuestState.READY:
                raise GuestError(f"guest {self.name}: reboot while {self.state.value}")
            self._send(b"reboot -f\n")
            self.state = GuestState.BOOTING
            deadline = time.monotonic() + timeout
            try:
                found = self._read_until(_READY, deadline)
                status = bytes(found.group(1))
                del self._buf[: found.end()]
                if status != b"ok":
                    raise GuestBootError(f"guest {self.name}: /init failed: {status!r}")
                self.state = GuestState.READY
                self._sync(deadline)
            except GuestError:
                self.stop()
                raise
        if self.pid != pid:
            raise GuestError(f"guest {self.name}: QEMU was replaced during the reboot")


def vhost_guest(
    image: GuestImage, name: str, socket: Path, *, mac: str, ip: str, rebootable: bool = False
) -> Guest:
    """A guest on a vhost-user socket, QEMU reconnecting by itself (``reconnect=1``)."""
    kind = RebootableGuest if rebootable else Guest
    return kind(image, name=name, nic=VhostUserNic(socket, mac=mac, reconnect=1), ipv4=f"{ip}/24")


def set_mtu(*guests: Guest) -> None:
    for guest in guests:
        guest.check(f"ip link set eth0 mtu {GUEST_MTU}")


def tcp_reaches(guest: Guest, address: str, port: int, timeout: int = 2) -> bool:
    """One TCP connection from ``guest`` (busybox nc): True when it was accepted."""
    code, _ = guest.run(f"nc -w {timeout} {address} {port} </dev/null", timeout=timeout + 15)
    return code == 0


def pings(guest: Guest, address: str, *, count: int = 3) -> bool:
    code, _ = guest.run(f"ping -c {count} -W 2 {address}", timeout=count * 3 + 15)
    return code == 0


def wait_pings(guest: Guest, address: str, what: str, timeout: float = 30) -> None:
    """Until one ping gets through (a guest reconnecting takes a moment)."""
    deadline = time.monotonic() + timeout
    while not pings(guest, address, count=1):
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}")


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's child processes (its vhost workers; tracers are not in these tests)."""
    children: list[int] = []
    for path in glob.glob(f"/proc/{daemon_pid}/task/*/children"):
        try:
            with open(path, encoding="ascii") as file:
                children += [int(pid) for pid in file.read().split()]
        except FileNotFoundError:
            continue
    return children


def wait_gone(pids: list[int], what: str) -> None:
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), what)
