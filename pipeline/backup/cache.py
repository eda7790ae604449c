"""A local cache of decoded tree chunks, so a backup need not read and decode its
parent's tree again (restic keeps one too, in ~/.cache/restic).

Where: ``$XDG_CACHE_HOME/pipeline/backup/REPO_ID/trees/`` (``~/.cache`` without it),
directories 0700, files 0600; ``backup --no-cache`` neither reads nor writes it.  One
file per tree chunk, named by its id: the chunk's plaintext and its entries' fields
(``marshal``, about ten times faster to load than decoding and checking the JSON
lines), zstd-compressed (4.4x: a cold run reads 1.2 MB instead of 5.4 MB for the 2 GB
real tree's 70 chunks), under a MAC keyed from the repository's id key, and who listed its entries'
extended attributes (``lister``: see ``TreeCache.listed``).  Nothing in it is trusted
unchecked: an entry whose MAC fails (damaged, forged, another repository's, another
Python's) is deleted and the chunk read from the repository, as on a miss.  Files are
written whole and renamed into place, so a concurrent run sees an old entry or a new
one, both valid.  Entries not used for ``MAX_AGE_S`` are dropped, and the oldest beyond
``MAX_BYTES``, whenever a run adds some.  Any failure to use it is a miss, never an
error: the repository is the truth.
"""

from __future__ import annotations

import contextlib
import hmac
import marshal
import os
import re
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import zstandard

from pipeline.backup import encoding as fmt

MAGIC = b"PLBKTC2\n"             # 2: the payload zstd-compressed (1's entries: misses)
MAC_LEN = 32
MAX_AGE_S = 30 * 86400          # an entry unused this long is dropped
MAX_BYTES = 256 << 20           # and the oldest beyond this
TOUCH_S = 86400                 # an entry used is re-dated at most once a day
_FIELDS = tuple(f.name for f in fields(fmt.Node))
_TAG = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
        b"# This file is a cache directory tag created by pipeline backup.\n")

Entries = list[tuple[fmt.Node, bytes]]


def lister() -> str:
    """Who lists xattrs in this process, as far as what a listing shows goes: the
    effective uid, and whether CAP_SYS_ADMIN is in effect (trusted.* is listed only
    with it).  An entry listed by another (``sudo``, a container) is listed again."""
    cap = "?"
    with contextlib.suppress(OSError, ValueError, IndexError), open(
            "/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapEff:"):
                cap = str(int(line.split()[1], 16) >> 21 & 1)
                break
    return f"{os.geteuid()}:{cap}:{','.join(fmt.XATTR_PREFIXES)}"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/pipeline/backup`` (an absolute XDG_CACHE_HOME only, as the spec
    says), else ``~/.cache/pipeline/backup``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "pipeline" / "backup"


def for_repository(repo_id: str, id_key: bytes, root: Path | None = None
                   ) -> TreeCache | None:
    """The cache of this repository, or None where its id cannot name a directory."""
    try:
        return TreeCache(cache_root() if root is None else root, repo_id, id_key)
    except ValueError:
        return None


