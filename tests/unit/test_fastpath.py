"""The fast path's pure parts: which vnics it serves, and the bytes its maps hold
(they must match the C structs of butterfly/dataplane/bpf/fastpath.bpf.c)."""

from pathlib import Path

import pytest

from butterfly.dataplane import fastpath
from butterfly.dataplane.fastpath import (
    LOADING,
    FastPathMode,
    FastPort,
    Tunnel,
    choose,
    fast_port,
    prepare,
    sniffed,
)
from butterfly.errors import ConfigError
from butterfly.model import Vnic

VNIC = Vnic(id="a", mac="52:54:00:AB:CD:01", vni=7, ips=("10.0.0.1", "fd00::1"))


def test_a_filtered_vnic_is_served_with_its_port_and_zone() -> None:
    port = fast_port(VNIC, ifindex=12, zone=3, sniffed=False)
    assert port == FastPort(
        ifindex=12, vni=7, zone=3, mac="52:54:00:ab:cd:01", check_ip=False, addresses=()
    )


def test_ip_anti_spoofing_lists_the_addresses_and_the_link_local_one() -> None:
    vnic = Vnic(id="a", mac="52:54:00:ab:cd:01", vni=7, ips=("10.0.0.1",), ip_anti_spoof=True)
    port = fast_port(vnic, ifindex=12, zone=3, sniffed=False)
    assert port is not None and port.check_ip
    assert port.addresses == ("10.0.0.1", "fe80::5054:ff:feab:cd01")


@pytest.mark.parametrize(
    ("vnic", "zone", "is_sniffed"),
    [
        (Vnic(id="a", mac="52:54:00:00:00:01", vni=7, bypass_filtering=True), 3, False),
        (VNIC, None, False),
        (VNIC, 3, True),
    ],
)
def test_the_slow_path_keeps_what_the_fast_path_cannot_do(
    vnic: Vnic, zone: int | None, is_sniffed: bool
) -> None:
    assert fast_port(vnic, ifindex=12, zone=zone, sniffed=is_sniffed) is None


def test_a_vni_is_sniffed_when_one_of_its_vnics_copies_its_frames() -> None:
    assert not sniffed([VNIC])
    assert sniffed([VNIC, Vnic(id="s", mac="52:54:00:00:00:02", vni=7, sniff_target_nic_id="t")])


def test_map_entries_have_the_c_structs_layout() -> None:
    port = FastPort(ifindex=5, vni=0x010203, zone=9, mac="52:54:00:00:00:01", check_ip=True,
                    addresses=("10.0.0.1", "fd00::1"))  # fmt: skip
    mac = bytes.fromhex("525400000001")
    # struct bf_port {u32 vni; u16 zone; u8 check_ip; u8 pad; u8 mac[6]; u8 pad2[2]}
    assert fastpath._port_value(port) == bytes([3, 2, 1, 0, 9, 0, 1, 0]) + mac + bytes(2)
    # struct bf_dest {u32 vni; u8 mac[6]; u8 pad[2]}
    assert fastpath._dest_key(port) == bytes([3, 2, 1, 0]) + mac + bytes(2)
    # struct bf_addr {u32 ifindex; u32 family; u8 addr[16]}: IPv4 in the first 4 bytes
    v4, v6 = fastpath._address_keys(port)
    assert v4 == bytes([5, 0, 0, 0, 4, 0, 0, 0, 10, 0, 0, 1]) + bytes(12)
    assert v6 == bytes([5, 0, 0, 0, 6, 0, 0, 0, 0xFD]) + bytes(14) + bytes([1])
    # struct bf_tunnel {u32 vni; u16 zone; u8 pad[2]}
    tunnel = Tunnel(ifindex=5, vni=0x010203, zone=9)
    assert fastpath._tunnel_value(tunnel) == bytes([3, 2, 1, 0, 9, 0, 0, 0])


def test_off_loads_nothing_and_says_so(tmp_path: Path) -> None:
    assert choose(FastPathMode.OFF, tmp_path / "missing.o") == (None, "off (--fast-path off)")


def test_auto_falls_back_without_the_program_and_ebpf_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing.o"
    path, status = choose(FastPathMode.AUTO, missing)
    assert path is None
    assert status == f"off (auto: fast path: {missing} is not built (tools/setup builds it))"
    with pytest.raises(ConfigError, match=r"--fast-path ebpf: fast path: .* is not built"):
        choose(FastPathMode.EBPF, missing)


def test_auto_stays_off_when_drift_is_only_reported(tmp_path: Path) -> None:
    assert choose(FastPathMode.AUTO, tmp_path / "missing.o", repaired=False) == (
        None,
        "off (auto, --report-drift-only: only the tables decide)",
    )


def test_prepare_checks_what_is_cheap_and_leaves_the_loading_for_later(tmp_path: Path) -> None:
    """What keeps ``ebpf`` from starting is found before the daemon serves;
    ``off`` and ``auto`` without the program say why, as ``choose`` does."""
    missing = tmp_path / "missing.o"
    assert prepare(FastPathMode.OFF, missing) == (None, "off (--fast-path off)")
    pending, status = prepare(FastPathMode.AUTO, missing)
    assert pending is None and status.startswith("off (auto: fast path: ")
    with pytest.raises(ConfigError, match=r"--fast-path ebpf: fast path: .* is not built"):
        prepare(FastPathMode.EBPF, missing)


@pytest.mark.needs("ebpf-fast-path")
@pytest.mark.parametrize("mode", [FastPathMode.AUTO, FastPathMode.EBPF])
def test_a_program_the_kernel_refuses_later_leaves_the_bridge_path(
    tmp_path: Path, mode: FastPathMode
) -> None:
    """Prepared (built, libbpf, BTF), then refused at loading: no program, and why;
    only ``choose`` (loading before serving) refuses to start with ``ebpf``."""
    broken = tmp_path / "broken.o"
    broken.write_bytes(b"not an ELF object")
    pending, status = prepare(mode, broken)
    assert pending is not None and status == LOADING
    assert pending.required == (mode is FastPathMode.EBPF)
    fast, status = pending.load()
    assert fast is None and status.startswith(f"off ({mode.value}: fast path: opening {broken}")
    if mode is FastPathMode.EBPF:
        with pytest.raises(ConfigError, match=r"--fast-path ebpf: fast path: opening"):
            choose(mode, broken)
