"""A local account's new partial of a blob committed with the same size starts as its copy
(022e1f6: a file that spans drives, committed, then its drive imported again, delivers only
that drive's cells), but only where the importer needs it: a file whose every cell is on
the drive (``LocalStorage.write_own_part``) starts sparse, since each of its cells is
written or zeroed before its commit.  Re-importing a session over an account holding
same-size versions of its files copied every multi-part file's old blob first."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import journal
from pipeline.cluster import receive_remote
from pipeline.drive.format import CELL, BlobType
from pipeline.storage import local
from pipeline.storage.local import LocalStorage

from .drivedata import make_tree, read_tree
from .test_import import copy_log, local_blobs, prep
from .test_import_state_crash import _import


def test_own_parts_start_sparse_other_parts_keep_the_committed_blob(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.check()
    store.ensure_container("ctr")
    old = [bytes([1]) * CELL, bytes([2]) * CELL, bytes([3]) * 100]
    for k, part in enumerate(old):
        store.write_part("ctr", "own", BlobType.BLOCK, 2 * CELL + 100, k * CELL, part)
        store.write_part("ctr", "kept", BlobType.BLOCK, 2 * CELL + 100, k * CELL, part)
    store.commit("ctr", "own", BlobType.BLOCK, 2 * CELL + 100, [])
    store.commit("ctr", "kept", BlobType.BLOCK, 2 * CELL + 100, [])
    store.write_own_part("ctr", "own", BlobType.BLOCK, 2 * CELL + 100, CELL, b"n" * CELL)
    store.write_part("ctr", "kept", BlobType.BLOCK, 2 * CELL + 100, CELL, b"n" * CELL)
    partial = tmp_path / local.PARTIAL / "ctr"
    assert (partial / "own").read_bytes() == bytes(CELL) + b"n" * CELL + bytes(100)
    assert (partial / "kept").read_bytes() == old[0] + b"n" * CELL + old[2]
    # The committed blobs are untouched until their commits.
    assert (tmp_path / "ctr" / "own").read_bytes() == b"".join(old)
    store.commit("ctr", "own", BlobType.BLOCK, 2 * CELL + 100, [0, 2 * CELL])
    store.commit("ctr", "kept", BlobType.BLOCK, 2 * CELL + 100, [])
    assert (tmp_path / "ctr" / "own").read_bytes() == bytes(CELL) + b"n" * CELL + bytes(100)
    assert (tmp_path / "ctr" / "kept").read_bytes() == old[0] + b"n" * CELL + old[2]


def _changed(src: Path, to: Path) -> None:
    """The same tree, each file's bytes reversed: its size (and how well it compresses)
    kept."""
    for dirpath, _, names in os.walk(src):
        for name in names:
            p = Path(dirpath) / name
            q = to / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes()[::-1])


def _import_all(jdir: Path, session: str, acct: Path) -> list[dict[str, Any]]:
    journals = journal.session_journals(jdir, session)
    ids = {j.drive.uuid: j.drive.path for j in journals}
    for j in journals:
        j.close()
    got = trio.run(receive_remote.import_all, str(jdir), session, list(ids), ids,
                   lambda: LocalStorage(acct), lambda _: None)
    assert got["code"] == 0, got
    return got["drives"]


def test_a_session_again_over_same_size_versions_copies_only_spanning_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    make_tree(src_a, small_files=40, random_mb=20, sparse_mb=4)
    _changed(src_a, src_b)
    files = read_tree(src_b)
    for session, src in (("seed-a", src_a), ("seed-b", src_b)):
        prep(src, tmp_path / f"j-{session}", session,
             [tmp_path / f"{session}-1.img", tmp_path / f"{session}-2.img"], "32M")
    acct = tmp_path / "acct"
    acct.mkdir()
    _import_all(tmp_path / "j-seed-a", "seed-a", acct)
    assert local_blobs(acct, "seed-test") == read_tree(src_a)

    copied: list[str] = []
    seed = LocalStorage._seed

    def counted(self: LocalStorage, path: str, final: str, size: int) -> None:
        if os.path.isfile(final) and os.path.getsize(final) == size:
            copied.append(os.path.relpath(final, acct / "seed-test"))
        seed(self, path, final, size)

    monkeypatch.setattr(LocalStorage, "_seed", counted)
    drives = _import_all(tmp_path / "j-seed-b", "seed-b", acct)
    assert local_blobs(acct, "seed-test") == files
    spanning = {line["blob"] for d in drives  # each worker's copy log, kept for the client
                for line in map(json.loads, Path(d["log_file"]).read_text().splitlines())
                if "continues on another drive" in line.get("reason", "")}
    multipart = {n for n, data in files.items() if len(data) > CELL}
    assert spanning and multipart - {b.removeprefix("vdir/") for b in spanning}
    # Only the file that spans the drives starts as its old blob's copy (once: its first
    # drive; the second finds the partial); before, every multi-part file did.
    assert sorted(copied) == sorted(spanning)


def test_killed_after_committing_a_spanning_file_still_keeps_the_other_drive_s_cells(
        tmp_path: Path) -> None:
    """022e1f6's bug stays fixed with the copy narrowed (as test_import_state_crash, over
    an account holding same-size versions, which the narrowing must not confuse)."""
    src_a, src_b = tmp_path / "a", tmp_path / "b"
    make_tree(src_a, small_files=40, random_mb=20, sparse_mb=4)
    _changed(src_a, src_b)
    drives = {}
    for session, src in (("seed-a", src_a), ("seed-b", src_b)):
        drives[session] = [tmp_path / f"{session}-1.img", tmp_path / f"{session}-2.img"]
        prep(src, tmp_path / f"j-{session}", session, drives[session], "32M")
    acct, logs = tmp_path / "acct", tmp_path / "logs"
    acct.mkdir()
    _import_all(tmp_path / "j-seed-a", "seed-a", acct)
    d1, d2 = drives["seed-b"]
    jdir = tmp_path / "j-seed-b"
    _import(d1, jdir, acct, logs)
    _import(d2, jdir, acct, logs, env={"PIPELINE_CRASH_AT": "import_after_commit_round:1"},
            code=-signal.SIGKILL)
    assert local_blobs(acct, "seed-test") == read_tree(src_b)
    _import(d2, jdir, acct, logs)
    assert local_blobs(acct, "seed-test") == read_tree(src_b)
    assert all(x["status"] == "ok" for x in copy_log(logs, "seed-b", 2)
               if x.get("type") == "blob")