def _read_whole(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, or fewer where the file ends first (a short read goes
    on: a file is not a pipe, but a read may still stop early); one more is asked for, so
    a file that grew since its fstat reads as longer and fails its MAC."""
    parts, left = [], size + 1
    while left > 0:
        got = os.read(fd, left)
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class TreeCache:
    """The cache of one repository (``repo_id``, its MAC key from ``id_key``)."""

    def __init__(self, root: Path, repo_id: str, id_key: bytes) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", repo_id):     # the config is not trusted
            raise ValueError("repository id is not 32 hex digits")
        self.dir = root / repo_id / "trees"
        self._key = hmac.new(id_key, b"pipeline tree cache v1 " + repo_id.encode(),
                             "sha256").digest()
        self._version = b"%d.%d" % sys.version_info[:2]   # marshal's format is Python's
        self.written = 0
        self.known: set[bytes] = set()     # ids this run found valid here, or wrote
        # Ids whose entries' xattrs were listed by a walk of this user (``lister``): for
        # such an entry the walk may take the xattrs of a file whose ctime has not moved
        # (any xattr change moves it) instead of listing them again; ``put`` only marks
        # a chunk so when nothing failed to list or read (``xattrs_failed``).
        self.listed: set[bytes] = set()
        self.xattrs_failed = False
        self._lister = lister()

    def _mac(self, cid: bytes, payload: bytes | memoryview) -> bytes:
        mac = hmac.new(self._key, self._version + cid, "sha256")
        mac.update(payload)            # not joined: no copy of the payload
        return mac.digest()

    def _path(self, cid: bytes) -> str:
        return os.path.join(self.dir, cid.hex())

    def present(self) -> set[bytes]:
        """The ids with an entry here, from one listing of the directory: no file's inode
        is read (a cold disk's wait each, as ``has`` does), nor anything trusted."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return set()
        out = set()
        for name in names:
            if len(name) == 64:
                with contextlib.suppress(ValueError):
                    out.add(bytes.fromhex(name))
        return out

    def read(self, cid: bytes) -> tuple[bytes, float] | None:
        """The entry's payload, its MAC checked, decompressed, and the file's mtime; None
        if missing, failing its MAC or not decompressing (then deleted).  No decoding:
        reads, MACs and zstd (both let the GIL go) run in threads, several at once, while
        ``get`` decodes on the caller's."""
        path = self._path(cid)
        # Not trusted before its MAC, not even its kind or size: a FIFO would block the
        # open (O_NONBLOCK) or the read, a link to /dev/zero or a huge file fill memory.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                data = b""                       # no entry: dropped below
            else:      # its size read whole (a file object's read(MAX_BYTES + 1) asked
                data, mtime = _read_whole(fd, st.st_size), st.st_mtime   # for 256 MiB)
        except OSError:
            return None
        finally:
            os.close(fd)
        payload = memoryview(data)[len(MAGIC) + MAC_LEN:]
        if (data[:len(MAGIC)] != MAGIC or not hmac.compare_digest(
                data[len(MAGIC):len(MAGIC) + MAC_LEN], self._mac(cid, payload))):
            self._drop(path)
            return None
        try:       # authenticated, so written by ``put``: one frame with its size
            return zstandard.ZstdDecompressor().decompress(payload), mtime
        except zstandard.ZstdError:
            self._drop(path)
            return None

    def get(self, cid: bytes, raw: tuple[bytes, float] | None = None) -> Entries | None:
        """The chunk's entries with their lines, or None: missing, or failing its MAC or
        shape (then deleted, to be written again).  ``raw``: ``read``'s, done already."""
        path = self._path(cid)
        got = self.read(cid) if raw is None else raw
        if got is None:
            return None
        payload, mtime = got
        try:       # authenticated: written by this code for this chunk, so this holds
            chunk, rows, *by = marshal.loads(payload)     # by: none in entries before it
            lines = chunk.splitlines(keepends=True)
            entries = [(fmt.Node(*row), line) for row, line in zip(rows, lines, strict=True)]
        except (ValueError, TypeError, EOFError):
            self._drop(path)
            return None
        self.known.add(cid)
        if by == [self._lister]:
            self.listed.add(cid)
        if time.time() - mtime > TOUCH_S:
            with contextlib.suppress(OSError):
                os.utime(path)
        return entries

    def put(self, cid: bytes, chunk: bytes, nodes: Iterable[fmt.Node], listed: bool = False
            ) -> None:
        """Store a chunk read from the repository (checked against ``cid``) and its
        entries (decoded and checked); a failure to write is ignored.  ``listed``: every
        entry's xattrs are as this run's walk listed them (or took them, ``listed``)."""
        rows = [tuple(getattr(n, name) for name in _FIELDS) for n in nodes]
        listed = listed and not self.xattrs_failed
        payload = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(
            marshal.dumps((chunk, rows, self._lister if listed else ""), 4))
        data = MAGIC + self._mac(cid, payload) + payload
        try:
            self._ensure_dir()
            tmp = f"{self._path(cid)}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self._path(cid))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self.written += 1
            self.known.add(cid)
            if listed:
                self.listed.add(cid)
            else:
                self.listed.discard(cid)
        except OSError:
            return

    def _ensure_dir(self) -> None:
        if self.dir.is_dir():
            return
        root = self.dir.parent.parent.parent          # .../pipeline
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.dir, self.dir.parent, self.dir.parent.parent, root):
            os.chmod(d, 0o700)
        tag = self.dir.parent.parent / "CACHEDIR.TAG"
        if not tag.exists():
            fd = os.open(tag, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_TAG)

    @staticmethod
    def _drop(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def clean(self, now: float | None = None) -> int:
        """Drop entries unused for MAX_AGE_S, then the oldest beyond MAX_BYTES, and
        leftover temporary files; returns how many files went."""
        now = time.time() if now is None else now
        try:
            names = os.listdir(self.dir)
        except OSError:
            return 0
        kept: list[tuple[float, int, str]] = []
        dropped = 0
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            stale_tmp = name.endswith(".tmp") and now - st.st_mtime > 3600
            if stale_tmp or (not name.endswith(".tmp") and now - st.st_mtime > MAX_AGE_S):
                self._drop(path)
                dropped += 1
            elif not name.endswith(".tmp"):
                kept.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept):
            if total <= MAX_BYTES:
                break
            self._drop(path)
            dropped += 1
            total -= size
        return dropped
