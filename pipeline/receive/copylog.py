"""The copy log: one JSON line per blob (what happened to it and why), then totals.

Flushed at least every FLUSH_EVERY seconds and at every line that is not a blob's,
so it survives a failure part-way (a flush per line was a write call for each of
15,000 small files); a full log directory is NoSpace naming it, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipeline.errors import NoSpace, is_no_space

FLUSH_EVERY = 0.25  # seconds: the most of the copy log's blob lines a kill -9 can lose


class CopyLog:
    """One JSON object per blob, then totals.  Statuses: ok; unvouched (written and every
    extent checked, but read from a drive that cannot vouch it is the newest copy: no
    intact closing index); corrupt; missing; skipped (with the reason)."""

    def __init__(self, stream: IO[str], drive: str) -> None:
        self.stream, self.drive = stream, drive
        self.totals = {"ok": 0, "unvouched": 0, "corrupt": 0, "missing": 0, "skipped": 0,
                       "bytes": 0}
        self.lines: list[str] = []
        self._flushed = time.monotonic()

    def write(self, obj: dict[str, Any]) -> None:
        line = json.dumps({"t": round(time.time(), 3), **obj}, ensure_ascii=False)
        self.lines.append(line)
        try:
            self.stream.write(line + "\n")
            now = time.monotonic()
            if obj.get("type") != "blob" or now - self._flushed >= FLUSH_EVERY:
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



def log_path(log_dir: Path, session_id: str, seq: int) -> Path:
    return log_dir / f"copylog-{session_id}-drive{seq:02d}.jsonl"
