"""Set-up shared by the backup tests (no tests here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pipeline.backup.backend import DirBackend, StorageBackend
from pipeline.backup.repo import Repository
from pipeline.storage import open_storage
from tests.conftest import FAST_ARGON
from tests.test_backup_prune import Repo
from tests.test_backup_repo import PASS, backup, make_tree


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


def backed_up_tree(tmp_path: Path) -> tuple[Path, Repository]:
    """``tmp_path/src`` made by ``make_tree`` and backed up into a new repository at
    ``tmp_path/repo`` (cheap KDF)."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    return src, repo


def repo_backed_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    """A ``Repo`` in ``tmp_path`` (its own config dir) made and backed up once: the
    start of the lock and interrupt tests."""
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "config"))
    repo = Repo(tmp_path)
    repo.init()
    repo.backup()
    return repo


@contextlib.contextmanager
def nobody_may_enter(prefix: str, needs: str) -> Iterator[Path]:
    """A fresh directory that nobody (uid 65534) may enter, removed after: pytest's
    tmp_path is root's alone (0700).  ``needs``: why the test must run as root."""
    assert os.geteuid() == 0, f"this test needs root: {needs}"
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)
