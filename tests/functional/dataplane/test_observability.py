"""Counters, packet traces and the data path graph."""

import os
from dataclasses import replace

import pytest

from butterfly.dataplane.naming import trace_path, trace_pidfile
from butterfly.errors import DataplaneError
from butterfly.model import State, Vnic, VnicType, make_vnic

from .conftest import Dataplane, Guest, Host, Lab, netns_vnic, open_sg, plug, sh

pytestmark = pytest.mark.root


def _pair(lab: Lab, **host_options: object) -> tuple[Host, Dataplane, State, list[Guest]]:
    host = lab.host()
    dataplane = host.dataplane(**host_options)
    state = State()
    open_sg(dataplane, state)
    guests = [lab.guest(), lab.guest()]
    for index, guest in enumerate(guests):
        plug(
            dataplane,
            state,
            netns_vnic(
                f"v{index}",
                guest,
                f"52:54:00:00:00:0{index + 1}",
                (f"10.0.0.{index + 1}",),
                security_groups=("open",),
            ),
        )
    guests[1].listen("tcp", 80)
    return host, dataplane, state, guests


def _tcpdump_count(path: str) -> int:
    return len(sh("tcpdump", "-n", "-r", path).splitlines())


def test_counters_say_what_went_in_and_out_of_each_vnic(lab: Lab) -> None:
    _, dataplane, state, guests = _pair(lab)
    sender, receiver = state.vnic("v0"), state.vnic("v1")
    assert sender is not None and receiver is not None
    before = dataplane.counters(sender), dataplane.counters(receiver)
    assert guests[0].reaches("tcp", "10.0.0.2", 80)
    after = dataplane.counters(sender), dataplane.counters(receiver)
    assert after[0].out_bytes > before[0].out_bytes
    assert after[1].in_bytes > before[1].in_bytes
    assert after[0].in_bytes > before[0].in_bytes, "the replies count as in"


def test_a_trace_records_both_directions_and_stops(lab: Lab) -> None:
    host, dataplane, state, guests = _pair(lab)
    vnic = state.vnic("v0")
    assert vnic is not None
    traced = replace(vnic, packet_trace=True)
    state.put_vnic(traced)
    dataplane.update(vnic, traced, state)
    path = trace_path(host.socket_dir, "v0")
    assert os.path.exists(path)
    assert guests[0].reaches("tcp", "10.0.0.2", 80)
    untraced = replace(traced, packet_trace=False)
    state.put_vnic(untraced)
    dataplane.update(traced, untraced, state)
    assert not os.path.exists(trace_pidfile(host.socket_dir, "v0"))
    lines = sh("tcpdump", "-n", "-r", path).splitlines()
    assert any("10.0.0.1" in line and "> 10.0.0.2.80" in line for line in lines)
    assert any("10.0.0.2.80 >" in line for line in lines)


def test_the_daemon_default_traces_and_a_restart_adopts_the_trace(lab: Lab) -> None:
    host, dataplane, state, guests = _pair(lab, packet_trace_default=True)
    pidfile = trace_pidfile(host.socket_dir, "v0")
    with open(pidfile) as file:
        pid = file.read().split("\0")[0]
    dataplane.close()
    host.dataplanes.clear()
    restarted = host.dataplane(packet_trace_default=True)
    restarted.reconcile(state)
    with open(pidfile) as file:
        assert file.read().split("\0")[0] == pid, "the trace was restarted, its file lost"
    assert guests[0].reaches("tcp", "10.0.0.2", 80)
    restarted.cleanup()
    assert not os.path.exists(pidfile)
    assert _tcpdump_count(trace_path(host.socket_dir, "v0")) > 0


def test_a_trace_that_cannot_start_fails_the_request(lab: Lab) -> None:
    host, dataplane, state, _ = _pair(lab)
    vnic = state.vnic("v0")
    assert vnic is not None
    traced = replace(vnic, packet_trace=True, packet_trace_path="/nonexistent/dir/x.pcap")
    state.put_vnic(traced)
    with pytest.raises(DataplaneError, match=r"nic 'v0'.*packet_trace_path"):
        dataplane.update(vnic, traced, state)
    assert not os.path.exists(trace_pidfile(host.socket_dir, "v0"))


def test_the_graph_draws_the_data_path(lab: Lab) -> None:
    _, dataplane, state, _ = _pair(lab)
    plug(
        dataplane,
        state,
        make_vnic(
            Vnic(
                id="raw", mac="52:54:00:00:00:09", vni=43, type=VnicType.TAP, bypass_filtering=True
            )
        ),
    )
    plug(
        dataplane,
        state,
        make_vnic(
            Vnic(id="spoof", mac="52:54:00:00:00:0a", vni=43, type=VnicType.TAP, ip_anti_spoof=True)
        ),
    )
    graph = dataplane.graph(state)
    assert graph.startswith("digraph butterfly {")
    for text in (
        "bfbr42",
        "bfvx42",
        "bfbr43",
        "multicast 230.0.0.42",
        "conntrack zone",
        "bf-v0 (veth)",
        "bf-raw (tap)",
        "filter: bypassed",
        "anti-spoof: mac + ip",
        "security groups open",
        "underlay",
    ):
        assert text in graph, text
