"""verify and import on a worker: the drives attached here, with their journals.

The same stages single-machine ``verify`` and ``import`` run (``receive.verify``,
``receive.importer``), so the same idempotence and damage rules hold: a drive's marker in
the storage account says whether it was imported, a blob is committed once every drive
holding its cells is in.  The copy log is written on the worker (a temporary file) and its
lines go back to the client, which keeps them in its --log-dir: the logs are gathered in one
place.  Only journal mode: the recovery password is read from the shared journal directory.
The task names the storage account by its address only; the credential is the worker's own
(``target.open_on_worker``): no secret crosses Dask's wire.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from pipeline import errors, journal, progress
from pipeline.cluster import events, target
from pipeline.cluster.events import Publish, counters, describe, drive_set, failure, publisher, tick
from pipeline.drive import format
from pipeline.receive import copylog, importer
from pipeline.receive import reader as driveread
from pipeline.receive.verify import verify_drive
from pipeline.storage.base import Storage


def _journals(jdir: str, session_id: str, uuids: list[str]) -> list[journal.Journal]:
    mine = []
    for j in journal.session_journals(jdir, session_id):
        if j.drive.uuid in uuids:
            mine.append(j)
        else:
            j.close()
    return mine


async def verify(jdir: str, session_id: str, uuids: list[str], paths: dict[str, str],
                 cpu_threads: int, publish: Publish) -> dict[str, Any]:
    """Every drive here at once, as ``pipeline verify`` does; their reports as dicts."""
    stats = progress.Stats()
    journals = _journals(jdir, session_id, uuids)
    reports: list[dict[str, Any]] = []
    cpu = trio.CapacityLimiter(cpu_threads)

    def checked(n: int) -> None:
        stats.bytes_read += n

    async def one(j: journal.Journal) -> None:
        r = await verify_drive(j, paths[j.drive.uuid], cpu, progress=checked)
        stats.files_done += r.files
        reports.append({"seq": r.seq, "path": r.path, "ok": r.ok, "files": r.files,
                        "extents": r.extents, "raw_bytes": r.raw_bytes, "damaged": r.damaged,
                        "problems": r.problems, "warnings": r.warnings})

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, stats, publish)
            async with trio.open_nursery() as drives:
                for j in journals:
                    drives.start_soon(one, j)
            nursery.cancel_scope.cancel()
    finally:
        for j in journals:
            j.close()
    publish({"type": "progress", **counters(stats)})
    return {"code": 0, "message": "", "reports": reports}


async def import_all(jdir: str, session_id: str, uuids: list[str], paths: dict[str, str],
                     open_store: Callable[[], Storage], publish: Publish) -> dict[str, Any]:
    """Every drive here, one after another (as ``pipeline import``), each unlocked with the
    recovery password its journal holds."""
    journals = _journals(jdir, session_id, uuids)

    def unlocked() -> Iterator[tuple[driveread.UnlockedDrive, journal.Journal]]:
        for j in journals:
            yield driveread.unlock_with_journal(paths[j.drive.uuid], j), j

    try:
        return await import_unlocked(unlocked(), open_store, publish)
    finally:
        for j in journals:
            j.close()


Unlocked = Iterator[tuple[driveread.UnlockedDrive, journal.Journal | None]]
"""The drives to import, unlocked one at a time, each with its journal (None at a site)."""


async def import_unlocked(unlocked: Unlocked, open_store: Callable[[], Storage], publish: Publish,
                          finished: FinishedFor | None = None) -> dict[str, Any]:
    """Every drive ``unlocked`` yields, unlocked and its plan checked before anything is
    written, then imported one after another: each drive's outcome, copy log lines included;
    a PipelineError (from ``unlocked`` too) comes back as {code, message}."""
    stats = progress.Stats()
    opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]] = []
    drives: list[dict[str, Any]] = []
    try:
        store = open_store()
        store.check()
        for od, j in unlocked:
            opened.append((od, importer.plan_drive(od, j)))
            importer.check_names(opened[-1][1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, stats, publish)
            for od, plan in opened:
                done = None if finished is None else finished(od, plan, store)
                drives.append(await import_one(od, plan, store, stats, done))
            nursery.cancel_scope.cancel()
        result: dict[str, Any] = {"code": 0, "message": ""}
    except BaseException as exc:  # noqa: BLE001 - a PipelineError goes back as data
        result = failure(exc)
    finally:
        for od, _ in opened:
            od.close()
    publish({"type": "progress", **counters(stats)})
    return {**result, "drives": drives}


Finished = Callable[[importer.CopyLog, int], None]
"""Told each drive's copy log and the bytes it carried (holes included) once it is in."""
FinishedFor = Callable[[driveread.UnlockedDrive, importer.DrivePlan, Storage], Finished]
"""Makes a drive's ``Finished`` (the site reports each drive to the import service)."""


