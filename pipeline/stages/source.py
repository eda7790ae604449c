"""Source stage: staging -> small files packed, large files as raw extents.

::

    feeder process (walk, plan, read + pack small files) --frames--> here
        small files: one bundle a frame ------------------------------> packed
        large files: -> readers (x readers, threads) -> raw extents --> pack stage

The feeder (``pipeline.stages.feed``) does the per-file work on another core;
this side turns its frames into the pipeline's objects and reads the large
files, whose bytes would only cross the pipe for nothing.  Cancelling (the
first Ctrl-C) kills the feeder and ends the readers; everything already sent
on is still written and committed.
"""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import trio

from pipeline import format
from pipeline.errors import BadInput
from pipeline.progress import Stats
from pipeline.session import FileJob, Session
from pipeline.stages import feed, read
from pipeline.stages.pack import Bundle, PackedExtent, RawExtent

__all__ = ["run"]

_PER_CALL = 4  # extents of a large file read per worker-thread call
LARGE_AHEAD = 1024  # large files listed ahead of the readers, so that the feeder goes on to
# the small files meanwhile: a listed file costs a few hundred bytes, not its data
_CODECS = {c.value: c for c in format.Codec}

OnEvent = Callable[[str, str], None]


class FeederFailed(RuntimeError):
    """The feeder process ended without finishing its walk (a bug: its traceback is above)."""


async def run(srcdir: str, level: int, readers: int, session: Session,
              raw_tx: trio.MemorySendChannel[RawExtent], packed_tx: trio.MemorySendChannel[Bundle],
              io: trio.CapacityLimiter, stats: Stats, on_skip: OnEvent,
              on_changed: OnEvent) -> None:
    """Run the feeder over ``srcdir`` and the large-file readers until both are done."""
    jobs_tx, jobs_rx = trio.open_memory_channel[FileJob](LARGE_AHEAD)
    async with raw_tx, packed_tx, trio.open_nursery() as nursery:
        async with jobs_rx:
            for _ in range(readers):
                nursery.start_soon(_read_large_files, jobs_rx.clone(), raw_tx.clone(), io,
                                   stats, on_changed)
        plan = feed.Plan(srcdir, level, session.planner)
        await _feed(plan, session, jobs_tx, packed_tx, stats, on_skip, on_changed)


async def _feed(plan: feed.Plan, session: Session, jobs_tx: trio.MemorySendChannel[FileJob],
                packed_tx: trio.MemorySendChannel[Bundle], stats: Stats, on_skip: OnEvent,
                on_changed: OnEvent) -> None:
    async with jobs_tx, trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, [sys.executable, "-m", "pipeline.stages.feed"],
            stdin=pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL),
            stdout=subprocess.PIPE, check=False))
        assert proc.stdout is not None
        frames = feed.FrameReader()
        last: tuple[Any, ...] = ()
        while last[:1] not in (("end",), ("error",)) and (
                data := await proc.stdout.receive_some(feed.PIPE_SIZE)):
            for message in frames.feed(data):
                last = message
                await _handle(message, session, jobs_tx, packed_tx, stats, on_skip, on_changed)
        frames.eof()
    if last[:1] == ("error",):  # raised here, not in the nursery: a plain BadInput
        raise BadInput(last[1])
    if last != ("end",):
        raise FeederFailed(f"the feeder process (walk and small-file reads) ended early "
                           f"with exit code {proc.returncode}")


async def _handle(message: tuple[Any, ...], session: Session,
                  jobs_tx: trio.MemorySendChannel[FileJob],
                  packed_tx: trio.MemorySendChannel[Bundle], stats: Stats, on_skip: OnEvent,
                  on_changed: OnEvent) -> None:
    """Act on one feeder message."""
    kind = message[0]
    if kind == "small":
        _, rows, read_s, pack_s = message
        stats.add_busy("read", read_s)
        stats.add_busy("pack", pack_s)
        await packed_tx.send(list(_bundle(rows, stats)))
    elif kind == "large":
        for fid, path, blob, size, mtime_ns, mode, abspath, skip in message[1]:
            entry = format.FileEntry(fid, path, blob, size, mtime_ns, mode)
            await jobs_tx.send(FileJob(entry, abspath, frozenset(skip)))
    elif kind == "supersede":
        await trio.to_thread.run_sync(session.supersede, message[1])
    elif kind == "committed":
        stats.files_done += message[1]
        stats.skipped_bytes += message[2]
    elif kind == "skip":
        on_skip(message[1], message[2])
    elif kind == "changed":
        on_changed(message[1], message[2])
    elif kind not in ("end", "error"):
        raise FeederFailed(f"unknown feeder message {kind!r}")


def _bundle(rows: list[tuple[Any, ...]], stats: Stats) -> Iterator[PackedExtent]:
    zero = format.Codec.ZERO
    for fid, path, blob, size, mtime_ns, mode, codec, xxh3, stored in rows:
        entry = format.FileEntry(fid, path, blob, size, mtime_ns, mode)
        stats.files_done += 1
        if codec is None:
            yield PackedExtent(entry, None, b"")
            continue
        c = _CODECS[codec]
        stats.bytes_read += size
        stats.extents += 1
        if c is zero:
            stats.zero_bytes += size
        yield PackedExtent(entry, format.Extent(fid, 0, size, c, len(stored), xxh3), stored)


# --------------------------------------------------------------------------- large files


def _take(gen: Iterator[tuple[int, int, bytes | None]], n: int, stats: Stats
          ) -> list[tuple[int, int, bytes | None]]:
    with stats.timed("read"):
        out = []
        for item in gen:
            out.append(item)
            if len(out) >= n:
                break
        return out


async def _read_large_files(rx: trio.MemoryReceiveChannel[FileJob],
                            tx: trio.MemorySendChannel[RawExtent], io: trio.CapacityLimiter,
                            stats: Stats, on_changed: OnEvent) -> None:
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
    stats.skipped_bytes += sum(min(read.EXTENT_SIZE, entry.size - o) for o in job.skip)
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
