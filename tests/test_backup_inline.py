"""The inline walk (``archive.begin``): a backup walks and cuts its tree on the calling
thread, before any Trio run, while no file needs reading.  With nothing changed it ends
there: the parent's tree chunks, a snapshot, trio never imported.  Anything that changed
is still seen: a file needing a read hands the walk over to the pipeline where it got
to (the same snapshot as a backup without the inline walk), and a metadata-only change
(an xattr, a mode, a new hard link) is taken without reading and stored as a new tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pipeline import progress
from pipeline.backup import archive
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, hostname
from tests.backup_helpers import backed_up_tree, seed_account
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import CONTAINER, PASS, describe, restore


def _begin(repo: Repository, src: Path) -> tuple[archive.Begun, progress.Stats, list[str]]:
    stats, warnings = progress.Stats(), []
    parent = archive.find_parent(repo, str(src.resolve()), hostname())
    begun = archive.begin(repo, src.resolve(), stats, warnings.append, parent)
    return begun, stats, warnings


def _walk_order_files(repo: Repository, manifest: fmt.Manifest) -> list[str]:
    return [n.path for n in repo.tree(manifest) if n.type == "file"]


def test_nothing_changed_ends_inline_with_the_parents_tree(tmp_path: Path) -> None:
    src, repo = backed_up_tree(tmp_path)
    parent = repo.manifest(repo.snapshots()[-1])
    sent = repo.backend.bytes_sent
    begun, stats, warnings = _begin(repo, src)
    assert begun.done and begun.rest is None and begun.tree.new == [] and warnings == []
    assert tuple(begun.tree.ids) == parent.tree
    result = archive.finish_inline(repo, begun)
    assert result.manifest.tree == parent.tree
    assert (result.manifest.files, result.manifest.dirs, result.manifest.bytes) == (
        parent.files, parent.dirs, parent.bytes)
    assert result.parent == repo.snapshots()[-2] and result.chunks_new == 0
    snapshot = repo.backend.get(result.snapshot.name)
    assert snapshot is not None
    assert result.bytes_sent == repo.backend.bytes_sent - sent == len(snapshot)
    assert stats.bytes_read == 0 and stats.files_done == parent.files
    assert stats.unchanged_bytes == parent.bytes


def test_a_file_to_read_hands_the_walk_over_where_it_got(tmp_path: Path) -> None:
    """The last file in walk order rewritten with its size and mtime kept (only its
    ctime says so): every entry before it is taken inline, the pipeline goes on from it,
    and the snapshot is the one a backup without a parent writes (same lines, chunks)."""
    src, repo = backed_up_tree(tmp_path)
    parent = repo.manifest(repo.snapshots()[-1])
    files = _walk_order_files(repo, parent)
    last = src / files[-1]
    st = last.stat()
    assert st.st_size > 0
    last.write_bytes(bytes(b ^ 0xFF for b in last.read_bytes()))
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns))
    begun, stats, warnings = _begin(repo, src)
    assert not begun.done and begun.rest is not None and warnings == []
    assert begun.tree.files == stats.files_done == len(files) - 1
    handed = trio.run(archive.run_backup, repo, src.resolve(), stats, warnings.append,
                      archive.BackupOptions(threads=2), None, begun)
    assert warnings == [] and stats.bytes_read == st.st_size
    (node,) = [n for n in repo.tree(handed.manifest) if n.path == files[-1]]
    assert handed.chunks_new == len({c for c, _ in node.content if c is not None}) > 0
    fresh = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(),
                     warnings.append, archive.BackupOptions(threads=2), None)
    assert handed.manifest.tree == fresh.manifest.tree != parent.tree
    trio.run(restore, repo, handed.snapshot.hex, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def test_metadata_changes_are_taken_inline_and_stored(tmp_path: Path) -> None:
    """A changed xattr, a chmod and a new hard link move ctimes but need no read: the
    inline walk takes them all, its new tree chunks wait for the pipeline to store."""
    src, repo = backed_up_tree(tmp_path)
    parent = repo.manifest(repo.snapshots()[-1])
    files = _walk_order_files(repo, parent)
    a, b = src / files[0], src / files[1]
    os.setxattr(a, "user.note", b"changed")
    os.chmod(b, 0o640)
    link = files[1] + "~link"            # walked right after b: takes b's chunk list
    os.link(b, src / link)
    begun, stats, warnings = _begin(repo, src)
    assert begun.rest is None and not begun.done and begun.tree.new != []
    assert stats.bytes_read == 0 and warnings == []
    result = trio.run(archive.run_backup, repo, src.resolve(), stats, warnings.append,
                      archive.BackupOptions(threads=2), None, begun)
    assert result.chunks_new == 0 and stats.bytes_read == 0
    nodes = {n.path: n for n in repo.tree(result.manifest)}
    assert nodes[files[0]].xattrs == [("user.note", b"changed")]
    assert nodes[files[1]].mode == 0o640 and nodes[files[1]].links == 2
    assert nodes[link].links == 2
    assert nodes[link].content == nodes[files[1]].content
    assert nodes[link].inode == nodes[files[1]].inode == b.stat().st_ino
    trio.run(restore, repo, result.snapshot.hex, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


_CHILD = """
import json, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "trio": "trio" in sys.modules}))
"""


def test_cli_no_change_backup_never_imports_trio(tmp_path: Path) -> None:
    """`pipeline backup` with nothing changed finishes without Trio; with a new file it
    runs the pipeline (and so Trio) and stores it."""
    src, repo = backed_up_tree(tmp_path)
    account = tmp_path / "account"
    seed_account(tmp_path / "repo", account, CONTAINER)
    (tmp_path / "pass").write_bytes(PASS + b"\n")

    def run() -> tuple[dict[str, object], dict[str, object]]:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, "backup", "--source", str(src), "--to",
             str(account), "--container", CONTAINER, "--passphrase-file",
             str(tmp_path / "pass"), "--json"], capture_output=True, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT),
                 "PIPELINE_CONFIG_DIR": str(tmp_path / "config")}, timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [json.loads(x) for x in proc.stdout.splitlines()]
        summary = next(x for x in lines if x.get("type") == "summary")
        return lines[-1], summary

    last, summary = run()
    assert last == {"code": 0, "trio": False}
    assert summary["bytes_read"] == 0 and summary["chunks_new"] == 0
    (src / "new.txt").write_text("new\n")
    last, summary = run()
    assert last == {"code": 0, "trio": True}
    assert summary["bytes_read"] == 4 and summary["chunks_new"] == 1


def test_find_parent_reads_manifests_newest_first_up_to_the_match(tmp_path: Path) -> None:
    """A year of hourly snapshots is not read to find the newest one's parent: eight at a
    time (the read-ahead), newest first, up to the first of the same source and host."""
    from datetime import UTC, datetime, timedelta

    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(30):     # /a then /b: the newest /a is the 20th, 11th from the end
        m = fmt.Manifest(time="", hostname=hostname(), source="/a" if i < 20 else "/b",
                         tree=(), files=0, dirs=0, bytes=0)
        repo.write_snapshot(m, t0 + timedelta(hours=i))
    refs = repo.snapshots()
    read: list[str] = []
    manifest = repo.manifest

    def counted(ref: object) -> fmt.Manifest:
        read.append(ref.name)  # type: ignore[attr-defined]
        return manifest(ref)  # type: ignore[arg-type]

    repo.manifest = counted  # type: ignore[method-assign]
    assert archive.find_parent(repo, "/b", hostname()) == refs[-1]
    assert sorted(read) == [r.name for r in refs[-8:]]
    read.clear()
    assert archive.find_parent(repo, "/a", hostname()) == refs[19]
    assert sorted(read) == [r.name for r in refs[-16:]]
    read.clear()
    assert archive.find_parent(repo, "/c", hostname()) is None
    assert sorted(read) == [r.name for r in refs]


def test_a_long_inline_walk_hands_over_with_nothing_to_read(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Past ``INLINE_S`` the pipeline (and its progress display) takes over even with
    nothing to read: the snapshot is the same, the parent's tree, nothing read."""
    src, repo = backed_up_tree(tmp_path)
    parent = repo.manifest(repo.snapshots()[-1])
    monkeypatch.setattr(archive, "INLINE_S", 0.0)
    begun, stats, warnings = _begin(repo, src)
    assert begun.rest is not None and not begun.done
    assert begun.tree.files + begun.tree.dirs <= 1 and begun.tree.ids == []
    result = trio.run(archive.run_backup, repo, src.resolve(), stats, warnings.append,
                      archive.BackupOptions(threads=2), None, begun)
    assert warnings == [] and stats.bytes_read == 0 and result.chunks_new == 0
    assert result.manifest.tree == parent.tree
    assert (result.manifest.files, result.manifest.dirs, result.manifest.bytes) == (
        parent.files, parent.dirs, parent.bytes)
    assert stats.files_done == parent.files and stats.unchanged_bytes == parent.bytes


