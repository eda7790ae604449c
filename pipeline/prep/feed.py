"""The feeder: prep's walk, plan and small-file reads, in a process of their own.

With tens of thousands of small files, prep is bound by Python, not by disks
or zstd: some 100 us of interpreter work a file, all under one GIL, so the
second core idles.  The feeder takes the part of that work that needs no
drive (walk, plan, read, compress, hash) to a second process, and prep keeps
placing, encrypting, writing and journaling.  ``python -m
pipeline.prep.feed``; it imports neither trio nor numpy, to start fast and
stay small.

The messages and frames are ``feedwire``'s.  A frame holds at most SMALL_BYTES
of file data plus records, so memory stays bounded on both sides: when prep stops
reading, the pipe fills and the feeder waits.  The feeder ignores SIGINT (prep
decides what Ctrl-C means) and ends at its next write when prep is gone (EPIPE);
a resume walk over committed files writes an ``AlreadyCommitted`` every
COMMITTED_EVERY files, so it too notices.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable

from pipeline.drive import codec
from pipeline.errors import BadInput
from pipeline.prep import datasetio, read, scan
from pipeline.prep.feedwire import (
    PIPE_SIZE,
    AlreadyCommitted,
    Changed,
    End,
    InputError,
    Large,
    Message,
    Plan,
    Skipped,
    Small,
    SmallRow,
    Supersede,
    encode_frame,
)
from pipeline.prep.session import FileJob

__all__ = ["feed", "main"]

COMMITTED_EVERY = 4096  # files skipped on resume between two messages


# --------------------------------------------------------------------------- the walk


def _read_batch(batch: read.Prefetch, level: int) -> tuple[Small, list[Changed]]:
    """Read and pack whole small files: the ``Small`` message, and the files that changed."""
    jobs = batch.jobs
    t0 = time.perf_counter()
    raw = batch.read()
    t1 = time.perf_counter()
    packed = iter(codec.pack_many([got for got in raw if isinstance(got, bytes)], level))
    rows: list[SmallRow] = []
    changed: list[Changed] = []
    for job, got in zip(jobs, raw, strict=True):
        e = job.entry
        if isinstance(got, read.FileChanged):
            changed.append(Changed(e.path, str(got)))
            continue
        if not e.size:
            rows.append((e.file_id, e.path, e.blob, 0, e.mtime_ns, e.mode, None, b"", b"",
                         e.attrs))
            continue
        p = codec.zero(e.size) if got is None else next(packed)
        rows.append((e.file_id, e.path, e.blob, e.size, e.mtime_ns, e.mode, int(p.codec),
                     p.xxh3, p.stored, e.attrs))
    return Small(rows, t1 - t0, time.perf_counter() - t1), changed


class _Batcher:
    """Small files gathered into batches, one batch read ahead of the one being sent.

    A full batch is opened (its disk reads start) before the one before it is
    read, packed and sent; resume's count of committed files goes out first.
    """

    def __init__(self, level: int, send: Callable[[Message], None]) -> None:
        self.level, self.send = level, send
        self.small: list[FileJob] = []
        self.small_bytes = 0
        self.committed_files = self.committed_bytes = 0
        self.ahead: read.Prefetch | None = None  # opened, not yet read

    def add(self, job: FileJob) -> None:
        self.small.append(job)
        self.small_bytes += job.entry.size
        if len(self.small) >= read.SMALL_BATCH or self.small_bytes >= read.SMALL_BYTES:
            self.flush(drain=False)

    def committed(self, size: int) -> None:
        self.committed_files += 1
        self.committed_bytes += size
        if self.committed_files >= COMMITTED_EVERY:  # progress, and a write that fails
            self._send_committed()  # if prep is gone

    def _send_committed(self) -> None:
        if self.committed_files:
            self.send(AlreadyCommitted(self.committed_files, self.committed_bytes))
            self.committed_files = self.committed_bytes = 0

    def _send_batch(self, batch: read.Prefetch) -> None:
        small, changed = _read_batch(batch, self.level)
        for message in changed:
            self.send(message)
        self.send(small)

    def flush(self, *, drain: bool) -> None:
        """Open the gathered batch and send the one ahead (both, with ``drain``)."""
        self._send_committed()
        opened = None
        if self.small:
            opened, self.small, self.small_bytes = read.Prefetch(self.small), [], 0
        done, self.ahead = self.ahead, opened
        if done is not None:
            self._send_batch(done)
        if drain and self.ahead is not None:
            done, self.ahead = self.ahead, None
            self._send_batch(done)

    def close(self) -> None:
        """Stopped early (bad input, prep gone): close the files of the batch ahead."""
        if self.ahead is not None:
            self.ahead.close()


def feed(plan: Plan, send: Callable[[Message], None]) -> None:
    """Walk, plan and read, sending each message through ``send``; BadInput stops it."""
    planner = plan.planner
    batcher = _Batcher(plan.level, send)
    def skipped(path: str, reason: str) -> None:
        send(Skipped(path, reason))

    if plan.sources is None:
        walk = scan.scan(plan.root, skipped, planner.vdir, *planner.walk_range())
        files = ((src, None, None) for src in walk)
    else:
        files = datasetio.walk(plan.sources, skipped)
    try:
        for src, blob, attrs in files:
            job, superseded = (planner.plan(src) if blob is None  # (a cluster's shard planner
                               else planner.plan(src, blob, attrs))  # takes no dataset)
            if superseded is not None:  # ahead of the new copy, which is still to be read
                send(Supersede(superseded))
            if job is None:
                batcher.committed(src.size)
            elif read.is_small(job.entry.size, job.skip):
                batcher.add(job)
            else:
                batcher.flush(drain=False)  # the batch ahead stays ahead: prep reads this one
                send(Large(job))
        batcher.flush(drain=True)
        send(End())
    finally:
        batcher.close()


# --------------------------------------------------------------------------- the process


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    # A terminal's Ctrl-C (or hangup, or a service manager's SIGTERM) reaches the whole
    # process group; prep decides what it means (cli makes all three a Ctrl-C).
    # When prep dies, our next write fails with EPIPE and ends us (see ``feed``).  Not
    # PR_SET_PDEATHSIG: its "parent" is the thread that forked us, and Trio forks from a
    # worker thread, which exits after idling 10 s - taking us with it mid-run.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    out = sys.stdout.fileno()
    with contextlib.suppress(OSError):  # not a pipe, or above the system's limit: the
        fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # default size works too
    try:
        plan: Plan = pickle.load(sys.stdin.buffer)
    except EOFError:  # prep died (kill -9) before it sent the plan: nobody to tell
        return 1

    def send(message: Message) -> None:
        _write_all(out, encode_frame(message))

    try:
        try:
            feed(plan, send)
        except BadInput as exc:
            send(InputError(str(exc)))
            return exc.exit_code
    except BrokenPipeError:  # prep is gone; nobody to tell
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
