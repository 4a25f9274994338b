"""The per-vnic families written as text: what Prometheus' own parser reads back."""

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from butterfly.daemon.metrics import VnicCounters, interface_counters
from butterfly.dataplane.naming import tap_name
from butterfly.model import State, Vnic

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
{a}:    1000      10    0    3    0     0          0         0     2000      20    0    4    0     0       0          0
{b}:       7       1    0    0    0     0          0         0        9       2    0    1    0     0       0          0
"""  # noqa: E501


def _state(tmp_path: Path) -> tuple[State, str]:
    state = State()
    state.put_vnic(Vnic(id="vnic_a", mac="52:54:00:00:00:01", vni=5))
    state.put_vnic(Vnic(id='b"\\', mac="52:54:00:00:00:02", vni=1337))
    state.put_vnic(Vnic(id="no_port", mac="52:54:00:00:00:03", vni=5))
    path = tmp_path / "dev"
    path.write_text(NET_DEV.format(a=tap_name("vnic_a"), b=tap_name('b"\\')))
    return state, str(path)


def test_interface_counters_reads_every_column_it_needs(tmp_path: Path) -> None:
    _, path = _state(tmp_path)
    port = interface_counters(path)[tap_name("vnic_a")]
    assert (port.rx_bytes, port.rx_packets, port.rx_dropped) == (1000, 10, 3)
    assert (port.tx_bytes, port.tx_packets, port.tx_dropped) == (2000, 20, 4)


def test_the_text_parses_as_prometheus_reads_it(tmp_path: Path) -> None:
    state, path = _state(tmp_path)
    counters = VnicCounters(state, path)
    for _ in range(2):  # the second time from the label cache
        families = {f.name: f for f in text_string_to_metric_families(counters.text())}
        assert {name: family.type for name, family in families.items()} == {
            "butterfly_vnic_bytes": "counter",
            "butterfly_vnic_packets": "counter",
            "butterfly_vnic_drops": "counter",
        }
        samples = {
            (family.name, s.labels["vnic"], s.labels["vni"], s.labels["direction"]): s.value
            for family in families.values()
            for s in family.samples
        }
        assert samples == {
            ("butterfly_vnic_bytes", "vnic_a", "5", "in"): 2000,
            ("butterfly_vnic_bytes", "vnic_a", "5", "out"): 1000,
            ("butterfly_vnic_packets", "vnic_a", "5", "in"): 20,
            ("butterfly_vnic_packets", "vnic_a", "5", "out"): 10,
            ("butterfly_vnic_drops", "vnic_a", "5", "in"): 4,
            ("butterfly_vnic_drops", "vnic_a", "5", "out"): 3,
            ("butterfly_vnic_bytes", 'b"\\', "1337", "in"): 9,
            ("butterfly_vnic_bytes", 'b"\\', "1337", "out"): 7,
            ("butterfly_vnic_packets", 'b"\\', "1337", "in"): 2,
            ("butterfly_vnic_packets", 'b"\\', "1337", "out"): 1,
            ("butterfly_vnic_drops", 'b"\\', "1337", "in"): 1,
            ("butterfly_vnic_drops", 'b"\\', "1337", "out"): 0,
        }


def test_no_vnic_gives_empty_families(tmp_path: Path) -> None:
    _, path = _state(tmp_path)
    families = list(text_string_to_metric_families(VnicCounters(State(), path).text()))
    assert [len(family.samples) for family in families] == [0, 0, 0]
