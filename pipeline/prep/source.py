"""Stage: the feeder's messages -> packed small files, and large files for the readers.

::

    feeder process (walk, plan, read + pack small files) --frames--> here
        small files: one bundle a frame ------------------------------> packed
        large files: one FileJob each --------------------------------> jobs (large.py)

The feeder (``pipeline.prep.feed``) does the per-file work on another core;
this side turns its messages (``feedwire``) into the pipeline's objects.  Large
files are read by ``large``, in prep: their bytes would only cross the pipe for
nothing.  Cancelling (the first Ctrl-C) kills the feeder; everything already
sent on is still written and committed.
"""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator

import trio

from pipeline.drive import format
from pipeline.errors import BadInput
from pipeline.prep import feedwire
from pipeline.prep.feedwire import (
    AlreadyCommitted,
    Changed,
    End,
    InputError,
    Large,
    Skipped,
    Small,
    SmallRow,
    Supersede,
)
from pipeline.prep.pack import Bundle, PackedExtent
from pipeline.prep.session import FileJob, Session
from pipeline.progress import Stats

__all__ = ["FeederFailed", "LARGE_AHEAD", "run"]

LARGE_AHEAD = 1024  # large files listed ahead of the readers, so that the feeder goes on to
# the small files meanwhile: a listed file costs a few hundred bytes, not its data
_CODECS = {c.value: c for c in format.Codec}

OnEvent = Callable[[str, str], None]


class FeederFailed(RuntimeError):
    """The feeder process ended without finishing its walk (a bug: its traceback is above)."""


async def run(plan: feedwire.Plan, session: Session, jobs_tx: trio.MemorySendChannel[FileJob],
              packed_tx: trio.MemorySendChannel[Bundle], journal_io: trio.CapacityLimiter,
              stats: Stats, on_skip: OnEvent, on_changed: OnEvent) -> None:
    """Run the feeder over ``plan`` and act on what it sends until its walk is complete.

    ``journal_io`` bounds the threads that mark superseded files in the journals.
    """
    async with jobs_tx, packed_tx, trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, [sys.executable, "-m", "pipeline.prep.feed"],
            stdin=pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL),
            stdout=subprocess.PIPE, check=False))
        assert proc.stdout is not None
        frames = feedwire.FrameReader()
        last: feedwire.Message | None = None
        while not isinstance(last, End | InputError) and (
                data := await proc.stdout.receive_some(feedwire.PIPE_SIZE)):
            for message in frames.feed(data):
                last = message
                await _handle(message, session, jobs_tx, packed_tx, journal_io, stats,
                              on_skip, on_changed)
        frames.eof()
    if isinstance(last, InputError):  # raised here, not in the nursery: a plain BadInput
        raise BadInput(last.message)
    if not isinstance(last, End):
        raise FeederFailed(f"the feeder process (walk and small-file reads) ended early "
                           f"with exit code {proc.returncode}")


async def _handle(message: feedwire.Message, session: Session,
                  jobs_tx: trio.MemorySendChannel[FileJob],
                  packed_tx: trio.MemorySendChannel[Bundle], journal_io: trio.CapacityLimiter,
                  stats: Stats, on_skip: OnEvent, on_changed: OnEvent) -> None:
    """Act on one feeder message."""
    match message:
        case Small(rows, read_s, pack_s):
            stats.add_busy("read", read_s)
            stats.add_busy("pack", pack_s)
            await packed_tx.send(list(_bundle(rows, stats)))
        case Large(job):
            await jobs_tx.send(job)
        case Supersede(file_id):
            await trio.to_thread.run_sync(session.supersede, file_id, limiter=journal_io)
        case AlreadyCommitted(files, size):
            stats.files_done += files
            stats.skipped_bytes += size
        case Skipped(path, reason):
            on_skip(path, reason)
        case Changed(path, text):
            on_changed(path, text)
        case End() | InputError():
            pass
        case _:
            raise FeederFailed(f"unknown feeder message {message!r}")


def _bundle(rows: list[SmallRow], stats: Stats) -> Iterator[PackedExtent]:
    zero = format.Codec.ZERO
    for fid, path, blob, size, mtime_ns, mode, codec, xxh3, stored, attrs in rows:
        entry = format.FileEntry(fid, path, blob, size, mtime_ns, mode, attrs)
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
