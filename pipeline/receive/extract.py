"""Stage: read, decrypt, decompress and check extents, a large window at a time.

::

    read (a thread of the drive's own: 16 MiB windows, pread)
      -> Fetched -> unpack x N (cpu threads: AES-XTS, zstd, xxh3-128; all let go of
         the GIL) -> Parts -> the uploaders

Each extent comes back as its raw bytes, or as ("corrupt" | "missing", why): damage
is reported, never decoded into wrong data.  Reading the next window overlaps
decompressing the ones before, as in verify.  Decrypting is the workers' too: in the
read thread it made one core's stage of it (a third of that thread's time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import trio

from pipeline.drive import codec, format
from pipeline.errors import BadInput, IntegrityError
from pipeline.receive import reader as driveread
from pipeline.volume import drives

WINDOW = 16 << 20  # bytes read and decrypted per read-thread call
WINDOW_EXTENTS = 2048  # ... and at most this many extents: a window of tiny files held
# 100,000 Extents and their raw bytes (~100 MB: text compresses 5-10x), now ~2 MiB
WINDOWS_DEPTH = 0  # a window read waits for a free worker: 16 MiB held per worker, no more


def windows(extents: Iterable[format.Extent]) -> list[list[format.Extent]]:
    """Group stored extents (by location) into reads of at most WINDOW bytes (and
    WINDOW_EXTENTS extents)."""
    return list(iter_windows(sorted(extents, key=lambda e: e.location)))


def iter_windows(extents: Iterable[format.Extent]) -> Iterator[list[format.Extent]]:
    """``windows`` of extents already in drive order, one at a time: only the windows
    being read are held, not an object per extent of the whole drive; a window is at
    most WINDOW bytes and WINDOW_EXTENTS extents (tiny files: its count, not its bytes,
    is what a worker's memory holds)."""
    win: list[format.Extent] = []
    start = 0
    for ext in extents:
        lo = ext.location - ext.location % format.SECTOR
        hi = format.align_up(ext.location + ext.stored_len)
        if win and hi - start <= WINDOW and lo >= start and len(win) < WINDOW_EXTENTS:
            win.append(ext)
        else:
            if win:
                yield win
            win, start = [ext], lo
    if win:
        yield win


@dataclass(frozen=True, slots=True)
class Fetched:
    """Extents read together: the drive's bytes from data-area offset ``lo``, still
    encrypted, or why they could not be read (``sealed`` None)."""

    extents: list[format.Extent]
    lo: int
    sealed: bytes | None
    why: str = ""


def _span(exts: list[format.Extent]) -> tuple[int, int]:
    """The sector-aligned data-area range [lo, hi) a window of extents covers."""
    lo = exts[0].location - exts[0].location % format.SECTOR
    return lo, max(format.align_up(e.location + e.stored_len) for e in exts)


def fetch(od: driveread.UnlockedDrive, exts: list[format.Extent]) -> list[Fetched]:
    """Read a window of extents (runs in the read thread); the workers decrypt it.

    A bad sector or a cut reads the window again extent by extent, so that only
    what is hit is lost.
    """
    lo, hi = _span(exts)
    try:
        return [Fetched(exts, lo, od.cipher.read_sealed(od.drive, lo, hi - lo))]
    except (OSError, BadInput, IntegrityError) as exc:
        if len(exts) > 1:
            return [got for e in exts for got in fetch(od, [e])]
        return [Fetched(exts, lo, None, f"unreadable on the drive: {exc}")]


def unpack(fetched: list[Fetched], cipher: drives.DriveCipher
           ) -> list[tuple[format.Extent, bytes | tuple[str, str]]]:
    """Decrypt, decompress and check each extent read (runs in a cpu thread)."""
    out: list[tuple[format.Extent, bytes | tuple[str, str]]] = []
    for f in fetched:
        if f.sealed is None:
            out.extend((e, ("missing", f.why)) for e in f.extents)
            continue
        plain = memoryview(cipher.decrypt(f.sealed, f.lo))
        for e in f.extents:
            start = e.location - f.lo
            try:
                out.append((e, codec.unpack(e.codec, plain[start:start + e.stored_len],
                                            e.raw_len, e.xxh3)))
            except format.CorruptRecord as exc:
                out.append((e, ("corrupt", str(exc))))
    return out


def read_window(od: driveread.UnlockedDrive, exts: list[format.Extent]
                ) -> list[tuple[format.Extent, bytes | tuple[str, str]]]:
    """Read, decrypt, decompress and check a window of extents, in one thread.

    Each extent comes back as its raw bytes, or ("corrupt" | "missing", why).
    """
    return unpack(fetch(od, exts), od.cipher)


@dataclass(frozen=True, slots=True)
class Parts:
    """A batch of checked extents for the uploaders: batches, not one a message, because
    small files cost thread hand-offs, not bytes."""

    extents: tuple[tuple[format.Extent, bytes], ...]


UPLOAD_BATCH = 256  # extents written per storage thread call ...
UPLOAD_BYTES = 8 << 20  # ... up to about this many bytes (fewer hand-offs: each one waits
# for a core on a loaded machine)


async def run(od: driveread.UnlockedDrive, stored: Iterable[format.Extent],
              on_damage: Callable[[format.Extent, tuple[str, str]], None],
              tx: trio.MemorySendChannel[Parts], cpu: trio.CapacityLimiter,
              workers: int | None = None) -> None:
    """Read every stored extent (in drive order), window by window; damage goes to
    ``on_damage``.

    The drive's reads get a thread of their own; ``workers`` unpackers (default: the
    cpu limiter's tokens) decompress and check the windows read, in any order.
    """
    async with trio.open_nursery() as nursery:
        win_tx, win_rx = trio.open_memory_channel[list[Fetched]](WINDOWS_DEPTH)
        nursery.start_soon(_read, od, stored, win_tx, trio.CapacityLimiter(1))
        async with win_rx, tx:
            for _ in range(workers or int(cpu.total_tokens)):
                nursery.start_soon(_unpack, win_rx.clone(), tx.clone(), on_damage, cpu,
                                   od.cipher)


async def _read(od: driveread.UnlockedDrive, stored: Iterable[format.Extent],
                tx: trio.MemorySendChannel[list[Fetched]], io: trio.CapacityLimiter) -> None:
    """Stage: the windows in drive order, each read in the read thread; the one after it
    is asked of the device first (read-ahead), so the disk works while a window waits
    for a worker."""
    async with tx:
        wins = iter_windows(stored)
        win = next(wins, None)
        while win is not None:
            after = next(wins, None)
            await tx.send(await trio.to_thread.run_sync(_fetch_ahead, od, win, after,
                                                        limiter=io))
            win = after


def _fetch_ahead(od: driveread.UnlockedDrive, exts: list[format.Extent],
                 after: list[format.Extent] | None) -> list[Fetched]:
    """``fetch`` a window, the next one (``after``) asked of the device first."""
    if after is not None:
        _read_ahead(od, after)
    return fetch(od, exts)


def _read_ahead(od: driveread.UnlockedDrive, exts: list[format.Extent]) -> None:
    """Start reading a window into the page cache (POSIX_FADV_WILLNEED), not waiting."""
    lo, hi = _span(exts)
    with contextlib.suppress(OSError, AttributeError):  # advice only
        os.posix_fadvise(od.drive.fd, od.cipher.segment_offset + lo, hi - lo,
                         os.POSIX_FADV_WILLNEED)


async def _unpack(rx: trio.MemoryReceiveChannel[list[Fetched]],
                  tx: trio.MemorySendChannel[Parts],
                  on_damage: Callable[[format.Extent, tuple[str, str]], None],
                  cpu: trio.CapacityLimiter, cipher: drives.DriveCipher) -> None:
    """Stage: one worker; each window's extents unpacked in a cpu thread, sent in batches."""
    async with rx, tx:
        async for fetched in rx:
            batch: list[tuple[format.Extent, bytes]] = []
            size = 0
            for e, got in await trio.to_thread.run_sync(unpack, fetched, cipher, limiter=cpu):
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
