"""Backup's read stage: files into content-defined chunks, the new ones on to sealing.

Several tasks (``readers``, 2 by default: restic's, borg #3500) share one ``Read``,
which owns the count of new chunks.  Each batch of files is read in one worker thread
behind the disk limiter; the thread hands chunks back in bundles of up to
``DELIVER_BYTES``, and on the Trio thread each chunk is claimed in the repository:
a chunk it already has (or another task is storing) is never sealed or sent again.
A file unchanged since the parent snapshot is not read at all when the index still
holds every chunk of it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import Repository
from pipeline.backup.stages.messages import Chunk, NodeBatch, ReadBatch
from pipeline.backup.walk import FileReader, Warn
from pipeline.progress import Stats

DELIVER_BYTES = 4 << 20           # chunks a reader hands over at once
DELIVER_COUNT = 256
# A batch of files this small on average is read by one reader at a time (``Read.small``).
SMALL_FILES = 256 << 10
_NO_LOCK = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class Piece:
    """What a reading thread hands back: a chunk, or a zero run (no id, no data)."""

    id: bytes | None
    data: bytes | memoryview | None
    length: int


def _read_batch(batch: NodeBatch, read: set[int], gone: set[int]) -> ReadBatch:
    """``batch`` less the files in ``gone``; a file read again (``read``: its chunks were
    not all in the index) has new content, so the parent's line no longer stands for it."""
    nodes: list[fmt.Node] = []
    lines: list[bytes | None] = []
    for item in batch.items:
        key = id(item.node)
        if key not in gone:
            nodes.append(item.node)
            lines.append(None if key in read else item.line)
    return ReadBatch(batch.seq, nodes, lines)


class Read:
    """The read tasks' shared state: the repository's chunk claims and the new-chunk totals."""

    def __init__(self, repo: Repository, root: str, stats: Stats,
                 disk: trio.CapacityLimiter, warn: Warn) -> None:
        self.repo, self.root, self.stats, self.disk, self.warn = repo, root, stats, disk, warn
        self.reader = FileReader(repo.config.chunker, repo.crypto.keys.chunker_seed,
                                 repo.crypto.chunk_id)
        # Small files are mostly system calls and Python, each call handing the GIL over:
        # two readers of them at once only fight for it (the 7,733-file stdlib subtree:
        # 1.60 s with two, 1.42 s with one), while big files are read in parallel
        # (chunking and hashing let the GIL go: one reader of the 2 GiB tree, +6 %).
        self.small = trio.Lock()
        self.chunks_new = 0
        self.raw_new = 0                   # plaintext bytes of the new chunks

    async def run(self, rx: trio.MemoryReceiveChannel[NodeBatch],
                  done: trio.MemorySendChannel[ReadBatch],
                  out: trio.MemorySendChannel[list[Chunk]]) -> None:
        """One read task: every batch on ``rx`` read, its new chunks to ``out``, then the
        batch (less unreadable files) to ``done``; closes the three ends at the end."""
        async with rx, done, out:
            async for batch in rx:
                to_read = []
                for item in batch.items:
                    node = item.node
                    if node.type != "file":
                        continue
                    if item.reuse and all(c is None or c in self.repo.index
                                          for c, _ in node.content):
                        self.stats.unchanged_bytes += node.size
                        self.stats.files_done += 1
                    else:
                        to_read.append(node)
                gone: set[int] = set()
                if to_read:
                    small = sum(n.size for n in to_read) < len(to_read) * SMALL_FILES
                    async with self.small if small else _NO_LOCK:
                        gone = await trio.to_thread.run_sync(self._read_files, to_read, out,
                                                             limiter=self.disk)
                await done.send(_read_batch(batch, {id(n) for n in to_read}, gone))

    def _read_files(self, nodes: list[fmt.Node],
                    out: trio.MemorySendChannel[list[Chunk]]) -> set[int]:
        """In a worker thread: read ``nodes``; returns the ids of those that could not be.
        Its time less its waits to hand chunks over: ``busy["read"]``."""
        pending: list[Piece] = []
        size = files = 0
        gone: set[int] = set()
        started, waited = self.stats.timer(), 0.0

        def deliver(pieces: list[Piece], n: int) -> None:
            nonlocal waited
            t = self.stats.timer()
            trio.from_thread.run(self._deliver, pieces, n, out)
            waited += self.stats.timer() - t

        def piece(cid: bytes | None, data: bytes | memoryview | None, n: int) -> None:
            nonlocal size, files
            pending.append(Piece(cid, data, n))
            size += n if data is not None else 0
            if size >= DELIVER_BYTES or len(pending) >= DELIVER_COUNT:
                deliver(pending.copy(), files)
                pending.clear()
                size = files = 0

        for node in nodes:
            if self.reader.read(os.path.join(self.root, node.path), node, piece, self.warn):
                files += 1
            else:
                gone.add(id(node))
        deliver(pending, files)
        self.stats.add_busy("read", self.stats.timer() - started - waited)
        return gone

    async def _deliver(self, pieces: list[Piece], files: int,
                       out: trio.MemorySendChannel[list[Chunk]]) -> None:
        """On the Trio thread: count what was read, claim each chunk, send on the new ones."""
        stats = self.stats
        stats.files_done += files
        new = []
        for p in pieces:
            stats.bytes_read += p.length
            if p.id is None:
                stats.zero_bytes += p.length
                continue
            stats.extents += 1
            if p.data is not None and self.repo.claim(p.id):
                self.chunks_new += 1
                self.raw_new += p.length
                new.append(Chunk(fmt.KIND_DATA, p.id, p.data))
        if new:
            await out.send(new)
