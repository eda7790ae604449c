"""Holes and zeros: what a reader of files skips (prep, backup, export, the estimate).

Light on purpose (os and errno only): backup's estimate and its readers need these two
before anything else, and importing them from prep's reader or the drive codec pulled in
the drive format, prep's journal and sqlite3 (17 ms at the start of every offline backup).
"""

from __future__ import annotations

import errno
import os

__all__ = ["data_ranges", "is_zero", "may_have_holes", "zero_buf"]

_NO_SEEK_HOLE = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def may_have_holes(st: os.stat_result) -> bool:
    """Fewer blocks than bytes: only then are a file's holes worth looking for (two
    lseeks, or an open); a file without any reads whole, its zero chunks still zero runs."""
    return st.st_blocks * 512 < st.st_size


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


_zeros = bytes(1 << 20)  # grows to the largest length asked for; replacing it is atomic


def zero_buf(n: int) -> bytes:
    """A zero buffer at least ``n`` long (a prefix of it stands in for ``n`` zeros)."""
    global _zeros
    buf = _zeros
    if len(buf) < n:
        buf = _zeros = bytes(n)
    return buf


def is_zero(raw: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero; one memcmp, no Python loop.

    ``zeros.startswith(raw)`` holds exactly when ``raw`` is all zero, and
    bytes.startswith compares with memcmp for any buffer (bytes or memoryview).
    """
    if isinstance(raw, memoryview):
        raw = raw.cast("B")  # count bytes, not items
    n = len(raw)
    if n and (raw[0] or raw[-1]):  # most data fails here without touching the rest
        return False
    return zero_buf(n).startswith(raw)
