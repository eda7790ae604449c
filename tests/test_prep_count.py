"""prep's count of the work (issue 18): find's lines summed as they come, never held whole."""

from __future__ import annotations

from pathlib import Path

import trio

from pipeline.commands.prep import count_totals
from pipeline.progress import Stats


def test_a_count_of_many_files_spans_many_reads(tmp_path: Path) -> None:
    """20,000 files: find's output (~100 KB) comes in several pipe reads, lines cut across
    them; the totals are still exact."""
    sizes = [(i * 7919) % 20_000 for i in range(20_000)]
    for i, n in enumerate(sizes):
        folder = tmp_path / f"d{i // 1000}"
        if i % 1000 == 0:
            folder.mkdir()
        with open(folder / f"f{i}", "wb") as f:
            if n:
                f.truncate(n)  # sparse: the size without the bytes
    stats = Stats()
    trio.run(count_totals, type("Cfg", (), {"srcdir": tmp_path})(), stats)
    assert (stats.files_total, stats.bytes_total) == (len(sizes), sum(sizes))
    assert sum(len(str(n)) + 1 for n in sizes) > 65536  # a pipe holds 64 KiB: 2+ reads
