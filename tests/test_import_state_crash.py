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
