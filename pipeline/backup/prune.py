"""prune(): free what no snapshot uses, under the exclusive lock, crash-safe.

Plan (reads only): every index file, every pack's size, every snapshot's tree ->
the chunks in use, each at one location (a chunk two backups stored twice keeps
one copy).  A pack none of whose chunks is used is deleted; a pack partly unused
is repacked (its used chunks copied, still sealed, into new packs) while the
unused bytes left exceed ``max_unused`` percent of the used ones (restic's
``--max-unused``, default 5%); packs no index names (an interrupted backup's or
prune's) are deleted.  A snapshot that cannot be read, or a chunk in use with no
pack left, stops the plan: prune never deletes on a damaged repository (run check).

Then, in this order, so that a kill -9 at any point loses nothing a snapshot uses:

1. new packs stored (each chunk checked against its id before it is copied);
2. new index files naming every kept pack's chunks and the new packs';
3. the old index files deleted (until then both name each kept chunk);
4. the packs no longer named deleted.

Killed in 1, the new packs are leftovers no index names (the next prune deletes
them); in 2 or 3, two index files name some chunks (both copies are there); in
4, only packs no index names remain.  ``check`` passes after each.  Any prune that
deletes a pack replaces every index file, so nothing names what it deleted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline import faults
from pipeline.backup import encoding as fmt
from pipeline.backup.check import expected_size
from pipeline.backup.errors import CorruptRepository, RepositoryDamaged
from pipeline.backup.repo import INDEX_EVERY, PackBuilder, Repository, SnapshotRef
from pipeline.progress import Stats

POINTS = ("prune_after_pack", "prune_after_index", "prune_after_index_delete",
          "prune_after_pack_delete", "forget_after_delete")


@dataclass
class Plan:
    """What one prune will do, and the figures ``--dry-run`` shows."""

    index_files: list[str] = field(default_factory=list)
    entries: dict[bytes, list[fmt.IndexEntry]] = field(default_factory=dict)  # pack -> all
    sizes: dict[bytes, int] = field(default_factory=dict)       # packs present
    used: dict[bytes, fmt.IndexEntry] = field(default_factory=dict)  # chunk -> its copy
    keep: set[bytes] = field(default_factory=set)
    repack: list[bytes] = field(default_factory=list)
    delete: list[bytes] = field(default_factory=list)           # unused or repacked after
    leftovers: list[bytes] = field(default_factory=list)        # no index names them
    missing: list[bytes] = field(default_factory=list)          # named, absent, unused
    used_bytes: int = 0
    unused_bytes: int = 0
    unused_after: int = 0

    @property
    def changes(self) -> bool:
        return bool(self.repack or self.delete or self.leftovers or self.missing)

    def summary(self) -> dict[str, object]:
        freed = sum(self.sizes.get(p, 0) for p in (*self.delete, *self.repack,
                                                    *self.leftovers))
        return {"packs": len(self.sizes), "packs_deleted": len(self.delete),
                "packs_repacked": len(self.repack), "leftover_packs": len(self.leftovers),
                "missing_unused_packs": len(self.missing), "chunks_used": len(self.used),
                "used_bytes": self.used_bytes, "unused_bytes": self.unused_bytes,
                "unused_bytes_after": self.unused_after, "bytes_freed_at_most": freed}


def used_chunks(repo: Repository, refs: list[SnapshotRef]) -> set[bytes]:
    """Every chunk a snapshot names: tree chunks and file chunks (``repo.index`` loaded)."""
    used: set[bytes] = set()
    problems = []
    for ref in refs:
        try:
            manifest = repo.manifest(ref)
            used.update(manifest.tree)
            for node in repo.tree(manifest):
                used.update(c for c, _ in node.content if c is not None)
        except CorruptRepository as exc:
            problems.append(f"snapshot {ref.hex[:16]}: {exc}")
    if problems:
        raise RepositoryDamaged(f"prune deleted nothing: {len(problems)} snapshots cannot be "
                                "read; run pipeline check, then forget the damaged snapshots",
                                problems)
    return used


def _load(repo: Repository, plan: Plan) -> dict[bytes, dict[bytes, fmt.IndexEntry]]:
    """Every index file's entries (a damaged one stops prune); chunk -> pack -> entry."""
    where: dict[bytes, dict[bytes, fmt.IndexEntry]] = defaultdict(dict)
    by_pack: dict[bytes, dict[int, fmt.IndexEntry]] = defaultdict(dict)
    for name in repo.backend.list(fmt.INDEX):
        try:
            data = repo._get_checked(name, fmt.check_id(name.removeprefix(fmt.INDEX), name))
            entries = fmt.decode_index(repo.crypto.open_file(fmt.INDEX_MAGIC, data, name))
        except CorruptRepository as exc:
            raise RepositoryDamaged(f"prune deleted nothing: index file {name} is damaged; "
                                    "run pipeline check", [str(exc)]) from None
        plan.index_files.append(name)
        for e in entries:
            by_pack[e.pack][e.offset] = e
            where[e.id][e.pack] = e
    plan.entries = {p: sorted(es.values(), key=lambda e: e.offset) for p, es in by_pack.items()}
    for name in repo.backend.list(fmt.DATA):
        tail = name.rsplit("/", 1)[-1]
        if len(tail) == 64 and name == fmt.pack_name(bytes.fromhex(tail)):
            size = repo.backend.size(name)
            if size is not None:
                plan.sizes[bytes.fromhex(tail)] = size
    return where


