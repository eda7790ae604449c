"""run_backup(): one snapshot of a source tree into a repository; the wiring of its stages.

This module alone knows the topology: it opens the nursery, every channel and limiter,
and hands each stage (``backup/stages/``, one module each) its channel ends::

    walk (thread: stat, match the parent) -> NodeBatch -> read x readers (thread: CDC
        chunks, ids) -> ReadBatch -> tree (put back in walk order; JSON Lines, tree chunks)
    read, tree: new chunks only -> [Chunk] -> seal x threads (thread: zstd + AES-GCM)
        -> [SealedChunk] -> pack (16 MiB packs) -> Pack -> upload x uploaders (thread)
        -> packs, index files
    then, once every stage finished cleanly: the last index file, then the snapshot.

Every channel is bounded, so memory is arithmetic: ``2 * depth`` batches of
chunks (up to ~8 MiB each) in the chunk channels, as much in the hands of each
reader and each sealing thread, ``2 + uploaders`` packs of 16 MiB, and at most
``window`` batches of 512 nodes waiting to be put back in order, whatever the
size of the source.  A chunk the repository already has (its keyed hash is in
the index) is never compressed, encrypted or sent: that is what makes the online
backup cheap.  The state a run accumulates is owned by one stage each: the new
chunks by ``read.Read``, the tree and totals by ``tree.Tree``, the packs stored by
``upload.Upload``, the warnings by ``_Warnings`` here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import Pack, Repository, SnapshotRef, hostname
from pipeline.backup.stages import pack, seal, walk
from pipeline.backup.stages.messages import Chunk, NodeBatch, ReadBatch, SealedChunk
from pipeline.backup.stages.read import Read
from pipeline.backup.stages.tree import Tree
from pipeline.backup.stages.upload import Upload
from pipeline.backup.walk import Warn
from pipeline.progress import Stats

__all__ = ["BackupOptions", "BackupResult", "Warn", "find_parent", "run_backup"]


@dataclass
class BackupOptions:
    """How wide each stage runs and how deep each channel is (memory, see above)."""

    level: int = 1                    # zstd level
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    readers: int = 2                  # files read at once (restic's default; borg #3500)
    uploaders: int = 2                # packs sent at once
    depth: int = 2                    # channel capacity (in batches of up to ~4 MiB)
    window: int = 64                  # batches the walk may run ahead of the tree (reordering)


@dataclass
class BackupResult:
    """What one run stored, for the summary line and ``--json``."""

    snapshot: SnapshotRef
    manifest: fmt.Manifest
    parent: SnapshotRef | None
    chunks_new: int = 0
    raw_new: int = 0                  # plaintext bytes of the new chunks
    packs: int = 0
    bytes_sent: int = 0               # everything handed to the backend by this run
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        m = self.manifest
        return {"snapshot": self.snapshot.hex, "time": m.time, "source": m.source,
                "files": m.files, "dirs": m.dirs, "bytes": m.bytes,
                "parent": self.parent.hex if self.parent else None,
                "chunks_new": self.chunks_new, "raw_new": self.raw_new, "packs": self.packs,
                "bytes_sent": self.bytes_sent, "warnings": len(self.warnings)}


def find_parent(repo: Repository, source: str, host: str) -> SnapshotRef | None:
    """The latest snapshot of the same source on the same host (sync: call in a thread)."""
    refs = repo.snapshots()
    for ref, m in zip(reversed(refs), repo.manifests(list(reversed(refs))), strict=True):
        if m.source == source and m.hostname == host:
            return ref
    return None


class _Warnings:
    """Every warning of one run: kept for the result, passed on to ``warn`` as it comes."""

    def __init__(self, warn: Warn) -> None:
        self.items: list[str] = []
        self._warn = warn

    def __call__(self, message: str) -> None:
        self.items.append(message)
        self._warn(message)

    def from_thread(self, message: str) -> None:
        """The same, from a worker thread (the walk's, a reader's)."""
        trio.from_thread.run_sync(self, message)


async def run_backup(repo: Repository, source: Path, stats: Stats, warn: Warn,
                     opts: BackupOptions | None = None, parent: SnapshotRef | None = None
                     ) -> BackupResult:
    """Back up ``source``; the snapshot is written only after every stage succeeded."""
    opts = opts or BackupOptions()
    host = hostname()
    started = datetime.now(UTC)
    sent_before = repo.backend.bytes_sent
    parent_manifest = (await trio.to_thread.run_sync(repo.manifest, parent)
                       if parent is not None else None)
    if parent_manifest is not None and not stats.bytes_total:   # the totals to expect
        stats.files_total, stats.bytes_total = parent_manifest.files, parent_manifest.bytes
    old = repo.tree_lines(parent_manifest) if parent_manifest else None  # lazy: the walk reads
    crypto = repo.crypto
    cpu = trio.CapacityLimiter(opts.threads)
    ahead = trio.Semaphore(opts.window)   # batches the walk may run ahead of the tree
    warnings = _Warnings(warn)
    read = Read(repo, str(source), stats, trio.CapacityLimiter(opts.readers),
                warnings.from_thread)
    tree = Tree(repo, ahead, stats)
    upload = Upload(repo, trio.CapacityLimiter(opts.uploaders), stats)
    nodes_tx, nodes_rx = trio.open_memory_channel[NodeBatch](opts.depth)
    done_tx, done_rx = trio.open_memory_channel[ReadBatch](opts.depth)
    raw_tx, raw_rx = trio.open_memory_channel[list[Chunk]](opts.depth)
    sealed_tx, sealed_rx = trio.open_memory_channel[list[SealedChunk]](opts.depth)
    packs_tx, packs_rx = trio.open_memory_channel[Pack](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(walk.run, source, old, nodes_tx, ahead, warnings.from_thread, stats)
        async with nodes_rx, done_tx, raw_tx, raw_rx, sealed_tx, packs_rx:  # clones only
            for _ in range(opts.readers):
                nursery.start_soon(read.run, nodes_rx.clone(), done_tx.clone(), raw_tx.clone())
            nursery.start_soon(tree.run, done_rx, raw_tx.clone())
            for _ in range(opts.threads):
                nursery.start_soon(seal.run, raw_rx.clone(), sealed_tx.clone(), crypto,
                                   opts.level, cpu, stats)
            nursery.start_soon(pack.run, sealed_rx, packs_tx, crypto, repo.config.pack_size,
                               cpu)
            for _ in range(opts.uploaders):
                nursery.start_soon(upload.run, packs_rx.clone())

    manifest = fmt.Manifest(
        time=started.isoformat(timespec="microseconds"), hostname=host,
        source=str(source), tree=tuple(tree.ids), files=tree.files, dirs=tree.dirs,
        bytes=tree.bytes, parent=parent.hex if parent else None)
    ref = await _commit(repo, manifest, started, stats)
    return BackupResult(snapshot=ref, manifest=manifest, parent=parent,
                        chunks_new=read.chunks_new, raw_new=read.raw_new, packs=upload.packs,
                        bytes_sent=repo.backend.bytes_sent - sent_before,
                        warnings=warnings.items)


async def _commit(repo: Repository, manifest: fmt.Manifest, started: datetime,
                  stats: Stats) -> SnapshotRef:
    """Commit order: every pack is stored; now the index naming them, then the snapshot."""
    batch = repo.take_unindexed()
    if batch:
        sent = await trio.to_thread.run_sync(repo.write_index, batch)
        stats.bytes_written += sent
    return await trio.to_thread.run_sync(repo.write_snapshot, manifest, started)
