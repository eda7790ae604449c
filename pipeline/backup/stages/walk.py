"""Backup's walk stage: the source tree in walk order, matched against the parent snapshot.

One worker thread consumes ``backup.walk.matched``: it stats every entry and, for a file
unchanged since the parent snapshot (restic's rule, ``walk.unchanged``), takes the parent's chunk
list so that the file is not read again; a new path to a hard-linked file so taken (a
new link) takes the same list.  An entry equal to the parent's in every field carries
the parent's tree line, so that the tree stage need not encode it.  The walk may have
begun inline, before any Trio run (``archive.walk_inline``).  Nodes go out in
numbered batches; ``ahead`` bounds how many the walk may run ahead of the tree stage,
which puts them back in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from pipeline.backup.stages.messages import NodeBatch, Walked
from pipeline.progress import Stats

BATCH_NODES = 512                 # nodes per walk batch
BATCH_BYTES = 32 << 20            # or file bytes to read per walk batch


async def run(walked: Iterator[Walked], tx: trio.MemorySendChannel[NodeBatch],
              ahead: trio.Semaphore, stats: Stats) -> None:
    """Consume ``walked`` (``matched``, perhaps partly consumed already) in a thread, in
    numbered batches.  Closes ``tx`` at the end.  The thread's time less its waits for
    the next stages: ``busy["walk"]``."""
    waited = 0.0

    async def send(batch: NodeBatch) -> None:
        nonlocal waited
        t = stats.timer()
        await ahead.acquire()                      # released by the tree stage
        await tx.send(batch)
        waited += stats.timer() - t

    def sync() -> None:
        batch: list[Walked] = []
        seq = to_read = 0
        for item in walked:
            if item.node.type == "file" and not item.reuse:
                to_read += item.node.size
            batch.append(item)
            if len(batch) >= BATCH_NODES or to_read >= BATCH_BYTES:
                trio.from_thread.run(send, NodeBatch(seq, batch))
                batch, seq, to_read = [], seq + 1, 0
        if batch:
            trio.from_thread.run(send, NodeBatch(seq, batch))

    async with tx:
        started = stats.timer()
        await trio.to_thread.run_sync(sync)
        stats.add_busy("walk", stats.timer() - started - waited)
