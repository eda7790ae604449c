"""``Storage.get`` reads a whole blob, and whoever can write to the account chooses what a
name holds: a 5 GiB sparse file at a backup snapshot's name, a FIFO or a link to /dev/zero
at its config's.  Each is bounded before the read (BlobTooLarge, exit 4) or not a blob at all (a
FIFO, as ``size`` and ``list`` already said), never read until memory runs out or a hang.
Before: ``pipeline snapshots`` of such a repository in a local account under a 2 GiB
address-space limit ended in MemoryError (traceback, exit 70), the FIFO hung it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

from pipeline.backup.backend import MAX_FILE, StorageBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY
from pipeline.storage import BlobType, open_storage
from pipeline.storage.base import BlobTooLarge
from pipeline.storage.local import LocalStorage
from tests.azurite import azurite  # noqa: F401 - the fixture
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS, backup

MiB = 1 << 20


def _limited() -> None:
    """2 GiB of address space: a read without end fails here, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.fixture
def account(tmp_path: Path) -> Path:
    """A local account whose container ``backups`` holds a repository with a snapshot."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(50_000))
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    (tmp_path / "acct").mkdir()
    store = LocalStorage(tmp_path / "acct")
    store.ensure_container("backups")
    repo = Repository.init(StorageBackend(store, "backups"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    repo.close()
    return tmp_path / "acct"


def snapshots(account: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "snapshots", "--from", f"file://{account}",
         "--container", "backups", "--passphrase-file", str(account.parent / "pass")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, preexec_fn=_limited,
        env={**os.environ, "PIPELINE_CONFIG_DIR": str(account.parent / "config")})


def test_a_huge_snapshot_blob_is_one_line(account: Path) -> None:
    (snap,) = (account / "backups" / "snapshots").iterdir()
    with open(snap, "r+b") as f:
        f.truncate(5 << 30)
    proc = snapshots(account)
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"pipeline snapshots: backup repository: snapshots/{snap.name} in {account} "
        f"container backups is {5 << 30} bytes, more than any file of a repository "
        f"({MAX_FILE})"]


def test_a_fifo_at_a_blob_s_name_is_no_blob(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.ensure_container("ccc")
    store.put("ccc", "config", b"x")
    os.unlink(tmp_path / "ccc" / "config")
    os.mkfifo(tmp_path / "ccc" / "config")
    assert store.get("ccc", "config") is None           # before: blocked in open() for ever
    os.unlink(tmp_path / "ccc" / "config")
    os.symlink("/dev/zero", tmp_path / "ccc" / "config")
    assert store.get("ccc", "config") is None           # before: read until memory ran out
    assert store.size("ccc", "config") is None


def test_local_limit(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.ensure_container("ccc")
    store.put("ccc", "b", b"y" * 1000)
    assert store.get("ccc", "b", limit=1000) == b"y" * 1000
    with pytest.raises(BlobTooLarge, match=r"ccc/b is 1000 bytes, more than a whole read "
                       r"takes \(999\)"):
        store.get("ccc", "b", limit=999)


def test_azure_limit_before_the_rest_is_read(azurite: str) -> None:  # noqa: F811
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.put(c, "small", b"z" * 100)
    store.write_part(c, "big", BlobType.PAGE, 2 * MiB, 0, b"\1" * (1 * MiB))
    store.write_part(c, "big", BlobType.PAGE, 2 * MiB, MiB, b"\2" * (1 * MiB))
    store.commit(c, "big", BlobType.PAGE, 2 * MiB, [])
    assert store.get(c, "small", limit=100) == b"z" * 100
    assert store.get(c, "big") == b"\1" * MiB + b"\2" * MiB
    with pytest.raises(BlobTooLarge) as ei:
        store.get(c, "big", limit=MiB)
    assert (ei.value.where, ei.value.size) == (f"{c}/big", 2 * MiB)
    assert store.get(c, "absent", limit=1) is None
