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

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from pipeline.drive import format
from pipeline.receive import commit, disposition, extract, state, upload
from pipeline.receive import reader as driveread
from pipeline.receive.commit import FileOnDrive, cells_of
from pipeline.receive.copylog import CopyLog, log_path, open_copy_log, read_bytes, read_lines
from pipeline.receive.markers import (
    STATE_CONTAINER,
    marker_name,
    parse_marker,
    put_marker,
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
                       progress: Callable[[int], None] = lambda n: None, *,
                       again: bool = False) -> DriveResult:
    with state.fewer_collections():
        return await _import_drive(od, plan, store, log, cpu, net, progress, again)


async def _import_drive(od: driveread.UnlockedDrive, plan: DrivePlan, store: Storage,
                        log: CopyLog, cpu: trio.CapacityLimiter, net: trio.CapacityLimiter,
                        progress: Callable[[int], None], again: bool) -> DriveResult:
    sb, container = plan.superblock, plan.container
    result = DriveResult(sb.drive_seq, sb.session_id)
    marker = marker_name(sb.session_id, sb.drive_seq)
    await trio.to_thread.run_sync(store.ensure_container, container, limiter=net)
    await trio.to_thread.run_sync(store.ensure_container, STATE_CONTAINER, limiter=net)
    existing = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, marker, limiter=net)
    # "done": skipped, unless ``again`` (import --again: parts a later commit found missing,
    # e.g. expired on Azure, are sent again; decisions kept in the marker still hold).
    if (existing is not None and not again
            and parse_marker(marker, existing).get("state") == "done"):
        for f in plan.files.values():
            log.blob("skipped", f.blob, "drive already imported; nothing changed", f.size)
        result.already = True
        return result

    on_drive = await commit.what_to_write(plan, store, log, net)  # in the plan's database
    await disposition.resolve(plan, store, on_drive, log, net)  # a dataset's containers, names
    stored = on_drive.stored()  # made as extract reads them; files held while in flight

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
                                       sb.blob_type, on_drive, net, progress, sb.session_id)
        behind.cancel_scope.cancel()

    # Zero cells count as delivered; corrupt ones do not.
    on_drive.settle()
    await trio.to_thread.run_sync(store.sync, limiter=net)  # parts durable before the marker
    chunks = await put_marker(store, sb.session_id, sb.drive_seq, "parts",
                              on_drive.marker_json(), net)
    await commit.commit_ready(store, container, sb, on_drive, log, net,
                              vouched=not plan.incomplete)
    await trio.to_thread.run_sync(store.sync, limiter=net)  # commits durable before "done"
    await put_marker(store, sb.session_id, sb.drive_seq, "done", None, net, chunks)
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
