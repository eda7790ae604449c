"""Review 2: a repository directory (the staging location, a drive's copy) is as hostile
as any storage: a file of it swapped for a FIFO, a symlink to /dev/zero or a huge sparse
file is one line naming it (exit 4), never a hang, a read until memory runs out, or a
traceback; check --read-data names such a pack and restore restores every other file."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import MAX_FILE, DirBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS, backup


def _limited() -> None:
    """2 GiB of address space: a read without end fails here, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args, "--from",
                           str(tmp / "repo"), "--passphrase-file", str(tmp / "pass")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          preexec_fn=_limited,
                          env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp / "config")})


def swap(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(5 << 30)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """Two files in two packs (small packs): one can be lost, the other restored."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "b.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON,
                           pack_size=200 << 10)
    trio.run(backup, repo, src, False)
    repo.close()
    return tmp_path / "repo"


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "sparse"])
def test_a_snapshot_file_that_is_no_file_is_one_line(repo_dir: Path, kind: str) -> None:
    """Before: the FIFO hung `snapshots` (killed after 120 s), /dev/zero and the 5 GiB
    sparse file were read until MemoryError: traceback, exit 70."""
    (snap,) = (repo_dir / "snapshots").iterdir()
    swap(snap, kind)
    name = f"snapshots/{snap.name} in {repo_dir}"
    proc = cli(repo_dir.parent, "snapshots")
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-3000:]
    why = (f"is {5 << 30} bytes, more than any file of a repository ({MAX_FILE})"
           if kind == "sparse" else
           "is not a regular file; a repository holds only files (remove it)")
    assert proc.stderr.splitlines() == [
        f"pipeline snapshots: backup repository: {name} {why}"]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_pack_that_is_no_file_is_named_by_check_and_restore_goes_on(
        repo_dir: Path, tmp_path: Path, kind: str) -> None:
    """A pack holding chunks of one file only (no tree chunk) swapped: check --read-data
    names it and that file (exit 4; before: the FIFO hung it, /dev/zero read to
    MemoryError); restore restores the other file and names that one (exit 4)."""
    repo = Repository.open(DirBackend(repo_dir), PASS, "test", lock=None)
    repo.load_index()
    manifest = repo.manifest(repo.snapshots()[-1])
    packs = {n.path: {repo.index[c].pack for c, _ in n.content if c is not None}
             for n in repo.tree(manifest)}
    tree = {repo.index[c].pack for c in manifest.tree}
    repo.close()
    lost, kept = next((a, b) for a, b in (("a.bin", "b.bin"), ("b.bin", "a.bin"))
                      if (packs[a] - packs[b] - tree))
    pack = sorted(packs[lost] - packs[kept] - tree)[0]
    swap(repo_dir / fmt.pack_name(pack), kind)
    proc = cli(tmp_path, "check", "--read-data")
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    bad = [x for x in lines if x.startswith(f"pipeline check: pack {fmt.pack_name(pack)}: ")]
    assert len(bad) == 1 and "is not a regular file" in bad[0], lines
    assert any(x.endswith(f": {lost}") for x in lines), lines
    target = tmp_path / "target"
    proc = cli(tmp_path, "restore", "--target", str(target))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(target)) == [kept]
    assert (target / kept).read_bytes() == (tmp_path / "src" / kept).read_bytes()
    assert any(x.startswith(f"pipeline restore: {lost}: chunk ")
               for x in proc.stderr.splitlines()), proc.stderr