def test_inline_walk_warns_on_this_thread(tmp_path: Path) -> None:
    """A warning of the inline walk (a socket is not backed up) reaches ``warn`` directly
    and the result, without a Trio run."""
    import socket

    src, repo = backed_up_tree(tmp_path)
    parent = repo.manifest(repo.snapshots()[-1])
    st = src.stat()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "sock"))
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))     # the tree stays the same
        begun, _, warnings = _begin(repo, src)
        assert begun.done and warnings == ["sock: socket, not backed up"]
        result = archive.finish_inline(repo, begun)
    assert result.warnings == ["sock: socket, not backed up"]
    assert result.manifest.tree == parent.tree


def test_tree_chunks_back_to_back_are_read_at_once(tmp_path: Path) -> None:
    """A tree of several chunks lying back to back in one pack is one read (an account's
    round trip), not one per chunk; every chunk still opened and checked."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4000):  # ~128 lines a tree chunk (cut by the repository's random seed):
        (src / f"f{i:04d}").write_bytes(b"")        # < 3 chunks of 4,000 lines is ~1e-11
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    result = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(), print,
                      archive.BackupOptions(threads=1), None)   # one sealer: in order
    manifest = result.manifest
    assert len(manifest.tree) >= 3 and len({repo.entry(c).pack for c in manifest.tree}) == 1
    reads: list[tuple[str, int, int]] = []
    read = repo.backend.read

    def counted(name: str, offset: int, length: int) -> bytes:
        reads.append((name, offset, length))
        return read(name, offset, length)

    repo.backend.read = counted  # type: ignore[method-assign]
    nodes = list(repo.tree(manifest))
    assert len(nodes) == 4001 and [n.path for n in nodes[1:]] == [f"f{i:04d}" for i in range(4000)]
    entries = [repo.entry(c) for c in manifest.tree]
    assert reads == [(fmt.pack_name(entries[0].pack), entries[0].offset,
                      sum(e.length for e in entries))]
