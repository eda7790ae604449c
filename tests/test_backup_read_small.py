"""Backup's read stage: batches of small files are read by one reader at a time (two of
them only fight over the GIL), batches of big files by all readers at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.backup.stages import read as read_stage
from pipeline.backup.stages.messages import Chunk, NodeBatch, ReadBatch, Walked
from pipeline.progress import Stats
from tests.conftest import FAST_ARGON
from tests.test_backup_repo import PASS


def _batches(size: int, count: int = 6, files: int = 4) -> list[NodeBatch]:
    return [NodeBatch(b, [Walked(fmt.Node("file", f"b{b}f{i}", 0o644, 0, size, 0, 0), False)
                          for i in range(files)]) for b in range(count)]


def _most_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  batches: list[NodeBatch]) -> int:
    """Two read tasks over ``batches``; the most ``_read_files`` calls seen at once (each
    call holds its thread a moment, so that two could overlap)."""
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    now = most = 0
    lock = threading.Lock()

    def fake(self: read_stage.Read, nodes: list[fmt.Node], out: object) -> set[int]:
        nonlocal now, most
        with lock:
            now += 1
            most = max(most, now)
        time.sleep(0.05)
        with lock:
            now -= 1
        return set()

    monkeypatch.setattr(read_stage.Read, "_read_files", fake)

    async def main() -> None:
        read = read_stage.Read(repo, str(tmp_path), Stats(), trio.CapacityLimiter(2),
                               lambda msg: None)
        nodes_tx, nodes_rx = trio.open_memory_channel[NodeBatch](len(batches))
        done_tx, done_rx = trio.open_memory_channel[ReadBatch](len(batches))
        raw_tx, raw_rx = trio.open_memory_channel[list[Chunk]](1)
        async with trio.open_nursery() as nursery:
            async with nodes_rx, done_tx, raw_tx:
                for _ in range(2):
                    nursery.start_soon(read.run, nodes_rx.clone(), done_tx.clone(),
                                       raw_tx.clone())
            async with nodes_tx:
                for b in batches:
                    await nodes_tx.send(b)
            async with done_rx, raw_rx:
                assert len([d async for d in done_rx]) == len(batches)

    trio.run(main)
    return most


def test_small_file_batches_are_read_one_at_a_time(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert _most_at_once(tmp_path, monkeypatch, _batches(read_stage.SMALL_FILES - 1)) == 1


def test_big_file_batches_are_read_at_once(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert _most_at_once(tmp_path, monkeypatch, _batches(read_stage.SMALL_FILES)) == 2
