"""The memory report of ``--debug-memory``: what SIGUSR2 logs."""

import logging
import re
import tracemalloc
from collections.abc import Iterator

import pytest

from butterfly.daemon.memory import MemoryReport


@pytest.fixture
def report() -> Iterator[MemoryReport]:
    made = MemoryReport(top=5)
    try:
        yield made
    finally:
        tracemalloc.stop()


def _hoard() -> list[bytes]:
    return [bytes(1000) + bytes([i % 256]) for i in range(3000)]  # about 3 MB, one line


def test_off_it_says_how_to_turn_it_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="butterfly.daemon.memory"):
        MemoryReport().log()
    assert "memory debugging is off" in caplog.text
    assert "--debug-memory" in caplog.text
    assert not tracemalloc.is_tracing()


def test_it_names_the_largest_site_and_what_grew_since_the_last_report(
    report: MemoryReport, caplog: pytest.LogCaptureFixture
) -> None:
    report.start()
    kept = _hoard()
    with caplog.at_level(logging.WARNING, logger="butterfly.daemon.memory"):
        report.log()
    lines = caplog.text.splitlines()
    largest = lines.index(next(line for line in lines if "the 5 largest allocation sites:" in line))
    grew = lines.index(next(line for line in lines if "grew most" in line))
    hoard_line = _hoard.__code__.co_firstlineno + 1
    site = f"test_daemon_memory.py:{hoard_line}"
    assert site in lines[largest + 1], caplog.text
    assert re.search(rf"\+3\d\d\d\.\d KB in 300\d blocks at \S*{site} <- ", lines[grew + 1])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="butterfly.daemon.memory"):
        report.log()
    grown = caplog.text.split("grew most", 1)[1]
    assert site not in grown, caplog.text
    assert len(kept) == 3000
