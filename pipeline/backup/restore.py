"""run_restore(): a snapshot back into a directory, byte for byte, packs first.

::

    tree (thread) -> plan: the needed chunks grouped by pack into ranges of up to 16 MiB
    -> skeleton: marker, dirs, files of several chunks at full size (holes) under
    temporary names -> ranges -> fetch x cpu (thread: one read per range, open + check
    each chunk, pwrite it wherever it belongs; a file's last chunk renames it into
    place) -> symlinks, directory modes and times, marker removed

One storage read per range, not per chunk, keeps a restore from Azure fast, and a
chunk used by several files is fetched once.  Zero runs are never written, so
sparse files come back sparse.

Each file is written under a temporary name in its own directory
(``.pipeline-restore-<snapshot>-<n>``) and renamed to its name only once every
chunk of it is written and checked and its mode and mtime are set: whatever stops
a restore, no file under its final name is short.  A damaged or missing chunk
fails only the files that hold it; the restore carries on and then raises
``PartialRestore`` naming them (exit 4).  Until the end TARGET holds a marker
(``.pipeline-restore-unfinished``, naming the snapshot), so that the same command
run again (after a full disk or a kill) accepts that target, clears the temporary
files and writes every file again.  Restoring in place rather than into a sibling
directory renamed at the end also lets TARGET be a mount point.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline.backup import format as fmt
from pipeline.backup.errors import CorruptRepository, FailedFile, PartialRestore
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.errors import BadInput, NoSpace, is_no_space
from pipeline.progress import Stats

RANGE_MAX = 16 << 20          # bytes per storage read
RANGE_GAP = 256 << 10         # read through gaps up to this size rather than split the range
MARKER = ".pipeline-restore-unfinished"
TEMP_PREFIX = ".pipeline-restore-"
TEMP_NAME = re.compile(rb"\.pipeline-restore-[0-9a-f]{12}-[0-9]+\Z")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class _Range:
    pack: bytes
    start: int
    end: int
    entries: list[fmt.IndexEntry]


@dataclass(slots=True, eq=False)
class _File:
    node: fmt.Node
    tmp: bytes
    final: bytes
    chunks: int                          # data chunks (holes are not chunks)
    left: int                            # chunks not yet written or given up
    whole: bool                          # one chunk, no holes: created when it arrives
    first: tuple[int, str] | None = None  # the first failed chunk (number, why)
    failures: int = 0
    done: bool = False                   # renamed into place, or given up and removed


def check_target(target: Path) -> Path:
    """An absent or empty directory (or one an unfinished restore left, see the module
    docstring) whose parent exists; refused before anything is read."""
    target = Path(os.path.abspath(target))
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise BadInput(f"--target {target} exists and is not a directory; give a new or "
                           "empty directory")
        if any(target.iterdir()) and not (target / MARKER).is_file():
            raise BadInput(f"--target {target} is not empty; give a new or empty directory "
                           "(restore never overwrites files)")
    if not target.parent.is_dir():
        raise BadInput(f"--target {target}: {target.parent} does not exist; create it first")
    return target


def _fs(root: bytes, path: str) -> bytes:
    return root if path == fmt.ROOT else os.path.join(root, os.fsencode(path))


@contextlib.contextmanager
def _space(target: Path, what: bytes | str | None = None) -> Iterator[None]:
    """A full filesystem as NoSpace (exit 9) naming the target's, not a traceback."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(target, os.fsdecode(what) if what else str(target)) from None
        raise


