"""butterfly-bench soak's arithmetic and verdicts (the churn itself runs in tests/functional)."""

import re

from butterfly_lab.bench.soak import Sample, Soak, growth_per_1000, render


def _sample(cycles: int, rss_mb: float, *, fds: int = 30, threads: int = 5) -> Sample:
    kib = int(rss_mb * 1024)
    return Sample(cycles, cycles / 2, 2, kib, kib - 10_000, kib - 20_000, fds, threads, (1.0, 2.0))


def test_the_growth_is_the_slope_per_1000_cycles_not_the_last_minus_the_first() -> None:
    samples = [_sample(c, 60 + 0.03 * c) for c in (0, 100, 200, 300)]
    assert round(growth_per_1000(samples, lambda s: s.rss_kib / 1024), 1) == 30.0
    noisy = [_sample(0, 60), _sample(100, 62), _sample(200, 60), _sample(300, 60)]
    assert abs(growth_per_1000(noisy, lambda s: s.rss_kib / 1024)) < 5
    assert growth_per_1000(samples[:1], lambda s: s.rss_kib) == 0.0


def test_a_flat_run_passes_and_a_leak_fails() -> None:
    flat = Soak(warm_up=10, samples=[_sample(c, 60) for c in (0, 1000, 2000)], unchanged=True)
    report, met = render(flat, busy=0.1)
    assert met, report
    assert "growth per 1,000 cycles: RSS +0.000 MB, PSS +0.000 MB, USS +0.000 MB" in report
    leaking = Soak(
        warm_up=10, samples=[_sample(c, 60 + 0.03 * c) for c in (0, 1000, 2000)], unchanged=True
    )
    report, met = render(leaking, busy=0.1)
    assert not met
    assert re.search(
        r"^RSS growth per 1,000 cycles < 0.5 MB \(5 MB over 10,000;.*: FAIL$", report, re.M
    )


def test_descriptors_threads_and_kernel_changes_fail_the_run() -> None:
    samples = [_sample(0, 60), _sample(1000, 60, fds=31, threads=6)]
    report, met = render(Soak(warm_up=0, samples=samples, changes=["nft"]), busy=0.0)
    assert not met
    for verdict in ("descriptors unchanged: FAIL", "threads unchanged: FAIL"):
        assert verdict in report
    assert "kernel objects and state as before the warm-up: FAIL" in report
    assert "changed: nft" in report
