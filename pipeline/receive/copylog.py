"""The copy log: one JSON line per blob (what happened to it and why), then totals.

Flushed at least every FLUSH_EVERY seconds and at every line that is not a blob's,
so it survives a failure part-way (a flush per line was a write call for each of
15,000 small files); a full log directory is NoSpace naming it, never a traceback.
The lines are not kept in memory (a line a file: 10 M small files would hold GBs);
whoever needs them reads the file back with :func:`read_lines` or :func:`read_bytes`
(or stores it with :func:`store_copy`, a part at a time), and a summary is in
:attr:`CopyLog.totals`, counted as the lines are written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipeline.errors import NoSpace, is_no_space
from pipeline.storage.base import CELL, BlobType, Storage, cells_of

# A JSON string as json.dumps(..., ensure_ascii=False) writes it (the C function it calls).
_string = json.encoder.encode_basestring
FLUSH_EVERY = 0.25  # seconds: the most of the copy log's blob lines a kill -9 can lose


class CopyLog:
    """One JSON object per blob, then totals.  Statuses: ok; unvouched (written and every
    extent checked, but read from a drive that cannot vouch it is the newest copy: no
    intact closing index); corrupt; missing; skipped (with the reason)."""

    def __init__(self, stream: IO[str], drive: str) -> None:
        self.stream, self.drive = stream, drive
        self.totals = {"ok": 0, "unvouched": 0, "corrupt": 0, "missing": 0, "skipped": 0,
                       "bytes": 0}
        name = getattr(stream, "name", None)
        self.path: Path | None = Path(name) if isinstance(name, str) else None
        self._flushed = time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        self._put(json.dumps({"t": round(time.time(), 3), **obj}, ensure_ascii=False),
                  obj.get("type") != "blob")

    def _put(self, line: str, flush: bool) -> None:
        try:
            self.stream.write(line + "\n")
            now = time.monotonic()
            if flush or now - self._flushed >= FLUSH_EVERY:
                self.stream.flush()
                self._flushed = now
        except OSError as exc:  # a full log directory is the user's to fix, named, not a bug
            if is_no_space(exc):
                name = getattr(self.stream, "name", "the copy log")
                raise NoSpace(name, f"copy log {name}") from None
            raise

    def blob(self, status: str, blob: str, reason: str = "", size: int = 0, **extra: Any) -> None:
        self.totals[status] += 1
        if status in ("ok", "unvouched"):
            self.totals["bytes"] += size
        fid = extra.get("file_id")
        if (len(extra) == 1 and type(fid) is int and type(size) is int
                and type(blob) is str and type(reason) is str and type(status) is str):
            # The line of most files, formatted as json.dumps writes it: a dict through the
            # encoder was ~5 us a line, a fifth of that formatted (30,000 files a drive).
            self._put(f'{{"t": {round(time.time(), 3)!r}, "type": "blob", "status": '
                      f'{_string(status)}, "blob": {_string(blob)}, "size": {size}, '
                      f'"reason": {_string(reason)}, "file_id": {fid}}}', False)
            return
        self.write({"type": "blob", "status": status, "blob": blob, "size": size,
                    "reason": reason, **extra})

    def close(self, result: str, message: str = "") -> None:
        self.write({"type": "totals", "drive": self.drive, "result": result,
                    "message": message, **self.totals})


@contextlib.contextmanager
def open_copy_log(path: Path) -> Iterator[IO[str]]:
    """The copy log at ``path``, open for writing; a full filesystem is NoSpace naming it.

    A line that did not fit stays in the file object's buffer and fails again when it
    is closed: on the way out with an error already, that second failure is dropped,
    so it does not hide what stopped the import.
    """
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(path, f"copy log {path}") from None
        raise
    try:
        yield stream
    except BaseException:
        with contextlib.suppress(OSError):
            stream.close()
        raise
    try:
        stream.close()
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(path, f"copy log {path}") from None
        raise

def read_lines(path: Path) -> Iterator[str]:
    """A closed copy log's lines, one at a time (never all in memory at once)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def read_bytes(path: Path, limit: int | None = None) -> bytes | None:
    """A closed copy log's bytes, for a store that takes a whole blob; None when it is
    over ``limit`` bytes (read only after its size is known)."""
    with open(path, "rb") as f:
        if limit is not None and os.fstat(f.fileno()).st_size > limit:
            return None
        return f.read()


def store_copy(store: Storage, container: str, blob: str, path: Path) -> None:
    """Store a closed copy log as a block blob, a ``CELL`` (1 MiB) part at a time, then
    commit it (replacing an earlier copy): never whole in memory (~136 MB at 1,000,000
    tiny files).  A log that changes size while read is an OSError, as a failed read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for offset in cells_of(size):
            part = f.read(min(CELL, size - offset))
            if len(part) != min(CELL, size - offset):
                raise OSError(f"{path} shrank while it was stored")
            store.write_part(container, blob, BlobType.BLOCK, size, offset, part)
    store.commit(container, blob, BlobType.BLOCK, size, [])


def log_path(log_dir: Path, session_id: str, seq: int) -> Path:
    return log_dir / f"copylog-{session_id}-drive{seq:02d}.jsonl"
