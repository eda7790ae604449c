"""Where `restore` and `snapshots` find a repository: ``--from`` and ``--container``.

With ``--container``, ``--from`` is a storage account (a directory account or an
Azure connection string / URL) and the repository sits at the container's root,
where the seed's import put it.  Without, ``--from`` is a repository directory,
or a staging location holding one (``S/repo``).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.backup import encoding as fmt
from pipeline.backup import offline
from pipeline.backup.backend import Backend, DirBackend, StorageBackend
from pipeline.errors import BadInput
from pipeline.storage import check_container_name, open_storage
from pipeline.storage.local import LocalStorage


def open_backend(source: str, container: str | None) -> Backend:
    if container is not None:
        check_container_name(container)
        storage = open_storage(source)
        if isinstance(storage, LocalStorage):
            if not Path(storage.root).is_dir():
                raise BadInput(f"--from {source}: storage directory {storage.root} does not "
                               "exist; check the path")
        else:
            storage.check()              # reachable and authorised, before the passphrase
        return StorageBackend(storage, container)
    path = Path(source)
    if (path / offline.STAGING_FILE).exists() or (path / offline.REPOSITORY / fmt.CONFIG).exists():
        path = path / offline.REPOSITORY
    if not (path / fmt.CONFIG).is_file():
        raise BadInput(f"--from {source} holds no backup repository; give the repository "
                       "directory (STAGING/repo), or a storage account with --container C")
    return DirBackend(path)


def missing_message(backend: Backend) -> str:
    return (f"no backup repository in {backend.name} yet: if it is to come from an offline "
            "seed, wait until the import job is Completed, then run this again")
