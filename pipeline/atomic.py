"""Replace a file atomically and durably: the one way we write small whole files.

Write a temporary file next to (or near) the target, fsync it, rename it over
the target, fsync the directory: a crash leaves the old file or the new one,
never a torn one.  Used by the local storage account, the backup repository's
directory backend and the machine's own config.
"""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(tmp: str | os.PathLike[str], final: str | os.PathLike[str],
                 data: bytes | memoryview, mode: int, size: int | None = None) -> None:
    """Write ``data`` (then zeros up to ``size``) to the new file ``tmp`` with ``mode``,
    fsync, rename onto ``final`` and fsync its directory.  ``tmp`` must not exist and
    must be on the same file system as ``final``; it is removed on failure."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask does not decide
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            if size is not None and size != len(view):
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.fspath(final)) or ".")
