"""Backup's read-ahead stage: the small files of each walk batch asked of the disk early.

Between walk and read.  A small file costs a disk round trip before its first byte, and
the readers (two, as restic's) wait for each in turn: on 2 GB of real files the last
7,700 small ones (240 MB) took a third of the run at 1.4 of 2 cores, while the big files
before them kept both cores busy and the disk idle.  This stage runs ahead of the readers
by up to ``AHEAD`` batches (``walk.BATCH_BYTES`` of file bytes each: page cache, not
process memory), in one thread of its own, and for each file the readers will read
(not reused from the parent, at most ``SMALL`` bytes) asks the kernel to read it now
(``posix_fadvise(WILLNEED)`` queues the reads and returns), so their data is in the page
cache when a reader gets there.  Big files need nothing: the kernel reads ahead within
a file already.  What it cannot open it leaves for the reader to report; a path that is
no longer a regular file is not opened for reading at all (``openfile.open_regular``).
"""

from __future__ import annotations

import os

import trio

from pipeline.backup.openfile import open_regular
from pipeline.backup.stages.messages import NodeBatch
from pipeline.progress import Stats

AHEAD = 8                         # batches the read-ahead may run ahead of the readers
SMALL = 1 << 20                   # files up to this size are read ahead


def ask(root: str, batch: NodeBatch) -> int:
    """In a worker thread: ask the kernel for the small files of ``batch`` the readers
    will read; returns how many were asked for."""
    n = 0
    for item in batch.items:
        node = item.node
        if node.type != "file" or item.reuse or not 0 < node.size <= SMALL:
            continue
        try:
            opened = open_regular(os.path.join(root, node.path))
        except OSError:
            continue
        if opened is None:
            continue
        fd = opened[0]
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            n += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return n


async def run(root: str, rx: trio.MemoryReceiveChannel[NodeBatch],
              tx: trio.MemorySendChannel[NodeBatch], stats: Stats) -> None:
    """Each batch from ``rx`` read ahead, then passed on to ``tx`` (the readers); closes
    both at the end.  Its thread's time: ``busy["readahead"]``."""
    own = trio.CapacityLimiter(1)   # not one of the readers' disk slots
    async with rx, tx:
        async for batch in rx:
            t = stats.timer()
            await trio.to_thread.run_sync(ask, root, batch, limiter=own)
            stats.add_busy("readahead", stats.timer() - t)
            await tx.send(batch)
