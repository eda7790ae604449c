"""A worker's copy log reaches the account and the client's --log-dir a part at a time
(`import --cluster`, issue 18): the worker stores it in the account from its file
(``copylog.store_copy``) and keeps the file (``receive_remote.import_one``), the client
copies it ``receive.PART`` bytes at a time by Dask's ``Client.run`` on that worker
(``fetch_log``), then removes it there.  Neither side holds it whole: memory is flat in
the number of files (before, the task's result carried the text, 4.6 MiB at 40,000 files,
46 MiB at 400,000).
The end-to-end path through a real scheduler and workers is tests/test_cluster.py's and
test_cluster_again's (their copy logs are read from --log-dir)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from pipeline import progress
from pipeline.cluster import receive, receive_remote
from pipeline.errors import EXIT_INTEGRITY, IntegrityError
from pipeline.receive import importer
from pipeline.storage.local import LocalStorage


def _worker_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: int
                   ) -> tuple[dict[str, Any], int, LocalStorage, list[str]]:
    """``receive_remote.import_one`` of a drive that logs ``lines`` blobs; its result, the
    traced peak beyond what it kept, the account, and the blobs ``put`` whole into it."""
    async def import_drive(od: Any, plan: Any, store: Any, log: importer.CopyLog, *_: Any,
                           **__: Any) -> importer.DriveResult:
        for i in range(lines):
            log.blob("ok", f"vdir/d{i % 97:02d}/file {i:07d}.txt", "", i)
        return importer.DriveResult(1, "cl-log")

    monkeypatch.setattr(importer, "import_drive", import_drive)
    acct = tmp_path / f"acct-{lines}"
    acct.mkdir()
    store = LocalStorage(acct)
    store.check()
    store.ensure_container(importer.STATE_CONTAINER)
    put: list[str] = []
    real_put = store.put
    monkeypatch.setattr(store, "put", lambda c, b, data: (put.append(b), real_put(c, b, data)))
    sb = SimpleNamespace(session_id="cl-log", drive_seq=1)
    plan = SimpleNamespace(superblock=sb, extents=[], damage=[], incomplete="", container="c",
                           source="journal", files={})
    od = SimpleNamespace(drive=SimpleNamespace(path="/dev/fake"))
    tracemalloc.start()
    try:
        got = trio.run(receive_remote.import_one, od, plan, store, progress.Stats())
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, peak - kept, store, put


class _OneWorker:
    """Dask's ``Client.run`` on one worker, run here (the same functions, in order)."""

    def __init__(self, address: str) -> None:
        self.address, self.calls = address, 0

    def run(self, fn: Any, *args: Any, workers: list[str]) -> dict[str, Any]:
        assert workers == [self.address]
        self.calls += 1
        return {self.address: fn(*args)}


