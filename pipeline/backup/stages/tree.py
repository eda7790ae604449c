"""Backup's tree stage: read batches back in walk order, into tree chunks (JSON Lines).

The readers finish batches out of order; ``Tree`` keeps those that came early (at most
``window`` of them, the walk's ``ahead`` semaphore, released here) and encodes every
node in walk order, so that a snapshot's tree is the same whatever the timing.  It owns
the snapshot's totals and the list of tree chunk ids the manifest names.  While nothing
needs reading, ``archive.walk_inline`` feeds it directly (``add``, ``keep``), before any
Trio run; ``run`` goes on from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import Repository
from pipeline.backup.stages.messages import Chunk, ReadBatch
from pipeline.progress import Stats

if TYPE_CHECKING:       # the inline walk (archive.walk_inline) uses Tree before any Trio run
    import trio


class Tree:
    """The snapshot's tree as it is cut, and its totals (files, dirs, bytes)."""

    def __init__(self, repo: Repository, stats: Stats) -> None:
        self.repo, self.stats = repo, stats
        self.ids: list[bytes] = []          # tree chunks, in order: the manifest's tree
        self.new: list[Chunk] = []          # new tree chunks cut inline, not sent yet
        self.new_bytes = 0
        self.cutter = fmt.TreeCutter()
        self.files = 0
        self.dirs = 0
        self.bytes = 0

    def add(self, node: fmt.Node, line: bytes | None) -> bytes | None:
        """Count ``node`` and cut its line (the parent's as is, else encoded): a finished
        tree chunk, or None."""
        self._count(node)
        return self.cutter.add(node.encode() if line is None else line)

    def name(self, chunk: bytes | None) -> Chunk | None:
        """Name a finished chunk in the manifest's list: the Chunk to store when new."""
        if chunk is None:
            return None
        cid = self.repo.crypto.chunk_id(chunk)
        self.ids.append(cid)
        return Chunk(fmt.KIND_TREE, cid, chunk) if self.repo.claim(cid) else None

    def keep(self, chunk: bytes | None) -> None:
        """Inline (no channel yet): a new chunk waits in ``new`` for ``run`` to send it."""
        new = self.name(chunk)
        if new is not None:
            self.new.append(new)
            self.new_bytes += len(new.data)

    async def run(self, rx: trio.MemoryReceiveChannel[ReadBatch],
                  out: trio.MemorySendChannel[list[Chunk]], ahead: trio.Semaphore) -> None:
        """Every batch on ``rx`` into tree chunks, the new ones to ``out`` (first those
        cut inline); closes both.  ``ahead``: released for each batch taken."""
        waiting: dict[int, ReadBatch] = {}
        next_seq = 0
        async with rx, out:
            if self.new:
                new, self.new = self.new, []
                await out.send(new)
            async for batch in rx:
                waiting[batch.seq] = batch
                while next_seq in waiting:           # the tree keeps walk order
                    ready = waiting.pop(next_seq)
                    next_seq += 1
                    ahead.release()
                    with self.stats.timed("tree"):     # encoding, not the waits to send
                        cut = [self.add(n, line)      # an entry as its parent's: its line
                               for n, line in zip(ready.nodes, ready.lines, strict=True)]
                    for chunk in cut:
                        await self._emit(chunk, out)
            await self._emit(self.cutter.finish(), out)

    def _count(self, n: fmt.Node) -> None:
        if n.type == "file":
            self.files += 1
            self.bytes += n.size
        elif n.type == "dir" and n.path != fmt.ROOT:
            self.dirs += 1

    async def _emit(self, chunk: bytes | None,
                    out: trio.MemorySendChannel[list[Chunk]]) -> None:
        new = self.name(chunk)
        if new is not None:
            await out.send([new])
