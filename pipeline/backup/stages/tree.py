"""Backup's tree stage: read batches back in walk order, into tree chunks (JSON Lines).

The readers finish batches out of order; ``Tree`` keeps those that came early (at most
``window`` of them, the walk's ``ahead`` semaphore, released here) and encodes every
node in walk order, so that a snapshot's tree is the same whatever the timing.  It owns
the snapshot's totals and the list of tree chunk ids the manifest names.
"""

from __future__ import annotations

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import Repository
from pipeline.backup.stages.messages import Chunk, ReadBatch
from pipeline.progress import Stats


class Tree:
    """The snapshot's tree as it is cut, and its totals (files, dirs, bytes)."""

    def __init__(self, repo: Repository, ahead: trio.Semaphore, stats: Stats) -> None:
        self.repo, self.ahead, self.stats = repo, ahead, stats
        self.ids: list[bytes] = []          # tree chunks, in order: the manifest's tree
        self.files = 0
        self.dirs = 0
        self.bytes = 0

    async def run(self, rx: trio.MemoryReceiveChannel[ReadBatch],
                  out: trio.MemorySendChannel[list[Chunk]]) -> None:
        """Every batch on ``rx`` into tree chunks, the new ones to ``out``; closes both."""
        cutter = fmt.TreeCutter()
        waiting: dict[int, ReadBatch] = {}
        next_seq = 0
        async with rx, out:
            async for batch in rx:
                waiting[batch.seq] = batch
                while next_seq in waiting:           # the tree keeps walk order
                    ready = waiting.pop(next_seq)
                    next_seq += 1
                    self.ahead.release()
                    with self.stats.timed("tree"):     # encoding, not the waits to send
                        cut = []
                        for n, line in zip(ready.nodes, ready.lines, strict=True):
                            self._count(n)      # an entry as its parent's: its line as is
                            cut.append(cutter.add(n.encode() if line is None else line))
                    for chunk in cut:
                        await self._emit(chunk, out)
            await self._emit(cutter.finish(), out)

    def _count(self, n: fmt.Node) -> None:
        if n.type == "file":
            self.files += 1
            self.bytes += n.size
        elif n.type == "dir" and n.path != fmt.ROOT:
            self.dirs += 1

    async def _emit(self, chunk: bytes | None,
                    out: trio.MemorySendChannel[list[Chunk]]) -> None:
        if chunk is None:
            return
        cid = self.repo.crypto.chunk_id(chunk)
        self.ids.append(cid)
        if self.repo.claim(cid):
            await out.send([Chunk(fmt.KIND_TREE, cid, chunk)])
