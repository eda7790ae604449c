"""Backup's walk stage: the source tree in walk order, matched against the parent snapshot.

One worker thread stats every entry (``backup.walk.walk``) and, for a file unchanged
since the parent snapshot (restic's rule, ``walk.unchanged``), takes the parent's chunk
list so that the file is not read again; a new path to a hard-linked file so taken (a
new link) takes the same list.  An entry equal to the parent's in every field carries
the parent's tree line, so that the tree stage need not encode it.  Nodes go out in
numbered batches; ``ahead`` bounds how many the walk may run ahead of the tree stage,
which puts them back in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.stages.messages import NodeBatch, Walked
from pipeline.backup.walk import ParentTree, Warn, unchanged, walk
from pipeline.progress import Stats

BATCH_NODES = 512                 # nodes per walk batch
BATCH_BYTES = 32 << 20            # or file bytes to read per walk batch


async def run(source: Path, parent: Iterator[tuple[fmt.Node, bytes]] | None,
              tx: trio.MemorySendChannel[NodeBatch], ahead: trio.Semaphore,
              warn: Warn, stats: Stats) -> None:
    """Walk ``source`` in a thread; ``parent`` is the parent snapshot's tree, read lazily
    in that thread; ``warn`` must be callable from it.  Closes ``tx`` at the end.  The
    thread's time less its waits for the next stages: ``busy["walk"]``."""
    waited = 0.0

    async def send(batch: NodeBatch) -> None:
        nonlocal waited
        t = stats.timer()
        await ahead.acquire()                      # released by the tree stage
        await tx.send(batch)
        waited += stats.timer() - t

    def sync() -> None:
        old = ParentTree(parent)
        linked: dict[tuple[int, int], fmt.Node] = {}   # hard-linked files taken from the parent
        batch: list[Walked] = []
        seq = to_read = 0
        for node in walk(source, warn):
            reuse = False
            found = old.find(node.path)
            same, line = found if found is not None else (None, None)
            if node.type == "file":
                prev = same
                if node.links > 1 and not unchanged(node, prev):
                    prev = linked.get((node.dev, node.inode))
                if unchanged(node, prev):
                    assert prev is not None
                    node.content, reuse = prev.content, True
                    if node.links > 1:
                        linked.setdefault((node.dev, node.inode), node)
                else:
                    to_read += node.size
            batch.append(Walked(node, reuse, line if node == same else None))
            if len(batch) >= BATCH_NODES or to_read >= BATCH_BYTES:
                trio.from_thread.run(send, NodeBatch(seq, batch))
                batch, seq, to_read = [], seq + 1, 0
        if batch:
            trio.from_thread.run(send, NodeBatch(seq, batch))

    async with tx:
        started = stats.timer()
        await trio.to_thread.run_sync(sync)
        stats.add_busy("walk", stats.timer() - started - waited)
