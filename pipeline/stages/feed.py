"""The feeder: prep's walk, plan and small-file reads, in a process of their own.

With tens of thousands of small files, prep is bound by Python, not by disks
or zstd: some 100 us of interpreter work a file, all under one GIL, so the
second core idles.  The feeder takes the part of that work that needs no
drive (walk, plan, read, compress, hash) to a second process, and prep keeps
placing, encrypting, writing and journaling.  ``python -m
pipeline.stages.feed``; it imports neither trio nor numpy, to start fast and
stay small.

Protocol (prep is the only peer; both sides are this version of the code):

- stdin: one pickled ``Plan``, then EOF.
- stdout: frames ``<u32 length><pickle>``, one message each, in walk order:

  ``("small", rows, read_s, pack_s)``
      up to SMALL_BATCH whole small files, read and packed; a row is
      ``(file_id, path, blob, size, mtime_ns, mode, codec, xxh3, stored)``,
      ``codec`` None for an empty file.  ``*_s``: busy seconds, for prep's profile.
  ``("large", [(file_id, path, blob, size, mtime_ns, mode, abspath, skip), ...])``
      files prep reads itself: larger than one extent, or partly committed.
  ``("supersede", file_id)``
      resume: that file changed in staging; prep marks it stale before
      anything that follows is committed.
  ``("committed", files, size)``
      resume: files wholly on the drives already.
  ``("skip", path, reason)`` / ``("changed", path, message)``
      not seeded: special files and names that cannot be blob names (``path`` may be
      surrogate-escaped); files that changed while read (left for --resume).
  ``("error", message)``
      bad input (an unreadable directory): prep stops with it.
  ``("end",)``
      the walk is complete.

A frame holds at most SMALL_BYTES of file data plus records, so memory stays
bounded on both sides: when prep stops reading, the pipe fills and the feeder
waits.  The feeder ignores SIGINT (prep decides what Ctrl-C means) and ends
at its next write when prep is gone (EPIPE); a resume walk over committed files
writes a ``committed`` message every COMMITTED_EVERY files, so it too notices.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import codec, scan
from pipeline.errors import BadInput
from pipeline.session import FileJob, Planner
from pipeline.stages import read

__all__ = ["FrameReader", "Plan", "encode_frame", "feed", "main"]

_LEN = struct.Struct("<I")
MAX_FRAME = 64 << 20  # far above any batch: a longer frame means a broken stream
PIPE_SIZE = 1 << 20  # fewer wake-ups than the default 64 KiB pipe
COMMITTED_EVERY = 4096  # files skipped on resume between two messages


@dataclass
class Plan:
    """What the feeder needs from prep: where to walk, how to pack, what is committed."""

    root: str
    level: int
    planner: Planner


# --------------------------------------------------------------------------- frames (sans-I/O)


def encode_frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Bytes in, messages out: ``feed`` what arrives, ``eof`` at the end."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= _LEN.size:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise ValueError(f"feeder frame of {n} bytes: the stream is broken")
            if len(buf) - pos - _LEN.size < n:
                break
            start = pos + _LEN.size
            out.append(pickle.loads(memoryview(buf)[start:start + n]))
            pos = start + n
        del buf[:pos]
        return out

    def eof(self) -> None:
        if self._buf:
            raise ValueError(f"feeder stream ends inside a frame ({len(self._buf)} bytes left)")


# --------------------------------------------------------------------------- the walk


Row = tuple[Any, ...]


def _read_batch(batch: read.Prefetch, level: int
                ) -> tuple[list[Row], list[tuple[str, str]], float, float]:
    """Read and pack whole small files: (rows, changed, read seconds, pack seconds)."""
    jobs = batch.jobs
    t0 = time.perf_counter()
    raw = batch.read()
    t1 = time.perf_counter()
    packed = iter(codec.pack_many([got for got in raw if isinstance(got, bytes)], level))
    rows: list[Row] = []
    changed: list[tuple[str, str]] = []
    for job, got in zip(jobs, raw, strict=True):
        e = job.entry
        if isinstance(got, read.FileChanged):
            changed.append((e.path, str(got)))
            continue
        if not e.size:
            rows.append((e.file_id, e.path, e.blob, 0, e.mtime_ns, e.mode, None, b"", b""))
            continue
        p = codec.zero(e.size) if got is None else next(packed)
        rows.append((e.file_id, e.path, e.blob, e.size, e.mtime_ns, e.mode, int(p.codec),
                     p.xxh3, p.stored))
    return rows, changed, t1 - t0, time.perf_counter() - t1


def feed(plan: Plan, send: Callable[[tuple[Any, ...]], None]) -> None:
    """Walk, plan and read, sending each message through ``send``; BadInput stops it.

    One batch of small files is read ahead: a full batch is opened (its disk reads
    start) before the one before it is read, packed and sent.
    """
    planner = plan.planner
    small: list[FileJob] = []
    small_bytes = 0
    committed_files = committed_bytes = 0
    ahead: read.Prefetch | None = None  # opened, not yet read

    def send_batch(batch: read.Prefetch) -> None:
        rows, changed, read_s, pack_s = _read_batch(batch, plan.level)
        for path, message in changed:
            send(("changed", path, message))
        send(("small", rows, read_s, pack_s))

    def flush(*, drain: bool) -> None:
        nonlocal small, small_bytes, committed_files, committed_bytes, ahead
        if committed_files:
            send(("committed", committed_files, committed_bytes))
            committed_files = committed_bytes = 0
        opened = None
        if small:
            opened, small, small_bytes = read.Prefetch(small), [], 0
        done, ahead = ahead, opened
        if done is not None:
            send_batch(done)
        if drain and ahead is not None:
            done, ahead = ahead, None
            send_batch(done)

    try:
        for src in scan.scan(plan.root, lambda path, reason: send(("skip", path, reason)),
                             planner.vdir):
            job, superseded = planner.plan(src)
            if superseded is not None:  # ahead of the new copy, which is still to be read
                send(("supersede", superseded))
            if job is None:
                committed_files += 1
                committed_bytes += src.size
                if committed_files >= COMMITTED_EVERY:  # progress, and a write that fails
                    send(("committed", committed_files, committed_bytes))  # if prep is gone
                    committed_files = committed_bytes = 0
                continue
            e = job.entry
            if read.is_small(e.size, job.skip):
                small.append(job)
                small_bytes += e.size
                if len(small) >= read.SMALL_BATCH or small_bytes >= read.SMALL_BYTES:
                    flush(drain=False)
                continue
            flush(drain=False)  # the batch ahead stays ahead: a large file is prep's to read
            send(("large", [(e.file_id, e.path, e.blob, e.size, e.mtime_ns, e.mode,
                             job.abspath, tuple(sorted(job.skip)))]))
        flush(drain=True)
        send(("end",))
    finally:
        if ahead is not None:  # stopped early (bad input, prep gone): close its files
            ahead.close()


# --------------------------------------------------------------------------- the process


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    # A terminal's Ctrl-C reaches the whole process group; prep decides what it means.
    # When prep dies, our next write fails with EPIPE and ends us (see ``feed``).  Not
    # PR_SET_PDEATHSIG: its "parent" is the thread that forked us, and Trio forks from a
    # worker thread, which exits after idling 10 s - taking us with it mid-run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.fileno()
    with contextlib.suppress(OSError):  # not a pipe, or above the system's limit: the
        fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # default size works too
    plan: Plan = pickle.load(sys.stdin.buffer)

    def send(message: tuple[Any, ...]) -> None:
        _write_all(out, encode_frame(message))

    try:
        try:
            feed(plan, send)
        except BadInput as exc:
            send(("error", str(exc)))
            return exc.exit_code
    except BrokenPipeError:  # prep is gone; nobody to tell
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
