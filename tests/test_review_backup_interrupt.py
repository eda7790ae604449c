"""Review of ``walk.WalkAhead`` (the walk of --source in a thread from before the
repository opens, d415b26/a122f35) under a stop: Ctrl-C, SIGTERM or kill -9 sent by the
walk's thread itself after its second batch (so it is surely running, the repository
being opened or the pipeline begun), with a source of more entries than the walk may
hold queued (``(DEPTH + 1) * BATCH``); and Ctrl-C when the first pack is stored (the
walk has ended by then: kill -9 there is test_backup_lock's, SIGTERM is Ctrl-C's path,
test_cli).  The process ends (no hang at the join), Ctrl-C and SIGTERM with exit 130 and
one line (no traceback), the repository checks clean and the next backup completes and
restores."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pipeline.backup import walk
from pipeline.errors import EXIT_INTERRUPTED, EXIT_OK
from tests.backup_helpers import repo_backed_up
from tests.conftest import ROOT
from tests.test_backup_lock import backup_cmd
from tests.test_backup_prune import Repo
from tests.test_backup_repo import describe

DIRS, FILES = 70, 250          # 17,570 entries: more than the walk may hold queued


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    repo = repo_backed_up(tmp_path, monkeypatch)
    for i in range(4):             # first in walk order: packs stored early
        (repo.src / f"a-big{i}.bin").write_bytes(os.urandom(300_000))
    for d in range(DIRS):
        sub = repo.src / f"z{d:03d}"
        sub.mkdir()
        for f in range(FILES):
            (sub / f"e{f:03d}").touch()
    assert DIRS * (FILES + 1) > (walk.WalkAhead.DEPTH + 1) * walk.WalkAhead.BATCH
    return repo


@pytest.mark.parametrize("point, sig", [
    ("walk_ahead_batch:2", "INT"), ("walk_ahead_batch:2", "TERM"),
    ("walk_ahead_batch:2", "KILL"), ("backup_after_pack:1", "INT")])
def test_a_backup_stopped_while_the_walk_runs_ahead(r: Repo, point: str, sig: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_CRASH_AT": f"{point}:{sig}"}
    proc = subprocess.run(backup_cmd(r), capture_output=True, text=True, env=env)
    if sig == "KILL":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("pipeline backup: interrupted")
    assert r.cli("check", "--read-data").returncode == EXIT_OK
    done = subprocess.run(backup_cmd(r), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == EXIT_OK, done.stderr
    r.states[done.stdout.split()[1]] = describe(r.src)
    r.verify_all()
    r.cli("check", "--read-data")
