"""Locks and concurrency: backups share the repository, prune and forget have it alone,
a lock left by a kill -9 goes stale, and a killed backup leaves a repository that
checks clean and the next backup completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.backup import lock as lock_mod
from pipeline.backup.errors import RepositoryLocked
from pipeline.errors import EXIT_OK, EXIT_REFUSED, Caution
from tests.backup_helpers import repo_backed_up
from tests.conftest import ROOT
from tests.test_backup_prune import Repo
from tests.test_backup_repo import CONTAINER, describe

HOLD = """
import sys
from pipeline.backup.backend import StorageBackend
from pipeline.backup.repo import Repository
from pipeline.storage import open_storage
repo = Repository.open(StorageBackend(open_storage(sys.argv[1]), "backups"),
                       sys.argv[2].encode(), "test", lock=sys.argv[3])
print("held", flush=True)
sys.stdin.read()
repo.close()
"""


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    return repo_backed_up(tmp_path, monkeypatch)


def hold(r: Repo, mode: str) -> subprocess.Popen[str]:
    """Another process holding a lock on the repository until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, r.url, r.passfile.read_text().strip(),
                             mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def write_lock(r: Repo, host: str, pid: int, age: float, exclusive: bool) -> str:
    with r.open(None) as repo:
        when = datetime.now(UTC) - timedelta(seconds=age)
        obj = {"host": host, "pid": pid, "exclusive": exclusive, "command": "backup",
               "time": when.isoformat()}
        name = f"{lock_mod.LOCKS}{os.urandom(32).hex()}"
        repo.backend.put(name, repo.crypto.seal_file(lock_mod.LOCK_MAGIC,
                                                     json.dumps(obj).encode()))
    return name


def backup_cmd(r: Repo, src: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "pipeline", "backup", "--source", str(src or r.src), "--to",
            r.url, "--container", CONTAINER, "--passphrase-file", str(r.passfile)]


def test_prune_is_refused_while_a_backup_holds_a_lock_then_waits_for_it(r: Repo) -> None:
    holder = hold(r, "shared")
    try:
        proc = r.cli("prune", code=EXIT_REFUSED)
        line = proc.stderr.strip().splitlines()[-1]
        assert f"a shared lock by PID {holder.pid}" in line and "--retry-lock" in line
        r.cli("forget", "--keep-last", "1", code=EXIT_REFUSED)
        # a backup beside it is fine: shared locks do not conflict
        r.change()
        subprocess.run(backup_cmd(r), check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        # --retry-lock waits: the holder goes away meanwhile
        waiting = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "prune", "--retry-lock", "60s", "--from", r.url,
             "--container", CONTAINER, "--passphrase-file", str(r.passfile)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        assert waiting.poll() is None
    finally:
        holder.communicate("")
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == EXIT_OK, err
    assert not list((r.account / CONTAINER / "locks").iterdir())


def test_backup_and_check_are_refused_while_prune_holds_the_exclusive_lock(r: Repo) -> None:
    holder = hold(r, "exclusive")
    try:
        proc = subprocess.run(backup_cmd(r), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == EXIT_REFUSED, proc.stderr
        assert "an exclusive lock" in proc.stderr
        r.cli("check", code=EXIT_REFUSED)
    finally:
        holder.communicate("")
    r.cli("check")


def test_a_killed_holders_lock_is_stale_and_removed_with_a_warning(r: Repo) -> None:
    holder = hold(r, "exclusive")
    holder.kill()
    holder.wait()                               # reaped: its pid is gone
    proc = r.cli("prune")
    assert "warning: removed the stale lock" in proc.stderr
    assert f"process {holder.pid} on this host is gone" in proc.stderr


def test_other_hosts_locks_go_stale_only_with_age(r: Repo) -> None:
    fresh = write_lock(r, "elsewhere", 1, 60, exclusive=False)
    r.cli("prune", code=EXIT_REFUSED)
    r.cli("check")                               # shared beside shared
    with r.open(None) as repo:
        repo.backend.delete(fresh)
    write_lock(r, "elsewhere", 1, lock_mod.STALE + 60, exclusive=True)
    proc = r.cli("prune")
    assert "not refreshed for" in proc.stderr


def test_lock_refresh_and_release(r: Repo) -> None:
    ticks = [0.0]
    with r.open(None) as repo:
        lock = lock_mod.Lock(repo.backend, repo.crypto, True, "test", clock=lambda: ticks[0])
        lock.acquire()
        first = repo.backend.get(lock.name)
        lock.maybe_refresh()
        assert repo.backend.get(lock.name) == first          # not due yet
        ticks[0] = lock_mod.REFRESH + 1
        lock.maybe_refresh()
        assert repo.backend.get(lock.name) != first
        other = lock_mod.Lock(repo.backend, repo.crypto, False, "test")
        with pytest.raises(RepositoryLocked):
            other.acquire(wait=0)
        assert repo.backend.list(lock_mod.LOCKS) == [lock.name]   # backed off
        repo.backend.delete(lock.name)                 # removed by another run
        with pytest.warns(Caution, match="removed by another run"):
            lock.refresh()
        lock.release()
        assert repo.backend.list(lock_mod.LOCKS) == []


def test_two_backups_at_once_both_complete(r: Repo, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.bin").write_bytes(os.urandom(300_000))
    r.change()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for cmd in (backup_cmd(r), backup_cmd(r, other), backup_cmd(r))]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [EXIT_OK] * 3, outs
    ids = [o.split()[1] for o, _ in outs]
    for sid, src in zip(ids, (r.src, other, r.src), strict=True):
        r.states[sid] = describe(src)
    r.cli("check", "--read-data")
    r.verify_all()


@pytest.mark.parametrize("point", ["backup_after_pack:2", "after_index_file:1"])
def test_a_backup_killed_with_kill_9_leaves_a_valid_repository(r: Repo, point: str) -> None:
    for i in range(6):
        (r.src / f"big{i}.bin").write_bytes(os.urandom(200_000))
    proc = subprocess.run(backup_cmd(r), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "PIPELINE_CRASH_AT": point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert r.cli("check", "--read-data").returncode == EXIT_OK
    done = subprocess.run(backup_cmd(r), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == EXIT_OK, done.stderr
    r.states[done.stdout.split()[1]] = describe(r.src)
    r.verify_all()
    r.cli("prune", "--max-unused", "0%")
    r.cli("check", "--read-data")
    assert "unreferenced" not in r.cli("check").stderr
