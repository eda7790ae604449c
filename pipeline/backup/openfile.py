"""Open a file the walk saw as regular, for reading, only if it still is one.

Between the walk and the read a path can be swapped for anything.  Opening it to find
out would already act on what is there: a FIFO's open waits for a writer (O_NONBLOCK
only avoids that), and opening a device node can have side effects of its own (a tape
drive rewinds, a modem hangs up).  So the path is first opened with ``O_PATH`` (no
access to the object, no driver's open routine run) and ``O_NOFOLLOW``, fstat'd, and only
a regular file is then opened for reading, through ``/proc/self/fd/N``: that magic link
names the inode just checked, whatever the path names by now.  It must be opened
without ``O_NOFOLLOW`` (the link itself is a symlink: ELOOP), which is safe because it
does not resolve a path.  Without ``/proc`` mounted the path is opened directly, as
before (``O_NONBLOCK``, then fstat): no guarantee against devices there.
"""

from __future__ import annotations

import os
import stat

_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: regular files ignore it; it stays in case the fallback meets a FIFO.
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK

__all__ = ["open_regular"]


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result] | None:
    """``(fd, stat)`` of ``path`` opened read-only (``O_NOATIME`` where allowed: the file's
    owner or root), or None when it is no longer a regular file (nothing was opened for
    reading).  OSError as ``os.open`` raises it (gone, permission, ...)."""
    pfd = os.open(path, _PATH)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            return None
        proc = f"/proc/self/fd/{pfd}"
        try:
            fd = _reopen(proc)
        except FileNotFoundError:
            if os.path.isdir("/proc/self/fd"):        # /proc is there: the fd is not
                raise
            return _open_direct(path)
    finally:
        os.close(pfd)
    return fd, st


def _reopen(proc: str) -> int:
    try:
        return os.open(proc, _READ | os.O_NOATIME)
    except PermissionError:                           # O_NOATIME needs the owner (or root)
        return os.open(proc, _READ)


def _open_direct(path: str | os.PathLike[str]) -> tuple[int, os.stat_result] | None:
    """No ``/proc``: the path opened as it is, then checked."""
    try:
        fd = os.open(path, _READ | os.O_NOFOLLOW | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, _READ | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
