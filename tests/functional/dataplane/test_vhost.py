"""vhost-user vnics in the kernel data plane: a persistent tap that a backend serves.

The port, its filtering, anti-spoofing and counters are the kernel's, as for a TAP
vnic; the backend (real worker processes, started in the host's namespace) only moves
frames between the tap and the frontend. A hand-written frontend plays the guest.
"""

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from butterfly.daemon.main import SupervisedVhostPorts
from butterfly.dataplane.guard import ANCHORS
from butterfly.dataplane.naming import bridge_name, tap_name, vhost_socket_path
from butterfly.dataplane.settings import VHOST_TAP_QUEUE
from butterfly.errors import DataplaneError, NotSupported
from butterfly.model import State, Vnic, VnicType, make_vnic
from butterfly.vhost import VhostSupervisor

from .conftest import Dataplane, Host, Lab, link_index, netns_vnic, open_sg, plug, wait_for
from .test_atomicity import Faults, every_step_fails_cleanly

# The frontend lives with the backend's own tests (tests/functional is on sys.path).
from vhost.frontend import Frontend  # isort: skip

pytestmark = pytest.mark.root

MAC_V, MAC_N = "52:54:00:00:07:01", "52:54:00:00:07:02"
IP_V, IP_N = "10.7.0.1", "10.7.0.2"


class FailingPorts:
    """A backend that refuses every socket (a full disk, a bad socket dir)."""

    def serve(self, vnic_id: str, *, socket_path: str, tap_name: str) -> None:
        raise DataplaneError(f"vhost: cannot listen on socket {socket_path}: refused by the test")

    def stop(self, vnic_id: str) -> None:
        pass


@pytest.fixture
def supervisor() -> Iterator[VhostSupervisor]:
    """Started lazily by the first vnic served, from the host's thread (so its
    workers are born in the host's namespace); stopped before the lab closes."""
    made = VhostSupervisor(workers=1)
    yield made
    made.stop()


def vhost_vnic(vnic_id: str = "v", **fields: object) -> Vnic:
    values: dict[str, object] = {"mac": MAC_V, "vni": 7, "ips": (IP_V,), **fields}
    return make_vnic(Vnic(id=vnic_id, **values))  # type: ignore[arg-type]


def served_dataplane(host: Host, supervisor: VhostSupervisor, **options: object) -> Dataplane:
    return host.dataplane(vhost=SupervisedVhostPorts(supervisor), **options)


def frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, marker: str) -> bytes:
    udp = IP(src=src_ip, dst=dst_ip) / UDP(dport=9) / Raw(load=marker.encode())
    return bytes(Ether(src=src_mac, dst=dst_mac) / udp)


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _taps_held(pid: int) -> int:
    """How many taps process ``pid`` has open."""
    fds = os.listdir(f"/proc/{pid}/fd")
    return sum(_readlink(f"/proc/{pid}/fd/{fd}") == "/dev/net/tun" for fd in fds)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""


def test_without_a_backend_vhost_user_vnics_are_not_supported(lab: Lab) -> None:
    dataplane = lab.host().dataplane()
    state = State()
    vnic = vhost_vnic()
    state.put_vnic(vnic)
    with pytest.raises(NotSupported, match="without a vhost-user backend"):
        dataplane.plug(vnic, None, state)
    assert dataplane.attachment(vnic).path.endswith("/qemu-vhost-v")


