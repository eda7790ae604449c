"""``pipeline worker``'s process: a Dask worker that owns the drives attached to its machine.

The drives are a worker resource, ``RESOURCE_PREFIX + name`` = the number of drives: a
task that asks for it runs on this worker only, and only one such task at a time (it
holds every drive).  The task finds the drives through the ``DriveSet`` plugin, so paths
and sizes stay with the machine they describe and never travel in a task.  It is a plain
``distributed.Worker`` in this process (no nanny): killing the process ends the worker;
a service manager restarts it, and ``prep --cluster --resume`` continues its shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import errors
from pipeline.errors import BadInput
from pipeline.volume import drives, luks2

RESOURCE_PREFIX = "pipeline-drives-"
PLUGIN = "pipeline-drives"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadInput(f"worker name {name!r}: use 1-63 letters, digits, '_', '.' or '-' "
                       "(the same name again after a restart)")
    return name


def resource(name: str) -> str:
    return RESOURCE_PREFIX + name


@dataclass(frozen=True)
class DriveSet:
    """The drives of this worker (held by its ``PLUGIN`` plugin: tasks read it there)."""

    name: str
    paths: tuple[str, ...]
    drive_size: int | None
    threads: int

    def describe(self) -> dict[str, Any]:
        """Each drive's path, size, usable capacity and volume uuid (None: not formatted
        by us yet); the client balances shards and finds drives by it."""
        out = []
        for path in self.paths:
            size, uuid = self.drive_size or 0, None
            if Path(path).exists():
                with drives.open_drive(path) as d:
                    size = d.size
                    with contextlib.suppress(errors.PipelineError, OSError, ValueError):
                        uuid = drives.read_volume(d).uuid
            out.append({"path": path, "size": size, "uuid": uuid,
                        "capacity": max(0, size - luks2.DATA_OFFSET)})
        return {"name": self.name, "drives": out, "threads": self.threads}


def drive_set(name: str, paths: list[str], drive_size: int | None, threads: int) -> DriveSet:
    """The worker's drives, checked before it joins: each path given once, and a size
    for every image file that does not exist yet."""
    seen: set[str] = set()
    out = []
    for p in paths:
        real = str(Path(p).resolve())
        if real in seen:
            raise BadInput(f"--drive {p} is given twice")
        seen.add(real)
        if not Path(real).exists() and drive_size is None:
            raise BadInput(f"--drive {p} does not exist; give --drive-size to create image "
                           "files of that size, or attach the drive")
        out.append(real)
    if not out:
        raise BadInput("give at least one --drive: the drives attached to this machine")
    return DriveSet(check_name(name), tuple(out), drive_size, threads)


LOG_PREFIX = "pipeline-copylog-"
"""A worker's copy logs wait for the client in a directory of this prefix in its tempdir
(``receive_remote.import_one``)."""


STALE_LOG_S = 24 * 3600
"""A kept log this old was never fetched (its client or worker died): cleared at the
next worker start.  Younger ones may belong to another worker of the same machine."""


def clear_stale_logs(now: float | None = None) -> int:
    """Remove the kept-log directories in the tempdir untouched for ``STALE_LOG_S`` (the
    newest mtime of the directory and what it holds: a log still being written is
    touched as it grows); returns how many.  A symlink or a file of that name is left
    alone: only our own directories are removed, never what a link points to."""
    tmp = tempfile.gettempdir()
    limit = (time.time() if now is None else now) - STALE_LOG_S
    n = 0
    with os.scandir(tmp) as it:
        for e in it:
            if not e.name.startswith(LOG_PREFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and _newest(e.path, st.st_mtime) < limit:
                shutil.rmtree(e.path, ignore_errors=True)
                n += 1
    return n


def _newest(path: str, mtime: float) -> float:
    try:
        with os.scandir(path) as it:
            return max([mtime, *(e.stat(follow_symlinks=False).st_mtime for e in it)])
    except OSError:
        return mtime


async def serve(scheduler: str, drive_set: DriveSet, host: str | None = None,
                ready: Any = None, storage_credential: str | None = None,
                site_client: Any = None) -> None:
    """Run the Dask worker until it is closed (the scheduler went away, or a signal).
    ``storage_credential`` (``target.read_credential``) and ``site_client`` (the import
    service's, with the site token) stay in this process: tasks carry only the account's
    address and the job's name."""
    from distributed import Worker, WorkerPlugin

    clear_stale_logs()    # copy logs a dead client or worker never fetched (a day old)

    class Drives(WorkerPlugin):  # Dask keeps plugins by name: tasks find ours by PLUGIN
        name = PLUGIN

        def __init__(self, held: DriveSet, credential: str | None, site: Any) -> None:
            self.drive_set = held
            self.storage_credential = credential
            self.site_client = site

        def __repr__(self) -> str:  # never the credential in a log
            return f"Drives({self.drive_set.name})"

    worker = await Worker(scheduler, name=drive_set.name, nthreads=2, host=host,
                          resources={resource(drive_set.name): len(drive_set.paths)},
                          plugins={Drives(drive_set, storage_credential, site_client)},
                          validate=False)
    if ready is not None:
        ready(worker.address)
    await worker.finished()


def run(scheduler: str, drive_set: DriveSet, host: str | None = None,
        storage_credential: str | None = None, site_client: Any = None) -> None:
    """The worker in this process, under its own asyncio loop (Dask's), until it ends."""
    asyncio.run(serve(scheduler, drive_set, host, storage_credential=storage_credential,
                      site_client=site_client))
