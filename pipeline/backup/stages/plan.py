"""Restore's plan: the chunks a snapshot needs, grouped by pack into ranges to read.

One storage read per range, not per chunk, keeps a restore from Azure fast, and a
chunk used by several files is fetched once.  Ranges read through gaps of up to
``RANGE_GAP`` rather than split, and hold up to ``RANGE_MAX`` bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.repo import Repository
from pipeline.backup.stages.files import Files

RANGE_MAX = 16 << 20          # bytes per storage read
RANGE_GAP = 256 << 10         # read through gaps up to this size rather than split the range


@dataclass(frozen=True, slots=True)
class Range:
    """plan -> fetch: bytes [start, end) of one pack, holding ``entries``' chunks."""

    pack: bytes
    start: int
    end: int
    entries: list[fmt.IndexEntry]


def plan(repo: Repository, files: Files) -> list[Range]:
    """Ranges of packs to read, and ``files.where`` filled in (sync: call in a thread).

    A file with a chunk in no readable index file fails here, before anything of it is
    written."""
    for f in files.files:
        places: list[tuple[bytes, int, int]] = []
        off = n = 0
        for cid, length in f.node.content:
            if cid is not None:
                n += 1
                try:
                    repo.entry(cid)
                except CorruptRepository as exc:
                    if f.first is None:
                        f.first = (n, str(exc.args[0]))
                    f.failures += 1
                places.append((cid, off, n))
            off += length
        if f.first is not None:
            f.left, f.done = 0, True
            continue
        for cid, at, k in places:
            files.where[cid].append((f, at, k))
    by_pack: dict[bytes, list[fmt.IndexEntry]] = defaultdict(list)
    for cid in files.where:
        e = repo.entry(cid)
        by_pack[e.pack].append(e)
    ranges: list[Range] = []
    for pack, entries in by_pack.items():
        entries.sort(key=lambda e: e.offset)
        ranges += _split(pack, entries)
    return ranges


def _split(pack: bytes, entries: list[fmt.IndexEntry]) -> list[Range]:
    """``entries`` (by offset) into ranges, in order."""
    out: list[Range] = []
    group: list[fmt.IndexEntry] = []
    start = end = 0
    for e in entries:
        e_end = e.offset + e.length
        if group and (e.offset - end > RANGE_GAP or e_end - start > RANGE_MAX):
            out.append(Range(pack, start, end, group))
            group = []
        if group:
            end = max(end, e_end)
        else:
            start, end = e.offset, e_end
        group.append(e)
    if group:
        out.append(Range(pack, start, end, group))
    return out
