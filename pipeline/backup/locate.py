"""Where `restore`, `snapshots`, `check`, `forget` and `prune` find a repository:
``--from`` and ``--container``.

With ``--container``, ``--from`` is a storage account (a directory account or an
Azure connection string / URL) and the repository sits at the container's root,
where the seed's import put it.  Without, ``--from`` is a repository directory,
or a staging location holding one (``S/repo``).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline import credentials
from pipeline.backup import encoding as fmt
from pipeline.backup import offline
from pipeline.backup.backend import Backend, DirBackend, StorageBackend
from pipeline.backup.repo import LockMode, Repository
from pipeline.errors import BadInput
from pipeline.storage import check_container_name, open_storage
from pipeline.storage.local import LocalStorage


def recorded_container() -> str | None:
    """The container the offline backups on this machine recorded, when there is one;
    several: an error naming them (the user picks with --container)."""
    found = sorted({e["container"] for e in offline.read_config().values()
                    if isinstance(e, dict) and isinstance(e.get("container"), str)})
    if len(found) > 1:
        raise BadInput(f"give --container: this machine's offline backups use {', '.join(found)}")
    return found[0] if found else None


def open_backend(source: str, container: str | None) -> Backend:
    path = Path(source)
    if container is None and not path.is_dir():  # an account (URL, connection string)
        container = recorded_container()
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
    if (path / offline.STAGING_FILE).exists() or (path / offline.REPOSITORY / fmt.CONFIG).exists():
        path = path / offline.REPOSITORY
    if not (path / fmt.CONFIG).is_file():
        recorded = recorded_container()
        if recorded is not None and (path / recorded).is_dir():  # a directory account
            return open_backend(source, recorded)
        if not path.exists() and _ACCOUNT.search(source):
            raise BadInput(f"--from {_shown(source)} is a storage account; give --container C "
                           "(the container holding the repository)")
        raise BadInput(f"--from {_shown(source)} holds no backup repository; give the "
                       "repository directory (STAGING/repo), or a storage account with "
                       "--container C")
    return DirBackend(path)


_ACCOUNT = re.compile(r"(?i)^https?://|AccountName=|AccountKey=|SharedAccessSignature=")


def _shown(source: str) -> str:
    """``--from`` as a message may name it: a connection string's key or a URL's SAS
    token is a secret, so an account is named by its endpoint only."""
    if Path(source).exists() or not _ACCOUNT.search(source):
        return source
    try:
        storage = open_storage(source)
    except Exception:  # noqa: BLE001 - a value not even parsed: named without its text
        storage = None
    if storage is None or isinstance(storage, LocalStorage):
        return "(the storage account given)"
    return storage.name


def missing_message(backend: Backend, job_line: str = "") -> str:
    """No repository at ``backend``: why, and what next.  ``job_line``: the seed's import
    job's state as one sentence (commands ask the import service; this room does not)."""
    if job_line:
        return f"no backup repository in {backend.name}: {job_line}"
    if (isinstance(backend, StorageBackend) and isinstance(backend.storage, LocalStorage)
            and not (Path(backend.storage.root) / backend.container).is_dir()):
        return (f"container {backend.container} does not exist in {backend.storage.root}; "
                    "check --container (the seed's import puts the repository in the "
                    "container its dstdir names)")
    return (f"no backup repository in {backend.name} yet: if it is to come from an offline "
            "seed, wait until the import job is Completed, then run this again")


def open_repository(source: str, container: str | None, passphrase_file: str,
                    lock: LockMode = "shared", command: str = "", wait: float = 0.0
                    ) -> Repository:
    """The repository at ``--from``/``--container``, unlocked and locked (sync)."""
    backend = open_backend(source, container)
    secret = credentials.passphrase_file(passphrase_file)
    return Repository.open(backend, secret.value, passphrase_file,
                           missing=missing_message(backend), lock=lock, command=command,
                           wait=wait)


def parse_wait(text: str | None) -> float:
    """``--retry-lock``: seconds, or a number with s, m or h (restic's ``--retry-lock 5m``)."""
    if not text:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if m is None:
        raise BadInput(f"--retry-lock {text}: give a duration such as 30s, 5m or 1h")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
