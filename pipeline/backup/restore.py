"""run_restore(): a snapshot back into a directory, byte for byte, packs first.

::

    tree (thread) -> skeleton: dirs, files at full size (holes), in TARGET's sibling
    .NAME.restoring-XXXX -> plan: the needed chunks grouped by pack into ranges of up to
    16 MiB -> ranges -> fetch x cpu (thread: one read per range, open + check each chunk,
    pwrite it wherever it belongs) -> modes and times -> rename onto TARGET

One storage read per range, not per chunk, keeps a restore from Azure fast, and a
chunk used by several files is fetched once.  Zero runs are never written, so
sparse files come back sparse.  Until the final rename the files sit in a
directory named as unfinished; on any error it is removed and TARGET is untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline.backup import format as fmt
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.errors import BadInput
from pipeline.progress import Stats

RANGE_MAX = 16 << 20          # bytes per storage read
RANGE_GAP = 256 << 10         # read through gaps up to this size rather than split the range


@dataclass(slots=True)
class _Range:
    pack: bytes
    start: int
    end: int
    entries: list[fmt.IndexEntry]


def check_target(target: Path) -> Path:
    """An absent or empty directory whose parent exists; refused before anything is read."""
    target = Path(os.path.abspath(target))
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise BadInput(f"--target {target} exists and is not a directory; give a new or "
                           "empty directory")
        if any(target.iterdir()):
            raise BadInput(f"--target {target} is not empty; give a new or empty directory "
                           "(restore never overwrites files)")
    if not target.parent.is_dir():
        raise BadInput(f"--target {target}: {target.parent} does not exist; create it first")
    return target


def _fs(root: bytes, path: str) -> bytes:
    return os.path.join(root, os.fsencode(path))


def _whole(n: fmt.Node) -> bool:
    """A file that is one chunk: created, written, given its mode and times in one visit."""
    return n.type == "file" and len(n.content) == 1 and n.content[0][0] is not None


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _skeleton(root: bytes, nodes: list[fmt.Node]) -> None:
    """Directories (0700 until the end), and every file of several chunks or with holes at
    its size, as a sparse file (one-chunk files are created when their chunk arrives)."""
    made: set[bytes] = set()
    for n in nodes:
        p = _fs(root, n.path)
        if n.type == "dir":
            os.makedirs(p, 0o700, exist_ok=True)
            made.add(p)
        elif n.type == "file":
            parent = os.path.dirname(p)
            if parent not in made:                  # a directory the walk could not list
                os.makedirs(parent, 0o700, exist_ok=True)
                made.add(parent)
            if _whole(n):
                continue
            fd = os.open(p, _CREATE, 0o600)
            try:
                os.ftruncate(fd, n.size)
            finally:
                os.close(fd)


_Where = dict[bytes, list[tuple[fmt.Node, int]]]   # chunk id -> (file, offset) it goes to


def _plan(repo: Repository, nodes: list[fmt.Node]) -> tuple[list[_Range], _Where]:
    where: _Where = defaultdict(list)
    for n in nodes:
        if n.type != "file":
            continue
        off = 0
        for cid, length in n.content:
            if cid is not None:
                where[cid].append((n, off))
            off += length
    by_pack: dict[bytes, list[fmt.IndexEntry]] = defaultdict(list)
    for cid in where:
        e = repo.entry(cid)
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
    return ranges, where


def _fetch(repo: Repository, root: bytes, rng: _Range, where: _Where) -> int:
    """Read one range of a pack, check each chunk, write it to every place it belongs."""
    name = fmt.pack_name(rng.pack)
    data = repo.backend.read(name, rng.start, rng.end - rng.start)
    if len(data) != rng.end - rng.start:
        raise CorruptRepository(f"{name} is shorter than its index says")
    view = memoryview(data)
    written = 0
    for e in rng.entries:
        at = e.offset - rng.start
        raw = repo.crypto.open_chunk(e.kind, e.id, view[at:at + e.length], e.raw_len)
        for node, off in where[e.id]:
            whole = _whole(node)
            flags = _CREATE if whole else os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(_fs(root, node.path), flags, 0o600)
            try:
                done = 0
                while done < len(raw):
                    done += os.pwrite(fd, raw[done:], off + done)
                if whole:
                    os.fchmod(fd, node.mode)
                    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            finally:
                os.close(fd)
            written += len(raw)
    return written


def _finish(root: bytes, nodes: list[fmt.Node]) -> None:
    """Symlinks last (nothing is written through them), then modes and times, deepest
    directories last of all so that writing inside them does not move their mtime."""
    for n in nodes:
        p = _fs(root, n.path)
        if n.type == "symlink":
            os.makedirs(os.path.dirname(p), 0o700, exist_ok=True)
            os.symlink(os.fsencode(n.target), p)
            with contextlib.suppress(NotImplementedError, OSError):
                os.utime(p, ns=(n.mtime_ns, n.mtime_ns), follow_symlinks=False)
        elif n.type == "file" and not _whole(n):
            os.chmod(p, n.mode)
            os.utime(p, ns=(n.mtime_ns, n.mtime_ns))
    dirs = sorted((n for n in nodes if n.type == "dir" and n.path != fmt.ROOT),
                  key=lambda n: -n.path.count("/"))
    dirs += [n for n in nodes if n.type == "dir" and n.path == fmt.ROOT]   # the target itself
    for n in dirs:
        p = root if n.path == fmt.ROOT else _fs(root, n.path)
        os.chmod(p, n.mode)
        os.utime(p, ns=(n.mtime_ns, n.mtime_ns))


def _into_place(tmp: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()              # checked empty before the restore began
    os.rename(tmp, target)


async def run_restore(repo: Repository, ref: SnapshotRef, target: Path, stats: Stats,
                      threads: int) -> fmt.Manifest:
    """Restore ``ref`` into ``target`` (absent or empty); see the module docstring."""
    target = check_target(target)
    manifest = await trio.to_thread.run_sync(repo.manifest, ref)
    nodes = await trio.to_thread.run_sync(lambda: list(repo.tree(manifest)))
    files = [n for n in nodes if n.type == "file"]
    stats.files_total = len(files)
    stats.bytes_total = sum(n.size for n in files)
    zero = sum(length for n in files for cid, length in n.content if cid is None)
    tmp = target.parent / f".{target.name}.restoring-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(mode=0o700)
    except OSError as exc:
        raise BadInput(f"cannot create {tmp}: {exc.strerror}; make {target.parent} writable "
                       "or give another --target") from None
    root = os.fsencode(tmp)
    try:
        await trio.to_thread.run_sync(_skeleton, root, nodes)
        stats.zero_bytes = zero
        stats.bytes_read = zero      # zero runs are restored by the skeleton's holes
        ranges, where = _plan(repo, nodes)
        cpu = trio.CapacityLimiter(threads)
        tx, rx = trio.open_memory_channel[_Range](threads)

        async def feed() -> None:
            async with tx:
                for rng in ranges:
                    await tx.send(rng)

        async def worker(rx: trio.MemoryReceiveChannel[_Range]) -> None:
            async with rx:
                async for rng in rx:
                    stats.bytes_read += await trio.to_thread.run_sync(
                        _fetch, repo, root, rng, where, limiter=cpu)
                    stats.extents += len(rng.entries)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async with rx:
                for _ in range(threads):
                    nursery.start_soon(worker, rx.clone())
        await trio.to_thread.run_sync(_finish, root, nodes)
        stats.files_done = len(files)
        await trio.to_thread.run_sync(_into_place, tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
