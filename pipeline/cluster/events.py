"""What every task shares: this worker's drives, and the progress events it sends.

A task logs an event on its run's topic every ``TICK`` seconds (Dask's structured events,
relayed by the scheduler to the client that subscribed); a ``PipelineError`` goes back as
``{"code", "message"}``, so that no exception class has to survive pickling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from pipeline import errors, progress
from pipeline.cluster import worker as workerproc
from pipeline.errors import PipelineError

TICK = 0.5
Publish = Callable[[dict[str, Any]], None]


def drive_set(dask_worker: Any = None) -> workerproc.DriveSet:
    from distributed import get_worker

    worker = get_worker() if dask_worker is None else dask_worker
    return worker.plugins[workerproc.PLUGIN].drive_set


def storage_credential() -> str | None:
    """This worker's own storage credential (``pipeline worker --storage-key-file``), or None."""
    from distributed import get_worker

    return get_worker().plugins[workerproc.PLUGIN].storage_credential


def site_client() -> Any:
    """This worker's own import-service client (``pipeline worker --site-token-file``), or
    None: a ``jobs.client.ServiceClient``, opaque here (the cluster never imports jobs)."""
    from distributed import get_worker

    return get_worker().plugins[workerproc.PLUGIN].site_client


def publisher(topic: str, name: str) -> Publish:
    from distributed import get_worker

    w = get_worker()
    return lambda msg: w.log_event(topic, {"pipeline_worker": name, **msg})


def describe(dask_worker: Any = None) -> dict[str, Any]:
    """This worker's name and drives (``DriveSet.describe``): in a task, or by
    ``Client.run``, which passes the worker as ``dask_worker``."""
    return drive_set(dask_worker).describe()


async def tick(stats: progress.Stats, publish: Publish) -> None:
    while True:
        publish({"type": "progress", **counters(stats)})
        await trio.sleep(TICK)


def counters(stats: progress.Stats) -> dict[str, Any]:
    return {"bytes_read": stats.bytes_read, "bytes_written": stats.bytes_written,
            "bytes_stored": stats.bytes_stored, "zero_bytes": stats.zero_bytes,
            "extents": stats.extents, "files_done": stats.files_done,
            "drives": [d.snapshot() for d in stats.drives.values()]}


def failure(exc: BaseException) -> dict[str, Any]:
    worst = errors.worst(exc)
    if not isinstance(worst, PipelineError):
        raise exc
    return {"code": worst.exit_code, "message": str(worst)}
