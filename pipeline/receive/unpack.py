"""unpack: a prepared drive's blobs as files, ``TARGET/CONTAINER/BLOB`` (the customer's end
of an export job; an import drive reads back the same way).

::

    unlock (reader.py) -> plan (plan.py: journal, closing index or a walk of the log)
      -> the import's stages (importer.py: extract x N, every extent xxh3-checked,
         upload, markers, commit) into ``UnpackTarget``

Unpacking *is* an import into a local directory: the same stages, so drives go in
any order and in separate runs (a blob appears when the drives holding all its
cells are in), a run cut short is simply run again, damage is named in the copy
log and the rest is written.  ``UnpackTarget`` keeps the target clean: blobs go to
``TARGET/CONTAINER/BLOB`` (a local account's layout, so metadata and properties as
for the local account), the import's own state (markers, copy logs) to
``TARGET/.pipeline-unpack``, where no container can be (no container name starts
with '.').
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline import credentials, faults, journal
from pipeline.drive.format import BlobType
from pipeline.errors import Refused
from pipeline.receive import importer
from pipeline.receive import reader as driveread
from pipeline.storage.base import GET_LIMIT, BlobInfo
from pipeline.storage.local import LocalStorage
from pipeline.volume import drives

__all__ = ["STATE_DIR", "UnpackTarget", "open_drives"]

STATE_DIR = ".pipeline-unpack"


class UnpackTarget:
    """The Storage the import's stages write to: blobs in TARGET, state beside them."""

    writers = LocalStorage.writers

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.blobs = LocalStorage(target)
        self.state = LocalStorage(Path(target) / STATE_DIR)
        self.name = self.blobs.name

    def _for(self, container: str) -> LocalStorage:
        return self.state if container == importer.STATE_CONTAINER else self.blobs

    def check(self) -> None:
        for store in (self.blobs, self.state):
            os.makedirs(store.root, mode=0o700, exist_ok=True)
            store.check()

    def ensure_container(self, container: str) -> None:
        self._for(container).ensure_container(container)

    def write_part(self, container: str, blob: str, blob_type: BlobType, size: int,
                   offset: int, data: bytes, *, copy: str | None = None) -> None:
        self._for(container).write_part(container, blob, blob_type, size, offset, data,
                                        copy=copy)

    def commit(self, container: str, blob: str, blob_type: BlobType, size: int,
               zero_offsets: Sequence[int], *, copy: str | None = None) -> None:
        self._for(container).commit(container, blob, blob_type, size, zero_offsets, copy=copy)
        faults.reached("after_unpack_commit")

    def sync(self) -> None:
        self.blobs.sync()
        self.state.sync()

    def discard(self, container: str, blob: str) -> None:
        self._for(container).discard(container, blob)

    def size(self, container: str, blob: str) -> int | None:
        return self._for(container).size(container, blob)

    def read(self, container: str, blob: str, offset: int, length: int) -> bytes:
        return self._for(container).read(container, blob, offset, length)

    def put(self, container: str, blob: str, data: bytes) -> None:
        self._for(container).put(container, blob, data)

    def delete(self, container: str, blob: str) -> None:
        self._for(container).delete(container, blob)

    def get(self, container: str, blob: str, limit: int = GET_LIMIT) -> bytes | None:
        return self._for(container).get(container, blob, limit)

    def list(self, container: str, prefix: str = "") -> builtins.list[str]:
        return self._for(container).list(container, prefix)

    def set_attributes(self, container: str, blob: str, blob_type: BlobType,
                       metadata: Sequence[tuple[str, str]],
                       properties: Sequence[tuple[str, str]]) -> None:
        self._for(container).set_attributes(container, blob, blob_type, metadata, properties)

    def get_attributes(self, container: str, blob: str) -> BlobInfo | None:
        return self._for(container).get_attributes(container, blob)


_NO_JOURNAL = ("the journal directory; pass the journal directory of its session, or its "
               "recovery password")


def _job_key(path: str, keys: dict[str, str]) -> credentials.Secret:
    """A drive's recovery password from its job's keys, by its volume id (the driveId)."""
    with drives.open_drive(path) as d:
        uuid = drives.read_volume(d).uuid
    if uuid not in keys:
        raise Refused(f"{path} (volume {uuid}) is not a drive of this job; its drives are "
                      f"{', '.join(sorted(keys)) or 'none yet'}")
    return credentials.Secret(keys[uuid].encode(), "recovery password")


def open_drives(paths: Sequence[str], secret: credentials.Secret | None,
                journals: Sequence[journal.Journal], keys: dict[str, str] | None = None,
                session_id: str | None = None
                ) -> list[tuple[driveread.UnlockedDrive, importer.DrivePlan]]:
    """Every drive unlocked and planned (names checked) before anything is written; the
    journal's key and records when there is a journal, else the job's key for it
    (``keys``: driveId -> recovery password), else ``secret``.  ``session_id``: the copy
    session, on drives that hold several."""
    opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]] = []
    try:
        for path in paths:
            jrn = (driveread.journal_of(journals, path, _NO_JOURNAL, session_id) if journals
                   else None)
            if jrn is not None:
                od = driveread.unlock_with_journal(path, jrn)
            else:
                key = _job_key(path, keys) if keys is not None else secret
                assert key is not None
                od = driveread.unlock_drive(path, key.value, key.kind, session_id=session_id)
            try:
                plan = importer.plan_drive(od, jrn)
                importer.check_names(plan)
            except BaseException:
                od.close()
                raise
            opened.append((od, plan))
    except BaseException:
        for od, _ in opened:
            od.close()
        raise
    return opened
