"""Stage: raw extent -> compressed + hashed extent, in worker threads.

Each call to a thread gets a whole extent (up to 1 MiB), never a sector; zstd
and xxh3 release the GIL inside, so ``cpu_threads`` workers really run side by
side.  Holes and all-zero extents skip the thread entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from pipeline.drive import codec, format
from pipeline.progress import Stats


@dataclass(slots=True)
class RawExtent:
    """What the read stage sends: one grid cell of a file, or a bare file entry."""

    file: format.FileEntry
    offset: int
    length: int
    data: bytes | None  # None: a hole or all zeros (not stored)


@dataclass(slots=True)
class PackedExtent:
    """What the writers receive: a file entry and, unless the file is empty, an extent."""

    file: format.FileEntry
    extent: format.Extent | None
    stored: bytes


Bundle = list[PackedExtent]
"""What goes down the packed channel: one worker call's output (up to ~4 MiB), not one
extent a message; per-message channel work was a large share of a small file's cost."""


def pack_one(raw: RawExtent, level: int) -> PackedExtent:
    if raw.length == 0:  # an empty file: only its entry goes to a drive
        return packed_extent(raw, None)
    return packed_extent(raw, codec.zero(raw.length) if raw.data is None
                         else codec.pack(raw.data, level))


def packed_extent(raw: RawExtent, packed: codec.Packed | None) -> PackedExtent:
    """What the writers get for ``raw`` packed as ``packed`` (None: an empty file)."""
    if packed is None:
        return PackedExtent(raw.file, None, b"")
    extent = format.Extent(raw.file.file_id, raw.offset, raw.length, packed.codec,
                           len(packed.stored), packed.xxh3, 0)
    return PackedExtent(raw.file, extent, packed.stored)


BATCH_BYTES = 2 << 20  # raw bytes packed per worker-thread call ...
BATCH_ITEMS = 64  # ... or this many extents: small files cost hand-offs, not bytes


async def run(rx: trio.MemoryReceiveChannel[RawExtent],
              tx: trio.MemorySendChannel[Bundle],
              cpu: trio.CapacityLimiter, level: int, stats: Stats) -> None:
    """Pack what is waiting in one thread call, up to BATCH_BYTES; holes skip the thread."""
    async with rx, tx:
        async for first in rx:
            batch, total = [first], first.length
            while len(batch) < BATCH_ITEMS and total < BATCH_BYTES:
                try:
                    raw = rx.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(raw)
                total += raw.length
            if all(raw.data is None for raw in batch):
                packed = [pack_one(raw, level) for raw in batch]
            else:
                packed = await trio.to_thread.run_sync(_timed_pack, batch, level, stats,
                                                       limiter=cpu)
            await tx.send(packed)


def _timed_pack(batch: list[RawExtent], level: int, stats: Stats) -> list[PackedExtent]:
    with stats.timed("pack"):
        return [pack_one(raw, level) for raw in batch]