async def import_one(od: driveread.UnlockedDrive, plan: importer.DrivePlan, store: Storage,
                     stats: progress.Stats, finished: Finished | None = None) -> dict[str, Any]:
    """One drive into ``store``: its outcome as plain data, the copy log's text included
    (read back from its file: the lines are not kept in memory while importing; the
    result carries the text whole, as the client's gathering of the logs takes it)."""
    sb = plan.superblock
    zero = sum(e.raw_len for e in plan.extents if e.codec is format.Codec.ZERO)
    stats.bytes_read += zero
    carried = [zero]

    def uploaded(n: int) -> None:
        stats.bytes_read += n
        carried[0] += n

    with tempfile.TemporaryDirectory(prefix="pipeline-copylog-") as tmp:
        path = importer.log_path(Path(tmp), sb.session_id, sb.drive_seq)
        with importer.open_copy_log(path) as stream:
            log = importer.CopyLog(stream, str(od.drive.path))
            log.write({"type": "start", "drive": str(od.drive.path),
                       "session_id": sb.session_id, "seq": sb.drive_seq,
                       "container": plan.container, "records_from": plan.source,
                       "storage": store.name})
            for line in plan.damage:
                log.write({"type": "damage", "message": line})
            if plan.incomplete:
                log.write({"type": "incomplete", "message": plan.incomplete})
            try:
                result = await importer.import_drive(
                    od, plan, store, log, trio.CapacityLimiter(os.cpu_count() or 2),
                    trio.CapacityLimiter(8), uploaded)
            except BaseException as exc:
                with contextlib.suppress(errors.NoSpace):
                    log.close("failed", str(errors.worst(exc)))
                raise
            log.close("already imported" if result.already else "done")
        # Stored in the account a part at a time from its file, and read back once, as
        # text, for the result (which carries it to the client's --log-dir), before the
        # temporary directory goes: the bytes and a decoded copy are not both held.
        with contextlib.suppress(Exception):  # the gathered log is the record
            copylog.store_copy(store, importer.STATE_CONTAINER, importer.state_name(
                sb.session_id, f"copylog-drive-{sb.drive_seq:02d}.jsonl"), path)
        text = path.read_text(encoding="utf-8")
        stats.files_done += len(plan.files)
        if finished is not None:
            finished(log, carried[0])
    return {"seq": sb.drive_seq, "session_id": sb.session_id, "path": str(od.drive.path),
            "already": result.already, "totals": log.totals, "log": text,
            "damage": plan.damage, "incomplete": plan.incomplete, "source": plan.source}


def _paths_by_uuid() -> dict[str, str]:
    return {d["uuid"]: d["path"] for d in describe()["drives"] if d["uuid"]}


def verify_drives(jdir: str, session_id: str, uuids: list[str], topic: str
                  ) -> dict[str, Any]:
    """The task: verify the drives with these volume uuids, attached here."""
    return trio.run(verify, jdir, session_id, uuids, _paths_by_uuid(), os.cpu_count() or 2,
                    publisher(topic, drive_set().name))


def import_drives(jdir: str, session_id: str, uuids: list[str], store_target: str,
                  topic: str) -> dict[str, Any]:
    """The task: import the drives with these volume uuids, attached here, into the
    account ``store_target`` names (``target.public_target``) with this worker's own
    credential for it."""
    name, credential = drive_set().name, events.storage_credential()
    return trio.run(import_all, jdir, session_id, uuids, _paths_by_uuid(),
                    lambda: target.open_on_worker(store_target, credential, name),
                    publisher(topic, name))
