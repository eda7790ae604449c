"""Stage: large files -> raw extents on the grid, read in I/O threads.

A large file (more than one extent, or partly committed) is listed by the
feeder and read here, in prep, so that its bytes never cross the feeder's
pipe.  ``x readers`` of these run side by side, each through the ``io``
limiter, and read a few extents a thread call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import trio

from pipeline.drive import format
from pipeline.prep import read
from pipeline.prep.pack import RawExtent
from pipeline.prep.session import FileJob
from pipeline.progress import Stats

__all__ = ["run"]

_PER_CALL = 4  # extents of a large file read per worker-thread call

OnEvent = Callable[[str, str], None]


def _take(gen: Iterator[tuple[int, int, bytes | None]], n: int, stats: Stats
          ) -> list[tuple[int, int, bytes | None]]:
    with stats.timed("read"):
        out = []
        for item in gen:
            out.append(item)
            if len(out) >= n:
                break
        return out


async def run(rx: trio.MemoryReceiveChannel[FileJob], tx: trio.MemorySendChannel[RawExtent],
              io: trio.CapacityLimiter, stats: Stats, on_changed: OnEvent) -> None:
    """Read each file into grid extents; ``io`` bounds concurrent staging reads.

    A file that changes while it is read is reported through ``on_changed`` and
    left for ``--resume``, which sees its new size or mtime and writes it again.
    """
    async with rx, tx:
        async for job in rx:
            await _read_large(job, tx, io, stats, on_changed)


async def _read_large(job: FileJob, tx: trio.MemorySendChannel[RawExtent],
                      io: trio.CapacityLimiter, stats: Stats, on_changed: OnEvent) -> None:
    entry = job.entry
    stats.skipped_bytes += sum(min(format.CELL, entry.size - o) for o in job.skip)
    gen = read.read_extents(job.abspath, entry.size, entry.mtime_ns, skip=job.skip)
    try:
        while True:
            batch = await trio.to_thread.run_sync(_take, gen, _PER_CALL, stats, limiter=io)
            for offset, length, data in batch:
                await tx.send(RawExtent(entry, offset, length, data))
                stats.bytes_read += length
                stats.extents += 1
                if data is None:
                    stats.zero_bytes += length
            if len(batch) < _PER_CALL:
                break
    except read.FileChanged as exc:
        on_changed(entry.path, str(exc))
        return
    finally:
        gen.close()
    stats.files_done += 1
