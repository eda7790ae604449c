"""The range-bounded walk a cluster worker runs (``scan.scan(lo=, hi=)``): exactly the full
walk's entries within ``[lo, hi)``, and only the directories on the way to ``lo`` and ``hi``
plus those its range holds are listed or stat'ed, never the rest of the tree."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cluster.shard import ShardPlanner, in_shard, partition
from pipeline.prep import feed, feedwire, scan
from pipeline.prep.scan import path_key
from pipeline.prep.session import Planner

COMPONENT = st.text(alphabet="ab-_.Zé", min_size=1, max_size=3).filter(
    lambda s: s.strip(".") != "")
PATHS = st.lists(COMPONENT, min_size=1, max_size=4).map("/".join)


@contextmanager
def counting(root: Path) -> Iterator[tuple[list[str], list[str]]]:
    """The real ``_list`` and ``_lstat_many``, recording each directory listed and each
    path stat'ed (relative to ``root``)."""
    listed: list[str] = []
    statted: list[str] = []
    real_list, real_lstat = scan._list, scan._lstat_many
    base = len(os.fsencode(root)) + 1

    def list_(path: bytes) -> list[bytes]:
        listed.append(os.fsdecode(path[base:]))
        return real_list(path)

    def lstat_(paths: list[bytes]) -> list:
        statted.extend(os.fsdecode(p[base:]) for p in paths)
        return real_lstat(paths)

    with mock.patch.object(scan, "_list", list_), mock.patch.object(scan, "_lstat_many", lstat_):
        yield listed, statted


def _tree(root: Path, files: list[str], links: list[str]) -> None:
    for p in files:
        try:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            if not (root / p).exists():
                (root / p).write_bytes(b"x")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass  # a name used as both file and directory: the first one stays
    for p in links:
        try:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).symlink_to("nowhere")
        except (FileExistsError, NotADirectoryError):
            pass


def _key(p: str | None) -> tuple[bytes, ...] | None:
    return None if p is None else path_key(p)


def _allowed(rel: str, lo: str | None, hi: str | None) -> bool:
    """A path the bounded walk may touch: in range, or a directory on the way to lo."""
    k, low, high = path_key(rel), _key(lo), _key(hi)
    if high is not None and k >= high:
        return False
    return low is None or k >= low or low[:len(k)] == k


@settings(max_examples=120, deadline=None)
@given(st.lists(PATHS, min_size=1, max_size=30), st.lists(PATHS, max_size=4),
       st.one_of(st.none(), PATHS), st.one_of(st.none(), PATHS), st.data())
def test_bounded_walk_is_the_full_walk_in_range(files: list[str], links: list[str],
                                                lo: str | None, hi: str | None,
                                                data: st.DataObject) -> None:
    root = Path(f"/tmp/pipeline-scanrange-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    try:
        _tree(root, files, links)
        full_skips: list[tuple[str, str]] = []
        full = [f.path for f in scan.scan(root, lambda p, why: full_skips.append((p, why)))]
        if full and data.draw(st.booleans()):  # bounds that are files, as the partitioner cuts
            lo = data.draw(st.one_of(st.none(), st.sampled_from(full)))
            hi = data.draw(st.one_of(st.none(), st.sampled_from(full)))
        skips: list[tuple[str, str]] = []
        with counting(root) as (listed, statted):
            got = [f.path for f in scan.scan(root, lambda p, why: skips.append((p, why)),
                                             lo=lo, hi=hi)]
        assert got == [p for p in full if in_shard(path_key(p), _key(lo), _key(hi))]
        assert skips == [s for s in full_skips if in_shard(path_key(s[0]), _key(lo), _key(hi))]
        assert all(_allowed(p, lo, hi) for p in statted), (statted, lo, hi)
        assert all(p == "" or _allowed(p, lo, hi) for p in listed), (listed, lo, hi)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_empty_range_lists_nothing(tmp_path: Path) -> None:
    _tree(tmp_path, ["a/b", "c"], [])
    with counting(tmp_path) as (listed, statted):
        assert list(scan.scan(tmp_path, lo="", hi="")) == []
        assert list(scan.scan(tmp_path, lo="c", hi="a/b")) == []
    assert listed == statted == []


WIDE, DEEP_FILES = 12, 5  # 12 x 12 leaf directories of 5 files: 157 directories, 720 files
SHARDS = 60


def _grid(root: Path) -> None:
    for i in range(WIDE):
        for j in range(WIDE):
            leaf = root / f"d{i:02d}" / f"e{j:02d}"
            leaf.mkdir(parents=True)
            for k in range(DEEP_FILES):
                (leaf / f"f{k}").write_bytes(b"x" * (1 + (i * j * k) % 7))


def test_each_worker_lists_its_path_and_its_share(tmp_path: Path) -> None:
    """60 shards over 157 directories: each lists the directories holding its files plus
    those on the way to its bounds (depth 2: at most 2 x 2 more), so all of them together
    list the tree about once, where unbounded walks would list it 60 times."""
    _grid(tmp_path)
    full = [(f.path, f.size) for f in scan.scan(tmp_path)]
    dirs = 1 + WIDE + WIDE * WIDE
    shards = partition(iter(full), sum(s for _, s in full), [1] * SHARDS)
    total_listed = total_statted = 0
    for s in shards:
        with counting(tmp_path) as (listed, statted):
            got = [f.path for f in scan.scan(tmp_path, lo=s.lo, hi=s.hi)]
        assert len(got) == s.files
        holding = {""} | {p.rsplit("/", 1)[0] for p in got} | {p.split("/")[0] for p in got}
        assert len(listed) <= len(holding) + 2 * 2, (s, listed)
        total_listed += len(listed)
        total_statted += len(statted)
    assert total_listed <= dirs + SHARDS * 2 * 2
    assert total_statted <= len(full) + dirs + SHARDS * 2 * 2 * 2
    assert total_listed < dirs * SHARDS // 10


def test_the_feeder_of_a_shard_walks_its_range_only(tmp_path: Path) -> None:
    """prep's feeder takes the walk's bounds from the planner: a worker's ShardPlanner
    narrows it, prep's own planner walks everything (as before)."""
    _grid(tmp_path)
    planner = ShardPlanner(f"{tmp_path}/", "", next_id=1, lo="d03/e05/f0", hi="d03/e07/f2")
    sent: list[feedwire.Message] = []
    with counting(tmp_path) as (listed, _):
        feed.feed(feedwire.Plan(str(tmp_path), 1, planner), sent.append)
    assert sorted(listed) == ["", "d03", "d03/e05", "d03/e06", "d03/e07"]
    paths = [row[1] for m in sent if isinstance(m, feedwire.Small) for row in m.rows]
    assert paths == [f"d03/e05/f{k}" for k in range(5)] + [f"d03/e06/f{k}" for k in range(5)] \
        + ["d03/e07/f0", "d03/e07/f1"]
    whole = Planner(f"{tmp_path}/", "")
    assert whole.walk_range() == (None, None)
    with counting(tmp_path) as (listed, _):
        feed.feed(feedwire.Plan(str(tmp_path), 1, whole), sent.append)
    assert len(listed) == 1 + WIDE + WIDE * WIDE
