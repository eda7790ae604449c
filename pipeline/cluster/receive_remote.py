"""verify and import on a worker: the drives attached here, with their journals.

The same stages single-machine ``verify`` and ``import`` run (``receive.verify``,
``receive.importer``), so the same idempotence and damage rules hold: a drive's marker in
the storage account says whether it was imported, a blob is committed once every drive
holding its cells is in.  The copy log is written on the worker (a temporary file), which
the client fetches a part at a time into its --log-dir: the logs are gathered in one place.
Only journal mode: the recovery password is read from the shared journal directory.
The task names the storage account by its address only; the credential is the worker's own
(``target.open_on_worker``): no secret crosses Dask's wire.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from pipeline import journal, progress
from pipeline.cluster import events, target
from pipeline.cluster.events import Publish, counters, describe, drive_set, failure, publisher, tick
from pipeline.cluster.worker import LOG_PREFIX
from pipeline.receive import importer, onedrive
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
                     open_store: Callable[[], Storage], publish: Publish, *,
                     again: bool = False) -> dict[str, Any]:
    """Every drive here, one after another (as ``pipeline import``), each unlocked with the
    recovery password its journal holds; ``again``: imported once more if imported before
    (import --again)."""
    journals = _journals(jdir, session_id, uuids)

    def unlocked() -> Iterator[tuple[driveread.UnlockedDrive, journal.Journal]]:
        for j in journals:
            yield driveread.unlock_with_journal(paths[j.drive.uuid], j), j

    try:
        return await import_unlocked(unlocked(), open_store, publish, again=again)
    finally:
        for j in journals:
            j.close()


Unlocked = Iterator[tuple[driveread.UnlockedDrive, journal.Journal | None]]
"""The drives to import, unlocked one at a time, each with its journal (None at a site)."""


async def import_unlocked(unlocked: Unlocked, open_store: Callable[[], Storage], publish: Publish,
                          finished: FinishedFor | None = None, *, again: bool = False
                          ) -> dict[str, Any]:
    """Every drive ``unlocked`` yields, unlocked and its plan checked before anything is
    written, then imported one after another (``again``: each once more if imported
    before): each drive's outcome, copy log lines included; a PipelineError (from
    ``unlocked`` too) comes back as {code, message}, with the drives done before it and,
    in ``failed``, the kept copy log of the drive it stopped (for the client to fetch)."""
    stats = progress.Stats()
    opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]] = []
    drives: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
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
                drives.append(await import_one(od, plan, store, stats, done, again=again,
                                               failed=failed))
            nursery.cancel_scope.cancel()
        result: dict[str, Any] = {"code": 0, "message": ""}
    except BaseException as exc:  # noqa: BLE001 - a PipelineError goes back as data
        result = failure(exc)
    finally:
        for od, _ in opened:
            od.close()
    publish({"type": "progress", **counters(stats)})
    return {**result, "drives": drives, "failed": failed}


Finished = Callable[[importer.CopyLog, int], None]
"""Told each drive's copy log and the bytes it carried (holes included) once it is in."""
FinishedFor = Callable[[driveread.UnlockedDrive, importer.DrivePlan, Storage], Finished]
"""Makes a drive's ``Finished`` (the site reports each drive to the import service)."""


async def import_one(od: driveread.UnlockedDrive, plan: importer.DrivePlan, store: Storage,
                     stats: progress.Stats, finished: Finished | None = None, *,
                     again: bool = False, failed: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """One drive into ``store`` (``receive.onedrive``: the same as ``pipeline import``):
    its outcome as plain data.  The copy log stays in its file here (``log_file``), for
    the client to fetch a part at a time (``read_log_part``, then ``drop_log``): neither
    side holds it whole, whatever the number of files (it was carried as text in the
    result, ~46 MiB at 400,000 files).  On an error the log is kept too, as ``pipeline
    import`` keeps it, and named in ``failed`` (the operator needs it most then); with no
    ``failed`` to name it in, or no log written yet, it goes with the error."""
    sb = plan.superblock
    keep = Path(tempfile.mkdtemp(prefix=LOG_PREFIX))
    try:
        got = await onedrive.import_one(od, plan, store, keep, stats, again=again)
        if finished is not None:
            finished(got.log, got.carried)
    except BaseException:
        log = importer.log_path(keep, sb.session_id, sb.drive_seq)
        if failed is not None and log.is_file():
            failed.append({"seq": sb.drive_seq, "session_id": sb.session_id,
                           "path": str(od.drive.path), "log_file": str(log)})
        else:
            shutil.rmtree(keep, ignore_errors=True)
        raise
    return {"seq": sb.drive_seq, "session_id": sb.session_id, "path": str(od.drive.path),
            "already": got.result.already, "totals": got.log.totals,
            "log_file": str(got.path), "not_stored": got.not_stored, "damage": plan.damage,
            "incomplete": plan.incomplete, "source": plan.source}


def _kept_log(path: str) -> Path:
    """``path`` if it names a copy log ``import_one`` kept; anything else is a bug."""
    p = Path(path)
    tmp = os.path.realpath(tempfile.gettempdir())
    if not (p.name.startswith("copylog-") and p.name.endswith(".jsonl")
            and p.parent.name.startswith(LOG_PREFIX)
            and p.parent.parent == Path(tempfile.gettempdir())
            # no symlink on the way (the directory or the log): tmp is anyone's to write
            and os.path.realpath(p) == os.path.join(tmp, p.parent.name, p.name)):
        raise ValueError(f"{path} is no copy log kept for the client")
    return p


def read_log_part(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of a kept copy log from ``offset`` (run on the worker by the
    client, ``Client.run``); fewer at its end."""
    with open(_kept_log(path), "rb") as f:
        f.seek(offset)
        return f.read(size)


def drop_log(path: str) -> None:
    """A kept copy log, and its directory, removed once the client has it."""
    shutil.rmtree(_kept_log(path).parent, ignore_errors=True)


def _paths_by_uuid() -> dict[str, str]:
    return {d["uuid"]: d["path"] for d in describe()["drives"] if d["uuid"]}


def verify_drives(jdir: str, session_id: str, uuids: list[str], topic: str
                  ) -> dict[str, Any]:
    """The task: verify the drives with these volume uuids, attached here."""
    return trio.run(verify, jdir, session_id, uuids, _paths_by_uuid(), os.cpu_count() or 2,
                    publisher(topic, drive_set().name))


def import_drives(jdir: str, session_id: str, uuids: list[str], store_target: str,
                  again: bool, topic: str) -> dict[str, Any]:
    """The task: import the drives with these volume uuids, attached here, into the
    account ``store_target`` names (``target.public_target``) with this worker's own
    credential for it; ``again``: each once more if it was imported before."""
    name, credential = drive_set().name, events.storage_credential()
    return trio.run(functools.partial(
        import_all, jdir, session_id, uuids, _paths_by_uuid(),
        lambda: target.open_on_worker(store_target, credential, name),
        publisher(topic, name), again=again))
