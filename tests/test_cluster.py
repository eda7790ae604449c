"""prep, verify and import on a Dask cluster: a real `dask scheduler` and two `pipeline worker`
processes, each owning two small image drives; the round trip is byte-identical, and a
worker killed (SIGKILL) mid-prep is resumed onto the same drives.

The helpers here (Proc, start_scheduler, start_worker) are shared with
tests/test_cluster_netns.py, which runs the same round trip across network namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.cluster import plan as cluster_plan
from pipeline.volume import luks2
from tests.conftest import FAST_KDF_ARGS, ROOT, require_root, run_cli
from tests.drivedata import make_tree, read_tree

DRIVE_SIZE = "32M"  # 16 MiB of data area: a worker's shard spills onto its second drive
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@dataclass
class Proc:
    """A background process of this test, ended by its pid (never by name)."""

    argv: Sequence[str]
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "wb") as out:  # a restart starts its own log: wait_log reads it
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def wait_log(self, text: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log.read_text(errors="replace"):
                return
            assert self.popen is not None and self.popen.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"{self.argv[:3]} did not log {text!r}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)


def start_scheduler(tmp: Path, prefix: Sequence[str] = (), host: str = "127.0.0.1",
                    port: int = 0) -> Proc:
    """`dask scheduler` (the pipeline importable: Dask's scheduler unpickles the tasks)."""
    proc = Proc([*prefix, sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                 host, "--port", str(port), "--no-dashboard"],
                tmp / "scheduler.log").start()
    proc.wait_log("Scheduler at:")
    return proc


def scheduler_address(proc: Proc) -> str:
    for line in proc.log.read_text().splitlines():
        if "Scheduler at:" in line:
            return line.split("Scheduler at:")[1].strip()
    raise AssertionError(proc.log.read_text())


def start_worker(tmp: Path, scheduler: str, name: str, prefix: Sequence[str] = (),
                 host: str | None = None, env: dict[str, str] | None = None,
                 extra: Sequence[str] = ()) -> Proc:
    """`pipeline worker NAME` owning two image drives under ``tmp`` (``extra``: more options)."""
    argv = [*prefix, sys.executable, "-m", "pipeline", "worker", "--scheduler", scheduler,
            "--name", name, "--drive", str(tmp / f"{name}-a.img"), "--drive",
            str(tmp / f"{name}-b.img"), "--drive-size", DRIVE_SIZE, "--threads", "1",
            *(["--host", host] if host else []), *extra]
    proc = Proc(argv, tmp / f"{name}.log", env={**ENV, **(env or {})}).start()
    proc.wait_log("Registered to:")
    return proc


def cli(*args: str, prefix: Sequence[str] = (), check_code: int | None = 0
        ) -> subprocess.CompletedProcess[str]:
    """`pipeline ARGS`, in a network namespace when ``prefix`` says so."""
    if not prefix:
        return run_cli(*args, check_code=check_code)
    proc = subprocess.run([*prefix, sys.executable, "-m", "pipeline", *args],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def staging(tmp: Path) -> Path:
    src = tmp / "staging"
    make_tree(src, small_files=300, random_mb=20, sparse_mb=16)
    return src


def round_trip(tmp: Path, src: Path, address: str, prefix: Sequence[str] = ()) -> None:
    """verify --cluster, import --cluster (twice: the second changes nothing), and the
    imported blobs byte for byte against the staging tree."""
    jdir = tmp / "journals"
    out = cli("verify", "--cluster", address, "--journal-dir", str(jdir), prefix=prefix)
    assert out.stdout.count(": ok:") == len(journal.session_journals(jdir)), out.stdout
    store, logs = tmp / "store", tmp / "logs"
    store.mkdir(exist_ok=True)
    args = ("import", "--cluster", address, "--journal-dir", str(jdir), "--to", str(store),
            "--log-dir", str(logs))
    out = cli(*args, prefix=prefix)
    assert "0 corrupt, 0 missing" in out.stdout, out.stdout
    assert read_tree(store / "cont" / "seed") == read_tree(src)
    logs_written = sorted(p.name for p in logs.iterdir())
    assert logs_written == sorted(f"copylog-clu-1-drive{j.drive.seq:02d}.jsonl"
                                  for j in journal.session_journals(jdir))
    again = cli(*args, prefix=prefix)
    assert again.stdout.count("already imported; nothing changed") == len(logs_written)
    assert read_tree(store / "cont" / "seed") == read_tree(src)


def prep_args(address: str, tmp: Path, src: Path) -> list[str]:
    return ["prep", "--cluster", address, "--source", str(src), "--dstdir", "cont/seed/",
            "--journal-dir", str(tmp / "journals"), "--session-id", "clu-1", "--json",
            *FAST_KDF_ARGS]


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def check_session(tmp: Path) -> None:
    """Each worker's drives numbered in its own range, every drive closed (or full)."""
    plan = cluster_plan.load(tmp / "journals", "clu-1")
    journals = journal.session_journals(tmp / "journals", "clu-1")
    owners = {}
    for j in journals:
        assert j.drive.state in ("closed", "full"), (j.drive.seq, j.drive.state)
        owners[j.drive.seq] = next(w.name for w in plan.workers if w.owns(j.drive.seq))
        j.close()
    assert sorted(owners) == [1, 2, 101]  # w1 filled its first drive and spilled; w2 one
    assert owners == {1: "w1", 2: "w1", 101: "w2"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, Proc]]]:
    require_root()
    procs: dict[str, Proc] = {}
    try:
        procs["scheduler"] = start_scheduler(tmp_path)
        address = scheduler_address(procs["scheduler"])
        yield address, procs
    finally:
        for p in procs.values():
            p.stop()


