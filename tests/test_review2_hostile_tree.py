"""Review 2: a snapshot whose file tree a backup would never write (a repository
written by someone holding the key, or a bug): restore must not write outside
--target, and says so in one line (exit 4); check names the snapshot.

The trees are crafted entry by entry (JSON lines as the format has them), sealed with
the repository's keys into a pack, an index file and a snapshot, so that only the
tree's shape is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import PackBuilder, Repository, SnapshotRef
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS

Entry = dict[str, Any]


def craft(repo: Repository, entries: list[Entry], blobs: list[bytes]) -> SnapshotRef:
    """A snapshot of exactly ``entries`` (tree lines) with ``blobs`` as data chunks."""
    b = PackBuilder(1 << 24)
    for data in blobs:
        cid = repo.crypto.chunk_id(data)
        b.add(fmt.KIND_DATA, cid, repo.crypto.seal_chunk(fmt.KIND_DATA, cid, data, 1),
              len(data))
    tree = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
    tid = repo.crypto.chunk_id(tree)
    b.add(fmt.KIND_TREE, tid, repo.crypto.seal_chunk(fmt.KIND_TREE, tid, tree, 1), len(tree))
    pack = b.finish(repo.crypto)
    repo.backend.put(pack.name, pack.data)
    repo.write_index(pack.entries)
    now = datetime.now(UTC)
    return repo.write_snapshot(fmt.Manifest(time=now.isoformat(), hostname="h", source="/s",
                                            tree=(tid,), files=0, dirs=0, bytes=0), now)


def d(path: str) -> Entry:
    return {"type": "dir", "path": path, "mode": 0o755, "mtime_ns": 0}


def link(path: str, target: str) -> Entry:
    return {"type": "symlink", "path": path, "mode": 0o777, "mtime_ns": 0, "target": target}


def f(repo: Repository, path: str, data: bytes, **more: object) -> Entry:
    return {"type": "file", "path": path, "mode": 0o644, "mtime_ns": 0, "size": len(data),
            "ctime_ns": 0, "inode": 1, "content": [[repo.crypto.chunk_id(data).hex(),
                                                    len(data)]], **more}


def fifo(path: str) -> Entry:
    return {"type": "fifo", "path": path, "mode": 0o644, "mtime_ns": 0}


PAYLOAD = b"written outside the target\n"

# name -> (the tree's entries, given the outside directory), the line restore prints
SHAPES = {
    "symlink under a symlink": (lambda r, out: [d("."), link("a", out), link("a/z", "/etc")],
                                "entry 'a/z' lies under 'a', which is not a directory"),
    "file under a symlink": (lambda r, out: [d("."), link("a", out), f(r, "a/x", PAYLOAD)],
                             "entry 'a/x' lies under 'a', which is not a directory"),
    "dir under a symlink": (lambda r, out: [d("."), link("a", out), d("a/d"),
                                            f(r, "a/d/x", PAYLOAD)],
                            "entry 'a/d' lies under 'a', which is not a directory"),
    "fifo under a symlink": (lambda r, out: [d("."), link("a", out), fifo("a/p")],
                             "entry 'a/p' lies under 'a', which is not a directory"),
    "hard link under a symlink": (
        lambda r, out: [d("."), link("a", out), f(r, "a/y", PAYLOAD, links=2, dev=5),
                        f(r, "b", PAYLOAD, links=2, dev=5)],
        "entry 'a/y' lies under 'a', which is not a directory"),
    "file under a file": (lambda r, out: [d("."), f(r, "a", PAYLOAD), f(r, "a/b", PAYLOAD)],
                          "entry 'a/b' lies under 'a', which is not a directory"),
    "a dir then a symlink of its name": (
        lambda r, out: [d("."), d("a"), link("a", out)],
        "entry 'a' is named twice or out of order (after 'a')"),
    "a name twice": (lambda r, out: [d("."), f(r, "x", PAYLOAD), f(r, "x", b"other\n")],
                     "entry 'x' is named twice or out of order (after 'x')"),
    "the child before its symlink": (
        lambda r, out: [d("."), link("a/z", "/etc"), link("a", out)],
        "entry 'a/z' lies under 'a', which is not a directory"),
    "'.' not first": (lambda r, out: [f(r, "x", PAYLOAD), d(".")],
                      "'.' (the source directory) is not the tree's first entry"),
}


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args, "--from",
                           str(tmp / "repo"), "--passphrase-file", str(tmp / "pass")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp / "config")})


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_malformed_tree_is_refused_before_anything_is_written(tmp_path: Path,
                                                                shape: str) -> None:
    """Before: 'symlink under a symlink' restored (exit 0) a symlink ``z`` into the
    directory the first symlink named, outside --target; the others ended in a
    traceback (exit 70) after writing part of the tree.  Now: exit 4, one line naming
    the entry, --target not even created, nothing outside it; check says the same."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    make, why = SHAPES[shape]
    entries = make(repo, str(outside))
    blobs = sorted({PAYLOAD, b"other\n"})
    ref = craft(repo, entries, blobs)
    repo.close()
    target = tmp_path / "target"
    proc = cli(tmp_path, "restore", "--target", str(target))
    assert sorted(os.listdir(outside)) == []
    assert not target.exists()
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"pipeline restore: backup repository: snapshot {ref.hex[:16]}: "
                           f"its file tree is malformed: {why}")
    assert line.endswith("; nothing restored (run `pipeline check`)")
    proc = cli(tmp_path, "check")
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith(
        f"pipeline check: snapshot {ref.hex[:16]}: its file tree is malformed (restore "
        f"refuses it): {why}")]


