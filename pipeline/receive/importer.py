"""import_drive(): one drive into a storage account; the wiring of the import's stages.

::

    plan (plan.py: journal, closing index or a walk of the log; check_plan)
      -> extract (cpu threads: read + decrypt 16 MiB windows, decompress, xxh3-128)
         -> Parts -> upload x UPLOADERS (storage threads: write_part)
      -> marker "parts" (markers.py) -> commit (commit.py: complete blobs) -> marker "done"

Files can span drives, and drives arrive in any order, in separate runs.  The
storage account itself keeps the state: each imported drive leaves a marker
(``STATE_CONTAINER/SESSION/drive-NN.json``) listing the grid cells it delivered
for each file.  A blob is committed (made visible, complete) when the markers of
the imported drives cover all its cells, so a file completes when its last drive
is imported.  Partial blobs are never visible as complete.

A marker is first written as ``parts`` (data delivered), then ``done`` once its
commits are through: re-importing a ``done`` drive changes nothing and says so; a
``parts`` drive (a crash mid-import) is simply imported again.  Every name the
commands use is here: the stages' modules are the import's rooms, this is its door.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from pipeline.drive import format
from pipeline.receive import commit, disposition, extract, upload
from pipeline.receive import reader as driveread
from pipeline.receive.commit import FileOnDrive, cells_of
from pipeline.receive.copylog import CopyLog, log_path, open_copy_log, read_bytes, read_lines
from pipeline.receive.markers import (
    STATE_CONTAINER,
    marker_name,
    newest_versions,
    parse_marker,
    read_markers,
    state_name,
)
from pipeline.receive.plan import DrivePlan, check_names, check_plan, plan_drive
from pipeline.storage.base import Storage

__all__ = ["STATE_CONTAINER", "CopyLog", "DrivePlan", "DriveResult", "FileOnDrive",
           "cells_of", "check_names", "check_plan", "import_drive", "log_path", "marker_name",
           "open_copy_log", "plan_drive", "read_bytes", "read_lines", "state_name"]

UPLOADERS = 4  # storage calls in flight at once, each a batch of parts
PARTS_DEPTH = 4  # batches waiting for an uploader
SYNC_EVERY = 0.5  # seconds between the syncs behind the uploaders (_sync_behind)


@dataclass
class DriveResult:
    seq: int
    session_id: str
    already: bool = False
    totals: dict[str, int] = field(default_factory=dict)


async def import_drive(od: driveread.UnlockedDrive, plan: DrivePlan, store: Storage,
                       log: CopyLog, cpu: trio.CapacityLimiter, net: trio.CapacityLimiter,
                       progress: Callable[[int], None] = lambda n: None) -> DriveResult:
    sb, container = plan.superblock, plan.container
    result = DriveResult(sb.drive_seq, sb.session_id)
    marker = marker_name(sb.session_id, sb.drive_seq)
    await trio.to_thread.run_sync(store.ensure_container, container, limiter=net)
    await trio.to_thread.run_sync(store.ensure_container, STATE_CONTAINER, limiter=net)
    existing = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, marker, limiter=net)
    if existing is not None and parse_marker(marker, existing).get("state") == "done":
        for f in plan.files.values():
            log.blob("skipped", f.blob, "drive already imported; nothing changed", f.size)
        result.already = True
        return result

    on_drive = await _what_to_write(plan, store, log, net)
    await disposition.resolve(plan, store, on_drive, log, net)  # a dataset's containers, names
    stored = (e for e in plan.extents.by_location()  # made as extract reads them
              if e.codec is not format.Codec.ZERO and e.file_id in on_drive)

    def damaged(e: format.Extent, why: tuple[str, str]) -> None:
        on_drive[e.file_id].bad[e.offset] = why

    async with trio.open_nursery() as behind:
        behind.start_soon(_sync_behind, store)
        async with trio.open_nursery() as nursery:
            parts_tx, parts_rx = trio.open_memory_channel[extract.Parts](PARTS_DEPTH)
            nursery.start_soon(extract.run, od, stored, damaged, parts_tx, cpu)
            async with parts_rx:
                for _ in range(getattr(store, "writers", UPLOADERS)):
                    nursery.start_soon(upload.run, parts_rx.clone(), store, container,
                                       sb.blob_type, on_drive, net, progress)
        behind.cancel_scope.cancel()

    # Zero cells count as delivered; corrupt ones do not.
    files = _marker_files(on_drive)
    await trio.to_thread.run_sync(store.sync, limiter=net)  # parts durable before the marker
    await trio.to_thread.run_sync(store.put, STATE_CONTAINER, marker,
                                  _marker(sb, "parts", files), limiter=net)
    await commit.commit_ready(store, container, sb, on_drive, log, net,
                              vouched=not plan.incomplete)
    await trio.to_thread.run_sync(store.sync, limiter=net)  # commits durable before "done"
    await trio.to_thread.run_sync(store.put, STATE_CONTAINER, marker,
                                  _marker(sb, "done", files), limiter=net)
    return result


async def _sync_behind(store: Storage) -> None:
    """Sync the account every SYNC_EVERY seconds while the parts are written (until
    cancelled): the file system writes them back while the drive is still read, and the
    sync before the marker finds little left (one sync at the end waited ~1 s per
    15,000 small files, the CPUs idle).  Durability still comes from that last sync."""
    io = trio.CapacityLimiter(1)
    while True:
        await trio.sleep(SYNC_EVERY)
        await trio.to_thread.run_sync(store.sync, limiter=io)


def _marker_files(on_drive: dict[int, FileOnDrive]) -> str:
    """The marker's list of files as JSON text, one file encoded at a time: a list of a
    dict per file first cost ~1 KiB a file (100 MiB at 100,000 files)."""
    return "[" + ", ".join(json.dumps(
        {"file_id": fd.entry.file_id, "path": fd.entry.path, "blob": fd.entry.blob,
         "size": fd.entry.size, "cells": sorted(fd.cells), "zero": sorted(fd.zero),
         "bad": sorted(fd.bad)}) for fd in on_drive.values()) + "]"


def _marker(sb: format.Superblock, state: str, files: str) -> bytes:
    """The marker's bytes: what ``json.dumps`` of the whole record gives, files last."""
    head = json.dumps({"session_id": sb.session_id, "seq": sb.drive_seq, "state": state})
    return (head[:-1] + ', "files": ' + files + "}").encode()


