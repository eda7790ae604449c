"""A prep session across its journals: what is committed, what is left to write.

On a fresh run this only hands out file ids.  On ``--resume`` it knows, from
every journal of the session, which grid cells of which file are already on a
drive: those are skipped, never rewritten.  A file whose size or mtime changed
in staging since it was written is superseded (its old records are marked
stale in every journal) and written again under a new id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import format, journal
from pipeline.scan import SourceFile
from pipeline.stages.read import EXTENT_SIZE


@dataclass(frozen=True, slots=True)
class FileJob:
    """A file to read: its entry, where it is, and the grid cells already committed."""

    entry: format.FileEntry
    abspath: str  # a str, not a Path: joining Paths cost more than reading a small file
    skip: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Committed:
    file_id: int
    size: int
    mtime_ns: int
    offsets: set[int] = field(default_factory=set)
    journals: list[journal.Journal] = field(default_factory=list)


def grid_cells(size: int) -> int:
    return -(-size // EXTENT_SIZE)


class Session:
    """Plans each staging file against what the session's journals hold."""

    def __init__(self, srcdir: Path, dstdir: str, journals: list[journal.Journal]) -> None:
        self.srcdir = srcdir
        self._root = os.path.join(os.fspath(srcdir), "")  # with its trailing separator
        self.vdir = dstdir.partition("/")[2]
        self.committed: dict[str, _Committed] = {}
        self.next_id = 1
        self.superseded = 0
        for j in journals:
            for entry in j.files(include_superseded=True):
                self.next_id = max(self.next_id, entry.file_id + 1)
            by_id: dict[int, _Committed] = {}
            for entry in j.files():
                c = self.committed.get(entry.path)
                if c is None or c.file_id < entry.file_id:
                    c = self.committed[entry.path] = _Committed(entry.file_id, entry.size,
                                                                entry.mtime_ns)
                if c.file_id == entry.file_id:
                    c.journals.append(j)
                    by_id[entry.file_id] = c
            for ext in j.extents():
                c = by_id.get(ext.file_id)
                if c is not None:
                    c.offsets.update(range(ext.offset, ext.offset + ext.raw_len, EXTENT_SIZE))

    @property
    def resuming(self) -> bool:
        return bool(self.committed)

    def plan(self, src: SourceFile) -> FileJob | None:
        """The work left for ``src``, or None when it is wholly on the drives already."""
        prev = self.committed.get(src.path)
        if prev is not None and (prev.size, prev.mtime_ns) == (src.size, src.mtime_ns):
            if len(prev.offsets) >= grid_cells(src.size):
                return None
            entry = format.FileEntry(prev.file_id, src.path, self.vdir + src.path, src.size,
                                     src.mtime_ns, src.mode)
            return FileJob(entry, self._root + src.path, frozenset(prev.offsets))
        if prev is not None:  # changed since it was written: stale everywhere
            for j in prev.journals:
                j.supersede([prev.file_id])
            del self.committed[src.path]
            self.superseded += 1
        entry = format.FileEntry(self.next_id, src.path, self.vdir + src.path, src.size,
                                 src.mtime_ns, src.mode)
        self.next_id += 1
        return FileJob(entry, self._root + src.path)