def test_prep_verify_import_on_two_workers(tmp_path: Path,
                                           cluster: tuple[str, dict[str, Proc]]) -> None:
    address, procs = cluster
    for name in ("w1", "w2"):
        procs[name] = start_worker(tmp_path, address, name)
    src = staging(tmp_path)
    out = cli(*prep_args(address, tmp_path, src))
    got = events(out.stdout)
    summary = next(e for e in got if e["type"] == "summary")
    assert {n: w["bytes_read"] > 0 for n, w in summary["workers"].items()} == {
        "w1": True, "w2": True}
    assert summary["files_done"] == summary["files_total"]
    progress = [e for e in got if e["type"] == "progress"]
    assert progress and progress[-1]["bytes_read"] == summary["bytes_read"]
    check_session(tmp_path)
    round_trip(tmp_path, src, address)
    damaged_drive_is_named(tmp_path, address)


def damaged_drive_is_named(tmp: Path, address: str) -> None:
    """Bytes flipped on w2's drive: verify --cluster names the file (exit 4), and import
    --cluster into a fresh account writes the rest and names it corrupt (exit 4)."""
    j = journal.Journal.open(journal.journal_path(tmp / "journals", "clu-1", 101))
    _, offset, length = j.segments()[0]  # the first data segment, in the data area
    j.close()
    with open(tmp / "w2-a.img", "r+b") as f:  # the middle of its payload
        f.seek(luks2.DATA_OFFSET + offset + length // 2)
        flipped = bytes(b ^ 0xFF for b in f.read(64))
        f.seek(-64, os.SEEK_CUR)
        f.write(flipped)
    jdir = str(tmp / "journals")
    out = cli("verify", "--cluster", address, "--journal-dir", jdir, check_code=4)
    assert "drive 101 (" in out.stdout and "DAMAGED" in out.stdout, out.stdout
    assert "drive 1 (" in out.stdout and ": ok:" in out.stdout
    fresh, logs = tmp / "store2", tmp / "logs2"
    fresh.mkdir()
    out = cli("import", "--cluster", address, "--journal-dir", jdir, "--to", str(fresh),
              "--log-dir", str(logs), check_code=4)
    assert "corrupt or missing" in out.stderr
    lines = [json.loads(x) for x in (logs / "copylog-clu-1-drive101.jsonl").read_text()
             .splitlines()]
    assert any(x.get("status") == "corrupt" for x in lines)


def test_worker_killed_mid_prep_resumes_on_its_drives(
        tmp_path: Path, cluster: tuple[str, dict[str, Proc]]) -> None:
    address, procs = cluster
    src = staging(tmp_path)
    out = cli(*prep_args(address, tmp_path, src), check_code=2)  # no worker yet: said so
    assert "no pipeline worker is connected" in out.stderr
    out = cli(*prep_args(address, tmp_path, src), "--drive", "/dev/null", check_code=2)
    assert "--drive goes to each worker" in out.stderr
    # w1 dies by SIGKILL right after its second segment is committed: mid-shard
    procs["w1"] = start_worker(tmp_path, address, "w1",
                               env={"PIPELINE_CRASH_AT": "after_commit:2"})
    procs["w2"] = start_worker(tmp_path, address, "w2")
    out = cli(*prep_args(address, tmp_path, src), check_code=130)
    assert "worker(s) w1 lost mid-run" in out.stderr and "--resume" in out.stderr
    assert procs["w1"].popen is not None and procs["w1"].popen.wait(timeout=30) == -9
    jdir = tmp_path / "journals"
    before = {j.drive.seq: (j.drive.state, j.drive.log_offset)
              for j in journal.session_journals(jdir, "clu-1")}
    assert before[101][0] == "closed"  # w2 finished its shard
    w1_states = [state for seq, (state, _) in before.items() if seq < 100]
    assert "open" in w1_states or "formatting" in w1_states or len(w1_states) < 2, before
    procs["w1"] = start_worker(tmp_path, address, "w1")  # the same name, the same drives
    resumed = cli(*prep_args(address, tmp_path, src), "--resume")
    summary = next(e for e in events(resumed.stdout) if e["type"] == "summary")
    assert summary["skipped_bytes"] > 0  # what w1 and w2 committed is not written again
    check_session(tmp_path)
    round_trip(tmp_path, src, address)


def test_lost_worker_shard_moves_to_another_worker(
        tmp_path: Path, cluster: tuple[str, dict[str, Proc]]) -> None:
    """w1 dies for good mid-shard (SIGKILL after its second commit); `--resume --move-shard
    w1=w3` gives its slot to w3, a new worker with its own drives: w1's unfinished drive is
    given up (its journal renamed out of the session), w3 writes w1's shard again past w1's
    drive numbers, and the round trip is byte-identical."""
    address, procs = cluster
    src = staging(tmp_path)
    procs["w1"] = start_worker(tmp_path, address, "w1",
                               env={"PIPELINE_CRASH_AT": "after_commit:2"})
    procs["w2"] = start_worker(tmp_path, address, "w2")
    cli(*prep_args(address, tmp_path, src), check_code=130)
    assert procs["w1"].popen is not None and procs["w1"].popen.wait(timeout=30) == -9
    jdir = tmp_path / "journals"
    before = {j.drive.seq: j.drive.state for j in journal.session_journals(jdir, "clu-1")}
    procs["w3"] = start_worker(tmp_path, address, "w3")
    resume = [*prep_args(address, tmp_path, src), "--resume"]
    out = cli(*resume, "--move-shard", "w2=w3", check_code=2)
    assert "worker w2 is connected" in out.stderr
    out = cli(*resume, "--move-shard", "w1=w4", check_code=2)
    assert "w4 must be a connected pipeline worker" in out.stderr
    out = cli(*resume, "--move-shard", "w1=w3")
    given_up = sorted(s for s, state in before.items() if s < 100 and state
                      not in ("closed", "full"))
    assert given_up and "shard moves to w3" in out.stderr
    plan = cluster_plan.load(jdir, "clu-1")
    assert [w.name for w in plan.workers] == ["w3", "w2"]
    assert list(plan.worker("w3").abandoned) == given_up
    assert list(plan.worker("w3").moved_from) == ["w1"]
    after = {j.drive.seq: (j.drive.state, j.drive.path)
             for j in journal.session_journals(jdir, "clu-1")}
    for seq in given_up:
        assert seq not in after
        assert (jdir / f"clu-1-drive{seq:02d}.journal.abandoned").exists()
    mine = {s: p for s, (_, p) in after.items() if s < 100 and s not in before}
    assert mine and min(mine) > max(s for s in before if s < 100)
    assert all("w3-" in p for p in mine.values())
    assert all(state in ("closed", "full") for state, _ in after.values())
    # the receiving side: every drive of the session attached to some worker (w1's
    # finished ones, if any, on w1 again), the round trip byte-identical
    procs["w1"] = start_worker(tmp_path, address, "w1")
    round_trip(tmp_path, src, address)
