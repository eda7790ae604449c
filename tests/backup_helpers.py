"""Set-up shared by the backup tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

from pipeline.backup.backend import StorageBackend
from pipeline.storage import open_storage


def seed_account(repo_dir: Path, account: Path, container: str) -> StorageBackend:
    """Every file of the repository at ``repo_dir`` put into ``container`` of a new local
    storage account at ``account``, as an imported seed leaves it; its backend returned."""
    account.mkdir()
    storage = open_storage(str(account))
    storage.ensure_container(container)
    backend = StorageBackend(storage, container)
    for p in sorted(repo_dir.rglob("*")):
        if p.is_file():
            backend.put(p.relative_to(repo_dir).as_posix(), p.read_bytes())
    return backend
