"""run_backup(): one snapshot of a source tree into a repository; the wiring of its stages.

This module alone knows the topology: it opens the nursery, every channel and limiter,
and hands each stage (``backup/stages/``, one module each) its channel ends::

    walk (thread: stat, match the parent) -> NodeBatch -> readahead (thread: the small
        files asked of the disk early) -> NodeBatch -> read x readers (thread: CDC
        chunks, ids) -> ReadBatch -> tree (put back in walk order; JSON Lines, tree chunks)
    read, tree: new chunks only -> [Chunk] -> seal x threads (thread: zstd + AES-GCM)
        -> [SealedChunk] -> pack (16 MiB packs) -> Pack -> upload x uploaders (thread)
        -> packs, index files
    then, once every stage finished cleanly: the last index file, then the snapshot.

Every channel is bounded, so memory is arithmetic: ``2 * depth`` batches of
chunks (up to ~8 MiB each) in the chunk channels, as much in the hands of each
reader and each sealing thread, ``2 + uploaders`` packs of 16 MiB, and at most
``window`` batches of 512 nodes waiting to be put back in order, whatever the
size of the source.

Before any of that, ``begin`` walks inline (no Trio, no pipeline) for as long as no
file needs reading, feeding the tree stage directly: a backup with nothing changed
ends there (``finish_inline``: its snapshot, its tree chunks all in the index already),
so it never imports trio nor starts a thread; one that finds a file to read hands the
walk, as far as it got, and the tree so far over to the pipeline.

A chunk the repository already has (its keyed hash is in the index) is never
compressed, encrypted or sent: that is what makes the online backup cheap.  The state a
run accumulates is owned by one stage each: the new chunks by ``read.Read``, the tree
and totals by ``tree.Tree``, the packs stored by ``upload.Upload``, the warnings by
``_Warnings`` here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.backup import encoding as fmt
from pipeline.backup.cache import TreeCache
from pipeline.backup.repo import FETCHERS, Pack, Repository, SnapshotRef, hostname
from pipeline.backup.stages.messages import Chunk, NodeBatch, ReadBatch, SealedChunk, Walked
from pipeline.backup.stages.tree import Tree
from pipeline.backup.walk import WalkAhead, Warn, matched
from pipeline.progress import Stats

INLINE_S = 1.0                  # the inline walk hands over to the pipeline (and its progress
INLINE_NEW = 8 << 20            # display) after this long, or this many bytes of new tree

__all__ = ["BackupOptions", "BackupResult", "Begun", "Warn", "begin", "find_parent",
           "finish_inline", "run_backup"]


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


def find_parent(repo: Repository, source: str, host: str,
                refs: list[SnapshotRef] | None = None) -> SnapshotRef | None:
    """The latest snapshot of the same source on the same host (sync: call in a thread).
    Manifests are read newest first, ``FETCHERS`` at a time, up to the first match: an
    hourly backup's parent is the newest, and a year of snapshots is not read for it."""
    newest = list(reversed(repo.snapshots() if refs is None else refs))
    for at in range(0, len(newest), FETCHERS):
        batch = newest[at:at + FETCHERS]
        for ref, m in zip(batch, repo.manifests(batch), strict=True):
            if m.source == source and m.hostname == host:
                return ref
    return None


class _Warnings:
    """Every warning of one run: kept for the result, passed on to ``warn`` as it comes."""

    def __init__(self, warn: Warn) -> None:
        self.items: list[str] = []
        self._warn = warn
        self.threaded = False           # the walk runs in the pipeline's thread now

    def __call__(self, message: str) -> None:
        self.items.append(message)
        self._warn(message)

    def from_thread(self, message: str) -> None:
        """The same, from a worker thread (the walk's, a reader's)."""
        import trio

        trio.from_thread.run_sync(self, message)

    def walk(self, message: str) -> None:
        """The walk's: inline, on this thread; in the pipeline, from its thread."""
        (self.from_thread if self.threaded else self)(message)


@dataclass
class Begun:
    """A backup begun: the parent, the tree so far, and the rest of the walk (None: it was
    walked to the end inline, every file unchanged)."""

    source: Path
    parent: SnapshotRef | None
    started: datetime
    sent_before: int
    tree: Tree
    rest: Iterator[Walked] | None
    warnings: _Warnings

    @property
    def done(self) -> bool:
        """Nothing to read and nothing to store: only the snapshot is left to write."""
        return self.rest is None and not self.tree.new


def begin(repo: Repository, source: Path, stats: Stats, warn: Warn,
          parent: SnapshotRef | None = None, threaded: bool = False,
          cache: TreeCache | None = None, ahead: WalkAhead | None = None) -> Begun:
    """Sync, before any Trio run: the parent's manifest, then the walk with the tree
    stage in this thread for as long as no file needs reading (restic's rule and every
    chunk in the index), for up to ``INLINE_S`` and ``INLINE_NEW`` bytes of new tree
    chunks.  A no-change backup ends here: no pipeline, no Trio, no worker thread but the
    tree's read-ahead; otherwise the pipeline goes on from the first file to read.
    ``warn`` is called on this thread, or (``threaded``: this is a Trio worker thread)
    on the Trio thread.  ``cache``: the local tree cache (``cache.py``), None for none.
    ``ahead``: the walk of ``source``, already begun in its thread (``WalkAhead``)."""
    started = datetime.now(UTC)
    sent_before = repo.backend.bytes_sent
    manifest = repo.manifest(parent) if parent is not None else None
    if manifest is not None and not stats.bytes_total:   # the totals to expect
        stats.files_total, stats.bytes_total = manifest.files, manifest.bytes
    warnings = _Warnings(warn)
    warnings.threaded = threaded
    walked = matched(source, repo.tree_chunks(manifest, cache) if manifest else None,
                     warnings.walk, None if ahead is None else ahead.seen(warnings.walk), cache)
    tree = Tree(repo, stats, cache)
    t0 = stats.timer()
    deadline = t0 + INLINE_S
    rest: Iterator[Walked] | None = None
    index = repo.index
    for item in walked:
        node = item.node
        if node.type == "file":
            if not item.reuse or not all([c in index for c, _ in node.content if c]):
                rest = itertools.chain((item,), walked)
                break
            stats.unchanged_bytes += node.size
            stats.files_done += 1
        cuts = tree.add(node, item.line, item.at)
        if cuts:
            tree.keep(cuts)
        if tree.new_bytes >= INLINE_NEW or stats.timer() >= deadline:
            rest = walked
            break
    else:
        tree.keep(tree.finish())
        if cache is not None and cache.written:
            cache.clean()
    stats.add_busy("walk", stats.timer() - t0)
    return Begun(source, parent, started, sent_before, tree, rest, warnings)


