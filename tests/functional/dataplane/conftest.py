"""Test hypervisors, guests and fabrics in network namespaces, for the kernel data plane.

The namespaces, the fabric, the guests' agents and the clean-up come from
:mod:`butterfly_lab.lab` (shared with the end-to-end tests and the
benchmarks). What is particular here: each *host* runs a
:class:`KernelDataplane` in-process, in a thread that entered the host's
namespace (so the test never touches the root namespace's links or
nftables), instead of a butterflyd. Everything is made per test with the
lab's run-unique prefix and removed in teardown, also on failure.

Every test taking ``lab`` runs once per data path (the bridge + nftables
path, then the eBPF fast path), or only on the one ``BUTTERFLY_FAST_PATH``
names: both paths must meet the same filtering, anti-spoofing and isolation
tests, and CI runs pytest once.
"""

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from butterfly.dataplane import SgChange
from butterfly.dataplane.fastpath import FastPathMode, choose
from butterfly.dataplane.kernel import KernelDataplane, open_kernel
from butterfly.dataplane.naming import tap_name
from butterfly.model import (
    SecurityGroup,
    State,
    Vnic,
    VnicType,
    make_rule,
    make_security_group,
    make_vnic,
)
from butterfly_lab import lab as bench_lab
from butterfly_lab.daemon import FAST_PATH_VARIABLE
from butterfly_lab.lab import Vm, sh, wait_for

__all__ = [
    "Dataplane",
    "Guest",
    "Host",
    "Lab",
    "link_index",
    "netns_vnic",
    "only_on",
    "open_sg",
    "plug",
    "put_sg",
    "sh",
    "wait_for",
]

Guest = Vm
"""A NETNS vnic's namespace, with its agent started on first use."""


class Dataplane:
    """A KernelDataplane living in a host's thread: every call runs there."""

    def __init__(self, host: "Host", **options: Any) -> None:
        self.host = host
        self._impl: KernelDataplane = host.run(
            lambda: _make(host.socket_dir, host.fast_path, options)
        )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._impl, name)
        return lambda *args, **kwargs: self.host.run(lambda: method(*args, **kwargs))


def _make(socket_dir: str, mode: FastPathMode, options: dict[str, Any]) -> KernelDataplane:
    """A data plane on the lab's fast path, unless the test chose one; run in the
    host's namespace."""
    if mode is not FastPathMode.OFF and "fast_path" not in options:
        options["fast_path"], options["fast_path_status"] = choose(mode)
    return KernelDataplane(kernel=open_kernel(), socket_dir=socket_dir, **options)


def _fast_paths() -> list[Any]:
    """The one BUTTERFLY_FAST_PATH names, else both; the eBPF one needs its program built."""
    named = os.environ.get(FAST_PATH_VARIABLE)
    modes = [FastPathMode(named)] if named else [FastPathMode.OFF, FastPathMode.EBPF]
    return [
        pytest.param(
            mode,
            id=mode.value,
            marks=[pytest.mark.needs("ebpf-fast-path")] if mode is FastPathMode.EBPF else [],
        )
        for mode in modes
    ]


def only_on(mode: FastPathMode) -> pytest.MarkDecorator:
    """A module's mark that runs its tests once, on ``mode``: for tests that build no
    data plane, or make their fast path themselves."""
    return pytest.mark.parametrize("lab", [mode], ids=[mode.value], indirect=True)


class Host(bench_lab.Host):
    """A hypervisor namespace with an underlay into the fabric; no daemon, in-process
    data planes instead (:meth:`dataplane`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_dir = self.folder
        self.dataplanes: list[Dataplane] = []
        self.fast_path = FastPathMode.OFF

    def dataplane(self, **options: Any) -> Dataplane:
        options.setdefault("underlay_ip", self.address)
        dataplane = Dataplane(self, **options)
        self.dataplanes.append(dataplane)
        return dataplane

    def close(self) -> None:
        try:
            for dataplane in self.dataplanes:
                try:
                    dataplane.cleanup()
                finally:
                    dataplane.close()
        finally:
            super().close()


class Lab(bench_lab.Lab):
    """What one test made: closed in reverse order, also when the test fails."""

    host_class = Host

    def __init__(self, fast_path: FastPathMode) -> None:
        super().__init__()
        self.fast_path = fast_path

    def host(self, *, v6: bool = False, **options: Any) -> Host:
        """A host without a daemon: the test builds data planes in it, on the
        lab's fast path."""
        host = super().host(v6=v6, start=False, **options)
        assert isinstance(host, Host)
        host.fast_path = self.fast_path
        return host

    def guest(self) -> Guest:
        return self.vm()


@pytest.fixture(params=_fast_paths())
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    made = Lab(request.param)
    try:
        yield made
    finally:
        made.close()


def netns_vnic(
    vnic_id: str, guest: Guest, mac: str, ips: tuple[str, ...], vni: int = 42, **fields: Any
) -> Vnic:
    return make_vnic(
        Vnic(id=vnic_id, mac=mac, vni=vni, ips=ips, type=VnicType.NETNS, netns=guest.name, **fields)
    )


def plug(dataplane: Dataplane, state: State, vnic: Vnic) -> None:
    """A nic_add as the service does it: state first, then the data plane."""
    replaced = state.put_vnic(vnic)
    dataplane.plug(vnic, replaced, state)


def put_sg(dataplane: Dataplane, state: State, sg: SecurityGroup) -> None:
    """An sg_add as the service does it: state first, then the data plane."""
    state.put_sg(sg)
    dataplane.update_security_groups({sg.id: SgChange(None, sg)}, state)


def open_sg(dataplane: Dataplane, state: State) -> None:
    """Group "open": everything inbound, IPv4 and IPv6, for tests about something else."""
    rules = [
        make_rule("open", direction=0, protocol=-1, cidr=(any_address, 0))
        for any_address in ("0.0.0.0", "::")
    ]
    put_sg(dataplane, state, make_security_group("open", members=[], rules=rules))


def link_index(netns: bench_lab.Netns, vnic_id: str) -> int:
    shown = json.loads(netns.ip("-j", "link", "show", tap_name(vnic_id)))
    return int(shown[0]["ifindex"])
