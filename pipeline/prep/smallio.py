"""Small files read in batches: open all, start every read at once, then read, fstat, close.

Why: on a cold tree a small file's time is its disk read.  Opening a whole batch
and asking for ``posix_fadvise(WILLNEED)`` on each file starts every read at
once, and the feeder opens the next batch before it packs this one, so the disk
works while it does (measured on 10,000 files of up to 64 KB with their pages
evicted: 43 us a file against 183 us for open, pread, fstat, close one by one).
The calls are plain ``os`` calls: this runs in the single-threaded feeder
process, where a libc batch that kept the GIL (ctypes) measured no faster warm
(17 us against 15 us a file) nor cold (47 against 43 us).

Where ``posix_fadvise`` is missing, ``AVAILABLE`` is False and the read stage
reads one file at a time.  No trio here; sans policy: errors come back as
``OSError`` with errno, for the read stage to word.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

__all__ = ["AVAILABLE", "Failed", "OpenBatch", "Opened", "open_batch", "read_batch"]

AVAILABLE = hasattr(os, "posix_fadvise")


class Failed(NamedTuple):
    """A file ``read_batch`` could not read: which call failed, and how."""

    op: str  # open | read | stat
    error: OSError


class Opened(NamedTuple):
    """What ``read_batch`` learnt of one file: its bytes and its fstat after the read."""

    data: bytes
    mode: int
    size: int
    mtime_ns: int


def _open(path: bytes, flags: int) -> int:
    return os.open(path, flags)


def _error(path: str, op: str, e: OSError) -> Failed:
    return Failed(op, OSError(e.errno, e.strerror, path))


def read_batch(files: list[tuple[str, int]], flags: int) -> list[Opened | Failed]:
    """Each (path, expected size): open with ``flags``, read up to size + 1 bytes, fstat, close.

    One more byte than expected is asked for, so that a file that grew shows
    it.  ``flags`` come from the caller (O_NOATIME is retried without, on
    EPERM, as the kernel allows it only to the file's owner).  Per file the
    result is an ``Opened`` or what stopped it (``Failed``); the batch itself
    never raises for one bad file.
    """
    return open_batch(files, flags).read()


class OpenBatch:
    """Files opened and their reads started (``open_batch``); ``read`` finishes them.

    Between the two the disk works on its own: a caller that opens the next
    batch before it reads this one overlaps the cold reads with its own work.
    Holds a descriptor a file until ``read`` or ``close``.
    """

    def __init__(self, files: list[tuple[str, int]], fds: list[int | Failed]) -> None:
        self.files, self._fds = files, fds

    def read(self) -> list[Opened | Failed]:
        """Read, fstat and close every file (see ``read_batch``)."""
        try:
            out: list[Opened | Failed] = []
            for (path, size), fd in zip(self.files, self._fds, strict=True):
                if isinstance(fd, Failed):
                    out.append(fd)
                    continue
                try:
                    data = os.pread(fd, size + 1, 0) if size else b""
                except OSError as e:
                    out.append(_error(path, "read", e))
                    continue
                try:
                    st = os.fstat(fd)
                except OSError as e:
                    out.append(_error(path, "stat", e))
                    continue
                out.append(Opened(data, st.st_mode, st.st_size, st.st_mtime_ns))
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Close what is still open (``read`` does; an abandoned batch must)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            if not isinstance(fd, Failed):
                os.close(fd)


def open_batch(files: list[tuple[str, int]], flags: int) -> OpenBatch:
    """Open each (path, expected size) and ask the kernel to start reading it (WILLNEED)."""
    fds: list[int | Failed] = []
    try:
        for path, size in files:
            bpath = os.fsencode(path)
            try:
                try:
                    fd = _open(bpath, flags)
                except PermissionError as e:
                    if e.errno != errno.EPERM or not flags & os.O_NOATIME:
                        raise
                    fd = _open(bpath, flags & ~os.O_NOATIME)
            except OSError as e:
                fds.append(_error(path, "open", e))
                continue
            fds.append(fd)
            if size:
                os.posix_fadvise(fd, 0, size + 1, os.POSIX_FADV_WILLNEED)
    except BaseException:
        OpenBatch(files[:len(fds)], fds).close()
        raise
    return OpenBatch(files, fds)
