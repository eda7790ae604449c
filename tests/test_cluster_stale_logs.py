"""A worker's kept copy logs that no client fetched (the client or the worker died) are
cleared when a worker starts, once a day old, and only those: a log still being written,
another worker's fresh one, and anything that is not our own directory stay."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cluster.worker import LOG_PREFIX, STALE_LOG_S, clear_stale_logs


def _aged(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_only_our_directories_a_day_untouched_are_cleared(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = tmp_path / f"{LOG_PREFIX}old"
    growing = tmp_path / f"{LOG_PREFIX}growing"     # made two days ago, its log written now
    fresh = tmp_path / f"{LOG_PREFIX}fresh"         # another worker's, waiting for its client
    target = tmp_path / "elsewhere"
    for d in (old, growing, fresh, target):
        d.mkdir()
        (d / "copylog-01.jsonl").write_text("{}\n")
    _aged(old / "copylog-01.jsonl", 2 * STALE_LOG_S)
    _aged(old, 2 * STALE_LOG_S)
    _aged(growing, 2 * STALE_LOG_S)
    _aged(target / "copylog-01.jsonl", 2 * STALE_LOG_S)
    _aged(target, 2 * STALE_LOG_S)
    link = tmp_path / f"{LOG_PREFIX}link"
    link.symlink_to(target)
    _aged(link, 2 * STALE_LOG_S)
    plain = tmp_path / f"{LOG_PREFIX}file"
    plain.write_text("not ours")
    _aged(plain, 2 * STALE_LOG_S)

    assert clear_stale_logs() == 1
    assert not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [growing.name, fresh.name, target.name, link.name, plain.name])
    assert (target / "copylog-01.jsonl").read_text() == "{}\n"   # a link's target untouched
    assert clear_stale_logs(now=time.time() + 2 * STALE_LOG_S) == 2   # the rest, in time


def test_a_worker_clears_them_when_it_starts(tmp_path: Path) -> None:
    """A real `pipeline worker` (its TMPDIR ours): registered, the stale directory is gone,
    a fresh one kept."""
    from tests.test_cluster import scheduler_address, start_scheduler, start_worker

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale, fresh = tmp / f"{LOG_PREFIX}stale", tmp / f"{LOG_PREFIX}fresh"
    for d in (stale, fresh):
        d.mkdir()
        (d / "copylog-01.jsonl").write_text("{}\n")
    _aged(stale / "copylog-01.jsonl", 2 * STALE_LOG_S)
    _aged(stale, 2 * STALE_LOG_S)
    sched = start_scheduler(tmp_path)
    try:
        w = start_worker(tmp_path, scheduler_address(sched), "w1", env={"TMPDIR": str(tmp)})
        w.stop()
    finally:
        sched.stop()
    assert not stale.exists() and (fresh / "copylog-01.jsonl").exists()
