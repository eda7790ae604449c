"""Review 2: an index entry (written with the key: a buggy or hostile client) that
claims a chunk of 4 GiB, or one past the pack's end.  The entry's length is only the
index's word for it: restore reads no more than the pack holds, names the file whose
chunk that is, restores the others (exit 4); check --read-data names the pack."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend, StorageBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY
from pipeline.storage import open_storage
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS, backup


def _limited() -> None:
    """3 GiB of address space: a 4 GiB buffer fails here, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("where", ["directory", "account"])
@pytest.mark.parametrize("field, value", [("length", 0xFFFFFFF0), ("offset", 0xFFFFFF00)])
def test_an_index_entry_past_the_pack_loses_only_its_file(tmp_path: Path, where: str,
                                                          field: str, value: int) -> None:
    """Before (length 4 GiB): restore allocated the read's buffer first: MemoryError, a
    traceback, exit 70, nothing restored (a directory repository and a file:// account
    alike)."""
    if where == "directory":
        backend, source = DirBackend(tmp_path / "repo"), ["--from", str(tmp_path / "repo")]
    else:
        (tmp_path / "account").mkdir()
        storage = open_storage(f"file://{tmp_path / 'account'}")
        storage.ensure_container("backups")
        backend = StorageBackend(storage, "backups")
        source = ["--from", f"file://{tmp_path / 'account'}", "--container", "backups"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    (src / "b.bin").write_bytes(os.urandom(200_000))
    repo = Repository.init(backend, PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    repo.load_index()
    nodes = {n.path: n for n in repo.tree(repo.manifest(repo.snapshots()[-1]))}
    target = nodes["a.bin"].content[0][0]
    entries = [e._replace(**{field: value}) if e.id == target else e
               for e in repo.index.values()]
    for name in repo.backend.list(fmt.INDEX):
        repo.backend.delete(name)
    repo.write_index(entries)
    repo.close()
    (tmp_path / "pass").write_bytes(PASS + b"\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args, *source, "--passphrase-file",
             str(tmp_path / "pass")], capture_output=True, text=True, cwd=ROOT, timeout=300,
            preexec_fn=_limited, env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp_path / "c")})

    out = tmp_path / "target"
    proc = cli("restore", "--target", str(out))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["b.bin"]
    assert (out / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    assert proc.stderr.splitlines()[0].startswith("pipeline restore: a.bin: chunk 1 of 1 "
                                                  "unreadable: data/")
    assert "is shorter than its index says" in proc.stderr.splitlines()[0]
    proc = cli("check", "--read-data")
    assert proc.returncode == EXIT_INTEGRITY and "Traceback" not in proc.stderr
    assert any(x.endswith(": a.bin") for x in proc.stderr.splitlines()), proc.stderr
