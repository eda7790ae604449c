"""A backup repository on a backend: keys, the chunk index, packs and snapshots.

Sync and free of trio (the stages call it in worker threads, or on the Trio
thread where nothing blocks).  Nothing is ever rewritten: a backup adds packs,
then index files naming them, then one snapshot; the snapshot is the commit
point, so an interrupted backup leaves at worst packs and index files that the
next backup reuses, never a snapshot that points at missing data.  Only ``forget``
and ``prune`` delete, holding the exclusive lock; every other opener holds a
shared one (``lock.py``), taken here when the repository is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from pipeline import faults
from pipeline.backup import crypto
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import Backend
from pipeline.backup.cache import TreeCache
from pipeline.backup.errors import CorruptRepository, NoRepository, WrongPassphrase
from pipeline.backup.lock import Lock, take
from pipeline.errors import BadInput
from pipeline.volume import luks2

INDEX_EVERY = 8192              # entries per index file: ~400 KiB for ~8 GiB of data
FETCHERS = 8                    # index/snapshot files fetched at once when opening
RUN_BYTES = 8 << 20             # tree chunks read at once when they lie back to back
LockMode = Literal["shared", "exclusive"] | None


class SnapshotRef(NamedTuple):
    """A snapshot as its file name tells it (no key needed)."""

    name: str
    time: datetime
    id: bytes

    @property
    def hex(self) -> str:
        return self.id.hex()


@dataclass(slots=True)
class Pack:
    """A finished pack: its bytes as parts in order (``Backend.put`` takes them so; never
    joined on the way: a 16 MiB copy per pack), its id (their hash, ``Crypto.pack_hash``),
    its size and where each chunk lies."""

    id: bytes
    parts: list[bytes]
    size: int
    entries: list[fmt.IndexEntry]

    @property
    def name(self) -> str:
        return fmt.pack_name(self.id)

    @property
    def data(self) -> bytes:
        """The pack's bytes joined: a copy, for callers that want one buffer."""
        return b"".join(self.parts)


@dataclass(slots=True)
class PackBuilder:
    """Gathers sealed chunks until the pack reaches its target size."""

    target: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    entries: list[fmt.PackEntry] = field(default_factory=list)

    def add(self, kind: int, cid: bytes, sealed: tuple[bytes, bytes], raw_len: int) -> None:
        """``sealed`` is (nonce, ciphertext): joined only once, when the pack is finished."""
        length = len(sealed[0]) + len(sealed[1])
        self.entries.append(fmt.PackEntry(kind, cid, self.size, length, raw_len))
        self.parts.extend(sealed)
        self.size += length

    @property
    def full(self) -> bool:
        return self.size >= self.target

    def finish(self, cr: crypto.Crypto) -> Pack:
        header = cr.seal(fmt.encode_pack_header(self.entries), crypto.PACK_HEADER_AAD)
        parts = fmt.pack_parts(self.parts, header)
        digest = cr.pack_hash()
        for part in parts:
            digest.update(part)
        pack_id = digest.digest()
        entries = [fmt.IndexEntry(e.kind, e.id, pack_id, e.offset, e.length, e.raw_len)
                   for e in self.entries]
        self.parts, self.entries, self.size = [], [], 0
        return Pack(pack_id, parts, sum(len(p) for p in parts), entries)


def exists(backend: Backend) -> bool:
    return backend.get(fmt.CONFIG) is not None


def list_snapshots(backend: Backend) -> list[SnapshotRef]:
    """Every snapshot, oldest first (by the time in its name, then its id); needs no key."""
    refs = []
    for name in backend.list(fmt.SNAPSHOTS):
        parsed = fmt.parse_snapshot_name(name)
        if parsed is not None:
            refs.append(SnapshotRef(name, parsed[0], parsed[1]))
    return sorted(refs, key=lambda r: (r.time, r.id))


