"""Small-file system calls in batches with the GIL held: open, pread, statx, close via libc.

Why: every ``os.open``/``os.pread``/``os.fstat``/``os.close`` releases the GIL
and must take it back, and while any other thread runs Python that wait lasts
until it lets go (up to the 5 ms switch interval).  Beside one busy thread a
warm ``os.pread`` went from 1.3 us to 138 us and ``os.fstat`` from 2 us to
1.9 ms.  A small file is nothing but four such calls, so prep's small files
spent most of their time queued for the GIL.  ``ctypes.PyDLL`` keeps the GIL
through each call instead; the calls are microseconds long, and
``posix_fadvise(WILLNEED)`` on the whole batch first starts every disk read at
once, so a cold ``pread`` mostly finds its page already on the way.  The
scan's lstat of each name goes the same way (``lstat_batch``).

Linux with glibc (2.28+ for ``statx``) only; elsewhere ``AVAILABLE`` is False
and the read stage uses ``os``.  No trio here; sans policy: errors come back
as ``OSError`` with errno, for the read stage to word.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

__all__ = ["AVAILABLE", "Failed", "OpenBatch", "Opened", "lstat_batch", "open_batch",
           "read_batch"]

_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_FDCWD = -100
_STATX_BASIC_STATS = 0x7FF
_STATX_SIZE = 256  # struct statx, the same on every architecture (linux/stat.h)
_STATX = struct.Struct("<28xH10xQ64xqI")  # stx_mode @28, stx_size @40, stx_mtime @112
_FADV_WILLNEED = 3

try:
    _libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is held during calls
    _open = _libc.open
    _open.argtypes, _open.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
    _pread = _libc.pread64
    _pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
    _pread.restype = ctypes.c_ssize_t
    _statx = _libc.statx
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_void_p]
    _statx.restype = ctypes.c_int
    _fadvise = _libc.posix_fadvise
    _fadvise.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    _fadvise.restype = ctypes.c_int
    _close = _libc.close
    _close.argtypes, _close.restype = [ctypes.c_int], ctypes.c_int
    AVAILABLE = os.uname().sysname == "Linux"
except (OSError, AttributeError):  # not glibc, or too old for statx
    AVAILABLE = False


class Failed(NamedTuple):
    """A file ``read_batch`` could not read: which call failed, and how."""

    op: str  # open | read | statx
    error: OSError


def _error(path: str, op: str) -> Failed:
    code = ctypes.get_errno()
    return Failed(op, OSError(code, os.strerror(code), path))


class Opened:
    """What ``read_batch`` learnt of one file: its bytes and its statx after the read."""

    __slots__ = ("data", "mode", "size", "mtime_ns")

    def __init__(self, data: bytes, mode: int, size: int, mtime_ns: int) -> None:
        self.data, self.mode, self.size, self.mtime_ns = data, mode, size, mtime_ns


def read_batch(files: list[tuple[str, int]], flags: int) -> list[Opened | Failed]:
    """Each (path, expected size): open with ``flags``, read up to size + 1 bytes, statx, close.

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
        """Read, statx and close every file (see ``read_batch``)."""
        try:
            files, fds = self.files, self._fds
            total = sum(size + 1 for _, size in files)
            buf = bytearray(max(total, 1))
            base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
            view = memoryview(buf)
            st = bytearray(_STATX_SIZE)
            st_addr = ctypes.addressof((ctypes.c_char * _STATX_SIZE).from_buffer(st))
            out: list[Opened | Failed] = []
            pos = 0
            for (path, size), fd in zip(files, fds, strict=True):
                if isinstance(fd, Failed):
                    out.append(fd)
                    continue
                n = _pread(fd, base + pos, size + 1, 0) if size else 0
                if n < 0:
                    out.append(_error(path, "read"))
                elif _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BASIC_STATS, st_addr) != 0:
                    out.append(_error(path, "statx"))
                else:
                    mode, st_size, sec, nsec = _STATX.unpack_from(st)
                    out.append(Opened(bytes(view[pos:pos + n]), mode, st_size,
                                      sec * 1_000_000_000 + nsec))
                pos += size + 1
            view.release()
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Close what is still open (``read`` does; an abandoned batch must)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            if not isinstance(fd, Failed):
                _close(fd)


def open_batch(files: list[tuple[str, int]], flags: int) -> OpenBatch:
    """Open each (path, expected size) and ask the kernel to start reading it (WILLNEED)."""
    fds: list[int | Failed] = []
    try:
        for path, size in files:
            bpath = os.fsencode(path)
            fd = _open(bpath, flags)
            if fd < 0 and ctypes.get_errno() == errno.EPERM and flags & os.O_NOATIME:
                fd = _open(bpath, flags & ~os.O_NOATIME)
            if fd < 0:
                fds.append(_error(path, "open"))
                continue
            fds.append(fd)
            if size:
                _fadvise(fd, 0, size + 1, _FADV_WILLNEED)
    except BaseException:
        OpenBatch(files[:len(fds)], fds).close()
        raise
    return OpenBatch(files, fds)


def lstat_batch(paths: list[bytes]) -> list[tuple[int, int, int] | Failed]:
    """(st_mode, st_size, st_mtime_ns) of each path, not following symlinks (the scan's lstat).

    A failed one is ``Failed("lstat", OSError)``; the batch never raises for it.
    """
    st = bytearray(_STATX_SIZE)
    st_addr = ctypes.addressof((ctypes.c_char * _STATX_SIZE).from_buffer(st))
    unpack = _STATX.unpack_from
    out: list[tuple[int, int, int] | Failed] = []
    for path in paths:
        if _statx(_AT_FDCWD, path, _AT_SYMLINK_NOFOLLOW, _STATX_BASIC_STATS, st_addr) != 0:
            out.append(_error(os.fsdecode(path), "lstat"))
            continue
        mode, size, sec, nsec = unpack(st)
        out.append((mode, size, sec * 1_000_000_000 + nsec))
    return out
