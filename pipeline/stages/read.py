"""Read stage: staging file -> extents on a fixed grid (sparse-aware, zero runs skipped).

The sync part below runs in worker threads and imports no trio; it knows
nothing of drives.  Extent k of a file always covers
``[k*E, min((k+1)*E, size))``: resume skips committed offsets and page-blob
alignment on import relies on the grid, so the grid never depends on the data.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Container, Iterator
from typing import TYPE_CHECKING

import trio

from pipeline import codec, format, smallio
from pipeline.errors import BadInput
from pipeline.progress import Stats
from pipeline.stages.pack import Bundle, PackedExtent, RawExtent, packed_extent

if TYPE_CHECKING:
    from pipeline.session import FileJob

__all__ = [
    "EXTENT_SIZE",
    "FileChanged",
    "data_ranges",
    "plan_extents",
    "read_extents",
    "run",
]

# =========================================================================== sync: file -> extents

EXTENT_SIZE = 1 << 20
"""Grid step: extent k covers [k*E, min((k+1)*E, size))."""

_NO_SEEK_HOLE = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


class FileChanged(BadInput):
    """{!r} changed while prep was reading it ({}); prep picks it up again on --resume"""


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) ranges of ``[0, size)`` that hold data, by SEEK_DATA/SEEK_HOLE.

    Holes need not be read: they read as zeros.  ENXIO from SEEK_DATA means no
    data after that offset (a trailing hole), as in borg's sparsemap.  A file
    system without SEEK_HOLE support (EINVAL/ENOTSUP) gives one range, the
    whole file.  Ranges are clipped to ``size`` (the size the scan saw).
    """
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after pos (or the file shrank under us)
                break
            if e.errno in _NO_SEEK_HOLE:
                return [(0, size)]
            raise
        if end <= start:  # cannot happen on a sane FS; never loop forever
            return [(0, size)]
        ranges.append((start, end))
        pos = end
    return ranges


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
    size: int, ranges: list[tuple[int, int]], extent_size: int = EXTENT_SIZE
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
    extent_size: int = EXTENT_SIZE,
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


# =========================================================================== async stage (lead)

_PER_CALL = 4  # extents of a large file read per worker-thread call
SMALL_BATCH = 64  # small files read per worker-thread call ...
SMALL_BYTES = 4 << 20  # ... up to this many bytes


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


def _read_many(jobs: list[FileJob]) -> list[bytes | None | FileChanged]:
    """``read_small`` of each job; through ``smallio`` (few GIL hand-offs) where it works."""
    if not smallio.AVAILABLE:
        out: list[bytes | None | FileChanged] = []
        for job in jobs:
            try:
                out.append(read_small(job.abspath, job.entry.size, job.entry.mtime_ns))
            except FileChanged as exc:
                out.append(exc)
        return out
    got = smallio.read_batch([(job.abspath, job.entry.size) for job in jobs],
                             _OPEN_FLAGS | os.O_NOATIME)
    out = []
    for job, one in zip(jobs, got, strict=True):
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


def _read_batch(jobs: list[FileJob], level: int, stats: Stats
                ) -> list[PackedExtent | FileChanged]:
    """Read, then pack, a batch of small files in one thread call."""
    with stats.timed("read"):
        raw = _read_many(jobs)
    with stats.timed("pack"):
        data = [got for got in raw if isinstance(got, bytes)]
        packed = iter(codec.pack_many(data, level))
        out: list[PackedExtent | FileChanged] = []
        for job, got in zip(jobs, raw, strict=True):
            if isinstance(got, FileChanged):
                out.append(got)
                continue
            size = job.entry.size
            out.append(packed_extent(RawExtent(job.entry, 0, size, got), None if not size
                                     else codec.zero(size) if got is None else next(packed)))
        return out


def _take(gen: Iterator[tuple[int, int, bytes | None]], n: int, stats: Stats
          ) -> list[tuple[int, int, bytes | None]]:
    with stats.timed("read"):
        out = []
        for item in gen:
            out.append(item)
            if len(out) >= n:
                break
        return out


def _is_small(job: FileJob) -> bool:
    return job.entry.size <= EXTENT_SIZE and not job.skip


async def run(rx: trio.MemoryReceiveChannel[list[FileJob]],
              tx: trio.MemorySendChannel[RawExtent],
              packed_tx: trio.MemorySendChannel[Bundle], level: int,
              io: trio.CapacityLimiter, stats: Stats,
              on_changed: Callable[[str, str], None]) -> None:
    """Read each planned file into grid extents; ``io`` bounds concurrent staging reads.

    Files come in the planner's chunks.  Small files are read and packed in a
    worker thread in batches (one hand-off per batch, not per file: the
    hand-offs, not the bytes, are what small files cost) and go straight to the
    writers; large files go to the pack stage an extent at a time.  A file that
    changes while it is read is reported through ``on_changed`` and left for
    ``--resume``, which sees its new size or mtime and writes it again.
    """
    async with rx, tx, packed_tx:
        async for jobs in rx:
            batch: list[FileJob] = []
            total = 0
            for job in jobs:
                if not _is_small(job):
                    await _read_small(batch, packed_tx, level, io, stats, on_changed)
                    batch, total = [], 0
                    await _read_large(job, tx, io, stats, on_changed)
                    continue
                batch.append(job)
                total += job.entry.size
                if len(batch) >= SMALL_BATCH or total >= SMALL_BYTES:
                    await _read_small(batch, packed_tx, level, io, stats, on_changed)
                    batch, total = [], 0
            await _read_small(batch, packed_tx, level, io, stats, on_changed)


async def _read_small(batch: list[FileJob], tx: trio.MemorySendChannel[Bundle],
                      level: int, io: trio.CapacityLimiter, stats: Stats,
                      on_changed: Callable[[str, str], None]) -> None:
    if not batch:
        return
    results = await trio.to_thread.run_sync(_read_batch, batch, level, stats, limiter=io)
    bundle: Bundle = []
    for job, got in zip(batch, results, strict=True):
        if isinstance(got, FileChanged):
            on_changed(job.entry.path, str(got))
            continue
        size = job.entry.size
        bundle.append(got)
        stats.bytes_read += size
        stats.files_done += 1
        if size:
            stats.extents += 1
            if got.extent is not None and got.extent.codec is format.Codec.ZERO:
                stats.zero_bytes += size
    if bundle:
        await tx.send(bundle)


async def _read_large(job: FileJob, tx: trio.MemorySendChannel[RawExtent],
                      io: trio.CapacityLimiter, stats: Stats,
                      on_changed: Callable[[str, str], None]) -> None:
    entry = job.entry
    stats.skipped_bytes += sum(min(EXTENT_SIZE, entry.size - o) for o in job.skip)
    gen = read_extents(job.abspath, entry.size, entry.mtime_ns, skip=job.skip)
    try:
        while True:
            batch = await trio.to_thread.run_sync(_take, gen, _PER_CALL, stats, limiter=io)
            for offset, length, data in batch:
                await tx.send(RawExtent(entry, offset, length, data))
                stats.bytes_read += length
                stats.extents += 1
                if data is None:
                    stats.zero_bytes += length
            if len(batch) < _PER_CALL:
                break
    except FileChanged as exc:
        on_changed(entry.path, str(exc))
        return
    finally:
        gen.close()
    stats.files_done += 1