def test_the_copy_log_goes_to_the_client_in_parts(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    small, small_peak, _, _ = _worker_import(tmp_path, monkeypatch, 20_000)
    large, large_peak, store, put = _worker_import(tmp_path, monkeypatch, 80_000)
    assert "log" not in large and set(large["totals"].items()) >= {("ok", 80_000)}
    remote = Path(large["log_file"])
    size = remote.stat().st_size
    assert size > 8 * receive.PART  # 9.1 MiB of log
    lines = remote.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80_002 and '"type": "totals"' in lines[-1]
    stored = store.get(importer.STATE_CONTAINER,
                       importer.state_name("cl-log", "copylog-drive-01.jsonl"))
    assert stored == remote.read_bytes()  # the account's copy, byte for byte
    assert put == []  # stored a part at a time (copylog.store_copy), never put whole
    # The worker holds no copy of the log: its peak is the account's copy's part (one
    # CELL read, then written), the same at 20,000, 80,000 and 320,000 lines (measured:
    # 2.02 MiB each, for 2.3 / 9.1 / 36.8 MiB of log; before, the text in the result
    # and up to 1.2x of it again while decoded).
    assert large_peak < 2 * receive.PART + (256 << 10), large_peak
    assert large_peak - small_peak < 128 << 10, (small_peak, large_peak)

    client = _OneWorker("tcp://w1")
    local = tmp_path / "logs" / "copylog-cl-log-drive01.jsonl"
    local.parent.mkdir()
    expected = remote.read_bytes()
    tracemalloc.start()
    try:
        receive.fetch_log(client, "tcp://w1", str(remote), local)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert local.read_bytes() == expected
    assert client.calls == size // receive.PART + 2  # every part, the short last, the drop
    # One part read and written (measured 2.01 MiB for 36.8 MiB of log), not the log.
    assert peak - kept < 2 * receive.PART + (64 << 10), peak - kept
    assert not remote.exists() and not remote.parent.exists()  # removed on the worker
    receive_remote.drop_log(small["log_file"])
    assert not Path(small["log_file"]).parent.exists()


def test_only_a_kept_copy_log_is_read_or_removed(tmp_path: Path) -> None:
    """``Client.run`` takes a path: the worker reads and removes only its kept logs."""
    other = tmp_path / "copylog-x-drive01.jsonl"
    other.write_text("{}\n")
    for fn, args in ((receive_remote.read_log_part, (str(other), 0, 10)),
                     (receive_remote.drop_log, (str(other),)),
                     (receive_remote.read_log_part, ("/etc/passwd", 0, 10))):
        with pytest.raises(ValueError, match="is no copy log kept for the client"):
            fn(*args)
    assert other.exists()


class _Gone(_OneWorker):
    def run(self, fn: Any, *args: Any, workers: list[str]) -> dict[str, Any]:
        raise OSError("Timed out trying to connect to tcp://w2")


def test_each_log_fetched_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A log not stored in the account, or not fetched (its worker gone), is named in one
    line each; the drive's outcome is kept, the import goes on."""
    got, _, _, _ = _worker_import(tmp_path, monkeypatch, 10)
    text = Path(got["log_file"]).read_bytes()
    mine = {**got, "not_stored": "storage x is unavailable"}
    gone = {**got, "seq": 2, "log_file": "/tmp/pipeline-copylog-x/copylog-cl-log-drive02.jsonl"}
    results = {"w1": {"code": 0, "drives": [mine]}, "w2": {"code": 0, "drives": [gone]}}
    cluster = SimpleNamespace(client=_OneWorker("tcp://w1"))
    logs = tmp_path / "logs"
    logs.mkdir()
    real = receive.fetch_log
    monkeypatch.setattr(receive, "fetch_log", lambda c, a, r, p: real(
        _Gone(a) if a == "tcp://w2" else c, a, r, p))
    receive.fetch_logs(cluster, {"w1": {"address": "tcp://w1"}, "w2": {"address": "tcp://w2"}},
                       results, logs)
    first = logs / "copylog-cl-log-drive01.jsonl"
    assert first.read_bytes() == text and not Path(got["log_file"]).exists()
    assert (mine["worker"], mine["copy_log"], gone["worker"], gone["copy_log"]) == (
        "w1", str(first), "w2", "")
    assert "log_file" not in mine and "not_stored" not in mine
    assert sorted(p.name for p in logs.iterdir()) == [first.name]  # no partial log
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline import: worker w1 could not store the copy log of drive 1 in the account "
        f"(storage x is unavailable); it is in {first}",
        f"pipeline import: the copy log of drive 2 could not be copied from worker w2 into "
        f"{logs / 'copylog-cl-log-drive02.jsonl'} (Timed out trying to connect to tcp://w2); "
        "the account holds it: waimportexport/cl-log/copylog-drive-02.jsonl"]


def test_a_failed_drive_s_log_is_kept_and_fetched(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A drive whose import fails on a worker keeps its copy log there (its last line says
    why), named in the task's ``failed``; the client fetches it into --log-dir as it does a
    good drive's, and names it.  Before, the worker deleted it with the error."""
    async def import_drive(od: Any, plan: Any, store: Any, log: importer.CopyLog, *_: Any,
                           **__: Any) -> importer.DriveResult:
        log.blob("ok", "vdir/first.txt", "", 1)
        raise IntegrityError("blob vdir/second.txt cannot be committed: parts missing")

    monkeypatch.setattr(importer, "import_drive", import_drive)
    monkeypatch.setattr(receive_remote.importer, "plan_drive", lambda od, j: plan)
    monkeypatch.setattr(receive_remote.importer, "check_names", lambda p: None)
    acct = tmp_path / "acct"
    acct.mkdir()
    sb = SimpleNamespace(session_id="cl-log", drive_seq=7)
    plan = SimpleNamespace(superblock=sb, extents=[], damage=[], incomplete="", container="c",
                           source="journal", files={})
    od = SimpleNamespace(drive=SimpleNamespace(path="/dev/fake"), close=lambda: None)
    got = trio.run(receive_remote.import_unlocked, iter([(od, None)]),
                   lambda: LocalStorage(acct), lambda msg: None)
    assert (got["code"], got["drives"]) == (EXIT_INTEGRITY, [])
    assert [{k: v for k, v in d.items() if k != "log_file"} for d in got["failed"]] == [
        {"seq": 7, "session_id": "cl-log", "path": "/dev/fake"}]
    remote = Path(got["failed"][0]["log_file"])
    last = json.loads(remote.read_text(encoding="utf-8").splitlines()[-1])
    assert (last["type"], last["result"], last["message"], last["ok"]) == (
        "totals", "failed", "blob vdir/second.txt cannot be committed: parts missing", 1)
    expected = remote.read_bytes()

    logs = tmp_path / "logs"
    logs.mkdir()
    receive.fetch_logs(SimpleNamespace(client=_OneWorker("tcp://w1")),
                       {"w1": {"address": "tcp://w1"}}, {"w1": got}, logs)
    local = logs / "copylog-cl-log-drive07.jsonl"
    assert local.read_bytes() == expected
    assert not remote.exists() and not remote.parent.exists()  # removed on the worker
    assert capsys.readouterr().err == (
        f"pipeline import: drive 7's import failed on worker w1 (/dev/fake); its copy log "
        f"is {local}\n")
