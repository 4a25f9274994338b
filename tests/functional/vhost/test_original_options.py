"""The original daemon's --no-offload and --graph-cpu-core, as the backend applies them:
no offload offered to the guest (nor set on the tap), workers on the given CPUs."""

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from butterfly.dataplane.offloads import offloads
from butterfly.vhost import VhostSupervisor, VhostUserServer
from butterfly.vhost.protocol import OFFLOAD_FEATURES, Feature, Request

from .conftest import Taps, unique, wait_for
from .frontend import Frontend

pytestmark = pytest.mark.root

CPU = max(os.sched_getaffinity(0))
"""The CPU the workers are pinned to: the last one, so never what they get by default."""


@pytest.fixture
def pinned() -> Iterator[VhostSupervisor]:
    """A supervisor as ``butterflyd -u CPU --no-offload`` makes it."""
    started = VhostSupervisor(cpus=(CPU,), offload=False)
    started.start()
    yield started
    started.stop()


def _serve(supervisor: VhostSupervisor, taps: Taps, directory: str) -> VhostUserServer:
    vnic = unique("v")
    server = VhostUserServer(
        supervisor=supervisor,
        vnic=vnic,
        socket_path=os.path.join(directory, f"qemu-vhost-{vnic}"),
        tap_name=taps(),
    )
    server.start()
    return server


@pytest.fixture(params=[True, False], ids=["offload", "no-offload"])
def either(
    request: pytest.FixtureRequest, supervisor: VhostSupervisor, pinned: VhostSupervisor
) -> tuple[VhostSupervisor, bool]:
    """The default supervisor (the positive control), then the --no-offload one,
    with whether it offers offloads."""
    return (supervisor, True) if request.param else (pinned, False)


def test_no_offload_offers_none_and_the_tap_checksums_everything(
    either: tuple[VhostSupervisor, bool],
    taps: Taps,
    frontend: Callable[[str], Frontend],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The default backend offers checksum and TSO both ways and, once the
    guest takes them, lets the kernel hand the guest unchecksummed TSO
    segments; with --no-offload none is offered, and the tap stays without
    them."""
    backend, offload = either
    server = _serve(backend, taps, str(tmp_path_factory.mktemp("v")))
    try:
        fe = frontend(server.socket_path)
        fe.negotiate()
        offered = fe.features
        assert bool(offered & OFFLOAD_FEATURES) is offload
        assert offered & Feature.VERSION_1  # the rest is offered either way
        assert offered & Feature.MRG_RXBUF
        tap = offloads(server.tap_name)
        assert tap["tx-checksumming"] is offload
        assert tap["tcp-segmentation-offload"] is offload
    finally:
        server.stop()


def test_a_guest_asking_for_offloads_never_offered_is_refused(
    pinned: VhostSupervisor,
    taps: Taps,
    frontend: Callable[[str], Frontend],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = _serve(pinned, taps, str(tmp_path_factory.mktemp("v")))
    try:
        fe = frontend(server.socket_path)
        fe.send(Request.SET_OWNER)
        offered = fe.get_u64(Request.GET_FEATURES)
        fe.set_u64(Request.SET_FEATURES, offered | Feature.CSUM)
        wait_for(lambda: not fe.is_connected(), "the backend to drop the frontend")
        assert offloads(server.tap_name)["tx-checksumming"] is False
    finally:
        server.stop()


def test_workers_run_on_the_graph_cpus_also_after_a_restart(
    supervisor: VhostSupervisor, pinned: VhostSupervisor
) -> None:
    """One worker per pinned CPU, on it; the default supervisor's (the positive
    control) may run on every CPU this process may."""
    (default,) = supervisor.worker_pids()
    assert os.sched_getaffinity(default) == os.sched_getaffinity(0)
    (worker,) = pinned.worker_pids()
    assert os.sched_getaffinity(worker) == {CPU}
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: pinned.worker_pids() != [worker], "the worker to be restarted")
    (restarted,) = pinned.worker_pids()
    assert os.sched_getaffinity(restarted) == {CPU}
