"""A failure at any step of a request leaves the kernel exactly as it was.

The data plane's fault hook names every kernel step before running it; each
test first counts the steps of a request, then makes each step fail in turn
and compares the kernel with its state before the request, and finally
runs the request through to prove the data plane's memory stayed right.
"""

import json
from collections.abc import Callable
from typing import Any

import pytest

from butterfly.dataplane import SgChange
from butterfly.errors import DataplaneError
from butterfly.model import (
    State,
    Vnic,
    VnicType,
    make_rule,
    make_security_group,
    make_vnic,
)
from butterfly_lab.lab import comparable_ruleset

from .conftest import Dataplane, Guest, Host, Lab, netns_vnic, plug, put_sg

pytestmark = pytest.mark.root


class Faults:
    """Counts steps, or fails the step of a given number."""

    def __init__(self) -> None:
        self.fail_at: int | None = None
        self.steps: list[str] = []

    def __call__(self, step: str) -> None:
        if self.fail_at is not None and len(self.steps) == self.fail_at:
            self.steps.append(step)
            raise DataplaneError(f"injected failure at {step}")
        self.steps.append(step)


def snapshot(host: Host, guests: list[Guest]) -> dict[str, Any]:
    links = []
    for link in json.loads(host.ip("-d", "-j", "link", "show")):
        data = link.get("linkinfo", {}).get("info_data", {})
        links.append(
            (
                link["ifname"],
                link.get("master"),
                link["mtu"],
                link.get("ifalias"),
                "UP" in link["flags"],
                link.get("linkinfo", {}).get("info_kind"),
                data.get("id"),
                data.get("group"),
            )
        )
    inside = []
    for guest in guests:
        for link in json.loads(guest.ip("-j", "addr", "show")):
            inside.append(
                (
                    guest.name,
                    link["ifname"],
                    link["address"],
                    link["mtu"],
                    # the kernel adds link-local addresses on its own schedule
                    sorted(
                        a["local"] for a in link["addr_info"] if not a["local"].startswith("fe80:")
                    ),
                )
            )
    fdb = sorted(
        line
        for line in host.exec("bridge", "fdb", "show").splitlines()
        if "00:00:00:00:00:00" in line
    )
    return {
        "nft": comparable_ruleset(host.exec("nft", "list", "ruleset")),
        "links": sorted(links, key=str),
        "inside": sorted(inside, key=str),
        "fdb": fdb,
    }


def every_step_fails_cleanly(
    host: Host, guests: list[Guest], faults: Faults, request: Callable[[], object]
) -> None:
    """Fail step 0, 1, 2... of ``request`` until it has fewer steps and succeeds."""
    before = snapshot(host, guests)
    failed = 0
    while True:
        faults.steps.clear()
        faults.fail_at = failed
        try:
            request()
        except DataplaneError as exc:
            assert "injected failure" in str(exc), exc
            assert snapshot(host, guests) == before, f"failing {faults.steps[-1]} left changes"
            failed += 1
            continue
        break
    faults.fail_at = None
    assert failed > 0


def setup(lab: Lab) -> tuple[Host, Dataplane, Faults, State, list[Guest]]:
    host = lab.host()
    faults = Faults()
    dataplane = host.dataplane(fault_hook=faults)
    state = State()
    sg = make_security_group(
        "web",
        members=["10.0.0.9"],
        rules=[
            make_rule(
                "web", direction=0, protocol=6, port_start=80, port_end=80, security_group="clients"
            ),
            make_rule("web", direction=1, protocol=-1, cidr=("10.0.0.0", 8)),
        ],
    )
    put_sg(dataplane, state, sg)
    guests = [lab.guest(), lab.guest()]
    plug(
        dataplane,
        state,
        netns_vnic(
            "first", guests[0], "52:54:00:00:00:01", ("10.0.0.1",), vni=5, security_groups=("web",)
        ),
    )
    state.set_peers(5, ("198.51.100.77",))
    dataplane.update_peers(5, state)
    return host, dataplane, faults, state, guests


