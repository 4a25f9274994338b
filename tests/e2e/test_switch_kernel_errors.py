"""Kernel refusals reach the caller as sentences: the object, the cause, what to do.

Each case is provoked for real on a butterflyd host, as an operator would
meet it: a container whose ``/proc/sys`` is read-only (so the multicast
limits cannot be raised, ENOBUFS at the 21st VNI), an interface name already
taken in a vnic's namespace (EEXIST), a namespace path the kernel cannot
open (ENAMETOOLONG, ENOENT), a daemon without CAP_NET_ADMIN (EPERM). The
reply names all three parts, never a bare ``[Errno N]``, and the refused
request changes nothing in the daemon's view or the kernel's.
"""

from __future__ import annotations

import pytest

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import bridge_name, vxlan_name
from butterfly_lab.lab import Host, Lab, wait_for

pytestmark = pytest.mark.root

READ_ONLY_PROC_SYS = [
    "sh", "-c",
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"',
    "read-only-proc-sys",
]  # fmt: skip
"""A container's view: butterflyd may not change any sysctl."""


def _refused(host: Host, request: MessageV0.Request) -> str:
    """The reply's description of a request that must fail and change nothing."""
    before = host.snapshot()
    response = host.call(request, check=False)
    assert not response.status.status
    description = response.status.error.description
    assert "[Errno" not in description and "None" not in description, description
    assert host.snapshot() == before
    return description


def _nic_add(vnic_id: str, vni: int, **fields: object) -> MessageV0.Request:
    request = MessageV0.Request()
    request.nic_add.id = vnic_id
    request.nic_add.mac = f"52:54:00:30:{vni // 256 % 256:02x}:{vni % 256:02x}"
    request.nic_add.vni = vni
    request.nic_add.type = MessageV0.Nic.TAP
    for name, value in fields.items():
        setattr(request.nic_add, name, value)
    return request


def test_the_21st_vni_in_a_read_only_container_says_which_limit_and_what_to_do(
    lab: Lab,
) -> None:
    host = lab.host(start=False)
    host.daemon.wrapper = READ_ONLY_PROC_SYS
    host.start()
    for vni in range(3000, 3020):
        host.call(_nic_add(f"ro{vni}", vni))
    description = _refused(host, _nic_add("ro3020", 3020))
    assert description.startswith("nic 'ro3020': netlink: changing link bfvx3020: "), description
    for part in (
        "ENOBUFS",
        "net.ipv4.igmp_max_memberships = 20",
        "could not raise (EROFS: Read-only file system)",
        "--vxlan-peers",
    ):
        assert part in description, description
    links = host.ip("link", "show")
    assert bridge_name(3020) not in links and vxlan_name(3020) not in links
    assert "cannot raise net.ipv4.igmp_max_memberships from 20" in host.daemon.log()


def test_an_interface_name_taken_in_the_vnic_namespace(lab: Lab) -> None:
    host = lab.host()
    vm = lab.vm()
    vm.ip("link", "add", "bf-clash", "type", "veth", "peer", "name", "other")
    description = _refused(host, _nic_add("clash", 3100, type=MessageV0.Nic.NETNS, path=vm.name))
    assert "nic 'clash'" in description and "bf-clash" in description, description
    assert "already exists (EEXIST" in description and "remove or rename" in description


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("/run/netns/" + "n" * 300, "a name is longer than the kernel accepts (ENAMETOOLONG"),
        ("bfl-no-such-namespace", "does not exist (ENOENT"),
    ],
)
def test_a_namespace_path_the_kernel_cannot_open(lab: Lab, path: str, cause: str) -> None:
    host = lab.host()
    description = _refused(host, _nic_add("nons", 3200, type=MessageV0.Nic.NETNS, path=path))
    assert description.startswith("nic 'nons': path "), description
    assert cause in description, description


def test_a_daemon_without_cap_net_admin_says_to_run_as_root(lab: Lab) -> None:
    host = lab.host(start=False)
    host.daemon.wrapper = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
    host.start(settled=False)  # its app_status cannot read the kernel either
    description = _refused(host, _nic_add("noadmin", 3300))
    assert description.startswith("nic 'noadmin': nftables refused the change: "), description
    assert "(EPERM); run butterflyd as root" in description, description
    wait_for(
        lambda: "start-up: nftables refused the change" in host.daemon.log(),
        "the start-up reconcile's error in the log",
    )