class _Run:
    """One restore's files and their progress; the fetch threads share it."""

    def __init__(self, repo: Repository, target: Path, ref: SnapshotRef,
                 nodes: list[fmt.Node]) -> None:
        self.repo, self.target, self.nodes = repo, target, nodes
        self.root = os.fsencode(target)
        self.token = ref.hex[:12]
        self.lock = threading.Lock()
        self.files_done = 0
        self.files: list[_File] = []
        self.where: dict[bytes, list[tuple[_File, int, int]]] = defaultdict(list)
        for i, n in enumerate(nodes):
            if n.type == "file":
                chunks = sum(1 for cid, _ in n.content if cid is not None)
                self.files.append(_File(
                    n, self.temp(n, i), _fs(self.root, n.path), chunks, chunks,
                    len(n.content) == 1 and chunks == 1))

    def temp(self, n: fmt.Node, i: int) -> bytes:
        parent = os.path.dirname(_fs(self.root, n.path))
        return os.path.join(parent, f"{TEMP_PREFIX}{self.token}-{i}".encode())

    # -- plan -------------------------------------------------------------------------------

    def plan(self) -> list[_Range]:
        """Ranges of packs to read; a file with a chunk in no readable index file fails
        here, before anything of it is written."""
        for f in self.files:
            places: list[tuple[bytes, int, int]] = []
            off = n = 0
            for cid, length in f.node.content:
                if cid is not None:
                    n += 1
                    try:
                        self.repo.entry(cid)
                    except CorruptRepository as exc:
                        if f.first is None:
                            f.first = (n, str(exc.args[0]))
                        f.failures += 1
                    places.append((cid, off, n))
                off += length
            if f.first is not None:
                f.left, f.done = 0, True
                continue
            for cid, at, k in places:
                self.where[cid].append((f, at, k))
        by_pack: dict[bytes, list[fmt.IndexEntry]] = defaultdict(list)
        for cid in self.where:
            e = self.repo.entry(cid)
            by_pack[e.pack].append(e)
        ranges: list[_Range] = []
        for pack, entries in by_pack.items():
            entries.sort(key=lambda e: e.offset)
            cur: _Range | None = None
            for e in entries:
                end = e.offset + e.length
                if cur is None or e.offset - cur.end > RANGE_GAP or end - cur.start > RANGE_MAX:
                    cur = _Range(pack, e.offset, end, [e])
                    ranges.append(cur)
                else:
                    cur.end = max(cur.end, end)
                    cur.entries.append(e)
        return ranges

    # -- skeleton ---------------------------------------------------------------------------

    def skeleton(self, resuming: bool) -> None:
        """Directories (0700 until the end), and every file of several chunks or with holes
        at its size under its temporary name; files without chunks are finished here."""
        with _space(self.target):
            made: set[bytes] = set()
            for n in self.nodes:
                if n.type == "dir":
                    p = _fs(self.root, n.path)
                    os.makedirs(p, 0o700, exist_ok=True)
                    made.add(p)
                    if resuming:
                        _clear_temps(p)
            for f in self.files:
                parent = os.path.dirname(f.final)
                if parent not in made:              # a directory the walk could not list
                    os.makedirs(parent, 0o700, exist_ok=True)
                    made.add(parent)
                    if resuming:
                        _clear_temps(parent)
                if f.done or f.whole:
                    continue
                fd = os.open(f.tmp, _CREATE, 0o600)
                try:
                    os.ftruncate(fd, f.node.size)
                finally:
                    os.close(fd)
                if f.left == 0:
                    self._settle(f)

    # -- fetch ------------------------------------------------------------------------------

    def fetch(self, rng: _Range) -> int:
        """Read one range of a pack, check each chunk, write it to every place it belongs;
        a chunk that cannot be read or checked fails the files that hold it."""
        name = fmt.pack_name(rng.pack)
        try:
            data = self.repo.backend.read(name, rng.start, rng.end - rng.start)
        except CorruptRepository as exc:          # the pack is missing
            for e in rng.entries:
                self._lost(e.id, str(exc.args[0]))
            return 0
        view = memoryview(data)
        written = 0
        for e in rng.entries:
            at = e.offset - rng.start
            if at + e.length > len(data):
                self._lost(e.id, f"{name} is shorter than its index says (truncated)")
                continue
            try:
                raw = self.repo.crypto.open_chunk(e.kind, e.id, view[at:at + e.length],
                                                  e.raw_len)
            except CorruptRepository as exc:
                self._lost(e.id, f"{exc.args[0]} in {name}")
                continue
            for f, off, _n in self.where[e.id]:
                if f.first is None:               # a file already lost is not written to
                    with _space(self.target, f.final):
                        self._write(f, raw, off)
                    written += len(raw)
                self._step(f)
        return written

    def _write(self, f: _File, raw: bytes, off: int) -> None:
        fd = os.open(f.tmp, _CREATE if f.whole else _WRITE, 0o600)
        try:
            done = 0
            while done < len(raw):
                done += os.pwrite(fd, raw[done:], off + done)
            if f.whole:
                os.fchmod(fd, f.node.mode)
                os.utime(fd, ns=(f.node.mtime_ns, f.node.mtime_ns))
        finally:
            os.close(fd)

    def _lost(self, cid: bytes, why: str) -> None:
        for f, _off, n in self.where[cid]:
            with self.lock:
                if f.first is None or n < f.first[0]:
                    f.first = (n, why)
                f.failures += 1
            self._step(f)

    def _step(self, f: _File) -> None:
        """One chunk of ``f`` written or given up; the last one settles the file."""
        with self.lock:
            f.left -= 1
            last = f.left == 0
        if last:
            with _space(self.target, f.final):
                self._settle(f)

    def _settle(self, f: _File) -> None:
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

    # -- finish -----------------------------------------------------------------------------

    def finish(self) -> None:
        """Symlinks last (nothing is written through them), the marker removed, then modes
        and times, deepest directories last so that writing inside does not move them."""
        with _space(self.target):
            for i, n in enumerate(self.nodes):
                if n.type != "symlink":
                    continue
                tmp = self.temp(n, i)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.symlink(os.fsencode(n.target), tmp)
                with contextlib.suppress(NotImplementedError, OSError):
                    os.utime(tmp, ns=(n.mtime_ns, n.mtime_ns), follow_symlinks=False)
                os.rename(tmp, _fs(self.root, n.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.root, MARKER.encode()))
        dirs = sorted((n for n in self.nodes if n.type == "dir" and n.path != fmt.ROOT),
                      key=lambda n: -n.path.count("/"))
        dirs += [n for n in self.nodes if n.type == "dir" and n.path == fmt.ROOT]
        for n in dirs:
            p = _fs(self.root, n.path)
            os.chmod(p, n.mode)
            os.utime(p, ns=(n.mtime_ns, n.mtime_ns))

    def failed(self) -> list[FailedFile]:
        out = [FailedFile(f.node.path, f.first[0], f.chunks, f.first[1], f.failures - 1)
               for f in self.files if f.first is not None]
        return sorted(out, key=lambda x: fmt.path_key(x.path))


