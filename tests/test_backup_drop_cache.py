"""A repository file written by a backup leaves the page cache once it is on disk
(``atomic.replace_file(drop_cache=True)``): the next pack is written into the pages it
freed, not fresh ones.  Residency is read with mincore(2) on a mapping of the file
(mapping faults no page in)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

from pipeline import atomic
from pipeline.backup.backend import DirBackend

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, its pages)."""
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def test_a_file_put_in_a_repository_leaves_the_page_cache(tmp_path: Path) -> None:
    backend = DirBackend(tmp_path / "repo")
    data = os.urandom(4 << 20)
    backend.put("data/ab/pack", data)
    path = tmp_path / "repo" / "data" / "ab" / "pack"
    assert resident_pages(path) == (0, 1024)
    assert path.read_bytes() == data


def test_replace_file_keeps_the_pages_unless_asked(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    atomic.replace_file(tmp_path / "t1", tmp_path / "kept", data, 0o600)
    atomic.replace_file(tmp_path / "t2", tmp_path / "dropped", data, 0o600, drop_cache=True)
    assert resident_pages(tmp_path / "kept") == (256, 256)
    assert resident_pages(tmp_path / "dropped") == (0, 256)
    assert (tmp_path / "dropped").read_bytes() == data
