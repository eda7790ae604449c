"""A site import on a worker: the job's drives attached here, keys and reports through the
import service with the worker's own site credential.

``pipeline worker --service URL --site-token-file FILE`` gives the worker its site client
(kept in its process, as its storage credential is), so the task carries the job's name and
the drives' volume uuids only: no recovery password and no token crosses Dask's wire.  Each
drive is checked against the job (``JobImport.key_for``: its volume and LUKS2 header),
imported from its own log (no journal at the site), and reported to the service as single-
machine ``import --service`` reports it (``JobImport.finish_drive``: state, bytes, logs).
"""

from __future__ import annotations

from typing import Any

import trio

from pipeline import errors, progress
from pipeline.cluster import events, target
from pipeline.cluster.events import Publish, counters, failure, publisher, tick
from pipeline.cluster.receive_remote import _paths_by_uuid, import_one
from pipeline.receive import importer, service_import
from pipeline.receive import reader as driveread
from pipeline.storage.base import Storage


def import_job_drives(job_name: str, subscription: str | None, resource_group: str | None,
                      uuids: list[str], store_target: str, topic: str) -> dict[str, Any]:
    """The task: import job ``job_name``'s drives with these volume uuids, attached here."""
    held = events.drive_set()
    site = events.site_client()
    if site is None:
        return {"code": errors.EXIT_BAD_INPUT, "drives": [],
                "message": f"worker {held.name} has no site credential: start it with "
                "--service URL --site-token-file FILE"}
    paths = _paths_by_uuid()
    credential = events.storage_credential()
    return trio.run(_import_job, site, (job_name, subscription, resource_group), uuids, paths,
                    lambda: target.open_on_worker(store_target, credential, held.name),
                    publisher(topic, held.name))


async def _import_job(site: Any, where: tuple[str, str | None, str | None], uuids: list[str],
                      paths: dict[str, str], open_store: Any, publish: Publish
                      ) -> dict[str, Any]:
    stats = progress.Stats()
    opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]] = []
    drives: list[dict[str, Any]] = []
    try:
        job = service_import.JobImport.connect(site, *where)
        store: Storage = open_store()
        store.check()
        for uuid in uuids:  # every drive unlocked and checked before anything is written
            key = job.key_for(paths[uuid])
            od = driveread.unlock_drive(paths[uuid], key.value, key.kind, expected_uuid=uuid)
            opened.append((od, importer.plan_drive(od, None)))
            importer.check_names(opened[-1][1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, stats, publish)
            for od, plan in opened:
                def finished(log: importer.CopyLog, carried: int,
                             uuid: str = od.volume.uuid, plan: importer.DrivePlan = plan
                             ) -> None:
                    job.finish_drive(uuid, log, store, plan, carried)

                drives.append(await import_one(od, plan, store, stats, finished))
            nursery.cancel_scope.cancel()
        result: dict[str, Any] = {"code": 0, "message": ""}
    except BaseException as exc:  # noqa: BLE001 - a PipelineError goes back as data
        result = failure(exc)
    finally:
        for od, _ in opened:
            od.close()
    publish({"type": "progress", **counters(stats)})
    return {**result, "drives": drives}
