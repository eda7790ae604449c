"""run_prep(): prep's wiring — its nursery, every channel and limiter, in one place.

::

    feeder process: walk + plan (resume), small files read and packed -----> packed
        large files: jobs -> large (x readers, io threads) -> raw extents
                     -> pack (x cpu threads) -------------------------------> packed
    packed (bundles) -> write: sequential (one drive after another)
                             | parallel (every drive at once)
    each drive: fill (seal thread) -> encrypt (cpu thread) -> write (io thread)

The stages are one module each: ``source`` (the feeder's messages; the feeder
itself is ``feed``), ``large``, ``pack``, ``write`` (``DriveWriter``); ``pool``
hands out the drives.  Channel depths follow ``PrepConfig.depth`` (``config``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio

from pipeline.errors import OutOfDrives
from pipeline.prep import feedwire, large, pack, source
from pipeline.prep.config import PrepConfig
from pipeline.prep.pack import Bundle, PackedExtent, RawExtent
from pipeline.prep.pool import DrivePool
from pipeline.prep.session import FileJob, Session
from pipeline.prep.write import DriveWriter, Encrypted, Sealed, rewrite_index
from pipeline.progress import Stats

__all__ = ["DrivePool", "DriveWriter", "PrepConfig", "rewrite_index", "run_prep",
           "write_all", "write_drive"]

OnEvent = Callable[[str, str], None]
# Another source than the staging directory (export's blobs, ``blobsource``): it sends raw
# extents and bundles on clones of the two channels, and closes its clones when done.
Feed = Callable[[trio.MemorySendChannel[RawExtent], trio.MemorySendChannel[Bundle]],
                Awaitable[None]]


async def run_prep(cfg: PrepConfig, session: Session, pool: DrivePool, stats: Stats,
                   on_skip: OnEvent, on_changed: OnEvent,
                   on_full: Callable[[DriveWriter], None],
                   stop: trio.CancelScope | None = None, feed: Feed | None = None) -> None:
    """Run the whole pipeline into ``pool``'s drives (the pool keeps drives and passwords).

    Cancelling ``stop`` ends the input side only (Ctrl-C, once): the feeder and
    the readers stop and close their channels, everything already read is
    packed, written and committed, and the drives are closed cleanly.  ``feed``
    replaces the feeder and the large-file readers (the staging directory) as the source.
    """
    io = trio.CapacityLimiter(cfg.readers)  # staging reads of large files
    journal_io = trio.CapacityLimiter(1)  # marking superseded files, one message at a time
    depth = cfg.depth
    jobs_tx, jobs_rx = trio.open_memory_channel[FileJob](source.LARGE_AHEAD)
    raw_tx, raw_rx = trio.open_memory_channel[RawExtent](depth)
    # A bundle holds up to ~4 MiB (a worker call's output), a raw extent 1 MiB.
    packed_tx, packed_rx = trio.open_memory_channel[Bundle](max(2, depth // 4))
    plan = feedwire.Plan(str(cfg.srcdir), cfg.level, session.planner, cfg.dataset)

    async def read_input(packed: trio.MemorySendChannel[Bundle]) -> None:
        """The feeder and the large-file readers, under ``stop``: what a first Ctrl-C ends."""
        async with raw_tx, packed:  # closed even if ``stop`` was cancelled before this began
            with stop or trio.CancelScope():
                if feed is not None:
                    await feed(raw_tx.clone(), packed.clone())
                    return
                # jobs_tx and jobs_rx close as the body ends: each task closes its own clones
                async with trio.open_nursery() as nursery, jobs_tx, jobs_rx:
                    nursery.start_soon(source.run, plan, session, jobs_tx.clone(),
                                       packed.clone(), journal_io, stats, on_skip, on_changed)
                    for _ in range(cfg.readers):
                        nursery.start_soon(large.run, jobs_rx.clone(), raw_tx.clone(), io,
                                           stats, on_changed)

    async with trio.open_nursery() as nursery:
        async with raw_rx, packed_tx:  # each task closes its own clones
            nursery.start_soon(read_input, packed_tx.clone())
            for _ in range(cfg.cpu_threads):
                nursery.start_soon(pack.run, raw_rx.clone(), packed_tx.clone(), pool.cpu,
                                   cfg.level, stats)
        nursery.start_soon(write_all, packed_rx, pool, cfg.fill, on_full)


async def write_drive(writer: DriveWriter, rx: trio.MemoryReceiveChannel[Bundle],
                      spill: deque[PackedExtent]) -> bool:
    """One drive until the stream ends (True) or the drive is full (False), then closed.

    Its three tasks are joined by unbuffered channels (a hand-over: in parallel
    fill a slot per drive cost two segments each).
    """
    await writer.reopen()
    sealed_tx, sealed_rx = trio.open_memory_channel[Sealed](0)
    encrypted_tx, encrypted_rx = trio.open_memory_channel[Encrypted](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.encrypt_all, sealed_rx, encrypted_tx)
        nursery.start_soon(writer.write_all, encrypted_rx)
        ended = await writer.fill(rx, spill, sealed_tx)
    await writer.close("closed" if ended else "full")
    return ended


async def write_all(rx: trio.MemoryReceiveChannel[Bundle], pool: DrivePool,
                    fill: str, on_full: Callable[[DriveWriter], None]) -> None:
    """Feed the writers; raise OutOfDrives if data is left when every drive is full."""
    spill: deque[PackedExtent] = deque()  # unpacked bundles, shared by the writers
    async with rx:
        if fill == "sequential":
            while (writer := await pool.next_writer()) is not None:
                try:
                    if await write_drive(writer, rx, spill):
                        return
                finally:
                    writer.drive.close()
                on_full(writer)
        else:
            writers: list[DriveWriter] = []

            async def open_one() -> None:
                writer = await pool.next_writer()
                if writer is not None:
                    writers.append(writer)

            async with trio.open_nursery() as formatting:  # every drive at once
                for _ in range(len(pool.queue)):
                    formatting.start_soon(open_one)
            try:
                async with trio.open_nursery() as nursery:
                    for writer in writers:
                        nursery.start_soon(_write_parallel, writer, rx.clone(), spill, on_full)
            finally:
                for writer in writers:
                    writer.drive.close()
        if not spill:
            try:
                await rx.receive()
            except trio.EndOfChannel:
                return  # the last drive filled exactly as the data ended
        raise OutOfDrives("drives full")


async def _write_parallel(writer: DriveWriter, rx: trio.MemoryReceiveChannel[Bundle],
                          spill: deque[PackedExtent],
                          on_full: Callable[[DriveWriter], None]) -> None:
    async with rx:
        if not await write_drive(writer, rx, spill):
            on_full(writer)