def test_a_well_formed_crafted_tree_restores(tmp_path: Path) -> None:
    """The crafting itself is sound: the same kinds of entries, in walk order, each
    under a directory entry, restore and check clean."""
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    craft(repo, [d("."), d("a"), link("a/l", "../b"), f(repo, "a/x", PAYLOAD), fifo("b"),
                 d("c"), f(repo, "c/y", PAYLOAD)], [PAYLOAD])
    repo.close()
    target = tmp_path / "target"
    assert cli(tmp_path, "restore", "--target", str(target)).returncode == EXIT_OK
    assert (target / "a" / "x").read_bytes() == PAYLOAD == (target / "c" / "y").read_bytes()
    assert os.readlink(target / "a" / "l") == "../b"
    assert cli(tmp_path, "check").returncode == EXIT_OK


@pytest.mark.parametrize("path, why", [
    ("../x", "tree entry path '../x' escapes the target"),
    ("/etc/x", "tree entry path '/etc/x' escapes the target"),
    ("a//b", "tree entry path 'a//b' escapes the target"),
    ("a/./b", "tree entry path 'a/./b' escapes the target"),
    ("x\0y", "tree entry is damaged (path is not a string of at most 65536 characters "
              "without NUL)"),
])
def test_a_name_leaving_the_target_is_one_line(tmp_path: Path, path: str, why: str) -> None:
    """Held: '..', an absolute name, an empty or '.' component, a NUL: one line (exit
    4), nothing written, check names the snapshot."""
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    ref = craft(repo, [d("."), f(repo, path, PAYLOAD)], [PAYLOAD])
    repo.close()
    target = tmp_path / "target"
    proc = cli(tmp_path, "restore", "--target", str(target))
    assert proc.returncode == EXIT_INTEGRITY
    assert proc.stderr.splitlines() == [f"pipeline restore: backup repository: {why}"]
    assert not target.exists()
    proc = cli(tmp_path, "check")
    assert proc.returncode == EXIT_INTEGRITY
    assert (f"pipeline check: snapshot {ref.hex[:16]}: its file tree is unreadable: backup "
            f"repository: {why}") in proc.stderr.splitlines()