def test_a_vhost_user_vnic_is_a_served_tap_filtered_and_counted_by_the_kernel(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    host, guest = lab.host(), lab.guest()
    dataplane = served_dataplane(host, supervisor)
    state = State()
    open_sg(dataplane, state)
    vnic = vhost_vnic(security_groups=("open",))
    plug(dataplane, state, vnic)
    plug(
        dataplane,
        state,
        netns_vnic("n", guest, MAC_N, (IP_N,), vni=7, security_groups=("open",)),
    )
    path = vhost_socket_path(host.socket_dir, "v")
    assert dataplane.attachment(vnic).path == path
    assert dataplane.attachment(vnic).mtu == 1450
    assert is_socket(path), "the socket exists before any guest connects"
    [port] = json.loads(host.ip("-d", "-j", "link", "show", tap_name("v")))
    assert port["linkinfo"]["info_kind"] == "tun"
    assert port["master"] == bridge_name(7)
    assert port["mtu"] == 1450
    assert "NO-CARRIER" not in port["flags"], "the backend holds the tap"

    fe = Frontend(path)
    try:
        fe.negotiate()
        assert guest.agent.call("sniff_start", ifname=tap_name("n"))["ok"]
        fe.transmit(frame("52:54:00:00:07:66", MAC_N, IP_V, IP_N, "spoofed"))
        fe.transmit(frame(MAC_V, MAC_N, IP_V, IP_N, "from-guest"))
        capture = guest.agent.call(
            "sniff_wait", ifname=tap_name("n"), marker=b"from-guest".hex(), timeout=5
        )
        assert capture["ok"], "the guest's frame never reached the other vnic"
        assert not any(b"spoofed".hex() in got for got in capture["frames"])

        fe.post_receive_buffers(8)
        guest.agent.call(
            "send_frames",
            ifname=tap_name("n"),
            frames=[frame(MAC_N, MAC_V, IP_N, IP_V, "to-guest").hex()],
        )
        wait_for(
            lambda: any(chain.endswith(b"to-guest") for chain in fe.received(1)),
            "the frame to reach the guest",
        )
        counters = dataplane.counters(vnic)
        assert counters.in_bytes > 0 and counters.out_bytes > 0
        assert "tap, vhost-user" in dataplane.graph(state)
    finally:
        fe.close()


def test_replacing_keeps_the_session_and_unplugging_disconnects_the_guest(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    host = lab.host()
    dataplane = served_dataplane(host, supervisor)
    state = State()
    plug(dataplane, state, vhost_vnic())
    index = link_index(host, "v")
    path = vhost_socket_path(host.socket_dir, "v")
    fe = Frontend(path)
    try:
        fe.negotiate()
        moved = vhost_vnic(vni=8, ips=("10.8.0.1",))
        plug(dataplane, state, moved)
        assert link_index(host, "v") == index
        assert fe.is_connected(), "a replacement of the same type must keep the guest"
        [port] = json.loads(host.ip("-j", "link", "show", tap_name("v")))
        assert port["master"] == bridge_name(8)

        state.remove_vnic("v")
        dataplane.unplug(moved, state)
        wait_for(lambda: not fe.is_connected(), "the guest to be disconnected")
        assert not os.path.exists(path)
        assert not [
            link for link in json.loads(host.ip("-j", "link", "show"))
            if link["ifname"].startswith("bf") and link["ifname"] not in ANCHORS
        ]  # fmt: skip
    finally:
        fe.close()


def test_replacing_by_a_tap_vnic_stops_serving_and_back_to_vhost_user_serves_again(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    host = lab.host()
    dataplane = served_dataplane(host, supervisor)
    state = State()
    vnic = vhost_vnic()
    plug(dataplane, state, vnic)
    path = vhost_socket_path(host.socket_dir, "v")
    index = link_index(host, "v")
    plug(dataplane, state, replace(vnic, type=VnicType.TAP))
    assert not os.path.exists(path)
    assert link_index(host, "v") != index, "a TAP vnic's guest must not share the old tap"
    plug(dataplane, state, vnic)
    assert is_socket(path)
    fe = Frontend(path)
    try:
        fe.negotiate()
        assert fe.is_connected()
    finally:
        fe.close()


def _queue(host: Host, vnic_id: str) -> int:
    [link] = json.loads(host.ip("-j", "link", "show", tap_name(vnic_id)))
    return int(link["txqlen"])


def test_a_vhost_user_vnics_tap_queues_a_scheduler_slice_of_frames_and_keeps_it(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    """Its worker may share a CPU with the sender: the tap holds what arrives
    meanwhile (see VHOST_TAP_QUEUE). A TAP vnic's tap keeps the kernel's length."""
    host = lab.host()
    dataplane = served_dataplane(host, supervisor)
    state = State()
    plug(dataplane, state, vhost_vnic())
    plug(dataplane, state, make_vnic(Vnic(id="t", mac=MAC_N, vni=7, type=VnicType.TAP)))
    assert _queue(host, "v") == VHOST_TAP_QUEUE
    assert _queue(host, "t") == 1000
    index = link_index(host, "v")
    host.ip("link", "set", tap_name("v"), "txqueuelen", "1000")
    dataplane.reconcile(state)
    assert (_queue(host, "v"), link_index(host, "v")) == (VHOST_TAP_QUEUE, index)
    assert _queue(host, "t") == 1000


def test_a_guest_posting_no_buffers_holds_at_most_its_taps_queue_and_gets_it_later(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    """A tenant floods its own vhost-user guest, which takes nothing: the kernel
    holds one tap queue of frames for it (host memory a stalled guest can pin)
    and drops the rest, counted; once the guest posts buffers it gets exactly
    the queued frames (backpressure, not loss, for a guest only slow)."""
    host, guest = lab.host(), lab.guest()
    dataplane = served_dataplane(host, supervisor)
    state = State()
    open_sg(dataplane, state)
    plug(dataplane, state, vhost_vnic(security_groups=("open",)))
    plug(
        dataplane,
        state,
        netns_vnic("n", guest, MAC_N, (IP_N,), vni=7, security_groups=("open",)),
    )
    sent = VHOST_TAP_QUEUE + 1000
    fe = Frontend(vhost_socket_path(host.socket_dir, "v"))
    try:
        fe.negotiate()
        flood = frame(MAC_N, MAC_V, IP_N, IP_V, "flood").hex()
        assert guest.agent.call("send_frames", ifname=tap_name("n"), frames=[flood] * sent)["ok"]
        [port] = json.loads(host.ip("-s", "-j", "link", "show", tap_name("v")))
        dropped = port["stats64"]["tx"]["dropped"]
        assert dropped >= sent - VHOST_TAP_QUEUE - 16, port["stats64"]
        delivered = sum(chain.endswith(b"flood") for chain in fe.drain_received())
        # every frame the tap held, a few queued IPv6 frames of the guest aside
        assert VHOST_TAP_QUEUE - 16 <= delivered <= VHOST_TAP_QUEUE
    finally:
        fe.close()


def test_a_restart_serves_every_vnic_again_on_the_same_taps(lab: Lab) -> None:
    host = lab.host()
    state = State()
    first = VhostSupervisor(workers=1)
    try:
        dataplane = served_dataplane(host, first)
        plug(dataplane, state, vhost_vnic("a"))
        plug(dataplane, state, vhost_vnic("b", mac="52:54:00:00:07:03", ips=("10.7.0.3",)))
        indexes = {vnic_id: link_index(host, vnic_id) for vnic_id in ("a", "b")}
        dataplane.close()
    finally:
        first.stop()  # the daemon's exit: sockets removed, taps kept
    assert not os.path.exists(vhost_socket_path(host.socket_dir, "a"))
    second = VhostSupervisor(workers=2)
    try:
        restarted = served_dataplane(host, second)
        restarted.reconcile(state)
        for vnic_id, index in indexes.items():
            assert link_index(host, vnic_id) == index
            fe = Frontend(vhost_socket_path(host.socket_dir, vnic_id))
            try:
                fe.negotiate()
                assert fe.is_connected()
            finally:
                fe.close()
        # two vnics, two workers: one each (several busy vnics use several CPUs)
        assert sorted(_taps_held(pid) for pid in second.worker_pids()) == [1, 1]
        # a vnic gone from the state is no longer served, and its tap goes
        state.remove_vnic("b")
        restarted.reconcile(state)
        assert not os.path.exists(vhost_socket_path(host.socket_dir, "b"))
        assert is_socket(vhost_socket_path(host.socket_dir, "a"))
        restarted.cleanup()
        assert not os.path.exists(vhost_socket_path(host.socket_dir, "a"))
    finally:
        second.stop()


def test_a_backend_failure_leaves_the_kernel_as_it_was(lab: Lab) -> None:
    host, guest = lab.host(), lab.guest()
    dataplane = host.dataplane(vhost=FailingPorts())
    state = State()
    plug(dataplane, state, netns_vnic("n", guest, MAC_N, (IP_N,), vni=7))
    before = host.exec("nft", "list", "ruleset"), host.ip("-j", "link", "show")
    vnic = vhost_vnic()
    state.put_vnic(vnic)
    with pytest.raises(DataplaneError, match="refused by the test"):
        dataplane.plug(vnic, None, state)
    state.remove_vnic("v")
    assert (host.exec("nft", "list", "ruleset"), host.ip("-j", "link", "show")) == before


def test_every_step_of_a_vhost_user_plug_and_unplug_fails_cleanly(
    lab: Lab, supervisor: VhostSupervisor
) -> None:
    host, guest = lab.host(), lab.guest()
    faults = Faults()
    dataplane = served_dataplane(host, supervisor, fault_hook=faults)
    state = State()
    plug(dataplane, state, netns_vnic("n", guest, MAC_N, (IP_N,), vni=7))
    path = vhost_socket_path(host.socket_dir, "v")
    vnic = vhost_vnic()

    def add() -> None:
        replaced = state.put_vnic(vnic)
        try:
            dataplane.plug(vnic, replaced, state)
        except DataplaneError:
            state.remove_vnic("v")
            raise

    every_step_fails_cleanly(host, [guest], faults, add)
    assert any(step.startswith("serve ") for step in faults.steps)
    assert is_socket(path)
    tap = vhost_vnic(type=VnicType.TAP)

    def to_tap() -> None:
        replaced = state.put_vnic(tap)
        try:
            dataplane.plug(tap, replaced, state)
        except DataplaneError:
            state.put_vnic(vnic)
            raise
        assert not os.path.exists(path)

    every_step_fails_cleanly(host, [guest], faults, to_tap)
    assert any(step.startswith("stop serving ") for step in faults.steps)
    plug(dataplane, state, vnic)
    assert is_socket(path)
    fe = Frontend(path)
    try:
        fe.negotiate()
        assert fe.is_connected()
    finally:
        fe.close()


def test_a_failed_unplug_serves_the_vnic_again(lab: Lab, supervisor: VhostSupervisor) -> None:
    """An unplug failing after the guest was disconnected serves the socket again."""
    host = lab.host()
    faults = Faults()
    dataplane = served_dataplane(host, supervisor, fault_hook=faults)
    state = State()
    vnic = vhost_vnic()
    plug(dataplane, state, vnic)
    path = vhost_socket_path(host.socket_dir, "v")

    def remove() -> None:
        state.remove_vnic("v")
        try:
            dataplane.unplug(vnic, state)
        except DataplaneError:
            state.put_vnic(vnic)
            assert is_socket(path), "the rolled-back unplug serves the vnic again"
            raise

    every_step_fails_cleanly(host, [], faults, remove)
    assert not os.path.exists(path)
