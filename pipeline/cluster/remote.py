"""The prep task a ``pipeline worker`` runs: its shard of the session onto its drives.

The existing Trio pipeline (``prep.run.run_prep``) under its own ``trio.run`` in the Dask
worker's thread, on the drives of this worker (``worker.DriveSet``), with the shard's
planner (``shard.ShardPlanner``), its drive numbers and file ids (``plan.WorkerShard``).
It returns plain data (``events``); recovery passwords never travel: they stay in the
journals, in the journal directory every worker shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pipeline import errors, journal, progress
from pipeline.cluster import worker as workerproc
from pipeline.cluster.events import Publish, counters, drive_set, failure, publisher, tick
from pipeline.cluster.plan import WorkerShard
from pipeline.cluster.shard import ShardPlanner
from pipeline.drive import format
from pipeline.prep.run import DrivePool, PrepConfig, run_prep
from pipeline.prep.session import Session
from pipeline.prep.write import DriveWriter
from pipeline.volume import luks2


@dataclass(frozen=True)
class PrepTask:
    """One worker's shard of a prep session: everything but its drives (the worker's)."""

    jdir: str
    session_id: str
    srcdir: str
    dstdir: str
    blob_type: int
    level: int
    fill: str
    shard: WorkerShard
    kdf: luks2.KdfParams
    yes: bool
    memory: int
    topic: str


def prep_shard(task: PrepTask) -> dict[str, Any]:
    """Prep ``task.shard`` onto this worker's drives (continuing from their journals)."""
    held = drive_set()
    if held.name != task.shard.name:
        return {"code": errors.EXIT_BAD_INPUT, "message": f"worker {held.name} was "
                f"given worker {task.shard.name}'s shard"}
    return trio.run(_prep_shard, task, held, publisher(task.topic, held.name))


def _own_journals(task: PrepTask) -> list[journal.Journal]:
    mine = []
    for j in journal.session_journals(task.jdir, task.session_id):
        if task.shard.owns(j.drive.seq):
            mine.append(j)
        else:
            j.close()
    return mine


async def _prep_shard(task: PrepTask, drive_set: workerproc.DriveSet,
                      publish: Publish) -> dict[str, Any]:
    shard = task.shard
    journals = _own_journals(task)
    cfg = PrepConfig(srcdir=Path(task.srcdir), dstdir=task.dstdir, jdir=Path(task.jdir),
                     session_id=task.session_id, drives=list(drive_set.paths),
                     drive_size=drive_set.drive_size, yes=task.yes,
                     blob_type=format.BlobType(task.blob_type), level=task.level,
                     fill=task.fill, kdf=task.kdf, cpu_threads=drive_set.threads,
                     memory=task.memory)
    stats = progress.Stats()
    session = Session(cfg.srcdir, cfg.dstdir, journals)
    base = session.planner
    session.planner = ShardPlanner(base.root, base.vdir, base.committed,
                                   max(base.next_id, shard.file_id_base + 1),
                                   lo=shard.lo, hi=shard.hi)
    # The slot's finished drives of a worker it moved from count as committed (the
    # session's planner) but are not this worker's to reopen: the pool gets its own.
    here = [j for j in journals if j.drive.path in drive_set.paths]
    elsewhere = [j for j in journals if j not in here]
    pool = DrivePool(cfg, here, trio.CapacityLimiter(cfg.cpu_threads), stats)
    pool.next_seq = max(pool.next_seq, shard.first_seq, shard.seq_floor,
                        max((j.drive.seq for j in journals), default=0) + 1)
    skipped: list[tuple[str, str]] = []
    changed: list[str] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append((path, reason))

    def on_changed(path: str, message: str) -> None:
        changed.append(path)
        publish({"type": "warning", "message": message})

    def on_full(writer: DriveWriter) -> None:
        publish({"type": "drive_full", "seq": writer.journal.drive.seq,
                 "path": writer.journal.drive.path})

    result: dict[str, Any] = {"code": 0, "message": ""}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, stats, publish)
            try:
                await run_prep(cfg, session, pool, stats, on_skip, on_changed, on_full)
            finally:
                nursery.cancel_scope.cancel()
        for j in pool.journals:
            j.set_skipped(skipped)
        result["stale"] = _rewrite_stale(pool)
    except BaseException as exc:  # noqa: BLE001 - a PipelineError goes back as data
        result = failure(exc)
    finally:
        publish({"type": "progress", **counters(stats)})
        result.update(worker=drive_set.name, skipped=skipped, changed=changed,
                      stats=stats.statistics(), drives=_drive_rows(pool.journals))
        for j in [*pool.journals, *elsewhere]:
            j.close()
    return result


def _rewrite_stale(pool: DrivePool) -> list[str]:
    """Closed drives whose index lists files superseded since: written again, as prep does."""
    return [f"drive {info.seq}'s closing index is stale ({exc}); run prep --cluster --resume"
            for info, exc in pool.rewrite_stale_indexes()]


def _drive_rows(journals: list[journal.Journal]) -> list[dict[str, Any]]:
    return [{"seq": j.drive.seq, "path": j.drive.path, "state": j.drive.state,
             "uuid": j.drive.uuid, "capacity": j.drive.data_area_size,
             "used": j.drive.log_offset + j.drive.index_length, **j.counts(),
             "journal": str(j.path)} for j in sorted(journals, key=lambda j: j.drive.seq)]
