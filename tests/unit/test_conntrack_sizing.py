"""Sizing the host's connection table: raised, never lowered; timeouts only shortened."""

from pathlib import Path

from butterfly.dataplane.conntrack.sizing import ENTRY_MEMORY, TIMEOUTS, size_conntrack


def _sysctls(tmp_path: Path, **values: int) -> Path:
    defaults = {
        "nf_conntrack_max": 262144,
        "nf_conntrack_buckets": 65536,
        "nf_conntrack_tcp_timeout_syn_sent": 120,
        "nf_conntrack_tcp_timeout_syn_recv": 60,
        "nf_conntrack_udp_timeout": 30,
        "nf_conntrack_udp_timeout_stream": 120,
    }
    for name, value in {**defaults, **values}.items():
        (tmp_path / name).write_text(f"{value}\n")
    return tmp_path


def _read(directory: Path, name: str) -> int:
    return int((directory / name).read_text())


def test_the_table_follows_memory_and_the_timeouts_shrink(tmp_path: Path) -> None:
    directory = _sysctls(tmp_path)
    sizings = size_conntrack(None, memory=64 << 30, directory=str(directory))
    assert _read(directory, "nf_conntrack_max") == (64 << 30) // ENTRY_MEMORY
    assert _read(directory, "nf_conntrack_buckets") == (64 << 30) // ENTRY_MEMORY // 4
    for name, seconds in TIMEOUTS.items():
        assert _read(directory, name) == seconds
    shown = ", ".join(map(str, sizings))
    assert "max 262144 -> 4194304" in shown
    assert "udp_timeout_stream 120 -> 60" in shown
    assert "udp_timeout 30" in shown


def test_an_operators_larger_table_and_shorter_timeouts_are_kept(tmp_path: Path) -> None:
    directory = _sysctls(tmp_path, nf_conntrack_max=8_000_000, nf_conntrack_udp_timeout=10)
    size_conntrack(100_000, memory=1 << 30, directory=str(directory))
    assert _read(directory, "nf_conntrack_max") == 8_000_000
    assert _read(directory, "nf_conntrack_buckets") == 65536
    assert _read(directory, "nf_conntrack_udp_timeout") == 10


def test_what_cannot_be_read_is_named_and_the_rest_is_done(tmp_path: Path) -> None:
    directory = _sysctls(tmp_path)
    (directory / "nf_conntrack_buckets").unlink()
    sizings = size_conntrack(None, memory=1 << 30, directory=str(directory))
    assert "buckets 0 (kept: cannot be read" in ", ".join(map(str, sizings))
    assert _read(directory, "nf_conntrack_tcp_timeout_syn_sent") == 30