def finish_inline(repo: Repository, begun: Begun) -> BackupResult:
    """Sync: the snapshot of a backup ``begin`` walked to the end (``begun.done``)."""
    assert begun.done
    manifest = _manifest(begun)
    ref = repo.write_snapshot(manifest, begun.started)
    return BackupResult(snapshot=ref, manifest=manifest, parent=begun.parent,
                        bytes_sent=repo.backend.bytes_sent - begun.sent_before,
                        warnings=begun.warnings.items)


def _manifest(begun: Begun) -> fmt.Manifest:
    tree, parent = begun.tree, begun.parent
    return fmt.Manifest(
        time=begun.started.isoformat(timespec="microseconds"), hostname=hostname(),
        source=str(begun.source), tree=tuple(tree.ids), files=tree.files, dirs=tree.dirs,
        bytes=tree.bytes, parent=parent.hex if parent else None)


async def run_backup(repo: Repository, source: Path, stats: Stats, warn: Warn,
                     opts: BackupOptions | None = None, parent: SnapshotRef | None = None,
                     begun: Begun | None = None, cache: TreeCache | None = None
                     ) -> BackupResult:
    """Back up ``source`` (or go on with ``begun``, ``begin``'s); the snapshot is written
    only after every stage succeeded."""
    import trio

    from pipeline.backup.lock import start_refresher
    from pipeline.backup.stages import pack, readahead, seal, walk
    from pipeline.backup.stages.read import Read
    from pipeline.backup.stages.upload import Upload

    opts = opts or BackupOptions()
    if begun is None:
        begun = await trio.to_thread.run_sync(begin, repo, source, stats, warn, parent, True,
                                            cache)
    start_refresher(repo.lock)            # the repository may have been opened before Trio
    warnings = begun.warnings
    warnings.threaded = True
    tree = begun.tree
    crypto = repo.crypto
    cpu = trio.CapacityLimiter(opts.threads)
    ahead = trio.Semaphore(opts.window)   # batches the walk may run ahead of the tree
    read = Read(repo, str(source), stats, trio.CapacityLimiter(opts.readers),
                warnings.from_thread)
    upload = Upload(repo, trio.CapacityLimiter(opts.uploaders), stats)
    walked_tx, walked_rx = trio.open_memory_channel[NodeBatch](opts.depth)
    nodes_tx, nodes_rx = trio.open_memory_channel[NodeBatch](readahead.AHEAD)
    done_tx, done_rx = trio.open_memory_channel[ReadBatch](opts.depth)
    raw_tx, raw_rx = trio.open_memory_channel[list[Chunk]](opts.depth)
    sealed_tx, sealed_rx = trio.open_memory_channel[list[SealedChunk]](opts.depth)
    packs_tx, packs_rx = trio.open_memory_channel[Pack](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(walk.run, begun.rest or iter(()), walked_tx, ahead, stats)
        nursery.start_soon(readahead.run, str(source), walked_rx, nodes_tx, stats)
        async with nodes_rx, done_tx, raw_tx, raw_rx, sealed_tx, packs_rx:  # clones only
            for _ in range(opts.readers):
                nursery.start_soon(read.run, nodes_rx.clone(), done_tx.clone(), raw_tx.clone())
            nursery.start_soon(tree.run, done_rx, raw_tx.clone(), ahead)
            for _ in range(opts.threads):
                nursery.start_soon(seal.run, raw_rx.clone(), sealed_tx.clone(), crypto,
                                   opts.level, cpu, stats)
            nursery.start_soon(pack.run, sealed_rx, packs_tx, crypto, repo.config.pack_size,
                               cpu)
            for _ in range(opts.uploaders):
                nursery.start_soon(upload.run, packs_rx.clone())

    manifest = _manifest(begun)
    ref = await _commit(repo, manifest, begun.started, stats)
    return BackupResult(snapshot=ref, manifest=manifest, parent=begun.parent,
                        chunks_new=read.chunks_new, raw_new=read.raw_new, packs=upload.packs,
                        bytes_sent=repo.backend.bytes_sent - begun.sent_before,
                        warnings=warnings.items)


async def _commit(repo: Repository, manifest: fmt.Manifest, started: datetime,
                  stats: Stats) -> SnapshotRef:
    """Commit order: every pack is stored; now the index naming them, then the snapshot."""
    import trio

    batch = repo.take_unindexed()
    if batch:
        sent = await trio.to_thread.run_sync(repo.write_index, batch)
        stats.bytes_written += sent
    return await trio.to_thread.run_sync(repo.write_snapshot, manifest, started)
