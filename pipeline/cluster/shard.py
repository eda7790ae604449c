"""The partitioner: a staging tree cut into contiguous ranges of its walk, balanced by bytes.

Pure and streaming: ``scan.scan`` walks depth-first with each directory sorted by name
bytes, which is the order of paths compared as tuples of their components (``walk_key``).
So a shard is a range ``[lo, hi)`` of that order, named by two paths, whatever the tree's
size: the client cuts the walk as it streams past (holding one running sum, never a list
of files), and a worker's feeder walks only its range (``scan.scan(lo=, hi=)``, through
``ShardPlanner.walk_range``); the planner still keeps only the files of its range.
Sync and free of trio and dask: the feeder process unpickles
the planner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.prep import scan
from pipeline.prep.scan import SourceFile
from pipeline.prep.session import FileJob, Planner

Key = tuple[bytes, ...]


walk_key = scan.path_key
"""``path``'s place in ``scan.scan``'s order (component tuples, compared as bytes)."""


@dataclass(frozen=True)
class Shard:
    """One worker's range of the walk: from ``lo`` (None: the start) up to ``hi``
    (None: the end), and what the cutting walk found in it."""

    lo: str | None
    hi: str | None
    files: int = 0
    bytes: int = 0


def partition(files: Iterable[tuple[str, int]], total: int, capacities: list[int]
              ) -> list[Shard]:
    """Cut the walk ``files`` ((path, size) in walk order, ``total`` bytes in all) into one
    range per capacity, each holding bytes in proportion to its capacity.

    A cut falls between two files, before the file that would carry the running sum
    past the target, unless the sum is nearer the target with it.  One pass, constant
    memory: the planning cost is the walk.
    """
    if not capacities or min(capacities) <= 0:
        raise ValueError("every worker needs drive capacity")
    whole = sum(capacities)
    targets, acc = [], 0
    for cap in capacities[:-1]:
        acc += cap
        targets.append(total * acc // whole)
    lows: list[str | None] = [None]
    counts = [[0, 0]]
    done = 0
    for path, size in files:
        while len(lows) <= len(targets) and done + size > targets[len(lows) - 1]:
            target = targets[len(lows) - 1]
            if done + size - target < target - done:  # nearer with this file: it stays
                break
            lows.append(path)
            counts.append([0, 0])
        counts[-1][0] += 1
        counts[-1][1] += size
        done += size
    while len(lows) < len(capacities):  # fewer files than shards: the rest are empty
        lows.append(None)
        counts.append([0, 0])
    shards = []
    for i, lo in enumerate(lows):
        hi = next((h for h in lows[i + 1:] if h is not None), None)
        empty = i > 0 and lo is None
        shards.append(Shard("" if empty else lo, "" if empty else hi, *counts[i]))
    return shards


def in_shard(key: Key, lo: Key | None, hi: Key | None) -> bool:
    return (lo is None or key >= lo) and (hi is None or key < hi)


@dataclass
class ShardPlanner(Planner):
    """prep's planner, keeping only the files of one shard: the others are another
    worker's, and the feeder counts them as not to be written here.  An empty shard
    (``lo == hi == ""``) keeps nothing."""

    lo: str | None = None
    hi: str | None = None
    _keys: tuple[Key | None, Key | None] = field(default=(None, None), repr=False)

    def __post_init__(self) -> None:
        self._keys = (None if self.lo is None else walk_key(self.lo),
                      None if self.hi is None else walk_key(self.hi))

    def walk_range(self) -> tuple[str | None, str | None]:
        """The feeder walks only this range (``scan.scan``'s bounds), not the whole tree."""
        return self.lo, self.hi

    def plan(self, src: SourceFile) -> tuple[FileJob | None, int | None]:
        if self.lo == "" or not in_shard(walk_key(src.path), *self._keys):
            return None, None
        return super().plan(src)
