"""Stage: read, decrypt, decompress and check extents, a large window at a time.

Runs in CPU worker threads (AES-XTS, zstd and xxh3 all let go of the GIL).  Each
extent comes back as its raw bytes, or as ("corrupt" | "missing", why): damage is
reported, never decoded into wrong data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from pipeline.drive import codec, format
from pipeline.errors import BadInput, IntegrityError
from pipeline.receive import reader as driveread

WINDOW = 16 << 20  # bytes read and decrypted per worker-thread call


def windows(extents: Iterable[format.Extent]) -> list[list[format.Extent]]:
    """Group stored extents (by location) into reads of at most WINDOW bytes."""
    out: list[list[format.Extent]] = []
    start = end = 0
    for ext in sorted(extents, key=lambda e: e.location):
        lo = ext.location - ext.location % format.SECTOR
        hi = format.align_up(ext.location + ext.stored_len)
        if out and hi - start <= WINDOW and lo >= start:
            out[-1].append(ext)
            end = max(end, hi)
        else:
            out.append([ext])
            start, end = lo, hi
    return out


def read_window(od: driveread.UnlockedDrive, exts: list[format.Extent]
                ) -> list[tuple[format.Extent, bytes | tuple[str, str]]]:
    """Read, decrypt, decompress and check a window of extents (runs in a thread).

    Each extent comes back as its raw bytes, or ("corrupt" | "missing", why).
    """
    lo = exts[0].location - exts[0].location % format.SECTOR
    hi = max(format.align_up(e.location + e.stored_len) for e in exts)
    try:
        plain = memoryview(od.cipher.read(od.drive, lo, hi - lo))
    except (OSError, BadInput, IntegrityError) as exc:
        if len(exts) > 1:  # a bad sector or a cut: read one by one, lose only what is hit
            return [got for e in exts for got in read_window(od, [e])]
        return [(e, ("missing", f"unreadable on the drive: {exc}")) for e in exts]
    out: list[tuple[format.Extent, bytes | tuple[str, str]]] = []
    for e in exts:
        stored = plain[e.location - lo:e.location - lo + e.stored_len]
        try:
            out.append((e, codec.unpack(e.codec, stored, e.raw_len, e.xxh3)))
        except format.CorruptRecord as exc:
            out.append((e, ("corrupt", str(exc))))
    return out


@dataclass(frozen=True, slots=True)
class Parts:
    """A batch of checked extents for the uploaders: batches, not one a message, because
    small files cost thread hand-offs, not bytes."""

    extents: tuple[tuple[format.Extent, bytes], ...]


UPLOAD_BATCH = 64  # extents written per storage thread call ...
UPLOAD_BYTES = 4 << 20  # ... up to about this many bytes


async def run(od: driveread.UnlockedDrive, stored: list[format.Extent],
              on_damage: Callable[[format.Extent, tuple[str, str]], None],
              tx: trio.MemorySendChannel[Parts], cpu: trio.CapacityLimiter) -> None:
    """Read every stored extent, window by window; damage goes to ``on_damage``."""
    async with tx:
        for win in windows(stored):
            batch: list[tuple[format.Extent, bytes]] = []
            size = 0
            for e, got in await trio.to_thread.run_sync(read_window, od, win, limiter=cpu):
                if isinstance(got, tuple):
                    on_damage(e, got)
                    continue
                batch.append((e, got))
                size += len(got)
                if len(batch) >= UPLOAD_BATCH or size >= UPLOAD_BYTES:
                    await tx.send(Parts(tuple(batch)))
                    batch, size = [], 0
            if batch:
                await tx.send(Parts(tuple(batch)))
