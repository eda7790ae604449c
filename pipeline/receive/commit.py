"""Stage: commit every blob of a drive whose cells all imported drives now cover.

A blob becomes visible only here, complete, and the copy log says so: ``ok``, or
``unvouched`` from a drive that cannot vouch for itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline.drive import format
from pipeline.receive import disposition
from pipeline.receive.copylog import CopyLog
from pipeline.receive.markers import marker_name, newest_versions, read_markers
from pipeline.storage.base import Storage

COMMIT_BATCH = 256  # blobs committed per storage thread call
COMMITTERS = 4  # commit batches in flight at once (each a storage thread call), unless
# the store says how many of its calls at once help (``writers``: a local account, 1)


def cells_of(size: int) -> list[int]:
    return list(format.grid(size))


@dataclass(slots=True)
class FileOnDrive:
    """One file of the drive as the import goes: cells delivered, zero, damaged."""

    entry: format.FileEntry
    cells: set[int] = field(default_factory=set)
    zero: frozenset[int] = frozenset()  # shared while empty: a set a file cost 216 B each
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # offset -> (status, why)
    note: dict[str, str] | None = None  # the copy log's disposition fields (a dataset's file)
    committed: bool = False  # by the uploaders, as soon as its last cell was written
    md5: Any = None  # a dataset file's Content-MD5 as its parts go (disposition.md5_feed)


def whole_here(fd: FileOnDrive) -> bool:
    """Every cell of the file delivered or zero by this drive alone, none damaged: it can
    be committed at once, no other drive's marker needed.  Cheap (counts) until the last
    cell, for the uploaders call it after every part."""
    n = format.grid_cells(fd.entry.size)
    return (not fd.bad and not fd.committed and len(fd.cells) + len(fd.zero) >= n
            and len(fd.cells | fd.zero) == n)


def commit_files(store: Storage, container: str, btype: format.BlobType,
                 fds: list[FileOnDrive], other_zero: dict[int, set[int]] | None = None) -> None:
    """Commit these files' blobs (runs in a storage thread); ``other_zero``: zero cells
    other drives' markers add."""
    for fd in fds:
        f = fd.entry
        zeros = fd.zero | other_zero[f.file_id] if other_zero and f.file_id in other_zero \
            else fd.zero
        c, b, t = disposition.where(f, container, btype)  # a dataset's file: its own
        store.commit(c, b, t, f.size, sorted(zeros))
        if f.attrs is not None:
            store.set_attributes(c, b, t, f.attrs.metadata, disposition.properties_of(fd))


async def commit_ready(store: Storage, container: str, sb: format.Superblock,
                        on_drive: dict[int, FileOnDrive], log: CopyLog,
                        net: trio.CapacityLimiter, vouched: bool = True) -> None:
    """Commit each file of this drive whose cells every imported drive now covers.

    From a drive that cannot vouch for itself (``vouched`` false: its records come
    from a walk of the log), a committed blob is "unvouched", not "ok": every byte
    checks, but a newer copy of the file may lie on another drive, which only the
    closing index (rewritten by prep when that happens) or the journal would say.
    """
    done = "ok" if vouched else "unvouched"
    why = "" if vouched else ("every extent checks, but the drive has no intact closing index "
                              "to vouch that this is the newest copy; import the session's "
                              "other drives, or compare with the source (pipeline repair)")
    # The other drives' markers; this drive's own cells are the ones in ``on_drive``.
    markers = await read_markers(store, sb.session_id, net,
                                 skip=marker_name(sb.session_id, sb.drive_seq))
    cells: dict[int, set[int]] = {}
    zero: dict[int, set[int]] = {}
    where: dict[int, set[int]] = {}
    for m in markers:
        for f in m["files"]:
            cells.setdefault(f["file_id"], set()).update(f["cells"])
            zero.setdefault(f["file_id"], set()).update(f["zero"])
            where.setdefault(f["file_id"], set()).add(m["seq"])
    newest = newest_versions(markers)
    btype = sb.blob_type

    def commit_all(entries: list[format.FileEntry]) -> None:
        commit_files(store, container, btype, [on_drive[f.file_id] for f in entries], zero)

    # The copy log's lines in the order one commit at a time wrote them: a line now, or
    # a batch's "ok" lines once the batch is committed.  The batches are committed
    # several at once (COMMITTERS), and each one's lines wait for it alone.
    # A file the uploaders committed stands for its own "ok" line (a line built for each
    # of 100,000 files held 30 MiB until the end).
    lines: list[tuple[str, str, str, int, dict] | int | FileOnDrive] = []
    batches: list[list[format.FileEntry]] = [[]]
    for fd in on_drive.values():
        if fd.committed:  # whole on this drive: the uploaders committed it already
            line = fd if not fd.bad else _not_ready(fd, sb.drive_seq, {}, {}, {}, {})
            if line is not None:
                lines.append(line)
                continue
        line = _not_ready(fd, sb.drive_seq, newest, cells, zero, where)
        if line is not None:
            lines.append(line)
            continue
        batches[-1].append(fd.entry)
        if len(batches[-1]) >= COMMIT_BATCH:
            lines.append(len(batches) - 1)
            batches.append([])
    lines.append(len(batches) - 1)
    done_events = [trio.Event() for _ in batches]

    async def committer(k: int, limit: trio.CapacityLimiter) -> None:
        async with limit:
            await trio.to_thread.run_sync(commit_all, batches[k], limiter=net)
        done_events[k].set()

    async with trio.open_nursery() as nursery:
        limit = trio.CapacityLimiter(getattr(store, "writers", COMMITTERS))
        for k in range(len(batches)):
            nursery.start_soon(committer, k, limit)
        for line in lines:
            if isinstance(line, int):
                await done_events[line].wait()
                for f in batches[line]:
                    log.blob(done, f.blob, why, f.size, file_id=f.file_id,
                             **(on_drive[f.file_id].note or {}))
            elif isinstance(line, FileOnDrive):
                f = line.entry
                log.blob(done, f.blob, why, f.size, file_id=f.file_id, **(line.note or {}))
            else:
                status, blob, reason, size, extra = line
                log.blob(status, blob, reason, size, **extra)


def _not_ready(fd: FileOnDrive, seq: int, newest: dict[str, int], cells: dict[int, set[int]],
               zero: dict[int, set[int]], where: dict[int, set[int]]
               ) -> tuple[str, str, str, int, dict] | None:
    """The copy log's line for a file this drive (``seq``) does not commit (and why), or
    None.  ``cells``, ``zero`` and ``where`` are the other drives' (their markers)."""
    f = fd.entry
    if newest.get(f.blob, 0) > f.file_id:
        return ("skipped", f.blob, "superseded by a newer copy of the file", f.size, {})
    if fd.bad:
        first = min(fd.bad)
        status, why = fd.bad[first]
        return (status, f.blob, f"extent at {first}: {why}", f.size,
                {"bad_extents": len(fd.bad)})
    grid = format.grid(f.size)
    have = fd.cells | fd.zero  # on the grid, inside the file: check_plan saw to it
    if len(have) == len(grid):
        return None  # the whole file is on this drive: no other drive's marker needed
    have |= cells.get(f.file_id, set()) | zero.get(f.file_id, set())
    missing = [c for c in grid if c not in have]
    if missing:
        return ("skipped", f.blob, f"continues on another drive ({len(missing)} of "
                f"{len(grid)} extents); completes when that drive is imported",
                f.size, {"drives": sorted(where.get(f.file_id, set()) | {seq})})
    return None
