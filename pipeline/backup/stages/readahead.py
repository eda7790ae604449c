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
    will read (unless the page cache already holds them: ``_cached``); returns how many
    were asked for."""
    paths = [os.path.join(root, item.node.path) for item in batch.items
             if item.node.type == "file" and not item.reuse and 0 < item.node.size <= SMALL]
    if not paths or _cached([paths[0], paths[len(paths) // 2], paths[-1]]):
        return 0
    n = 0
    for path in paths:
        try:
            opened = open_regular(path)
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


def _cached(paths: list[str]) -> bool:
    """Whether the page cache holds the first and last byte of each of ``paths`` (a
    batch's first, middle and last file): then the batch is taken as read already (a
    tree read a moment ago, or written: an incremental's new files) and asking for it
    would only cost each file's opening, 6 system calls, each one handing the GIL over
    (a tenth of a backup of small files' time).  ``RWF_NOWAIT`` reads only what is
    cached; where it is refused, or a probe cannot be read, the batch is asked for."""
    for path in paths:
        try:
            opened = open_regular(path)
        except OSError:
            return False
        if opened is None:
            return False
        fd, st = opened
        try:
            for off in {0, max(st.st_size - 1, 0)}:
                if os.preadv(fd, [bytearray(1)], off, os.RWF_NOWAIT) != 1:
                    return False
        except OSError:          # EAGAIN: not cached; EOPNOTSUPP: cannot tell
            return False
        finally:
            os.close(fd)
    return True


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