def _clear_temps(directory: bytes) -> None:
    """Temporary files an interrupted restore left in ``directory``."""
    with os.scandir(directory) as it:
        stale = [e.path for e in it if TEMP_NAME.match(e.name) and not e.is_dir(
            follow_symlinks=False)]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _claim(target: Path, ref: SnapshotRef) -> tuple[int, bool]:
    """Create TARGET if absent and mark it as an unfinished restore of ``ref`` (locked
    while this restore runs); returns the marker's fd and whether an earlier restore of
    the same snapshot left it."""
    with _space(target):
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if is_no_space(exc):
                raise
            raise BadInput(f"cannot create --target {target}: {exc.strerror}; make "
                           f"{target.parent} writable or give another --target") from None
        path = target / MARKER
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if is_no_space(exc):
                raise
            raise BadInput(f"cannot write into --target {target}: {exc.strerror}; make it "
                           "writable or give another --target") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadInput(f"another restore is writing into {target}; wait for it or "
                               "give another --target") from None
            old = os.pread(fd, 4096, 0)
            resuming = bool(old)
            if old:
                try:
                    had = str(json.loads(old)["snapshot"])
                except (ValueError, KeyError, TypeError):
                    had = "?"
                if had != ref.hex:
                    raise BadInput(f"--target {target} holds an unfinished restore of snapshot "
                                   f"{had}; run that restore again (--snapshot {had}) or give "
                                   "an empty directory")
            else:
                os.pwrite(fd, json.dumps({"snapshot": ref.hex}).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
    return fd, resuming


async def run_restore(repo: Repository, ref: SnapshotRef, target: Path, stats: Stats,
                      threads: int) -> fmt.Manifest:
    """Restore ``ref`` into ``target``; see the module docstring.  Raises PartialRestore
    (after restoring every other file) when some files could not be restored."""
    target = check_target(target)
    manifest = await trio.to_thread.run_sync(repo.manifest, ref)
    nodes = await trio.to_thread.run_sync(lambda: list(repo.tree(manifest)))
    run = _Run(repo, target, ref, nodes)
    stats.files_total = len(run.files)
    stats.bytes_total = sum(f.node.size for f in run.files)
    ranges = await trio.to_thread.run_sync(run.plan)
    fd, resuming = await trio.to_thread.run_sync(_claim, target, ref)
    try:
        await trio.to_thread.run_sync(run.skeleton, resuming)
        zero = sum(length for f in run.files for cid, length in f.node.content if cid is None)
        stats.zero_bytes = zero
        stats.bytes_read = zero      # zero runs are restored by the skeleton's holes
        stats.files_done = run.files_done
        cpu = trio.CapacityLimiter(threads)
        tx, rx = trio.open_memory_channel[_Range](threads)

        async def feed() -> None:
            async with tx:
                for rng in ranges:
                    await tx.send(rng)

        async def worker(rx: trio.MemoryReceiveChannel[_Range]) -> None:
            async with rx:
                async for rng in rx:
                    stats.bytes_read += await trio.to_thread.run_sync(run.fetch, rng,
                                                                      limiter=cpu)
                    stats.extents += len(rng.entries)
                    stats.files_done = run.files_done

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async with rx:
                for _ in range(threads):
                    nursery.start_soon(worker, rx.clone())
        await trio.to_thread.run_sync(run.finish)
    except BaseException:
        run.abandon()
        raise
    finally:
        os.close(fd)
    stats.files_done = run.files_done
    failed = run.failed()
    if failed:
        raise PartialRestore(
            f"{len(failed)} of {len(run.files)} files could not be restored from snapshot "
            f"{ref.hex[:16]} (damaged or missing chunks; each is named above); the other "
            f"{run.files_done} are in {target}", failed, run.files_done)
    return manifest
