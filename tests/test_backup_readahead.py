"""Backup's read-ahead stage: which files it asks the kernel for, and what it must never
do (block on a FIFO swapped in after the walk, fail on a file gone)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.stages import readahead
from pipeline.backup.stages.messages import NodeBatch, Walked
from pipeline.progress import Stats


def _file(path: str, size: int) -> fmt.Node:
    return fmt.Node("file", path, 0o644, 0, size, 0, 0)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Each posix_fadvise call's (offset, length, advice), the file's size as offset."""
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((os.fstat(fd).st_size, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


@pytest.fixture
def uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch taken as out of the page cache (the files here were just written)."""
    monkeypatch.setattr(readahead, "_cached", lambda paths: False)


def _evict(path: Path) -> None:
    """``path``'s pages out of the page cache: written back, then dropped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _batch(names: list[str], size: int) -> NodeBatch:
    return NodeBatch(0, [Walked(_file(n, size), False) for n in names])


def test_a_batch_in_the_page_cache_is_not_asked_for(tmp_path: Path, asked: list) -> None:
    """A tree read a moment ago (or just written): asking would only open every file."""
    names = [f"f{i}" for i in range(9)]
    for n in names:
        (tmp_path / n).write_bytes(b"c" * 5000)
        (tmp_path / n).read_bytes()
    assert readahead.ask(str(tmp_path), _batch(names, 5000)) == 0
    assert asked == []


@pytest.mark.parametrize("evicted", [0, 4, 8])   # the batch's first, middle, last file
def test_a_batch_out_of_the_page_cache_is_asked_for(tmp_path: Path, asked: list,
                                                     evicted: int) -> None:
    names = [f"f{i}" for i in range(9)]
    for n in names:
        (tmp_path / n).write_bytes(b"c" * 5000)
    _evict(tmp_path / names[evicted])     # (a probe that misses starts the kernel's read:
    #                                       nothing is probed before ask here)
    assert readahead.ask(str(tmp_path), _batch(names, 5000)) == 9, \
        f"{tmp_path} kept a file in the page cache after POSIX_FADV_DONTNEED: this test " \
        "needs a disk filesystem (not tmpfs)"
    assert sum(a[2] == os.POSIX_FADV_WILLNEED for a in asked) == 9


def test_the_probe_reads_nothing_it_would_wait_for(tmp_path: Path) -> None:
    """Only cached pages are read (RWF_NOWAIT): a file's last page out of the cache is
    'not cached', whatever its first page."""
    f = tmp_path / "f"
    f.write_bytes(os.urandom(3 << 20))
    _evict(f)
    with f.open("rb", buffering=0) as r:  # the first page back (and the kernel's
        r.read(4096)                      # readahead after it: far from 3 MiB)
    assert not readahead._cached([str(f)])


def test_small_files_to_read_are_asked_for(tmp_path: Path, asked: list, uncached: None
                                           ) -> None:
    (tmp_path / "small").write_bytes(b"s" * 1000)
    (tmp_path / "reused").write_bytes(b"r" * 2000)
    (tmp_path / "big").write_bytes(b"b" * (readahead.SMALL + 1))
    (tmp_path / "edge").write_bytes(b"e" * readahead.SMALL)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "d").mkdir()
    os.symlink("small", tmp_path / "link")
    batch = NodeBatch(0, [
        Walked(_file("small", 1000), False), Walked(_file("reused", 2000), True),
        Walked(_file("big", readahead.SMALL + 1), False),
        Walked(_file("edge", readahead.SMALL), False), Walked(_file("empty", 0), False),
        Walked(fmt.Node("dir", "d", 0o755, 0), False),
        Walked(fmt.Node("symlink", "link", 0o777, 0, target="small"), False)])
    assert readahead.ask(str(tmp_path), batch) == 2
    assert asked == [(1000, 0, os.POSIX_FADV_WILLNEED),
                     (readahead.SMALL, 0, os.POSIX_FADV_WILLNEED)]


def test_a_fifo_or_a_vanished_file_is_left_to_the_reader(tmp_path: Path, asked: list,
                                                         uncached: None) -> None:
    """Swapped for a FIFO after the walk: a blocking open would wait for a writer forever
    (the thread below is only a guard against that hang, not a timing check)."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "kept").write_bytes(b"k" * 10)
    batch = NodeBatch(0, [Walked(_file("fifo", 10), False), Walked(_file("gone", 10), False),
                          Walked(_file("kept", 10), False)])
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(readahead.ask(str(tmp_path), batch)),
                         daemon=True)
    t.start()
    t.join(60)
    assert got == [1]                      # only "kept"; "gone" skipped
    assert [a[0] for a in asked] == [10]   # the FIFO never opened for reading
    #                                        (openfile.open_regular), only "kept"


async def test_batches_pass_through_in_order_and_the_ends_close(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    walked_tx, walked_rx = trio.open_memory_channel[NodeBatch](2)
    nodes_tx, nodes_rx = trio.open_memory_channel[NodeBatch](readahead.AHEAD)
    stats = Stats()
    out: list[int] = []
    async def walk() -> None:
        async with walked_tx:
            for seq in range(20):
                await walked_tx.send(NodeBatch(seq, [Walked(_file("f", 1), False)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(readahead.run, str(tmp_path), walked_rx, nodes_tx, stats)
        nursery.start_soon(walk)
        async with nodes_rx:
            async for batch in nodes_rx:   # ends: the stage closed its send end
                out.append(batch.seq)
    assert out == list(range(20))
    assert "readahead" in stats.busy
