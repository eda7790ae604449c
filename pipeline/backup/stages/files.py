"""Restore's state: one restore's files, where each chunk goes, and how far each file is.

Every other restore stage works on a ``Files``: the plan fills in where each chunk
belongs, the skeleton creates the temporary files, the fetch threads write chunks and
count them down (under ``Files.lock``), and the last chunk of a file settles it: renamed
into place when every chunk is in, removed otherwise, so that no file under its final
name is ever short.  The names a restore leaves in TARGET live here too.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.backup import encoding as fmt
from pipeline.backup.errors import FailedFile
from pipeline.backup.repo import SnapshotRef
from pipeline.errors import NoSpace, is_no_space

MARKER = ".pipeline-restore-unfinished"
TEMP_PREFIX = ".pipeline-restore-"
TEMP_NAME = re.compile(rb"\.pipeline-restore-[0-9a-f]{12}-[0-9]+\Z")
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # a temporary file
WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC                         # one made before


def fs_path(root: bytes, path: str) -> bytes:
    """Where a snapshot path lands under TARGET (``root``)."""
    return root if path == fmt.ROOT else os.path.join(root, os.fsencode(path))


@contextlib.contextmanager
def space(target: Path, what: bytes | str | None = None) -> Iterator[None]:
    """A full filesystem as NoSpace (exit 9) naming the target's, not a traceback."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(target, os.fsdecode(what) if what else str(target)) from None
        raise


@dataclass(slots=True, eq=False)
class RestoreFile:
    """One file of the snapshot and its progress (mutable: the fetch threads count down)."""

    node: fmt.Node
    tmp: bytes
    final: bytes
    chunks: int                          # data chunks (holes are not chunks)
    left: int                            # chunks not yet written or given up
    whole: bool                          # one chunk, no holes: created when it arrives
    first: tuple[int, str] | None = None  # the first failed chunk (number, why)
    failures: int = 0
    done: bool = False                   # renamed into place, or given up and removed


class Files:
    """One restore's files and their progress; the fetch threads share it."""

    def __init__(self, target: Path, ref: SnapshotRef, nodes: list[fmt.Node]) -> None:
        self.target, self.nodes = target, nodes
        self.root = os.fsencode(target)
        self.token = ref.hex[:12]
        self.lock = threading.Lock()
        self.files_done = 0
        self.files: list[RestoreFile] = []
        # chunk id -> every place it goes: (file, offset, its number among the file's chunks)
        self.where: dict[bytes, list[tuple[RestoreFile, int, int]]] = defaultdict(list)
        for i, n in enumerate(nodes):
            if n.type == "file":
                chunks = sum(1 for cid, _ in n.content if cid is not None)
                self.files.append(RestoreFile(
                    n, self.temp(n, i), fs_path(self.root, n.path), chunks, chunks,
                    len(n.content) == 1 and chunks == 1))

    def temp(self, n: fmt.Node, i: int) -> bytes:
        """The temporary name of node ``i``, in its own directory."""
        parent = os.path.dirname(fs_path(self.root, n.path))
        return os.path.join(parent, f"{TEMP_PREFIX}{self.token}-{i}".encode())

    def lost(self, cid: bytes, why: str) -> None:
        """A chunk that cannot be read or checked: it fails every file that holds it."""
        for f, _off, n in self.where[cid]:
            with self.lock:
                if f.first is None or n < f.first[0]:
                    f.first = (n, why)
                f.failures += 1
            self.step(f)

    def step(self, f: RestoreFile) -> None:
        """One chunk of ``f`` written or given up; the last one settles the file."""
        with self.lock:
            f.left -= 1
            last = f.left == 0
        if last:
            with space(self.target, f.final):
                self.settle(f)

    def settle(self, f: RestoreFile) -> None:
        """Into place when every chunk is in, else removed: never a short file by name."""
        if f.first is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.tmp)
        else:
            if not f.whole:
                os.chmod(f.tmp, f.node.mode)
                os.utime(f.tmp, ns=(f.node.mtime_ns, f.node.mtime_ns))
            os.rename(f.tmp, f.final)
            with self.lock:
                self.files_done += 1
        f.done = True

    def abandon(self) -> None:
        """After a fatal error: remove the temporary files of the files not finished."""
        for f in self.files:
            if not f.done:
                with contextlib.suppress(OSError):
                    os.unlink(f.tmp)

    def failed(self) -> list[FailedFile]:
        """The files that could not be restored, in path order."""
        out = [FailedFile(f.node.path, f.first[0], f.chunks, f.first[1], f.failures - 1)
               for f in self.files if f.first is not None]
        return sorted(out, key=lambda x: fmt.path_key(x.path))
