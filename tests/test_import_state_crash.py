"""kill -9 at the import's own state points, then the same import again: the account and the
copy log an import that ran through gives.

The plan's scratch database is one SQLite transaction, never committed, with no journal
(``receive/state.py``): a kill loses it whole, and nothing may depend on it.  These
points kill the import where that state is furthest along: after a sweep wrote files'
cells back into it (at the latest, the one before the "parts" marker), and after a
commit round (the blobs committed, the marker still "parts").
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pipeline.receive import importer

from .conftest import run_cli
from .drivedata import make_tree, read_tree
from .test_import import copy_log, local_blobs, prep

SESSION = "statecrash-1"


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("statecrash")
    src, jdir, d1 = base / "src", base / "j", base / "d1.img"
    make_tree(src, small_files=600, random_mb=3, sparse_mb=4)
    prep(src, jdir, SESSION, [d1], "32M")
    return d1, jdir, read_tree(src)


def _import(drive: Path, jdir: Path, account: Path, logs: Path, env: dict[str, str] | None = None,
            code: int | None = 0) -> None:
    run_cli("import", "--drive", str(drive), "--journal-dir", str(jdir), "--to", str(account),
            "--log-dir", str(logs), env=env, check_code=code)


@pytest.mark.parametrize("point", ["import_after_sweep:1", "import_after_commit_round:1"])
def test_killed_at_a_state_point_then_again(tmp_path: Path, drive: tuple[Path, Path, dict],
                                            point: str) -> None:
    d1, jdir, files = drive
    ref, ref_logs = tmp_path / "ref", tmp_path / "ref-logs"
    ref.mkdir()
    _import(d1, jdir, ref, ref_logs)
    assert local_blobs(ref, "seed-test") == files

    account, logs = tmp_path / "acct", tmp_path / "logs"
    account.mkdir()
    _import(d1, jdir, account, logs, env={"PIPELINE_CRASH_AT": point}, code=-signal.SIGKILL)
    shown = local_blobs(account, "seed-test")
    assert all(files[name] == data for name, data in shown.items())  # whole, right blobs
    if point.startswith("import_after_commit_round"):
        assert shown == files  # every blob committed, the drive not yet "done"
    marker = account / importer.STATE_CONTAINER / SESSION / "drive-01.json"
    if marker.exists():
        assert json.loads(marker.read_bytes())["state"] == "parts"

    _import(d1, jdir, account, logs)
    assert local_blobs(account, "seed-test") == files
    assert json.loads(marker.read_bytes())["state"] == "done"
    totals = copy_log(logs, SESSION, 1)[-1]
    assert totals["result"] == "done" and totals == {
        **copy_log(ref_logs, SESSION, 1)[-1], "t": totals["t"]}
    blobs = sorted((x["blob"], x["status"]) for x in copy_log(logs, SESSION, 1)
                   if x.get("type") == "blob")
    assert blobs == sorted((x["blob"], x["status"]) for x in copy_log(ref_logs, SESSION, 1)
                           if x.get("type") == "blob")


@pytest.fixture(scope="module")
def spanning(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, dict]:
    base = tmp_path_factory.mktemp("statecrash-span")
    src, jdir = base / "src", base / "j"
    make_tree(src, small_files=40, random_mb=20, sparse_mb=4)
    drives = [base / "d1.img", base / "d2.img"]
    prep(src, jdir, SPAN_SESSION, drives, "32M")
    return drives, jdir, read_tree(src)


SPAN_SESSION = "statecrash-span"


def test_killed_after_committing_a_file_that_spans_drives(
        tmp_path: Path, spanning: tuple[list[Path], Path, dict]) -> None:
    """Drive 1 delivered a file's first cells, drive 2's import committed the file and was
    killed before its marker said "done": importing drive 2 again must not commit the
    file once more from a partial blob that holds drive 2's cells alone (it did: drive 1's
    cells read back as zeros, logged "ok")."""
    (d1, d2), jdir, files = spanning
    account, logs = tmp_path / "acct", tmp_path / "logs"
    account.mkdir()
    _import(d1, jdir, account, logs)
    waiting = {x["blob"] for x in copy_log(logs, SPAN_SESSION, 1)
               if "continues on another drive" in x.get("reason", "")}
    assert waiting  # a file spans the two drives
    _import(d2, jdir, account, logs, env={"PIPELINE_CRASH_AT": "import_after_commit_round:1"},
            code=-signal.SIGKILL)
    assert local_blobs(account, "seed-test") == files  # committed, drive 2 still "parts"
    marker = account / importer.STATE_CONTAINER / SPAN_SESSION / "drive-02.json"
    assert json.loads(marker.read_bytes())["state"] == "parts"

    _import(d2, jdir, account, logs)
    assert json.loads(marker.read_bytes())["state"] == "done"
    assert local_blobs(account, "seed-test") == files
    statuses = {x["blob"]: x["status"] for x in copy_log(logs, SPAN_SESSION, 2)
                if x.get("type") == "blob"}
    assert all(statuses["vdir/" + b if not b.startswith("vdir/") else b] == "ok"
               for b in waiting)
