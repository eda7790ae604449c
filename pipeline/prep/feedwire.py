"""The feeder's wire protocol: what prep and its feeder process (``feed``) say to each other.

Sans-I/O and free of trio, for both sides.  The messages are defined here, not in
``feed`` (which runs as ``__main__``), so that each side pickles and unpickles them
under one module name.

Protocol (prep is the only peer; both sides are this version of the code):

- stdin: one pickled ``Plan``, then EOF.
- stdout: frames ``<u32 length><pickle>``, one ``Message`` each, in walk order:

  ``Small(rows, read_s, pack_s)``
      up to SMALL_BATCH whole small files, read and packed; a row is a plain tuple
      (``SmallRow``: pickling a dataclass a file would cost more than the file's
      other work), ``codec`` None for an empty file.  ``*_s``: busy seconds, for
      prep's profile.
  ``Large(job)``
      a file prep reads itself: larger than one extent, or partly committed.
  ``Supersede(file_id)``
      resume: that file changed in staging; prep marks it stale before
      anything that follows is committed.
  ``AlreadyCommitted(files, size)``
      resume: files wholly on the drives already.
  ``Skipped(path, reason)`` / ``Changed(path, message)``
      not seeded: special files and names that cannot be blob names (``path`` may be
      surrogate-escaped); files that changed while read (left for --resume).
  ``InputError(message)``
      bad input (an unreadable directory): prep stops with it.
  ``End()``
      the walk is complete.

How the feeder bounds its frames and when it ends: ``pipeline.prep.feed``.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass

from pipeline.drive.attrs import BlobAttrs
from pipeline.prep.datasetio import Source
from pipeline.prep.session import FileJob, Planner

__all__ = ["AlreadyCommitted", "Changed", "End", "FrameReader", "InputError", "Large",
           "Message", "Plan", "Skipped", "Small", "SmallRow", "Supersede", "encode_frame"]

_LEN = struct.Struct("<I")
MAX_FRAME = 64 << 20  # far above any batch: a longer frame means a broken stream
PIPE_SIZE = 1 << 20  # fewer wake-ups than the default 64 KiB pipe


@dataclass
class Plan:
    """What the feeder needs from prep: where to walk, how to pack, what is committed."""

    root: str
    level: int
    planner: Planner
    sources: list[Source] | None = None  # a dataset's rows (root is then "/"), or one root


# --------------------------------------------------------------------------- messages

SmallRow = tuple[int, str, str, int, int, int, int | None, bytes, bytes, BlobAttrs | None]
"""``(file_id, path, blob, size, mtime_ns, mode, codec, xxh3, stored, attrs)`` of one small
file (a dataset row's files share one ``attrs``: pickle sends it once a frame)."""


@dataclass(frozen=True, slots=True)
class Small:
    """Whole small files, read and packed, and the busy seconds that took."""

    rows: list[SmallRow]
    read_s: float
    pack_s: float


@dataclass(frozen=True, slots=True)
class Large:
    """A file for prep's readers: more than one extent, or partly committed."""

    job: FileJob


@dataclass(frozen=True, slots=True)
class Supersede:
    """Resume: ``file_id`` changed in staging; mark it stale before anything after commits."""

    file_id: int


@dataclass(frozen=True, slots=True)
class AlreadyCommitted:
    """Resume: this many files, of this many bytes, are wholly on the drives already."""

    files: int
    size: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A staging entry not seeded (special file, name no blob can have)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Changed:
    """A file that changed while read: left for ``--resume``."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class InputError:
    """Bad input (an unreadable directory): prep stops with ``message``."""

    message: str


@dataclass(frozen=True, slots=True)
class End:
    """The walk is complete."""


Message = Small | Large | Supersede | AlreadyCommitted | Skipped | Changed | InputError | End


# --------------------------------------------------------------------------- frames (sans-I/O)


def encode_frame(message: Message) -> bytes:
    """One frame: the pickled message behind its length."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Bytes in, messages out: ``feed`` what arrives, ``eof`` at the end."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
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
