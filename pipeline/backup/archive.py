"""run_backup(): one snapshot of a source tree into a repository, as Trio stages.

::

    walk (thread: stat, match the parent) -> batches of nodes -> read x2 (thread: CDC
        chunks, ids) -> done (put back in walk order) -> tree (JSON Lines, tree chunks)
        new chunks only -> raw -> seal x cpu (thread: zstd + AES-GCM) -> sealed
        -> pack (16 MiB packs) -> packs -> upload x2 (thread) -> index files
    then, once every stage finished cleanly: the last index file, then the snapshot.

Every channel is bounded, so memory is arithmetic: ``2 * depth`` batches of
chunks (up to ~8 MiB each) in the chunk channels, as much in the hands of each
reader and each sealing thread, ``2 + uploaders`` packs of 16 MiB, and at most
``window`` batches of 512 nodes waiting to be put back in order, whatever the
size of the source.  A chunk
the repository already has (its keyed hash is in the index) is never
compressed, encrypted or sent: that is what makes the online backup cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from pipeline.backup import format as fmt
from pipeline.backup.repo import Pack, PackBuilder, Repository, SnapshotRef, hostname
from pipeline.backup.walk import FileReader, ParentTree, unchanged, walk
from pipeline.progress import Stats

Warn = Callable[[str], None]


@dataclass
class BackupOptions:
    level: int = 1                    # zstd level
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    readers: int = 2                  # files read at once (restic's default; borg #3500)
    uploaders: int = 2                # packs sent at once
    depth: int = 2                    # channel capacity (in batches of up to ~4 MiB)
    window: int = 64                  # batches the walk may run ahead of the tree (reordering)


@dataclass
class BackupResult:
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


BATCH_NODES = 512                 # nodes per walk batch
BATCH_BYTES = 32 << 20            # or file bytes to read per walk batch
DELIVER_BYTES = 4 << 20           # chunks a reader hands over at once
DELIVER_COUNT = 256
SEAL_BYTES = 4 << 20              # chunks a sealing thread takes at once, when waiting

_Batch = list[tuple[fmt.Node, bool]]            # nodes in walk order; reuse the parent's chunks
_Piece = tuple[bytes | None, bytes | memoryview | None, int]


@dataclass(slots=True)
class _Raw:
    kind: int
    id: bytes
    data: bytes | memoryview


@dataclass(slots=True)
class _Sealed:
    kind: int
    id: bytes
    sealed: tuple[bytes, bytes]       # nonce, ciphertext
    raw_len: int


def find_parent(repo: Repository, source: str, host: str) -> SnapshotRef | None:
    """The latest snapshot of the same source on the same host (sync: call in a thread)."""
    refs = repo.snapshots()
    for ref, m in zip(reversed(refs), repo.manifests(list(reversed(refs))), strict=True):
        if m.source == source and m.hostname == host:
            return ref
    return None


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
    cpu = trio.CapacityLimiter(opts.threads)
    disk = trio.CapacityLimiter(opts.readers)
    net = trio.CapacityLimiter(opts.uploaders)
    root = str(source)
    reader = FileReader(repo.config.chunker, repo.crypto.keys.chunker_seed, repo.crypto.chunk_id)
    warnings: list[str] = []
    totals = {"files": 0, "dirs": 0, "bytes": 0, "chunks_new": 0, "raw_new": 0, "packs": 0}
    tree_ids: list[bytes] = []

    def on_warning(message: str) -> None:
        warnings.append(message)
        warn(message)

    def warn_from_thread(message: str) -> None:
        trio.from_thread.run_sync(on_warning, message)

    ahead = trio.Semaphore(opts.window)   # batches the walk may run ahead of the tree
    nodes_tx, nodes_rx = trio.open_memory_channel[tuple[int, _Batch]](opts.depth)
    done_tx, done_rx = trio.open_memory_channel[tuple[int, list[fmt.Node]]](opts.depth)
    raw_tx, raw_rx = trio.open_memory_channel[list[_Raw]](opts.depth)
    sealed_tx, sealed_rx = trio.open_memory_channel[list[_Sealed]](opts.depth)
    packs_tx, packs_rx = trio.open_memory_channel[Pack](1)

    # -- stages (each owns the channel ends it is given and closes them when done) --------
    #
    # Work crosses between the Trio thread and worker threads in batches (of nodes, of
    # chunks): one crossing costs ~100 us, which per small file would cost more than the file.

    async def walk_stage(tx: trio.MemorySendChannel[tuple[int, _Batch]]) -> None:
        async def send(seq: int, batch: _Batch) -> None:
            await ahead.acquire()
            await tx.send((seq, batch))

        def sync() -> None:
            old = ParentTree(repo.tree(parent_manifest) if parent_manifest else None)
            batch: _Batch = []
            seq = to_read = 0
            for node in walk(source, warn_from_thread):
                reuse = False
                if node.type == "file":
                    prev = old.find(node.path)
                    if unchanged(node, prev):
                        assert prev is not None
                        node.content, reuse = prev.content, True
                    else:
                        to_read += node.size
                batch.append((node, reuse))
                if len(batch) >= BATCH_NODES or to_read >= BATCH_BYTES:
                    trio.from_thread.run(send, seq, batch)
                    batch, seq, to_read = [], seq + 1, 0
            if batch:
                trio.from_thread.run(send, seq, batch)
        async with tx:
            await trio.to_thread.run_sync(sync)

    async def read_stage(rx: trio.MemoryReceiveChannel[tuple[int, _Batch]],
                         done: trio.MemorySendChannel[tuple[int, list[fmt.Node]]],
                         out: trio.MemorySendChannel[list[_Raw]]) -> None:
        async def deliver(pieces: list[_Piece], files: int) -> None:
            stats.files_done += files
            new = []
            for cid, data, n in pieces:
                stats.bytes_read += n
                if cid is None:
                    stats.zero_bytes += n
                    continue
                stats.extents += 1
                if data is not None and repo.claim(cid):
                    totals["chunks_new"] += 1
                    totals["raw_new"] += n
                    new.append(_Raw(fmt.KIND_DATA, cid, data))
            if new:
                await out.send(new)

        def read_files(nodes: list[fmt.Node]) -> set[int]:
            """Read in a worker thread; returns the ids of the nodes that could not be read."""
            pending: list[_Piece] = []
            size = files = 0
            gone: set[int] = set()

            def piece(cid: bytes | None, data: bytes | memoryview | None, n: int) -> None:
                nonlocal size, files
                pending.append((cid, data, n))
                size += n if data is not None else 0
                if size >= DELIVER_BYTES or len(pending) >= DELIVER_COUNT:
                    trio.from_thread.run(deliver, pending.copy(), files)
                    pending.clear()
                    size = files = 0

            for node in nodes:
                if reader.read(os.path.join(root, node.path), node, piece, warn_from_thread):
                    files += 1
                else:
                    gone.add(id(node))
            trio.from_thread.run(deliver, pending, files)
            return gone

        async with rx, done, out:
            async for seq, batch in rx:
                to_read = []
                for node, reuse in batch:
                    if node.type != "file":
                        continue
                    if reuse and all(c is None or c in repo.index for c, _ in node.content):
                        stats.skipped_bytes += node.size
                        stats.files_done += 1
                    else:
                        to_read.append(node)
                gone = (await trio.to_thread.run_sync(read_files, to_read, limiter=disk)
                        if to_read else set())
                await done.send((seq, [n for n, _ in batch if id(n) not in gone]))

    async def tree_stage(rx: trio.MemoryReceiveChannel[tuple[int, list[fmt.Node]]],
                         out: trio.MemorySendChannel[list[_Raw]]) -> None:
        cutter = fmt.TreeCutter()
        waiting: dict[int, list[fmt.Node]] = {}
        next_seq = 0

        async def emit(chunk: bytes | None) -> None:
            if chunk is None:
                return
            cid = repo.crypto.chunk_id(chunk)
            tree_ids.append(cid)
            if repo.claim(cid):
                await out.send([_Raw(fmt.KIND_TREE, cid, chunk)])

        async with rx, out:
            async for seq, nodes in rx:
                waiting[seq] = nodes
                while next_seq in waiting:           # the tree keeps walk order
                    batch = waiting.pop(next_seq)
                    next_seq += 1
                    ahead.release()
                    for n in batch:
                        if n.type == "file":
                            totals["files"] += 1
                            totals["bytes"] += n.size
                        elif n.type == "dir" and n.path != fmt.ROOT:
                            totals["dirs"] += 1
                        await emit(cutter.add(n.encode()))
            await emit(cutter.finish())

    async def seal_stage(rx: trio.MemoryReceiveChannel[list[_Raw]],
                         out: trio.MemorySendChannel[list[_Sealed]]) -> None:
        def seal(batch: list[_Raw]) -> list[_Sealed]:
            return [_Sealed(r.kind, r.id, repo.crypto.seal_chunk(r.kind, r.id, r.data, opts.level),
                            len(r.data)) for r in batch]

        async with rx, out:
            async for batch in rx:
                size = sum(len(r.data) for r in batch)
                while size < SEAL_BYTES:               # whatever else is already waiting
                    try:
                        more = rx.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch += more
                    size += sum(len(r.data) for r in more)
                sealed = await trio.to_thread.run_sync(seal, batch, limiter=cpu)
                stats.bytes_stored += sum(len(s.sealed[0]) + len(s.sealed[1]) for s in sealed)
                await out.send(sealed)

    async def pack_stage(rx: trio.MemoryReceiveChannel[list[_Sealed]],
                         out: trio.MemorySendChannel[Pack]) -> None:
        builder = PackBuilder(repo.config.pack_size)
        async with rx, out:
            async for batch in rx:
                for s in batch:
                    builder.add(s.kind, s.id, s.sealed, s.raw_len)
                    if builder.full:
                        await out.send(await trio.to_thread.run_sync(
                            builder.finish, repo.crypto, limiter=cpu))
            if builder.entries:
                await out.send(await trio.to_thread.run_sync(builder.finish, repo.crypto,
                                                             limiter=cpu))

    async def upload_stage(rx: trio.MemoryReceiveChannel[Pack]) -> None:
        async with rx:
            async for pack in rx:
                await trio.to_thread.run_sync(repo.backend.put, pack.name, pack.data,
                                              limiter=net)
                stats.bytes_written += len(pack.data)
                totals["packs"] += 1
                batch = repo.packed(pack)      # indexed only once the pack is stored
                if batch:
                    stats.bytes_written += await trio.to_thread.run_sync(
                        repo.write_index, batch, limiter=net)

    # -- the topology ---------------------------------------------------------------------

    async with trio.open_nursery() as nursery:
        nursery.start_soon(walk_stage, nodes_tx)
        async with nodes_rx, done_tx, raw_tx, raw_rx, sealed_tx, packs_rx:  # clones only
            for _ in range(opts.readers):
                nursery.start_soon(read_stage, nodes_rx.clone(), done_tx.clone(), raw_tx.clone())
            nursery.start_soon(tree_stage, done_rx, raw_tx.clone())
            for _ in range(opts.threads):
                nursery.start_soon(seal_stage, raw_rx.clone(), sealed_tx.clone())
            nursery.start_soon(pack_stage, sealed_rx, packs_tx)
            for _ in range(opts.uploaders):
                nursery.start_soon(upload_stage, packs_rx.clone())

    # Commit order: every pack is stored; now the index naming them, then the snapshot.
    batch = repo.take_unindexed()
    if batch:
        stats.bytes_written += await trio.to_thread.run_sync(repo.write_index, batch)
    manifest = fmt.Manifest(
        time=started.isoformat(timespec="microseconds"), hostname=host, source=str(source),
        tree=tuple(tree_ids), files=totals["files"], dirs=totals["dirs"], bytes=totals["bytes"],
        parent=parent.hex if parent else None)
    ref = await trio.to_thread.run_sync(repo.write_snapshot, manifest, started)
    return BackupResult(snapshot=ref, manifest=manifest, parent=parent,
                        chunks_new=totals["chunks_new"], raw_new=totals["raw_new"],
                        packs=totals["packs"],
                        bytes_sent=repo.backend.bytes_sent - sent_before, warnings=warnings)
