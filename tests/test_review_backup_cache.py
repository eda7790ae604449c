"""Review of the tree cache's read (format 2, read ahead in threads): an entry is not
trusted before its MAC, and neither is its kind or its size.  A FIFO, a link to
/dev/zero, a directory or a huge sparse file where an entry should be is a miss, read
no further than the cache's bound, and never hangs or fills memory; a format-1 entry
or a truncated one is a miss; every miss is written again by ``put``."""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.backup import cache
from pipeline.backup import encoding as fmt

CID = bytes(range(32))
KEY = b"k" * 32


def _cache(tmp_path: Path) -> cache.TreeCache:
    tc = cache.TreeCache(tmp_path / "cache", "0123456789abcdef" * 2, KEY)
    tc.dir.mkdir(parents=True)
    return tc


def _finishes(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a daemon thread; fails (instead of hanging the run) if it never ends.
    The bound is a hang guard only, far beyond any run (nothing here waits on a disk)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the cache's read hung"
    assert len(out) == 1, "the cache's read raised"
    return out[0]


def _put_then_get(tc: cache.TreeCache) -> None:
    """The miss is written again: a real entry, read back exactly."""
    node = fmt.Node(path="a", type="file", size=1)
    tc.put(CID, b"line\n", [node])
    got = tc.get(CID)
    assert got is not None and [(n.path, line) for n, line in got] == [("a", b"line\n")]


def test_a_fifo_entry_is_a_miss_not_a_hang(tmp_path: Path) -> None:
    tc = _cache(tmp_path)
    path = tc.dir / CID.hex()
    os.mkfifo(path)
    assert _finishes(lambda: tc.read(CID)) is None
    assert not path.exists()                       # dropped
    _put_then_get(tc)


def test_a_link_to_dev_zero_is_a_miss_read_not_at_all(tmp_path: Path) -> None:
    assert os.path.exists("/dev/zero"), "this test needs /dev/zero"
    tc = _cache(tmp_path)
    os.symlink("/dev/zero", tc.dir / CID.hex())
    assert _finishes(lambda: tc.get(CID)) is None
    _put_then_get(tc)                              # put replaces the link itself
    assert not (tc.dir / CID.hex()).is_symlink()


def test_a_huge_entry_is_not_read_into_memory(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_BYTES", 1 << 16)
    tc = _cache(tmp_path)
    path = tc.dir / CID.hex()
    with open(path, "wb") as f:
        f.write(cache.MAGIC)
        f.truncate(256 << 20)                      # sparse: no disk, 256 MiB if read
    tracemalloc.start()
    try:
        assert tc.read(CID) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert not path.exists()


@pytest.mark.parametrize("kind", ["directory", "format 1", "truncated", "empty"])
def test_other_damaged_entries_are_misses(tmp_path: Path, kind: str) -> None:
    tc = _cache(tmp_path)
    path = tc.dir / CID.hex()
    if kind == "directory":
        path.mkdir()
        assert tc.get(CID) is None
        path.rmdir()                               # put cannot replace a directory
    else:
        tc.put(CID, b"line\n", [fmt.Node(path="a", type="file", size=1)])
        whole = path.read_bytes()
        path.write_bytes({"format 1": b"PLBKTC1\n" + whole[len(cache.MAGIC):],
                          "truncated": whole[:-3], "empty": b""}[kind])
        tc.known.clear()
        assert tc.get(CID) is None
        assert not path.exists()
    _put_then_get(tc)
