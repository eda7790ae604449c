"""The cluster's partitioner and shard planner (pure): the walk's order is the order of
``walk_key``; the shards cover every file once, in contiguous ranges, balanced by bytes
against capacity; a worker's planner keeps exactly its range.  And `journal export --part`:
a session of more drives than a job holds, split into jobs of at most ten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import journal
from pipeline.cluster.shard import ShardPlanner, in_shard, partition, walk_key
from pipeline.jobs.rules import MAX_DRIVES
from pipeline.prep import scan
from pipeline.prep.scan import SourceFile
from tests import jobservice
from tests.conftest import run_cli

NAMES = st.text(alphabet="ab-_.0Zé/", min_size=1, max_size=12).map(
    lambda s: "/".join(p for p in s.split("/") if p.strip(".")) or "x")


def _tree(root: Path, paths: list[str]) -> None:
    for p in paths:
        target = root / p
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_bytes(b"x")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass  # a name used as both file and directory: the first one stays


@settings(max_examples=40, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=25))
def test_walk_order_is_walk_key_order(paths: list[str]) -> None:
    root = Path(f"/tmp/pipeline-shard-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    try:
        _tree(root, paths)
        walked = [f.path for f in scan.scan(root)]
        assert walked == sorted(walked, key=walk_key)
    finally:
        shutil.rmtree(root, ignore_errors=True)


FILES = st.lists(st.integers(0, 1000), min_size=0, max_size=200)
CAPS = st.lists(st.integers(1, 50), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(FILES, CAPS)
def test_partition_covers_every_file_once_balanced(sizes: list[int], caps: list[int]) -> None:
    files = [(f"d{i // 10:03d}/f{i:04d}", size) for i, size in enumerate(sizes)]
    total = sum(sizes)
    shards = partition(iter(files), total, caps)
    assert len(shards) == len(caps)
    keys = [(None if s.lo is None else walk_key(s.lo), None if s.hi is None else walk_key(s.hi))
            for s in shards]
    for path, _ in files:  # each file in exactly one shard
        owners = [i for i, (lo, hi) in enumerate(keys)
                  if shards[i].lo != "" and in_shard(walk_key(path), lo, hi)]
        assert len(owners) == 1, (path, shards)
    assert sum(s.files for s in shards) == len(files)
    assert sum(s.bytes for s in shards) == total
    biggest = max(sizes, default=0)
    for s, cap in zip(shards, caps, strict=True):  # within one file of its share
        assert abs(s.bytes - total * cap / sum(caps)) <= biggest * len(caps)


def test_partition_is_proportional_to_capacity() -> None:
    files = [(f"f{i:05d}", 100) for i in range(3000)]
    shards = partition(iter(files), 300_000, [1, 2, 3])
    assert [s.bytes for s in shards] == [50_000, 100_000, 150_000]
    assert shards[0].lo is None and shards[-1].hi is None
    assert shards[0].hi == shards[1].lo == "f00500"


def test_shard_planner_keeps_its_range_only() -> None:
    planner = ShardPlanner("/staging/", "vdir/", next_id=1 << 40, lo="b", hi="c/x")
    kept = []
    for path in ("a", "a-b", "b", "b/z", "c", "c/w", "c/x", "c/y", "d"):
        job, superseded = planner.plan(SourceFile(path, 10, 1, 0o644))
        assert superseded is None
        if job is not None:
            kept.append((job.entry.path, job.entry.file_id))
    assert kept == [("b", 1 << 40), ("b/z", (1 << 40) + 1), ("c", (1 << 40) + 2),
                    ("c/w", (1 << 40) + 3)]
    empty = ShardPlanner("/staging/", "", lo="", hi="")
    assert empty.plan(SourceFile("a", 1, 1, 0o644)) == (None, None)


def big_session(jdir: Path) -> int:
    """A closed session of 23 drives, numbered as two cluster workers number theirs (1-15
    and 101-108): more than two jobs' worth.  Returns the drive count."""
    session = journal.SessionInfo("big-1", "/s", "cont/v/", 1, 1, "sequential")
    seqs = [*range(1, MAX_DRIVES + 6), *range(101, 101 + MAX_DRIVES - 2)]
    for seq in seqs:
        info = journal.DriveInfo(seq, f"/dev/d{seq}", f"uuid-{seq}", 1 << 30, 1 << 29,
                                 state="closed", index_offset=1 << 20, index_length=4096,
                                 header_sha256=f"{seq:064x}", index_sha256=f"{seq + 1:064x}")
        journal.Journal.create(journal.journal_path(jdir, "big-1", seq), session, info,
                               jobservice.recovery_password()).close()
    return len(seqs)


def test_journal_export_parts_of_ten(tmp_path: Path) -> None:
    count = big_session(tmp_path)
    base = ["journal", "export", "--journal-dir", str(tmp_path)]
    out = run_cli(*base, check_code=2)
    assert f"has {count} drives" in out.stderr and "--part 3" in out.stderr
    got = [json.loads(run_cli(*base, "--part", str(n), check_code=0).stdout)
           for n in (1, 2, 3)]
    assert [len(g) for g in got] == [MAX_DRIVES, MAX_DRIVES, 3]
    ids = [d["driveId"] for g in got for d in g]
    assert len(set(ids)) == count and ids[MAX_DRIVES] == f"uuid-{MAX_DRIVES + 1}"
    run_cli(*base, "--part", "4", check_code=2)
