"""A file whose one part is the whole file is written unnamed (O_TMPFILE) and linked in
under its blob's name (LocalStorage.write_whole): no partial name, and a crash before
the link leaves nothing of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.drive.format import BlobType
from pipeline.errors import BadInput
from pipeline.receive import importer
from pipeline.storage import local
from pipeline.storage.local import LocalStorage
from pipeline.storage.target import open_storage
from tests.azurite import azurite  # noqa: F401 - the fixture

from .conftest import ROOT, run_cli
from .drivedata import make_tree, read_tree
from .test_import import copy_log, local_blobs, prep

SESSION = "whole-1"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "part+commit"])
def test_write_whole_writes_replaces_and_leaves_no_partial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool) -> None:
    assert LocalStorage._tmpfile, "O_TMPFILE and /proc/self/fd are needed on this machine"
    monkeypatch.setattr(LocalStorage, "_tmpfile", tmpfile)
    store = LocalStorage(tmp_path)
    store.check()
    store.ensure_container("ctr")
    big = bytes(range(256)) * 4000  # past the O_DIRECT threshold, not a multiple of 4 KiB
    store.write_whole("ctr", "a/b.txt", BlobType.BLOCK, b"first")
    store.write_whole("ctr", "a/b.txt", BlobType.BLOCK, b"second, longer")  # replaces
    store.write_whole("ctr", "big", BlobType.BLOCK, big)
    store.write_whole("ctr", "empty", BlobType.BLOCK, b"")
    assert _files(tmp_path / "ctr") == {"a/b.txt": b"second, longer", "big": big, "empty": b""}
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "ctr").rglob("*") if p.is_file()} \
        == {0o600}
    assert _files(tmp_path / local.PARTIAL) == {}  # no partial or temporary file left
    assert store.size("ctr", "a/b.txt") == len(b"second, longer")


def _import(drive: Path, jdir: Path, account: Path, logs: Path) -> list[str]:
    return ["import", "--drive", str(drive), "--journal-dir", str(jdir), "--to", str(account),
            "--log-dir", str(logs)]


def test_import_killed_before_a_whole_file_is_linked_then_again(tmp_path: Path) -> None:
    src, jdir = tmp_path / "src", tmp_path / "j"
    make_tree(src, small_files=600, random_mb=4, sparse_mb=4)
    drive = tmp_path / "d1.img"
    prep(src, jdir, SESSION, [drive], "64M")
    files = read_tree(src)

    ref, ref_logs = tmp_path / "ref", tmp_path / "ref-logs"
    ref.mkdir()
    run_cli(*_import(drive, jdir, ref, ref_logs), check_code=0)
    assert local_blobs(ref, "seed-test") == files

    account, logs = tmp_path / "acct", tmp_path / "logs"
    account.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *_import(drive, jdir, account, logs)],
                          cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "PIPELINE_CRASH_AT": "before_whole_link:300"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    shown = local_blobs(account, "seed-test")
    assert 299 <= len(shown) < len(files)  # the 300th small file was never named
    assert all(files[name] == data for name, data in shown.items())  # whole, right
    # Small files never had a partial name: what is there is only multi-part files' parts.
    partial = account / local.PARTIAL / "seed-test" / "vdir"
    leftover = _files(partial) if partial.exists() else {}
    assert all(len(files[name]) > (1 << 20) for name in leftover)
    marker = account / importer.STATE_CONTAINER / SESSION / "drive-01.json"
    assert not marker.exists() or json.loads(marker.read_bytes())["state"] == "parts"

    run_cli(*_import(drive, jdir, account, logs), check_code=0)
    assert local_blobs(account, "seed-test") == files
    totals = copy_log(logs, SESSION, 1)[-1]
    assert totals["result"] == "done" and totals == {
        **copy_log(ref_logs, SESSION, 1)[-1], "t": totals["t"]}
    run_cli(*_import(drive, jdir, account, logs), check_code=0)  # done: changes nothing
    assert local_blobs(account, "seed-test") == files


def test_azure_write_whole_new_existing_and_wrong_type(azurite: str) -> None:  # noqa: F811
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.write_whole(c, "new", BlobType.BLOCK, b"one request")  # Put Blob
    store.write_whole(c, "new", BlobType.BLOCK, b"replaced")     # exists: part + commit
    store.write_whole(c, "page", BlobType.PAGE, b"p" * 1024)     # page blobs: part + commit
    store.write_whole(c, "empty", BlobType.BLOCK, b"")
    assert (store.get(c, "new"), store.get(c, "page"), store.get(c, "empty")) == (
        b"replaced", b"p" * 1024, b"")
    with pytest.raises(BadInput) as ei:  # a page blob is not replaced by a block blob
        store.write_whole(c, "page", BlobType.BLOCK, b"x" * 512)
    assert "page blob" in str(ei.value)
    assert store.get(c, "page") == b"p" * 1024
    assert sorted(store.list(c)) == ["empty", "new", "page"]
