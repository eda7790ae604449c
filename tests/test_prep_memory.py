"""What a writer holds of many tiny files: their records, as objects, bounded in bytes.

Tiny files are all records (a file entry and an extent record each, ~5 bytes of Python
objects a byte while a writer holds them), so a segment sealed at SEGMENT_RECORDS and a
commit made at COMMIT_RECORDS bound them whatever the number of files; the commit's
other bounds (COMMIT_BYTES of log, COMMIT_SECONDS) alone let them grow with the speed
of the run (issue 18: prep's peak RSS at 1,000,000 tiny files).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from pipeline import journal
from pipeline.drive import format
from pipeline.prep import config, write
from pipeline.prep.run import DrivePool, PrepConfig, run_prep
from pipeline.prep.session import Session
from pipeline.progress import Stats

from .conftest import FAST_ARGON
from .drivedata import read_tree, restore

MiB = 1 << 20


def _tiny_tree(root: Path, count: int) -> None:
    rng = random.Random(18)
    for i in range(count):
        folder = root / f"d{i // 500:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.txt").write_bytes(rng.randbytes(rng.randrange(1, 200)))


def test_commits_and_segments_are_bounded_in_records(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write, "SEGMENT_RECORDS", 16 << 10)
    monkeypatch.setattr(write, "COMMIT_RECORDS", 64 << 10)
    monkeypatch.setattr(write, "COMMIT_SECONDS", 1e9)  # no commit by the clock: exact counts
    commits: list[list[int]] = []  # per commit, each segment's bytes of records
    real_commit = journal.Journal.commit

    def commit(self: journal.Journal, segments: list[journal.SyncedSegment], log_offset: int,
               log_seq: int) -> None:
        commits.append([header.records_raw_len for header, _, _ in segments])
        real_commit(self, segments, log_offset, log_seq)

    monkeypatch.setattr(journal.Journal, "commit", commit)
    src = tmp_path / "src"
    _tiny_tree(src, 3000)
    cfg = PrepConfig(srcdir=src, dstdir="seed-test/vdir/", jdir=tmp_path / "j",
                     session_id="records-1", drives=[str(tmp_path / "d1.img")],
                     drive_size=64 * MiB, yes=True, kdf=FAST_ARGON)
    cfg.jdir.mkdir(mode=0o700)
    journals: list[journal.Journal] = []
    stats = Stats()

    async def main() -> None:
        pool = DrivePool(cfg, journals, trio.CapacityLimiter(2), stats)
        await run_prep(cfg, Session(cfg.srcdir, cfg.dstdir, journals), pool, stats,
                       on_skip=lambda *a: None, on_changed=lambda *a: None,
                       on_full=lambda w: None)

    trio.run(main)
    [j] = journals
    passwords = [(j.drive.path, j.recovery_password)]
    j.close()
    largest = format.record_size(format.FileEntry(
        1, "d00/f00000.txt", "vdir/d00/f00000.txt", 200, 0, 0)) + format.EXTENT_RECORD_SIZE
    segments = [n for c in commits for n in c]
    assert sum(segments) > 5 * (64 << 10)  # 3,000 files x 132 B of records: six commits
    # A segment is sealed as its records reach SEGMENT_RECORDS: past it by one file at most.
    assert all(16 << 10 <= n < (16 << 10) + largest for n in segments[:-1])
    # Each commit but the last is made by the segment that took its records to
    # COMMIT_RECORDS: not one segment before, nor later.
    for c in commits[:-1]:
        assert sum(c[:-1]) < 64 << 10 <= sum(c), c
    assert sum(commits[-1]) < (64 << 10) + (16 << 10) + largest
    assert restore(passwords) == read_tree(src)


def test_the_memory_budget_counts_the_records_a_writer_holds() -> None:
    """``--memory`` arithmetic: per writing drive its segments' bytes and, as objects, the
    records of the segments before the write and of those waiting for their commit."""
    assert config.WRITER_MEMORY == (6 * (write.SEGMENT_PAYLOAD + format.CELL)
                                    + write.RECORD_OBJECTS
                                    * (4 * write.SEGMENT_RECORDS + write.COMMIT_RECORDS))
    assert config.WRITER_MEMORY // MiB == 45
    cfg = PrepConfig(srcdir=Path("/s"), dstdir="c/", jdir=Path("/j"), session_id="m",
                     drives=["a", "b", "c"], cpu_threads=2, memory=256 * MiB)
    assert cfg.depth == config.MAX_DEPTH  # the default budget keeps the default depth
    cfg.fill = "parallel"  # three drives writing at once: 135 MiB of writers
    assert cfg.depth == (256 - 135 - 64 - 48 - 2 - 2) // 2
