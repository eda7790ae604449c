"""Reading staging files: file -> extents on a fixed grid (sparse-aware, zero runs skipped).

Sync and free of trio: prep's worker threads run it for large files, and the
feeder process (``pipeline.prep.feed``) for small ones.  It knows nothing of
drives.  Extent k of a file always covers
``[k*E, min((k+1)*E, size))``: resume skips committed offsets and page-blob
alignment on import relies on the grid, so the grid never depends on the data.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container, Iterator

from pipeline.drive import codec, format
from pipeline.errors import BadInput
from pipeline.prep import smallio
from pipeline.prep.session import FileJob
from pipeline.sparse import data_ranges

__all__ = [
    "EXTENT_SIZE",
    "FileChanged",
    "data_ranges",
    "is_small",
    "plan_extents",
    "read_extents",
    "Prefetch",
    "read_many",
    "read_small",
]

# =========================================================================== sync: file -> extents

EXTENT_SIZE = format.CELL
"""The grid step, ``format.CELL``: the name the receiving side and backup still import."""



class FileChanged(BadInput):
    """{!r} changed while prep was reading it ({}); prep picks it up again on --resume"""


def _cells(
    size: int, ranges: list[tuple[int, int]], extent_size: int
) -> Iterator[tuple[int, int, bool]]:
    """Lazy ``plan_extents``: memory stays O(ranges) whatever the file size."""
    if extent_size < 1:
        raise ValueError(f"extent_size={extent_size} must be positive")
    if size < 0:
        raise ValueError(f"size={size} must not be negative")
    # Normalise: clip to [0, size), drop empties, sort, merge overlaps.
    merged: list[tuple[int, int]] = []
    for s, e in sorted((max(s, 0), min(e, size)) for s, e in ranges):
        if s >= e:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    i = 0
    for off in range(0, size, extent_size):
        end = min(off + extent_size, size)
        while i < len(merged) and merged[i][1] <= off:
            i += 1
        yield off, end - off, i < len(merged) and merged[i][0] < end


def plan_extents(
    size: int, ranges: list[tuple[int, int]], extent_size: int = format.CELL
) -> list[tuple[int, int, bool]]:
    """(offset, length, has_data) for each grid cell of a ``size``-byte file.

    ``has_data`` is False only when the cell lies entirely in a hole, i.e. it
    meets no data range; such a cell is a ZERO extent known without reading.
    """
    return list(_cells(size, ranges, extent_size))


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _open(path: str) -> int:
    # O_NOATIME: seeding terabytes should not rewrite every inode's atime; the kernel allows it
    # only to the owner (or CAP_FOWNER), so fall back without it on EPERM.  O_NOFOLLOW: a file
    # replaced by a symlink since the scan is not followed.  O_NONBLOCK: a file replaced by a
    # fifo must not hang the open (it has no effect on regular files).
    try:
        try:
            return os.open(path, _OPEN_FLAGS | os.O_NOATIME)
        except PermissionError as e:
            if e.errno != errno.EPERM:
                raise
            return os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise _open_error(path, e) from None


def _open_error(path: str, e: OSError) -> BadInput:
    """What a failed open of a staging file means for the operator."""
    if e.errno == errno.ENOENT:
        return FileChanged(path, "it disappeared")
    if e.errno in (errno.EACCES, errno.EPERM):
        return BadInput(
            f"{path!r}: cannot read: permission denied; grant read access or remove it from staging"
        )
    if e.errno == errno.ELOOP:
        return FileChanged(path, "it is now a symbolic link")
    return BadInput(f"{path!r}: cannot open: {e.strerror or e}")


def _check_same(fd: int, path: str, size: int, mtime_ns: int) -> None:
    st = os.fstat(fd)
    _check_stat(path, st.st_mode, st.st_size, st.st_mtime_ns, size, mtime_ns)


def _check_stat(path: str, mode: int, now_size: int, now_mtime_ns: int, size: int,
                mtime_ns: int) -> None:
    if not stat.S_ISREG(mode):
        raise FileChanged(path, "it is no longer a regular file")
    if now_size != size:
        raise FileChanged(path, f"size {size} became {now_size}")
    if now_mtime_ns != mtime_ns:
        raise FileChanged(path, f"modification time {mtime_ns} ns became {now_mtime_ns} ns")


def read_extents(
    path: str | os.PathLike[str],
    size: int,
    mtime_ns: int,
    *,
    skip: Container[int] = (),
    extent_size: int = format.CELL,
) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, length, data) for each grid cell of the file not in ``skip``.

    ``size``/``mtime_ns`` are what the scan saw; the file is checked against
    them when opened and again after the last extent, so a file written to while
    it was read raises ``FileChanged`` rather than seeding a torn copy (a write
    in place shows in the mtime).  ``data`` is None for a zero cell: one that
    lies in a hole (not read at all) or that read as all zeros.  Each data cell
    is one ``pread`` into fresh bytes; a short read is ``FileChanged``.
    ``skip`` holds the offsets already committed (resume).  Empty files yield
    nothing (but are still checked).  The file is closed when the generator
    ends or is closed.
    """
    spath = os.fsdecode(path)
    fd = _open(spath)
    try:
        _check_same(fd, spath, size, mtime_ns)
        for off, length, has_data in _cells(size, data_ranges(fd, size), extent_size):
            if off in skip:
                continue
            if not has_data:
                yield off, length, None
                continue
            data = os.pread(fd, length, off)
            if len(data) != length:
                raise FileChanged(
                    spath, f"read {len(data)} of {length} bytes at offset {off}: it shrank"
                )
            yield off, length, None if codec.is_zero(data) else data
        _check_same(fd, spath, size, mtime_ns)
    finally:
        os.close(fd)


