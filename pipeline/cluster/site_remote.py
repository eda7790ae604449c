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

from pipeline import errors
from pipeline.cluster import events, target
from pipeline.cluster.events import Publish, publisher
from pipeline.cluster.receive_remote import Finished, Unlocked, _paths_by_uuid, import_unlocked
from pipeline.receive import importer, service_import
from pipeline.receive import reader as driveread
from pipeline.storage.base import Storage


def import_job_drives(job_name: str, subscription: str | None, resource_group: str | None,
                      uuids: list[str], store_target: str, again: bool, topic: str
                      ) -> dict[str, Any]:
    """The task: import job ``job_name``'s drives with these volume uuids, attached here;
    ``again``: each once more if it was imported before (import --again)."""
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
                    publisher(topic, held.name), again)


async def _import_job(site: Any, where: tuple[str, str | None, str | None], uuids: list[str],
                      paths: dict[str, str], open_store: Any, publish: Publish,
                      again: bool = False) -> dict[str, Any]:
    jobs: list[service_import.JobImport] = []

    def unlocked() -> Unlocked:
        jobs.append(service_import.JobImport.connect(site, *where))
        for uuid in uuids:
            key = jobs[0].key_for(paths[uuid])
            yield driveread.unlock_drive(paths[uuid], key.value, key.kind, expected_uuid=uuid,
                                         manifest=jobs[0].manifest_for(paths[uuid])), None

    def finished(od: driveread.UnlockedDrive, plan: importer.DrivePlan, store: Storage
                 ) -> Finished:
        return lambda log, carried: jobs[0].finish_drive(od.volume.uuid, log, store, plan,
                                                         carried)

    return await import_unlocked(unlocked(), open_store, publish, finished, again=again)
