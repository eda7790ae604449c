"""check_repository(): is every snapshot restorable, and if not, what is lost.

Structure first (restic's ``check``): the config, every key file (its name is the
hash of its bytes), every index file (readable, decrypts, decodes), every pack an
index names present with the size its entries imply, every snapshot readable with
its whole tree, and every chunk a snapshot's file names present in the index.
With ``read_data`` (or a subset), every chosen pack is read whole: its bytes hash
to its name, its header lists what the index says, and every chunk decrypts and
hashes to its id.  Each damaged or missing pack is named with the snapshots and
files that lose a chunk to it (a chunk with a good copy in another pack loses
nothing).  Packs no index names are leftovers of an interrupted backup or prune:
reported, not damage (the next ``prune`` removes them).

Reads only; holds a shared lock.  The walk of the trees runs in a worker thread,
the packs are read by ``readers`` threads at once.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from pipeline.backup import crypto
from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository, printable
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.backup.shape import TreeShape, renamed
from pipeline.errors import BadInput
from pipeline.progress import Stats

AFFECTED_SHOWN = 20             # files named per snapshot and pack; the rest counted


@dataclass
class Report:
    """What check found: ``problems`` is empty exactly when the repository is sound."""

    problems: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)   # packs no index names
    snapshots: int = 0
    index_files: int = 0
    packs: int = 0
    chunks: int = 0
    packs_read: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)   # snapshot hex -> paths

    def summary(self) -> dict[str, object]:
        return {"snapshots": self.snapshots, "index_files": self.index_files,
                "packs": self.packs, "chunks": self.chunks, "packs_read": self.packs_read,
                "problems": len(self.problems), "damaged_packs": self.damaged_packs,
                "unreferenced_packs": len(self.unreferenced),
                "affected": {k: v for k, v in self.affected.items()}}


def parse_subset(text: str) -> tuple[str, float, int]:
    """``--read-data-subset``: ``N%`` (a random share of the packs) or ``n/t`` (the n-th of
    t fixed groups, by pack id, so t runs read every pack once, as restic's)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if m and 0 < float(m[1]) <= 100:
        return "percent", float(m[1]), 0
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m and 1 <= int(m[1]) <= int(m[2]):
        return "group", int(m[1]), int(m[2])
    raise BadInput(f"--read-data-subset {text}: give a share of the packs as N% (0 < N <= "
                   "100) or n/t (1 <= n <= t), e.g. 10% or 1/5")


def choose(packs: list[bytes], subset: str | None, rng: random.Random | None = None
           ) -> list[bytes]:
    """The packs ``--read-data-subset`` picks (all of them when None)."""
    if subset is None:
        return sorted(packs)
    kind, a, b = parse_subset(subset)
    if kind == "percent":
        n = min(len(packs), math.ceil(len(packs) * a / 100))
        return sorted((rng or random.SystemRandom()).sample(sorted(packs), n))
    return sorted(p for p in packs if p[0] % b == int(a) - 1)


def expected_size(entries: Iterable[fmt.IndexEntry]) -> int:
    """A pack's size from its entries: blobs, sealed header, padding, trailer."""
    entries = list(entries)
    blobs = max((e.offset + e.length for e in entries), default=0)
    header = fmt.SEAL_OVERHEAD + 4 + 45 * len(entries)
    used = blobs + header + fmt.TRAILER_LEN
    return used + (-used % fmt.ALIGN)


class Checker:
    """One check run's state: the index as every file says it, and what is wrong."""

    def __init__(self, repo: Repository, stats: Stats) -> None:
        self.repo, self.stats = repo, stats
        self.report = Report()
        self.packs: dict[bytes, dict[int, fmt.IndexEntry]] = defaultdict(dict)
        self.where: dict[bytes, dict[bytes, fmt.IndexEntry]] = defaultdict(dict)  # chunk ->
        # pack -> its entry there: a chunk two backups stored at once is in two packs
        self.sizes: dict[bytes, int] = {}                          # packs present, their size
        self.bad_packs: dict[bytes, str] = {}                      # pack -> why
        self.bad_chunks: set[bytes] = set()                        # unreadable in some pack
        self.refs: list[SnapshotRef] = []

    def problem(self, line: str) -> None:
        self.report.problems.append(line)

    # -- structure -------------------------------------------------------------------

    def structure(self) -> None:
        """Keys, index files, packs present and sized, snapshots and their trees."""
        self._keys()
        self._index()
        self._packs()
        self._snapshots()

    def _keys(self) -> None:
        for name in self.repo.backend.list(fmt.KEYS):
            data = self.repo.backend.get(name) or b""
            try:
                if hashlib.sha256(data).digest() != fmt.check_id(name.removeprefix(fmt.KEYS),
                                                                 name):
                    raise CorruptRepository(f"{name}: content does not match its name")
                obj = fmt.decode_json(data, name)
                if not {"kdf", "nonce", "data"} <= obj.keys():
                    raise CorruptRepository(f"{name} lacks kdf, nonce or data")
            except CorruptRepository as exc:
                self.problem(f"key file {exc}")

    def _index(self) -> None:
        repo = self.repo
        for name in repo.backend.list(fmt.INDEX):
            self.report.index_files += 1
            try:
                data = repo._get_checked(name, fmt.check_id(name.removeprefix(fmt.INDEX), name))
                entries = fmt.decode_index(repo.crypto.open_file(fmt.INDEX_MAGIC, data, name))
            except CorruptRepository as exc:
                self.problem(f"index file {name}: {exc}; the chunks it names may be lost "
                             "(their packs are listed as unreferenced below)")
                continue
            for e in entries:
                self.packs[e.pack][e.offset] = e
                self.where[e.id][e.pack] = e
        self.report.chunks = len(self.where)

    def _packs(self) -> None:
        backend = self.repo.backend
        for name in backend.list(fmt.DATA):
            tail = name.rsplit("/", 1)[-1]
            if not re.fullmatch(r"[0-9a-f]{64}", tail) or name != fmt.pack_name(
                    bytes.fromhex(tail)):
                self.problem(f"{name} is not a pack name of this repository")
                continue
            size = backend.size(name)
            if size is not None:
                self.sizes[bytes.fromhex(tail)] = size
        self.report.packs = len(self.sizes)
        for pack, entries in sorted(self.packs.items()):
            size, want = self.sizes.get(pack), expected_size(entries.values())
            if size is None:
                self.bad_packs[pack] = "missing"
            elif size != want:
                self.bad_packs[pack] = f"{size} bytes, its index entries say {want}"
        self.report.unreferenced = sorted(fmt.pack_name(p) for p in self.sizes
                                          if p not in self.packs)
        self._use_good_copies()

    def _use_good_copies(self) -> None:
        """The repository's index as restore would use it, each chunk from a pack that is
        there and sound as far as known: trees are read through it."""
        index = self.repo.index
        index.clear()
        for cid, packs in self.where.items():
            good = sorted(p for p in packs if p not in self.bad_packs)
            index[cid] = packs[(good or sorted(packs))[0]]

    def _snapshots(self) -> None:
        repo = self.repo
        for ref in repo.snapshots():
            self.report.snapshots += 1
            try:
                manifest = repo.manifest(ref)
            except CorruptRepository as exc:
                self.problem(f"snapshot {ref.hex[:16]}: {exc}")
                continue
            self.refs.append(ref)
            why = renamed(ref, manifest)
            if why is not None:
                self.problem(f"snapshot {ref.hex[:16]}: {why}")
            missing = 0
            shape: TreeShape | None = TreeShape()
            try:
                for node in repo.tree(manifest):
                    why = shape.add(node) if shape is not None else None
                    if why is not None:
                        shape = None        # one line: the first is enough to refuse it
                        self.problem(f"snapshot {ref.hex[:16]}: its file tree is malformed "
                                     f"(restore refuses it): {why}")
                        self.report.affected.setdefault(ref.hex, []).append(
                            "(the whole snapshot)")
                    lost = [c for c, _ in node.content if c is not None and c not in self.where]
                    if lost:
                        missing += 1
                        if missing <= AFFECTED_SHOWN:
                            self.problem(f"snapshot {ref.hex[:16]}: {printable(node.path)}: chunk "
                                         f"{lost[0].hex()[:16]} is in no index file")
            except CorruptRepository as exc:
                self.problem(f"snapshot {ref.hex[:16]}: its file tree is unreadable: {exc}")
            if missing > AFFECTED_SHOWN:
                self.problem(f"snapshot {ref.hex[:16]}: {missing - AFFECTED_SHOWN} more files "
                             "with chunks in no index file")

    # -- data ------------------------------------------------------------------------

    def read_pack(self, pack: bytes) -> None:
        """Read one pack whole: its hash, its header against the index, every chunk."""
        name = fmt.pack_name(pack)
        try:
            data = self.repo.backend.get(name)
        except CorruptRepository as exc:       # not a file, or too large to be a pack
            self.bad_packs[pack] = str(exc)
            self.bad_chunks.update(e.id for e in self.packs[pack].values())
            return
        if data is None:
            self.bad_packs[pack] = "missing"
            return
        why = []
        if self.repo.crypto.pack_hash(data).digest() != pack:
            why.append("content does not match its name")
        try:
            hoff, hlen = fmt.decode_pack_trailer(data)
            header = fmt.decode_pack_header(self.repo.crypto.open(
                data[hoff:hoff + hlen], crypto.PACK_HEADER_AAD, f"{name} header"))
            listed = {(h.offset, h.id) for h in header}
            if listed != {(e.offset, e.id) for e in self.packs[pack].values()}:
                why.append("its header lists other chunks than the index")
        except CorruptRepository as exc:
            why.append(str(exc))
        bad = 0
        for e in self.packs[pack].values():
            try:
                self.repo.crypto.open_chunk(e.kind, e.id, data[e.offset:e.offset + e.length],
                                            e.raw_len)
            except CorruptRepository:
                bad += 1
                self.bad_chunks.add(e.id)
        if bad:
            why.append(f"{bad} of {len(self.packs[pack])} chunks do not decrypt or do not "
                       "match their ids")
        if why:
            self.bad_packs[pack] = "; ".join(why)

    # -- what damage affects -----------------------------------------------------------

    def lost_chunks(self) -> set[bytes]:
        """Chunks with no sound copy: in damaged packs only (or in no index at all)."""
        lost = set()
        for pack, why in self.bad_packs.items():
            whole = why == "missing" or "bytes, its index" in why
            for e in self.packs[pack].values():
                if not whole and e.id not in self.bad_chunks:
                    continue
                others = self.where[e.id].keys() - {pack}
                if not any(o not in self.bad_packs for o in others):
                    lost.add(e.id)
        return lost

    def affected(self) -> None:
        """Name each damaged pack with the snapshots and files it takes chunks from."""
        lost = self.lost_chunks()
        by_pack: dict[bytes, set[bytes]] = defaultdict(set)
        for pack in self.bad_packs:
            by_pack[pack] = {e.id for e in self.packs[pack].values() if e.id in lost}
        hits: dict[bytes, list[str]] = defaultdict(list)
        for ref in self.refs:
            manifest = self.repo.manifest(ref)
            trees = [t for t in manifest.tree if t in lost or t not in self.where]
            if trees:
                for pack, ids in by_pack.items():
                    if ids & set(trees):
                        hits[pack].append(f"snapshot {ref.hex[:16]} (its whole file tree)")
                self.report.affected.setdefault(ref.hex, []).append("(the whole snapshot)")
                continue
            for node in self.repo.tree(manifest):
                gone = {c for c, _ in node.content if c in lost}
                if not gone:
                    continue
                self.report.affected.setdefault(ref.hex, []).append(node.path)
                for pack, ids in by_pack.items():
                    if ids & gone:
                        hits[pack].append(f"snapshot {ref.hex[:16]}: {printable(node.path)}")
        for pack, why in sorted(self.bad_packs.items()):
            self.report.damaged_packs.append(fmt.pack_name(pack))
            uses = hits.get(pack, [])
            what = ("no snapshot loses anything to it (its chunks have sound copies or no "
                    "snapshot uses them)" if not uses else
                    f"affects {len(uses)} file(s) or tree(s)")
            self.problem(f"pack {fmt.pack_name(pack)}: {why}; {what}")
            for use in uses[:AFFECTED_SHOWN]:
                self.problem(f"  {use}")
            if len(uses) > AFFECTED_SHOWN:
                self.problem(f"  and {len(uses) - AFFECTED_SHOWN} more")


async def check_repository(repo: Repository, stats: Stats, read_data: bool = False,
                           subset: str | None = None, readers: int = 4) -> Report:
    """Check ``repo``; returns the report (problems empty when it is sound)."""
    checker = Checker(repo, stats)
    await trio.to_thread.run_sync(checker.structure)
    if read_data or subset is not None:
        chosen = [p for p in choose(list(checker.packs), subset) if p in checker.sizes]
        stats.files_total = len(chosen)
        stats.bytes_total = sum(checker.sizes[p] for p in chosen)
        limiter = trio.CapacityLimiter(readers)

        async def one(pack: bytes) -> None:
            await trio.to_thread.run_sync(checker.read_pack, pack, limiter=limiter)
            stats.files_done += 1
            stats.bytes_read += checker.sizes[pack]

        async with trio.open_nursery() as nursery:
            for pack in chosen:
                nursery.start_soon(one, pack)
        checker.report.packs_read = len(chosen)
    if checker.bad_packs:
        await trio.to_thread.run_sync(checker.affected)
    return checker.report