# =========================================================================== small files

SMALL_BATCH = 64  # small files read (and packed) together ...
SMALL_BYTES = 4 << 20  # ... up to this many bytes


def is_small(size: int, skip: Container[int]) -> bool:
    """Read whole in one batch with others (at most one extent, nothing committed)."""
    return size <= format.CELL and not skip


def read_small(path: str | os.PathLike[str], size: int, mtime_ns: int) -> bytes | None:
    """A whole file of at most one extent: open, one pread, fstat, close.

    No SEEK_DATA/SEEK_HOLE (a hole that small costs nothing to read) and one
    fstat after the read, which sees any change made before or during it.
    Returns None for an all-zero (or empty) file.
    """
    spath = os.fsdecode(path)
    fd = _open(spath)
    try:
        data = os.pread(fd, size + 1, 0) if size else b""
        _check_same(fd, spath, size, mtime_ns)
    finally:
        os.close(fd)
    if len(data) != size:
        raise FileChanged(spath, f"read {len(data)} bytes, expected {size}")
    return None if codec.is_zero(data) else data


def read_many(jobs: list[FileJob]) -> list[bytes | None | FileChanged]:
    """``read_small`` of each job, through ``smallio`` (every read started at once)."""
    return Prefetch(jobs).read()


class Prefetch:
    """``read_many`` in two steps: opening a batch starts its disk reads, ``read`` ends them.

    The feeder opens the next batch before it reads and packs this one, so a cold
    tree's reads overlap its CPU work (it spent a fifth of its time waiting on them).
    """

    def __init__(self, jobs: list[FileJob]) -> None:
        self.jobs = jobs
        self._batch = smallio.open_batch([(job.abspath, job.entry.size) for job in jobs],
                                         _OPEN_FLAGS | os.O_NOATIME) if smallio.AVAILABLE else None

    def close(self) -> None:
        """Give up the batch unread (its descriptors closed)."""
        if self._batch is not None:
            self._batch.close()

    def read(self) -> list[bytes | None | FileChanged]:
        """Each job's bytes (None: all zero) or how it changed since the scan."""
        out: list[bytes | None | FileChanged] = []
        if self._batch is None:
            for job in self.jobs:
                try:
                    out.append(read_small(job.abspath, job.entry.size, job.entry.mtime_ns))
                except FileChanged as exc:
                    out.append(exc)
            return out
        for job, one in zip(self.jobs, self._batch.read(), strict=True):
            path, size = job.abspath, job.entry.size
            try:
                if isinstance(one, smallio.Failed):
                    if one.op == "open":
                        raise _open_error(path, one.error)
                    raise one.error
                _check_stat(path, one.mode, one.size, one.mtime_ns, size, job.entry.mtime_ns)
                if len(one.data) != size:
                    raise FileChanged(path, f"read {len(one.data)} bytes, expected {size}")
            except FileChanged as exc:
                out.append(exc)
                continue
            out.append(None if codec.is_zero(one.data) else one.data)
        return out


