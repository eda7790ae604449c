"""Where a repository's files live: a local directory (the staging location) or a
``Storage`` container (plus an optional name prefix).

A backup only ever adds files under new names (content-addressed or
time-stamped) and never rewrites one, so backends need no locking: ``put`` is
atomic (a file appears whole or not at all) and idempotent.  Only ``forget`` and
``prune`` delete, under the repository's exclusive lock (``lock.py``); a lock file
is the one file rewritten in place (its refresh).  Every call blocks
and is thread-safe; the Trio stages call them in worker threads.  ``bytes_sent``
counts every byte handed to the storage layer, which is what an online
backup sends over the network.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from typing import Protocol

from pipeline import atomic
from pipeline.backup.errors import CorruptRepository
from pipeline.errors import BadInput, NoSpace, is_no_space
from pipeline.storage.base import CELL, BlobTooLarge, BlobType, Storage

# A repository's files (keys, config, packs, snapshots) are its owner's only, as restic's.
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_FILE = 1 << 30      # the largest file ``get`` reads whole (a pack is 16 MiB; as open_file)
LARGE_READ = 64 << 20   # a range read longer than this (restore's are <= 16 MiB + a chunk)
BUFFER_STEP = 4 << 20   # DirBackend's pack buffers grow in steps of this


def _bounded(name: str, offset: int, length: int, size: int) -> int:
    """A read's length cut at the file's end: an index entry's length is the
    repository's word, and the buffer is allocated before the read (a damaged entry of
    4 GiB was a MemoryError); the caller sees the short read and names the chunk."""
    if size > MAX_FILE:
        raise CorruptRepository(f"{name} is {size} bytes, more than any file of a repository "
                                f"({MAX_FILE})")
    return max(0, min(length, size - offset))


def _whole(data: bytes | Sequence[bytes]) -> bool:
    return isinstance(data, (bytes, bytearray, memoryview))


class Backend(Protocol):
    name: str
    bytes_sent: int
    files_sent: int

    def list(self, prefix: str) -> builtins.list[str]:
        """Names starting with ``prefix`` ("data/", "index/", ...), sorted."""

    def get(self, name: str) -> bytes | None:
        """A whole file, None if absent."""

    def read(self, name: str, offset: int, length: int) -> bytes:
        """A range of a file; CorruptRepository if the file is missing."""

    def put(self, name: str, data: bytes | Sequence[bytes]) -> None:
        """Store a whole new file atomically (a lock file: replace it); ``data`` whole, or
        as parts in order (a pack: never joined by the caller)."""

    def delete(self, name: str) -> None:
        """Remove a file (prune, forget, a released lock); absent already is fine."""

    def size(self, name: str) -> int | None:
        """A file's size, None if absent (check compares a pack's with its index)."""


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.files_sent = 0

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
            self.files_sent += 1


class DirBackend(_Counter):
    """Files under ``root``; temporary files in a sibling ``.NAME.partial`` directory, so
    a crash never leaves a half file inside the repository (prep copies the repository
    directory as it is).

    A file given as parts (a pack) is laid into a page-aligned buffer, one of a few kept
    for reuse, and written from there past the page cache (``atomic.replace_file``'s
    ``direct``): one copy into pages already mapped, instead of a join into fresh memory
    and another copy into the page cache."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = os.path.abspath(os.fspath(root))
        self.name = self.root
        parent, base = os.path.split(self.root)
        self._tmp = os.path.join(parent, f".{base}.partial")
        self._free: builtins.list[mmap.mmap] = []   # buffers not in use (one per put at once)

    def _path(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad repository file name {name!r}")
        return os.path.join(self.root, *parts)

    def list(self, prefix: str) -> builtins.list[str]:
        top = os.path.join(self.root, prefix.rstrip("/")) if prefix else self.root
        out: builtins.list[str] = []
        for dirpath, _dirs, files in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                name = f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                if name.startswith(prefix):
                    out.append(name)
        return sorted(out)

    def _open(self, name: str) -> tuple[int, int] | None:
        """(fd, size) of a regular file, None if absent.  The directory is as hostile as
        any storage: a FIFO there would block the open and the read for ever, a symlink
        to /dev/zero or a huge sparse file would be read until memory runs out."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise CorruptRepository(f"{name} in {self.root} is not a regular file; a "
                                    "repository holds only files (remove it)")
        return fd, st.st_size

    def get(self, name: str) -> bytes | None:
        opened = self._open(name)
        if opened is None:
            return None
        fd, size = opened
        try:
            if size > MAX_FILE:
                raise CorruptRepository(f"{name} in {self.root} is {size} bytes, more than "
                                        f"any file of a repository ({MAX_FILE})")
            with open(fd, "rb", closefd=False) as f:
                data = f.read(size + 1)     # its size (a buffer of what is asked), +1:
            if len(data) > size:            # files are never rewritten in place (a lock is
                raise CorruptRepository(f"{name} in {self.root} grew while being read; "
                                        "something else writes there")    # replaced)
            return data
        finally:
            os.close(fd)

    def read(self, name: str, offset: int, length: int) -> bytes:
        opened = self._open(name)
        if opened is None:
            raise CorruptRepository(f"{name} is missing from {self.root}")
        fd, size = opened
        try:
            return os.pread(fd, _bounded(name, offset, length, size), offset)
        finally:
            os.close(fd)

    def put(self, name: str, data: bytes) -> None:
        final = self._path(name)
        try:
            self._mkdirs(os.path.dirname(final))
            self._mkdirs(self._tmp)
            tmp = os.path.join(self._tmp, secrets.token_hex(16))
            if _whole(data):      # its pages dropped: not read back
                atomic.replace_file(tmp, final, data, FILE_MODE, drop_cache=True)
                size = len(data)
            else:
                size = self._put_parts(tmp, final, data)
        except OSError as exc:
            if is_no_space(exc):    # the snapshot is written last: nothing claims completion
                raise NoSpace(self.root, final) from None
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise BadInput(f"cannot write {final}: {exc.strerror}; make it writable or "
                               "give another location") from None
            raise
        self._count(size)

    def _put_parts(self, tmp: str, final: str, parts: Sequence[bytes]) -> int:
        """``parts`` laid into a free aligned buffer and written from it; returns the size."""
        size = sum(len(p) for p in parts)
        buf = self._take(size)
        try:
            with memoryview(buf) as view:
                at = 0
                for part in parts:
                    view[at:at + len(part)] = part
                    at += len(part)
                with view[:size] as whole:
                    atomic.replace_file(tmp, final, whole, FILE_MODE, drop_cache=True,
                                        direct=True)
        finally:
            with self._lock:
                self._free.append(buf)
        return size

    def _take(self, size: int) -> mmap.mmap:
        """A free buffer of at least ``size`` bytes (anonymous mmap: page-aligned); one too
        small is dropped for a larger one, so there are never more than puts at once."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
            if self._free:
                self._free.pop()    # unmapped once no view of it is left
        return mmap.mmap(-1, -(-size // BUFFER_STEP) * BUFFER_STEP)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._path(name))

    def size(self, name: str) -> int | None:
        try:
            return os.stat(self._path(name)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _mkdirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        self._mkdirs(os.path.dirname(path))
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)

    def close(self) -> None:
        """Drop the temporary directory when it is empty, and the buffers."""
        with self._lock:
            self._free.clear()
        with contextlib.suppress(OSError):
            os.rmdir(self._tmp)


class StorageBackend(_Counter):
    """A container of a storage account.  Packs go as page blobs (their sizes are multiples
    of 512, as a seeded repository's are), small files as block blobs; reading works on
    either, so a repository imported from drives reads the same as one written online."""

    def __init__(self, storage: Storage, container: str, prefix: str = "") -> None:
        super().__init__()
        self.storage, self.container, self.prefix = storage, container, prefix
        self.name = f"{storage.name} container {container}" + (f" prefix {prefix}"
                                                                 if prefix else "")

    def list(self, prefix: str) -> builtins.list[str]:
        n = len(self.prefix)
        return [b[n:] for b in self.storage.list(self.container, self.prefix + prefix)]

    def get(self, name: str) -> bytes | None:
        try:
            return self.storage.get(self.container, self.prefix + name, MAX_FILE)
        except BlobTooLarge as exc:     # a hostile account's 5 GiB "snapshot": not read
            raise CorruptRepository(f"{name} in {self.name} is {exc.size} bytes, more than "
                                    f"any file of a repository ({MAX_FILE})") from None

    def read(self, name: str, offset: int, length: int) -> bytes:
        if length > LARGE_READ:     # only an index entry's word for it: ask the size first
            size = self.size(name)
            if size is None:
                raise CorruptRepository(f"{name} is missing from {self.name}")
            length = _bounded(name, offset, length, size)
        try:
            return self.storage.read(self.container, self.prefix + name, offset, length)
        except FileNotFoundError:
            raise CorruptRepository(f"{name} is missing from {self.name}") from None

    def put(self, name: str, data: bytes | Sequence[bytes]) -> None:
        blob = self.prefix + name
        if not _whole(data):
            data = b"".join(data)
        if name.startswith("data/"):
            size = len(data)
            view = memoryview(data)
            for off in range(0, size, CELL):
                self.storage.write_part(self.container, blob, BlobType.PAGE, size, off,
                                        bytes(view[off:off + CELL]))
            self.storage.commit(self.container, blob, BlobType.PAGE, size, [])
        else:
            self.storage.put(self.container, blob, data)
        self._count(len(data))

    def delete(self, name: str) -> None:
        """Absent already is fine (the storage's rule)."""
        self.storage.delete(self.container, self.prefix + name)

    def size(self, name: str) -> int | None:
        return self.storage.size(self.container, self.prefix + name)

    def close(self) -> None:
        """Nothing to release; the Storage object outlives the backend."""
