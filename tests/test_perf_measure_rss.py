"""perf.measure.run's peak RSS is the measured command's own, not the harness's.

On Linux a child's wait4 ``ru_maxrss`` keeps the high-water mark of the mm it had before
exec, the harness's (it forks from it), so a small command measured from a big harness
read as big as the harness.  These tests grow the harness first, as a bench does.
"""

from __future__ import annotations

import sys

from perf import measure

MiB = 1 << 20


def _vm_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_small_command_under_a_big_harness_reads_its_own_size() -> None:
    ballast = b"h" * (300 << 20)  # filled, so resident: the harness is >= 300 MiB
    assert _vm_rss() >= 300 * MiB
    s = measure.run(_python('x = b"x" * (20 << 20); import time; time.sleep(0.3)'))
    assert s.rc == 0
    assert 20 * MiB <= s.peak_rss < 100 * MiB  # 20 MiB + an interpreter, far below 300
    assert 20 * MiB <= s.maxrss < 100 * MiB
    assert s.tree_rss < 100 * MiB
    assert s.to_json()["peak_rss"] == s.peak_rss
    del ballast


def test_a_spike_freed_before_the_end_is_kept() -> None:
    s = measure.run(_python('x = b"x" * (200 << 20); del x; import time; time.sleep(0.3)'))
    assert s.peak_rss >= 200 * MiB
    assert s.maxrss >= 200 * MiB


def test_a_grandchild_under_a_big_harness_counts_not_the_harness() -> None:
    ballast = b"h" * (300 << 20)
    assert _vm_rss() >= 300 * MiB
    # sh forks python (the `; true` keeps sh from exec'ing it): a grandchild's peak
    code = 'x = b"x" * (50 << 20); del x; import time; time.sleep(0.3)'
    s = measure.run(["sh", "-c", f"'{sys.executable}' -c '{code}'; true"])
    assert 50 * MiB <= s.peak_rss < 150 * MiB
    del ballast