class Repository:
    """An opened repository: its config, its keys, and the index of every stored chunk."""

    def __init__(self, backend: Backend, config: fmt.Config, keys: crypto.MasterKeys) -> None:
        self.backend = backend
        self.config = config
        self.crypto = crypto.Crypto(keys)
        self.index: dict[bytes, fmt.IndexEntry] = {}
        self.pending: set[bytes] = set()           # chunks claimed by this run, not yet indexed
        self.unindexed: list[fmt.IndexEntry] = []  # stored in packs, not yet in an index file
        self.damaged: list[str] = []               # index files load_index skipped, why
        self.lock: Lock | None = None

    def _lock(self, mode: LockMode, command: str, wait: float) -> Repository:
        if mode is not None:
            self.lock = take(self.backend, self.crypto, mode == "exclusive", command, wait)
        return self

    def close(self) -> None:
        """Release this run's lock (also done at exit; a kill -9 leaves it to go stale)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- creating and opening ------------------------------------------------------------

    @classmethod
    def init(cls, backend: Backend, passphrase: bytes, kdf: luks2.KdfParams | None = None,
             chunker: fmt.ChunkerParams | None = None, pack_size: int = 16 << 20,
             keys: crypto.MasterKeys | None = None, lock: LockMode = "shared",
             command: str = "backup") -> Repository:
        """A new repository: the key file first, the config last (the config marks it as
        existing, so a crash in between leaves no half repository).  ``keys``: for tests
        that need reproducible chunk boundaries; otherwise random.  ``kdf``: the key file's
        argon2id cost, calibrated here when not given (``crypto.calibrate_kdf``)."""
        if exists(backend):
            raise BadInput(f"{backend.name} already holds a backup repository")
        now = _now_iso()
        keys = keys or crypto.MasterKeys.generate()
        config = fmt.Config(repo_id=secrets.token_hex(16), created=now, pack_size=pack_size,
                            chunker=chunker or fmt.ChunkerParams(), ids=keys.ids)
        data = crypto.make_key_file(keys, passphrase, config.repo_id,
                                    kdf or crypto.calibrate_kdf(), now)
        backend.put(fmt.key_name(hashlib.sha256(data).digest()), data)
        backend.put(fmt.CONFIG, config.encode())
        return cls(backend, config, keys)._lock(lock, command, 0.0)

    @classmethod
    def open(cls, backend: Backend, passphrase: bytes, passphrase_source: str,
             missing: str | None = None, lock: LockMode = "shared", command: str = "",
             wait: float = 0.0) -> Repository:
        """Unlock with the passphrase; ``missing`` is the message when there is no repository.
        ``lock``: the lock this run holds until ``close`` (or exit), waiting up to ``wait``
        seconds for a conflicting one to go; None only for tests that inspect a repository
        another run holds."""
        raw = backend.get(fmt.CONFIG)
        if raw is None:
            raise NoRepository(missing or f"no backup repository in {backend.name}; give the "
                               "repository's location (for a staging location: STAGING/repo)")
        config = fmt.Config.decode(raw)
        names = backend.list(fmt.KEYS)
        if not names:
            raise CorruptRepository(f"{backend.name} has no key file (keys/)")
        for name in names:
            data = backend.get(name)
            if data is None:
                continue
            keys = crypto.open_key_file(data, passphrase, config.repo_id)
            if keys is not None and keys.ids != config.ids:
                raise CorruptRepository(f"config's chunk_id {config.ids} is not the one its "
                                        f"keys were made with ({keys.ids}): the config was "
                                        "altered; put back the repository's own config file")
            if keys is not None:
                return cls(backend, config, keys)._lock(lock, command, wait)
        raise WrongPassphrase(backend.name, passphrase_source)

    # -- the index -----------------------------------------------------------------------

    def load_index(self, skip_damaged: bool = False) -> int:
        """Read every index file; returns how many chunks the repository holds.
        ``skip_damaged`` (restore): a damaged index file is noted in ``damaged`` instead of
        raised, so that the chunks the other index files name can still be restored."""
        names = self.backend.list(fmt.INDEX)

        def load(name: str) -> list[fmt.IndexEntry]:
            try:
                data = self._get_checked(name, fmt.check_id(name.removeprefix(fmt.INDEX),
                                                            name))
                return fmt.decode_index(self.crypto.open_file(fmt.INDEX_MAGIC, data, name))
            except CorruptRepository as exc:
                if not skip_damaged:
                    raise
                self.damaged.append(str(exc.args[0]))
                return []

        with ThreadPoolExecutor(FETCHERS) as pool:
            for entries in pool.map(load, names):
                for e in entries:
                    self.index.setdefault(e.id, e)
        return len(self.index)

    def missing_packs(self) -> tuple[int, int]:
        """(packs the index names that the backend lacks, packs the index names): nonzero
        while a seed's import is still under way."""
        wanted = {e.pack for e in self.index.values()}
        have = set()
        for name in self.backend.list(fmt.DATA):
            tail = name.rsplit("/", 1)[-1]
            if len(tail) == 64:
                with contextlib.suppress(ValueError):
                    have.add(bytes.fromhex(tail))
        return len(wanted - have), len(wanted)

    def claim(self, cid: bytes) -> bool:
        """True once for a chunk this repository lacks: the caller must store it."""
        if cid in self.index or cid in self.pending:
            return False
        self.pending.add(cid)
        return True

    def packed(self, pack: Pack) -> list[fmt.IndexEntry] | None:
        """Record a stored pack; returns a batch for an index file when one is due."""
        for e in pack.entries:
            self.index.setdefault(e.id, e)
            self.pending.discard(e.id)
        self.unindexed.extend(pack.entries)
        faults.reached("backup_after_pack")
        if self.lock is not None:
            self.lock.maybe_refresh()
        if len(self.unindexed) >= INDEX_EVERY:
            return self.take_unindexed()
        return None

    def take_unindexed(self) -> list[fmt.IndexEntry]:
        batch, self.unindexed = self.unindexed, []
        return batch

    def write_index(self, entries: list[fmt.IndexEntry]) -> int:
        """One new index file for ``entries``; returns its size."""
        data = self.crypto.seal_file(fmt.INDEX_MAGIC, fmt.encode_index(entries))
        self.backend.put(fmt.index_name(hashlib.sha256(data).digest()), data)
        faults.reached("after_index_file")
        return len(data)

    # -- chunks --------------------------------------------------------------------------

    def entry(self, cid: bytes) -> fmt.IndexEntry:
        e = self.index.get(cid)
        if e is None:
            why = (f"index file damaged: {self.damaged[0]}" if self.damaged else
                   "the repository is damaged or an index file is missing")
            raise CorruptRepository(f"chunk {cid.hex()[:16]} is in no readable index file; {why}")
        return e

    def read_chunk(self, cid: bytes) -> bytes:
        if self.lock is not None:
            self.lock.maybe_refresh()
        e = self.entry(cid)
        sealed = self.backend.read(fmt.pack_name(e.pack), e.offset, e.length)
        if len(sealed) != e.length:
            raise CorruptRepository(f"pack {e.pack.hex()[:16]} is shorter than its index says")
        return self.crypto.open_chunk(e.kind, cid, sealed, e.raw_len)

    # -- snapshots -----------------------------------------------------------------------

    def snapshots(self) -> list[SnapshotRef]:
        return list_snapshots(self.backend)

    def manifest(self, ref: SnapshotRef) -> fmt.Manifest:
        data = self._get_checked(ref.name, ref.id)
        return fmt.Manifest.decode(self.crypto.open_file(fmt.SNAPSHOT_MAGIC, data, ref.name))

    def manifests(self, refs: list[SnapshotRef]) -> list[fmt.Manifest]:
        with ThreadPoolExecutor(FETCHERS) as pool:
            return list(pool.map(self.manifest, refs))

    def tree(self, manifest: fmt.Manifest) -> Iterator[fmt.Node]:
        """The snapshot's entries in walk order, reading one tree chunk at a time."""
        for node, _ in self.tree_lines(manifest):
            yield node

    def tree_lines(self, manifest: fmt.Manifest, cache: TreeCache | None = None
                   ) -> Iterator[tuple[fmt.Node, bytes]]:
        """Each entry with the line it was decoded from: the next backup writes an entry
        that equals its parent's as that line, without encoding it again."""
        if cache is None:
            for line in fmt.split_lines(self._tree_chunks(manifest.tree)):
                yield fmt.Node.decode(line), line
            return
        for entries in self.tree_chunks(manifest, cache):
            for node, line, _ in entries:
                yield node, line

    def tree_chunks(self, manifest: fmt.Manifest, cache: TreeCache | None
                    ) -> Iterator[list[tuple[fmt.Node, bytes, fmt.LineAt]]]:
        """Each tree chunk's entries with their lines and places (``fmt.LineAt``: the tree
        stage takes a chunk whose every line is kept as it was, in order, by its id).
        With ``cache`` (backup's), a chunk found there (and passing its MAC) is neither
        read nor decoded; the others are read ahead as without it, then stored there."""
        for cid, pairs in self._tree_pairs(manifest, cache):
            n = len(pairs)
            yield [(node, line, (cid, i, n)) for i, (node, line) in enumerate(pairs)]

    def _tree_pairs(self, manifest: fmt.Manifest, cache: TreeCache | None
                    ) -> Iterator[tuple[bytes, list[tuple[fmt.Node, bytes]]]]:
        ids = manifest.tree
        if cache is None:
            for cid, chunk in zip(ids, self._tree_chunks(ids), strict=True):
                yield cid, [(fmt.Node.decode(line), line) for line in fmt.split_lines((chunk,))]
            return
        present = cache.present()
        misses = list(dict.fromkeys(cid for cid in ids if cid not in present))
        read = zip(misses, self._tree_chunks(tuple(misses)), strict=True)
        pending = set(misses)
        hits: list[bytes] = []                # the ids to take from the cache, in order
        for cid in ids:
            if cid in pending:
                pending.discard(cid)
            else:
                hits.append(cid)
        pending = set(misses)
        # The cache's files read ahead, FETCHERS at once (a cold disk's waits overlap),
        # each checked here as it is taken (``cache.get``).
        with ThreadPoolExecutor(FETCHERS) as pool:
            ahead = deque(pool.submit(cache.read, cid) for cid in hits[:FETCHERS])
            queued = len(ahead)
            for cid in ids:
                if cid not in pending:
                    raw = ahead.popleft().result()
                    if queued < len(hits):
                        ahead.append(pool.submit(cache.read, hits[queued]))
                        queued += 1
                    got = None if raw is None else cache.get(cid, raw)
                    if got is not None:
                        yield cid, got
                        continue
                    chunk = self._read_run([(cid, self.entry(cid))])[0]   # damaged, or gone
                else:
                    pending.discard(cid)
                    cid, chunk = next(read)
                entries = [(fmt.Node.decode(line), line) for line in fmt.split_lines((chunk,))]
                cache.put(cid, chunk, (node for node, _ in entries))
                yield cid, entries

    def _tree_chunks(self, ids: tuple[bytes, ...]) -> Iterator[bytes]:
        """The tree chunks in order, in runs of chunks lying back to back in one pack (as
        a backup writes them) read at once, up to FETCHERS runs read ahead: each read waits
        (a cold disk, an account's round trip: 65 chunks of this machine's 8,419-entry tree
        were 65 requests, now one or two), and the walk consuming them should not wait for
        each in turn.  Memory: FETCHERS runs of at most RUN_BYTES."""
        with ThreadPoolExecutor(FETCHERS) as pool:
            ahead: deque[Future[list[bytes]]] = deque()
            for run in self._runs(ids):
                ahead.append(pool.submit(self._read_run, run))
                if len(ahead) >= FETCHERS:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()

    def _runs(self, ids: tuple[bytes, ...]) -> Iterator[list[tuple[bytes, fmt.IndexEntry]]]:
        """``ids`` with their index entries, cut where the next does not follow in the same
        pack or the run would pass RUN_BYTES."""
        run: list[tuple[bytes, fmt.IndexEntry]] = []
        size = 0
        for cid in ids:
            e = self.entry(cid)
            if run and (e.pack != run[-1][1].pack or size + e.length > RUN_BYTES
                        or e.offset != run[-1][1].offset + run[-1][1].length):
                yield run
                run, size = [], 0
            run.append((cid, e))
            size += e.length
        if run:
            yield run

    def _read_run(self, run: list[tuple[bytes, fmt.IndexEntry]]) -> list[bytes]:
        """The chunks of one run, from one read, each opened and checked against its id."""
        if self.lock is not None:
            self.lock.maybe_refresh()
        first, last = run[0][1], run[-1][1]
        length = last.offset + last.length - first.offset
        data = self.backend.read(fmt.pack_name(first.pack), first.offset, length)
        if len(data) != length:
            raise CorruptRepository(f"pack {first.pack.hex()[:16]} is shorter than its index "
                                    "says")
        view = memoryview(data)
        return [self.crypto.open_chunk(e.kind, cid, view[e.offset - first.offset:
                                                         e.offset - first.offset + e.length],
                                       e.raw_len) for cid, e in run]

    def write_snapshot(self, manifest: fmt.Manifest, when: datetime) -> SnapshotRef:
        data = self.crypto.seal_file(fmt.SNAPSHOT_MAGIC, manifest.encode())
        sid = hashlib.sha256(data).digest()
        name = fmt.snapshot_name(when, sid)
        self.backend.put(name, data)
        return SnapshotRef(name, when.astimezone(UTC), sid)

    def _get_checked(self, name: str, expect: bytes) -> bytes:
        data = self.backend.get(name)
        if data is None:
            raise CorruptRepository(f"{name} vanished from {self.backend.name}")
        if hashlib.sha256(data).digest() != expect:
            raise CorruptRepository(f"{name}: content does not match its name (damaged)")
        return data


def find_snapshot(refs: list[SnapshotRef], wanted: str | None) -> SnapshotRef:
    """The latest snapshot, or the one whose id starts with ``wanted`` (8+ hex digits)."""
    if not refs:
        raise BadInput("the repository has no snapshot yet; run `pipeline backup` first")
    if wanted is None or wanted == "latest":
        return refs[-1]
    w = wanted.lower()
    if any(c not in "0123456789abcdef" for c in w):
        raise BadInput(f"--snapshot {wanted} is not a snapshot id (hex digits); give one from "
                       "`pipeline snapshots`, or latest")
    if len(w) < 8:
        raise BadInput(f"--snapshot {wanted} is too short to pick one snapshot safely; give 8 "
                       "or more hex digits of an id from `pipeline snapshots`")
    hits = [r for r in refs if r.hex.startswith(w)]
    if len(hits) != 1:
        why = "is ambiguous" if len(hits) > 1 else "matches no snapshot"
        raise BadInput(f"--snapshot {wanted} {why}; give 8 or more hex digits of an id from "
                       "`pipeline snapshots`")
    return hits[0]


def hostname() -> str:
    """socket.gethostname() (the kernel's node name), without importing socket."""
    return os.uname().nodename


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
