"""import_one(): one unlocked drive into a storage account, with its copy log.

The one place both ``pipeline import`` (commands/import_.py) and a cluster worker
(cluster/receive_remote.py) import a drive through, so that a fix lands once: the log's
first lines (start, damage, incomplete), the import (``importer.import_drive``), its last
line whatever happens ("failed" with the reason, so the log says why it stopped), the
account's copy of the log (next to the blobs), and the progress counters (a drive already
imported counts as skipped, not read).  What the caller shows of the drive is the caller's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline import progress
from pipeline.drive import format
from pipeline.errors import NoSpace, worst
from pipeline.receive import copylog, importer
from pipeline.receive import reader as driveread
from pipeline.storage.base import Storage


@dataclass
class Imported:
    """One drive's outcome, for the caller to show and report."""

    result: importer.DriveResult
    log: importer.CopyLog  # closed: its totals
    path: Path  # the copy log's file
    carried: int  # bytes of file data the drive delivered, its holes and zero runs included
    not_stored: str = ""  # why the account's copy of the log failed ("": stored)


async def import_one(od: driveread.UnlockedDrive, plan: importer.DrivePlan, store: Storage,
                     log_dir: Path, stats: progress.Stats, *, again: bool = False,
                     uploaded: Callable[[int], None] | None = None,
                     beside: Callable[[], Awaitable[None]] | None = None) -> Imported:
    """Import ``od`` into ``store``, its copy log written into ``log_dir``
    (``copylog.log_path``).  ``again``: a drive already imported is imported once more
    (import --again); ``uploaded(n)``: told each part's bytes as it lands; ``beside``: run
    alongside the import, cancelled when it ends (the service's progress reports).  A
    failure of the account's copy of the log is returned, not raised: the local log is
    the record."""
    sb = plan.superblock
    stats.current_drive = f"drive {sb.drive_seq} ({od.drive.path})"
    totals = getattr(plan.extents, "raw_totals", None)  # a DrivePlan's: one SQL pass
    whole, zero = totals() if totals is not None else (
        sum(e.raw_len for e in plan.extents),
        sum(e.raw_len for e in plan.extents if e.codec is format.Codec.ZERO))
    began = stats.bytes_read
    stats.zero_bytes += zero
    stats.bytes_read += zero  # holes and zero runs: copied by not being written
    carried = [zero]

    def delivered(n: int) -> None:
        stats.bytes_read += n
        carried[0] += n
        if uploaded is not None:
            uploaded(n)

    path = importer.log_path(log_dir, sb.session_id, sb.drive_seq)
    with importer.open_copy_log(path) as stream:
        log = importer.CopyLog(stream, str(od.drive.path))
        log.write({"type": "start", "drive": str(od.drive.path), "session_id": sb.session_id,
                   "seq": sb.drive_seq, "container": plan.container,
                   "records_from": plan.source, "storage": store.name})
        for line in plan.damage:
            log.write({"type": "damage", "message": line})
        if plan.incomplete:
            log.write({"type": "incomplete", "message": plan.incomplete})
        try:
            async with trio.open_nursery() as nursery:
                if beside is not None:
                    nursery.start_soon(beside)
                result = await importer.import_drive(
                    od, plan, store, log, trio.CapacityLimiter(os.cpu_count() or 2),
                    trio.CapacityLimiter(8), delivered, again=again)
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            with contextlib.suppress(NoSpace):  # a full log disk: say why the import stopped
                log.close("failed", str(worst(exc)))
            raise
        log.close("already imported" if result.already else "done")
    not_stored = ""
    try:  # a copy next to the blobs, a part at a time from the file (the service's log)
        copylog.store_copy(store, importer.STATE_CONTAINER, importer.state_name(
            sb.session_id, f"copylog-drive-{sb.drive_seq:02d}.jsonl"), path)
    except Exception as exc:  # noqa: BLE001 - the local log is the record; said by the caller
        not_stored = str(exc) or type(exc).__name__
    if result.already:  # nothing read this time: what the drive holds was imported before
        stats.bytes_read = began
        stats.zero_bytes -= zero
        stats.skipped_bytes += whole
    stats.files_done += len(plan.files)
    return Imported(result, log, path, carried[0], not_stored)