def make_plan(repo: Repository, max_unused: float = 5.0,
              forgotten: Sequence[SnapshotRef] = ()) -> Plan:
    """What to delete and what to repack (sync: call in a thread).  ``forgotten``: the
    snapshots ``forget --prune --dry-run`` would remove first, planned as gone."""
    plan = Plan()
    where = _load(repo, plan)
    present = {p for p in plan.entries if plan.sizes.get(p) == expected_size(plan.entries[p])}
    repo.index.clear()
    for cid, packs in where.items():     # read trees from a sound copy
        repo.index[cid] = packs[min(packs, key=lambda p: (p not in present, p))]
    gone = {ref.name for ref in forgotten}
    used = used_chunks(repo, [ref for ref in repo.snapshots() if ref.name not in gone])
    lost = []
    for cid in sorted(used):
        copies = sorted(p for p in where.get(cid, {}) if p in present)
        if not copies:
            lost.append(f"chunk {cid.hex()[:16]} is in no pack that is there")
            continue
        plan.used[cid] = where[cid][copies[0]]
    if lost:
        raise RepositoryDamaged(f"prune deleted nothing: {len(lost)} chunks snapshots use are "
                                "missing; run pipeline check", lost[:20])
    used_in: dict[bytes, int] = defaultdict(int)
    for e in plan.used.values():
        used_in[e.pack] += e.length
    partial = []
    for pack, entries in plan.entries.items():
        if pack not in plan.sizes:
            plan.missing.append(pack)
            continue
        total = sum(e.length for e in entries)
        plan.used_bytes += used_in[pack]
        plan.unused_bytes += total - used_in[pack]
        if used_in[pack] == 0:
            plan.delete.append(pack)
        elif total > used_in[pack]:
            partial.append((used_in[pack] / total, pack, total - used_in[pack]))
        else:
            plan.keep.add(pack)
    plan.leftovers = sorted(p for p in plan.sizes if p not in plan.entries)
    left = sum(u for _, _, u in partial)
    for _, pack, unused in sorted(partial):          # most unused first
        if left > plan.used_bytes * max_unused / 100:
            plan.repack.append(pack)
            left -= unused
        else:
            plan.keep.add(pack)
    plan.unused_after = left
    return plan


def _repack(repo: Repository, plan: Plan, stats: Stats) -> list[fmt.IndexEntry]:
    """Step 1: the used chunks of the packs to repack, into new packs; their entries."""
    builder = PackBuilder(repo.config.pack_size)
    new: list[fmt.IndexEntry] = []

    def store() -> None:
        pack = builder.finish(repo.crypto)
        repo.backend.put(pack.name, pack.data)
        stats.bytes_written += len(pack.data)
        new.extend(pack.entries)
        faults.reached("prune_after_pack")

    for pack in plan.repack:
        data = repo.backend.get(fmt.pack_name(pack))
        if data is None:
            raise RepositoryDamaged("prune deleted nothing: a pack vanished while it ran",
                                    [fmt.pack_name(pack)])
        for e in plan.entries[pack]:
            if plan.used.get(e.id) is not e:
                continue
            sealed = data[e.offset:e.offset + e.length]
            try:
                repo.crypto.open_chunk(e.kind, e.id, sealed, e.raw_len)
            except CorruptRepository as exc:
                raise RepositoryDamaged("prune deleted nothing: a chunk to copy is damaged; "
                                        "run pipeline check --read-data",
                                        [f"pack {fmt.pack_name(pack)}: {exc}"]) from None
            builder.add(e.kind, e.id, (sealed[:fmt.NONCE_LEN], sealed[fmt.NONCE_LEN:]),
                        e.raw_len)
            if builder.full:
                store()
        stats.files_done += 1
        stats.bytes_read += len(data)
    if builder.entries:
        store()
    return new


def execute(repo: Repository, plan: Plan, stats: Stats) -> None:
    """Steps 1 to 4 of the module docstring (sync: call in a thread; hold the exclusive lock)."""
    if not plan.changes:
        return
    stats.files_total = len(plan.repack)
    stats.bytes_total = sum(plan.sizes[p] for p in plan.repack)
    new = _repack(repo, plan, stats)
    kept = [e for p in sorted(plan.keep) for e in plan.entries[p]] + new
    for i in range(0, len(kept), INDEX_EVERY):
        stats.bytes_written += repo.write_index(kept[i:i + INDEX_EVERY])
    faults.reached("prune_after_index")
    for name in plan.index_files:
        repo.backend.delete(name)
        faults.reached("prune_after_index_delete")
    for pack in (*plan.delete, *plan.repack, *plan.leftovers):
        repo.backend.delete(fmt.pack_name(pack))
        faults.reached("prune_after_pack_delete")
    repo.index.clear()
    for e in kept:
        repo.index.setdefault(e.id, e)


def forget_snapshots(repo: Repository, refs: list[SnapshotRef]) -> None:
    """Delete the snapshot files (sync; hold the exclusive lock); their data stays until
    a prune."""
    for ref in refs:
        repo.backend.delete(ref.name)
        faults.reached("forget_after_delete")
