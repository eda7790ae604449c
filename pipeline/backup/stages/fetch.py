"""Restore's fetch stage: ranges of packs read, each chunk checked and written in place.

Several tasks (one per thread) take ranges from one channel; each range is one
storage read and one worker-thread call, which opens and checks every chunk in it
and ``pwrite``s it to every place it belongs.  A chunk that cannot be read or
checked fails only the files that hold it (``Files.lost``); the restore carries on.
"""

from __future__ import annotations

import os

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.repo import Repository
from pipeline.backup.stages.files import CREATE, WRITE, Files, RestoreFile, space
from pipeline.backup.stages.plan import Range
from pipeline.progress import Stats


async def run(rx: trio.MemoryReceiveChannel[Range], repo: Repository, files: Files,
              cpu: trio.CapacityLimiter, stats: Stats) -> None:
    """One fetch task: every range from ``rx`` in a worker thread; closes ``rx``."""
    async with rx:
        async for rng in rx:
            # not `stats.bytes_read += await ...`: that reads the counter before the await
            # and stores after it, losing what the other fetch tasks added meanwhile
            written = await trio.to_thread.run_sync(fetch, repo, files, rng, limiter=cpu)
            stats.bytes_read += written
            stats.extents += len(rng.entries)
            stats.files_done = files.files_done


def fetch(repo: Repository, files: Files, rng: Range) -> int:
    """Read one range of a pack, check each chunk, write it to every place it belongs;
    returns the bytes written.  A chunk that cannot be read or checked fails the files
    that hold it."""
    name = fmt.pack_name(rng.pack)
    try:
        data = repo.backend.read(name, rng.start, rng.end - rng.start)
    except CorruptRepository as exc:          # the pack is missing
        for e in rng.entries:
            files.lost(e.id, str(exc.args[0]))
        return 0
    view = memoryview(data)
    written = 0
    for e in rng.entries:
        at = e.offset - rng.start
        if at + e.length > len(data):
            files.lost(e.id, f"{name} is shorter than its index says (truncated)")
            continue
        try:
            raw = repo.crypto.open_chunk(e.kind, e.id, view[at:at + e.length], e.raw_len)
        except CorruptRepository as exc:
            files.lost(e.id, f"{exc.args[0]} in {name}")
            continue
        for f, off, _n in files.where[e.id]:
            if f.first is None:               # a file already lost is not written to
                with space(files.target, f.final):
                    _write(f, raw, off)
                written += len(raw)
            files.step(f)
    return written


def _write(f: RestoreFile, raw: bytes, off: int) -> None:
    fd = os.open(f.tmp, CREATE if f.whole else WRITE, 0o600)
    try:
        done = 0
        while done < len(raw):
            done += os.pwrite(fd, raw[done:], off + done)
    finally:                        # mode, owner and times: Files.settle, once it is whole
        os.close(fd)