async def _what_to_write(plan: DrivePlan, store: Storage, log: CopyLog,
                         net: trio.CapacityLimiter) -> dict[int, FileOnDrive]:
    """The drive's files this import writes; every other one named in the copy log now."""
    sb = plan.superblock
    for fid, f in plan.superseded.items():
        log.blob("skipped", f.blob, "an older copy of the file, rewritten later on this drive "
                 "(its staging copy changed); never written", f.size, file_id=fid)
    # A newer copy already delivered by another drive: this one must not touch the blob.
    newest = newest_versions(await read_markers(store, sb.session_id, net))
    on_drive: dict[int, FileOnDrive] = {}
    for fid, f in plan.files.items():
        if fid in plan.rejected:
            status, why = plan.rejected[fid]
            log.blob(status, f.blob, why, f.size, file_id=fid)
        elif newest.get(f.blob, 0) > fid:
            log.blob("skipped", f.blob, "superseded by a newer copy of the file on another "
                     "drive; never written", f.size, file_id=fid)
        else:
            on_drive[fid] = FileOnDrive(f)
    zeros: dict[int, set[int]] = {}  # gathered, then frozen once a file
    for e in plan.extents:
        if e.file_id in on_drive and e.codec is format.Codec.ZERO:
            zeros.setdefault(e.file_id, set()).update(format.grid(e.offset + e.raw_len, e.offset))
    for fid, cells in zeros.items():
        on_drive[fid].zero = frozenset(cells)
    return on_drive