def test_plug_into_a_new_vni_and_unplug_its_last_vnic(lab: Lab) -> None:
    host, dataplane, faults, state, guests = setup(lab)
    vnic = netns_vnic(
        "second",
        guests[1],
        "52:54:00:00:00:02",
        ("10.0.0.2", "2001:db8::2"),
        vni=6,
        security_groups=("web", "other"),
        ip_anti_spoof=True,
    )

    def add() -> None:
        replaced = state.put_vnic(vnic)
        try:
            dataplane.plug(vnic, replaced, state)
        except DataplaneError:
            state.remove_vnic(vnic.id)
            raise

    every_step_fails_cleanly(host, guests, faults, add)

    def remove() -> None:
        state.remove_vnic(vnic.id)
        try:
            dataplane.unplug(vnic, state)
        except DataplaneError:
            state.put_vnic(vnic)
            raise

    every_step_fails_cleanly(host, guests, faults, remove)


def test_replace_a_netns_vnic_by_a_tap_and_update(lab: Lab) -> None:
    host, dataplane, faults, state, guests = setup(lab)
    old = state.vnic("first")
    assert old is not None
    tap = make_vnic(
        Vnic(
            id="first",
            mac="52:54:00:00:00:05",
            vni=6,
            type=VnicType.TAP,
            security_groups=("other",),
        )
    )

    def replace() -> None:
        previous = state.put_vnic(tap)
        try:
            dataplane.plug(tap, previous, state)
        except DataplaneError:
            state.put_vnic(old)
            raise

    every_step_fails_cleanly(host, guests, faults, replace)
    state.put_vnic(old)
    dataplane.plug(old, tap, state)
    after = netns_vnic(
        "first",
        guests[0],
        "52:54:00:00:00:01",
        ("10.0.0.3", "2001:db8::3"),
        vni=5,
        security_groups=(),
        ip_anti_spoof=True,
        packet_trace=True,
    )

    def update() -> None:
        state.put_vnic(after)
        try:
            dataplane.update(old, after, state)
        except DataplaneError:
            state.put_vnic(old)
            raise

    every_step_fails_cleanly(host, guests, faults, update)


def test_security_group_and_peer_changes(lab: Lab) -> None:
    host, dataplane, faults, state, guests = setup(lab)
    before = state.sg("web")
    after = make_security_group(
        "web",
        members=["10.0.0.8"],
        rules=[
            make_rule("web", direction=0, protocol=17, port_start=53, port_end=53, cidr=("::", 0)),
        ],
    )

    def change() -> None:
        state.put_sg(after)
        try:
            dataplane.update_security_groups({"web": SgChange(before, after)}, state)
        except DataplaneError:
            assert before is not None
            state.put_sg(before)
            raise

    every_step_fails_cleanly(host, guests, faults, change)

    def peers() -> None:
        state.set_peers(5, ("198.51.100.78", "198.51.100.79"))
        try:
            dataplane.update_peers(5, state)
        except DataplaneError:
            state.set_peers(5, ("198.51.100.77",))
            raise

    every_step_fails_cleanly(host, guests, faults, peers)


def test_the_first_request_of_a_fresh_host_including_the_bootstrap(lab: Lab) -> None:
    host = lab.host()
    faults = Faults()
    dataplane = host.dataplane(fault_hook=faults)
    state = State()
    guests = [lab.guest()]
    vnic = netns_vnic(
        "only", guests[0], "52:54:00:00:00:01", ("10.0.0.1",), vni=9, security_groups=("web",)
    )

    def add() -> None:
        replaced = state.put_vnic(vnic)
        try:
            dataplane.plug(vnic, replaced, state)
        except DataplaneError:
            state.remove_vnic(vnic.id)
            raise

    every_step_fails_cleanly(host, guests, faults, add)
    assert "table bridge butterfly" in host.exec("nft", "list", "tables")
