"""A real small filesystem to fill up: ``small_tmpfs(path, size)``.

Tests of "no space left" (exit 9) need a filesystem that really runs out, not a
mocked ENOSPC: the error then comes from wherever the kernel says so (a write, a
rename, a mkdir), which is what the code must survive.  A tmpfs is quick, needs no
image file, and is gone at umount.  It needs root (CI runs as root): a mount that
fails fails the test, never skips it.

    with small_tmpfs(tmp_path / "small", "8m") as mnt:
        ...                                   # fill it
        grow(mnt, "64m")                      # "free space", keeping what it holds
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"mount {' '.join(args)} failed ({proc.stderr.strip()}); these tests need "
                    "root and tmpfs (CI has both; they must not skip)")


@contextmanager
def small_tmpfs(path: str | os.PathLike[str], size: str = "8m",
                options: str = "") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (mount's syntax: "8m", "512k") at ``path`` (created if
    absent), yield it, and unmount it however the block ends.  ``options``: more mount
    options, such as "ro" or "nr_inodes=64"."""
    mnt = Path(path)
    mnt.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("small_tmpfs needs root to mount a tmpfs; CI runs as root")
    _mount("-t", "tmpfs", "-o", ",".join(filter(None, (f"size={size}", options))), "tmpfs",
           str(mnt))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def grow(mnt: str | os.PathLike[str], size: str) -> None:
    """Resize a mounted ``small_tmpfs`` in place (its files stay): space freed, as a user
    would after the "no space left" message."""
    _mount("-o", f"remount,size={size}", str(mnt))


def fill(mnt: str | os.PathLike[str], leave: int = 0) -> Path:
    """Take all free space on ``mnt`` but ``leave`` bytes, in one file (returned; remove
    it to free the space again)."""
    filler = Path(mnt) / ".filler"
    st = os.statvfs(mnt)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(filler, "wb") as f:
        block = bytes(1 << 20)
        while size > 0:
            try:
                size -= f.write(block[:min(size, len(block))])
            except OSError:
                break
    return filler
