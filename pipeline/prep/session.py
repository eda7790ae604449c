"""A prep session across its journals: what is committed, what is left to write.

On a fresh run this only hands out file ids.  On ``--resume`` it knows, from
every journal of the session, which grid cells of which file are already on a
drive: those are skipped, never rewritten.  A file whose size or mtime changed
in staging since it was written is superseded (its old records are marked
stale in every journal) and written again under a new id.

The deciding part, ``Planner``, is plain data and pure: the feeder process
(``pipeline.prep.feed``) plans with a copy of it while the walk runs there,
and tells prep which file ids to supersede; ``Session`` owns the journals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import journal
from pipeline.drive import format
from pipeline.prep.scan import SourceFile


@dataclass(frozen=True, slots=True)
class FileJob:
    """A file to read: its entry, where it is, and the grid cells already committed."""

    entry: format.FileEntry
    abspath: str  # a str, not a Path: joining Paths cost more than reading a small file
    skip: frozenset[int] = frozenset()


@dataclass(slots=True)
class Committed:
    """What the journals hold of one staging path (its newest file id)."""

    file_id: int
    size: int
    mtime_ns: int
    offsets: set[int] = field(default_factory=set)


@dataclass
class Planner:
    """Staging file -> the work left for it (pure: no journal, no I/O; picklable)."""

    root: str  # the staging root with its trailing separator
    vdir: str
    committed: dict[str, Committed] = field(default_factory=dict)
    next_id: int = 1

    def walk_range(self) -> tuple[str | None, str | None]:
        """The part ``[lo, hi)`` of the walk to plan (None: open): all of it; a cluster
        worker's planner narrows it to its shard (``scan.scan``'s bounds)."""
        return None, None

    def plan(self, src: SourceFile, blob: str | None = None,
             attrs: format.BlobAttrs | None = None) -> tuple[FileJob | None, int | None]:
        """(the job, or None when ``src`` is wholly on the drives already; the file id
        to supersede, or None).  A superseded id must be marked stale before the new
        copy is committed.  A dataset's file comes with its blob (``container/name``)
        and attributes; any other's blob is the virtual directory + its path."""
        if blob is None:
            blob = self.vdir + src.path
        prev = self.committed.get(src.path)
        if prev is not None and (prev.size, prev.mtime_ns) == (src.size, src.mtime_ns):
            if len(prev.offsets) >= format.grid_cells(src.size):
                return None, None
            entry = format.FileEntry(prev.file_id, src.path, blob, src.size,
                                     src.mtime_ns, src.mode, attrs)
            return FileJob(entry, self.root + src.path, frozenset(prev.offsets)), None
        if prev is not None:  # changed since it was written: stale everywhere
            del self.committed[src.path]
        entry = format.FileEntry(self.next_id, src.path, blob, src.size,
                                 src.mtime_ns, src.mode, attrs)
        self.next_id += 1
        return FileJob(entry, self.root + src.path), None if prev is None else prev.file_id


class Session:
    """The session's journals, and a ``Planner`` built from what they hold."""

    def __init__(self, srcdir: Path, dstdir: str, journals: list[journal.Journal]) -> None:
        self.planner = Planner(os.path.join(os.fspath(srcdir), ""), dstdir.partition("/")[2])
        self.holders: dict[int, list[journal.Journal]] = {}  # file id -> journals listing it
        committed = self.planner.committed
        for j in journals:
            for entry in j.files(include_superseded=True):
                self.planner.next_id = max(self.planner.next_id, entry.file_id + 1)
            by_id: dict[int, Committed] = {}
            for entry in j.files():
                c = committed.get(entry.path)
                if c is None or c.file_id < entry.file_id:
                    c = committed[entry.path] = Committed(entry.file_id, entry.size,
                                                          entry.mtime_ns)
                if c.file_id == entry.file_id:
                    self.holders.setdefault(entry.file_id, []).append(j)
                    by_id[entry.file_id] = c
            for ext in j.extents():
                c = by_id.get(ext.file_id)
                if c is not None:
                    c.offsets.update(format.grid(ext.offset + ext.raw_len, ext.offset))

    def supersede(self, file_id: int) -> None:
        """Mark ``file_id`` stale in every journal that lists it (its staging copy changed)."""
        for j in self.holders.pop(file_id, []):
            j.supersede([file_id])
