"""Stage: commit every blob of a drive whose cells all imported drives now cover.

A blob becomes visible only here, complete, and the copy log says so: ``ok``, or
``unvouched`` from a drive that cannot vouch for itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from pipeline.drive import format
from pipeline.receive.copylog import CopyLog
from pipeline.receive.markers import newest_versions, read_markers
from pipeline.storage.base import Storage

COMMIT_BATCH = 256  # blobs committed per storage thread call


def cells_of(size: int) -> list[int]:
    return list(format.grid(size))


@dataclass
class FileOnDrive:
    """One file of the drive as the import goes: cells delivered, zero, damaged."""

    entry: format.FileEntry
    cells: set[int] = field(default_factory=set)
    zero: set[int] = field(default_factory=set)
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # offset -> (status, why)


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
    markers = await read_markers(store, sb.session_id, net)
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
    ready: list[format.FileEntry] = []

    def commit_all(entries: list[format.FileEntry]) -> None:
        for f in entries:
            store.commit(container, f.blob, btype, f.size, sorted(zero.get(f.file_id, set())))

    async def flush() -> None:
        await trio.to_thread.run_sync(commit_all, ready, limiter=net)
        for f in ready:
            log.blob(done, f.blob, why, f.size, file_id=f.file_id)
        ready.clear()

    for fd in on_drive.values():
        f = fd.entry
        if newest.get(f.blob, 0) > f.file_id:
            log.blob("skipped", f.blob, "superseded by a newer copy of the file", f.size)
            continue
        if fd.bad:
            first = min(fd.bad)
            status, why = fd.bad[first]
            log.blob(status, f.blob, f"extent at {first}: {why}", f.size,
                     bad_extents=len(fd.bad))
            continue
        have = cells.get(f.file_id, set()) | zero.get(f.file_id, set())
        missing = [c for c in cells_of(f.size) if c not in have]
        if missing:
            log.blob("skipped", f.blob, f"continues on another drive ({len(missing)} of "
                     f"{len(cells_of(f.size))} extents); completes when that drive is "
                     "imported", f.size, drives=sorted(where.get(f.file_id, ())))
            continue
        ready.append(f)
        if len(ready) >= COMMIT_BATCH:
            await flush()
    await flush()
