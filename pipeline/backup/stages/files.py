"""Restore's state: one restore's files, where each chunk goes, and how far each file is.

Every other restore stage works on a ``Files``: the plan fills in where each chunk
belongs, the skeleton creates the temporary files, the fetch threads write chunks and
count them down (under ``Files.lock``), and the last chunk of a file settles it: its
metadata set (``beneath.AtFiles.set_meta_fd``), then renamed into place when every chunk is in,
removed otherwise, so that no file under its final name is ever short.  A file that is
another hard link of an earlier one (same device and inode, same content) is not
fetched: it becomes a ``Link``, made at the end.  What cannot be set (an owner, an
attribute, a device node as a user) is a warning naming it, through ``Files.warn``.
The names a restore leaves in TARGET live here too.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

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


@dataclass(slots=True, eq=False)
class Link:
    """A file that is another hard link of ``leader``: made by ``link()``, never written."""

    node: fmt.Node
    leader: RestoreFile
    tmp: bytes
    final: bytes


class Files:
    """One restore's files and their progress; the fetch threads share it.  ``warn`` is
    called on the Trio thread (the stages run in worker threads)."""

    def __init__(self, target: Path, ref: SnapshotRef, nodes: list[fmt.Node],
                 warn: Callable[[str], None] | None = None) -> None:
        self.target, self.nodes = target, nodes
        self.root = os.fsencode(target)
        self.token = ref.hex[:12]
        self.lock = threading.Lock()
        self.files_done = 0
        self.files: list[RestoreFile] = []
        self.links: list[Link] = []
        self.warnings: list[str] = []
        self._warn = warn
        self.is_root = os.geteuid() == 0
        # chunk id -> every place it goes: (file, offset, its number among the file's chunks)
        self.where: dict[bytes, list[tuple[RestoreFile, int, int]]] = defaultdict(list)
        inodes: dict[tuple[int, int], RestoreFile] = {}
        for i, n in enumerate(nodes):
            if n.type != "file":
                continue
            leader = inodes.get((n.dev, n.inode)) if n.links > 1 else None
            if leader is not None and leader.node.content == n.content:
                self.links.append(Link(n, leader, self.temp(n, i), fs_path(self.root, n.path)))
                continue
            chunks = sum(1 for cid, _ in n.content if cid is not None)
            f = RestoreFile(n, self.temp(n, i), fs_path(self.root, n.path), chunks, chunks,
                            len(n.content) == 1 and chunks == 1)
            self.files.append(f)
            if n.links > 1:
                inodes.setdefault((n.dev, n.inode), f)

    def warn(self, message: str) -> None:
        """A warning from any thread: kept, and passed to the caller's ``warn``."""
        with self.lock:
            self.warnings.append(message)
        if self._warn is None:
            return
        try:
            trio.from_thread.run_sync(self._warn, message)
        except RuntimeError:                 # not in a Trio worker thread: call it here
            self._warn(message)

    def _unset(self, exc: OSError, message: str) -> None:
        if is_no_space(exc):
            raise exc
        self.warn(message)

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
        """Into place when every chunk is in, else removed: never a short file by name.
        Restore's is ``beneath.AtFiles``'s, through the file's directory's fd."""
        raise NotImplementedError

    def failed(self) -> list[FailedFile]:
        """The files that could not be restored, in path order."""
        out = [FailedFile(f.node.path, f.first[0], f.chunks, f.first[1], f.failures - 1)
               for f in self.files if f.first is not None]
        out += [FailedFile(ln.node.path, ln.leader.first[0], ln.leader.chunks,
                           ln.leader.first[1], ln.leader.failures - 1)
                for ln in self.links if ln.leader.first is not None]
        return sorted(out, key=lambda x: fmt.path_key(x.path))


def owner(n: fmt.Node) -> tuple[int, int]:
    """(uid, gid) to restore: by name where this machine has the name (tar's and rsync's
    rule), else the recorded number."""
    assert n.uid is not None and n.gid is not None
    uid = _uid(n.user) if n.user else None
    gid = _gid(n.group) if n.group else None
    return (n.uid if uid is None else uid), (n.gid if gid is None else gid)


@functools.lru_cache(maxsize=4096)
def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, UnicodeEncodeError, ValueError):
        return None
