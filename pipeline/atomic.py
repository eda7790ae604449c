"""Replace a file atomically and durably: the one way we write small whole files.

Write a temporary file next to (or near) the target, fsync it, rename it over
the target, fsync the directory: a crash leaves the old file or the new one,
never a torn one.  Used by the local storage account, the backup repository's
directory backend and the machine's own config.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import threading
from pathlib import Path

from pipeline import faults


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(tmp: str | os.PathLike[str], final: str | os.PathLike[str],
                 data: bytes | memoryview, mode: int, size: int | None = None,
                 drop_cache: bool = False, direct: bool = False) -> None:
    """Write ``data`` (then zeros up to ``size``) to the new file ``tmp`` with ``mode``,
    fsync, rename onto ``final`` and fsync its directory.  ``tmp`` must not exist and
    must be on the same file system as ``final``; it is removed on failure.
    ``drop_cache``: its pages, clean once fsynced, are dropped from the page cache (a
    writer of many files not read back soon: the next write reuses them instead of
    taking fresh pages, which cost ~3x the CPU to write into on this VM).
    ``direct``: ``data`` is page-aligned (an mmap); its whole 4 KiB blocks go past the
    page cache (O_DIRECT: no copy into pages at all), the rest through it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask does not decide
            view = memoryview(data).cast("B")
            done = _write_direct(fd, view) if direct else 0
            while done < len(view):
                done += os.write(fd, view[done:])
            if size is not None and size != len(view):
                os.ftruncate(fd, size)
            os.fsync(fd)
            if drop_cache:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.fspath(final)) or ".")


DIRECT_BLOCK = 4096     # O_DIRECT wants the buffer, offsets and lengths aligned to blocks


def _write_direct(fd: int, view: memoryview) -> int:
    """Write the whole 4 KiB blocks of the page-aligned ``view`` at ``fd``'s offset past
    the page cache; returns the bytes written (the caller writes the rest): none where
    the file system refuses O_DIRECT (tmpfs, some FUSE) or the buffer is not aligned."""
    n = len(view) - len(view) % DIRECT_BLOCK
    done = 0
    if not n:
        return 0
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        while done < n:
            done += os.write(fd, view[done:n])
        faults.reached("after_direct_write")    # a kill -9 here: the file is not named yet
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return done


def write_key(path: str | os.PathLike[str], *, replace: bool, size: int = 32) -> None:
    """A new random key file, 0600, fsynced, appearing whole.  ``replace=False`` links it
    into place and keeps a key another process made first (first writer wins);
    ``replace=True`` renames over the old key (rotation)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
