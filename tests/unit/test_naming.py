"""Kernel names derived from model ids, and the ways back from a name."""

import glob
from pathlib import Path

from butterfly.dataplane.naming import (
    bridge_name,
    trace_pidfile,
    trace_pidfiles,
    vni_of,
    vxlan_name,
)


def test_vni_of_reads_back_both_device_names() -> None:
    for vni in (1, 42, 16777215):
        assert vni_of(bridge_name(vni)) == vni
        assert vni_of(vxlan_name(vni)) == vni


def test_trace_pidfiles_finds_every_pidfile_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "sockets [1]"
    folder.mkdir()
    pidfiles = {trace_pidfile(str(folder), vnic_id) for vnic_id in ("vnic_1", "a b")}
    for path in [*pidfiles, str(folder / "trace-vnic_1.pcap"), str(folder / "qemu-vhost-x")]:
        Path(path).touch()
    assert set(glob.glob(trace_pidfiles(str(folder)))) == pidfiles
