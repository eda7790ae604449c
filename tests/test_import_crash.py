"""An import killed (SIGKILL) while its uploaders commit files whole on the drive.

Files whose every cell is on the drive are committed as soon as their last part is
written, before the drive's marker (receive/upload.py).  Killed then, the account
must show only whole, right blobs, the drive must not read as imported, and the
same import run again must give the account an import that ran through gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.receive import importer

from .conftest import ROOT, run_cli
from .drivedata import make_tree, read_tree
from .test_import import copy_log, local_blobs, prep

SESSION = "crash-1"


def _visible(account: Path) -> int:
    top = account / "seed-test"
    return sum(len(files) for _, _, files in os.walk(top)) if top.exists() else 0


def _import(drive: Path, jdir: Path, account: Path, logs: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "import", "--drive", str(drive), "--journal-dir",
            str(jdir), "--to", str(account), "--log-dir", str(logs)]


def test_import_killed_while_committing_then_again(tmp_path: Path) -> None:
    src, jdir = tmp_path / "src", tmp_path / "j"
    make_tree(src, small_files=3000, random_mb=30, sparse_mb=8)
    paths = [tmp_path / f"d{i}.img" for i in (1, 2)]
    prep(src, jdir, SESSION, paths, "48M")
    files = read_tree(src)

    ref, ref_logs = tmp_path / "ref", tmp_path / "ref-logs"
    ref.mkdir()
    run_cli(*_import(paths[0], jdir, ref, ref_logs)[3:], check_code=0)
    reference = local_blobs(ref, "seed-test")
    assert 0 < len(reference) < len(files)  # a file continues on drive 2: it waits

    account, logs = tmp_path / "acct", tmp_path / "logs"
    account.mkdir()
    proc = subprocess.Popen(_import(paths[0], jdir, account, logs), cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _visible(account) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]

    shown = local_blobs(account, "seed-test")
    assert 20 <= len(shown) < len(reference), "not killed mid-import"
    assert all(reference[name] == data for name, data in shown.items())  # whole, right
    marker = account / importer.STATE_CONTAINER / SESSION / "drive-01.json"
    if marker.exists():  # the data may be in, the drive is not imported until "done"
        assert json.loads(marker.read_bytes())["state"] == "parts"

    run_cli(*_import(paths[0], jdir, account, logs)[3:], check_code=0)
    assert local_blobs(account, "seed-test") == reference
    totals = copy_log(logs, SESSION, 1)[-1]
    assert totals["result"] == "done" and totals == {
        **copy_log(ref_logs, SESSION, 1)[-1], "t": totals["t"]}
    run_cli(*_import(paths[1], jdir, account, logs)[3:], check_code=0)
    assert local_blobs(account, "seed-test") == files
