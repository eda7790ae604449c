"""The cluster's worker tasks on a drive of two copy sessions (`import --cluster`, `verify
--cluster`): the task function a worker runs (``cluster.receive_remote.import_all`` and
``verify``, the same functions ``import_drives``/``verify_drives`` run under trio on the
worker) opens the drive with the session's journal, so each session's task takes its own
session, byte for byte, and verifies it; a forged index of one session is exit 4 there too.
The first two tests are unit level (no Dask scheduler); the last runs `import --cluster` and
`verify --cluster` through a real `dask scheduler` and a `pipeline worker` process holding
the drive, as tests/test_cluster.py does for single-session drives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from pipeline import journal
from pipeline.cluster import receive_remote
from pipeline.storage.local import LocalStorage

from .conftest import run_cli
from .test_cluster import Proc, scheduler_address, start_scheduler
from .test_multisession import check_account, first_session, second_session
from .test_multisession_damage import forge_session2_index


def _import(tmp: Path, session: str, acct: Path) -> dict[str, Any]:
    (j,) = journal.session_journals(tmp / "j", session)
    uuid, path = j.drive.uuid, j.drive.path
    j.close()
    acct.mkdir()
    events: list[dict[str, Any]] = []
    return trio.run(receive_remote.import_all, str(tmp / "j"), session, [uuid], {uuid: path},
                    lambda: LocalStorage(acct), events.append)


def _verify(tmp: Path, session: str) -> dict[str, Any]:
    (j,) = journal.session_journals(tmp / "j", session)
    uuid, path = j.drive.uuid, j.drive.path
    j.close()
    return trio.run(receive_remote.verify, str(tmp / "j"), session, [uuid], {uuid: path}, 2,
                    lambda _: None)


def test_worker_tasks_take_the_journal_s_session(tmp_path: Path) -> None:
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    for session, container, vdir, files in (("ses2", "cont2", "v2", two),
                                            ("ses1", "cont1", "v1", one)):
        got = _import(tmp_path, session, tmp_path / f"acct-{session}")
        assert (got["code"], got["message"]) == (0, ""), got
        (drive,) = got["drives"]
        assert (drive["session_id"], drive["seq"], drive["source"]) == (session, 1, "journal")
        assert drive["totals"]["corrupt"] == drive["totals"]["missing"] == 0
        check_account(tmp_path / f"acct-{session}", container, vdir, files)
        report = _verify(tmp_path, session)
        assert report["code"] == 0
        (r,) = report["reports"]
        assert r["ok"] and r["files"] == len(files) and not r["problems"], r


def test_worker_task_refuses_a_forged_index_of_its_session(tmp_path: Path) -> None:
    """Session 2's index forged (checksums valid, an extent in session 1's segments): its
    import task comes back exit 4, named, nothing imported; session 1's task imports."""
    one, key = first_session(tmp_path)
    second_session(tmp_path, key)
    info = forge_session2_index(tmp_path, key)
    got = _import(tmp_path, "ses2", tmp_path / "acct-ses2")
    assert got["code"] == 4, got
    assert got["message"].startswith(
        f"{info.path}: the closing index of session ses2 breaks the format although its "
        f"checksums hold (segment {info.log_seq} at offset {info.index_offset}: record "), got
    assert [p.name for p in (tmp_path / "acct-ses2").iterdir()
            if not p.name.startswith(".")] == []
    got = _import(tmp_path, "ses1", tmp_path / "acct-ses1")
    assert got["code"] == 0, got
    check_account(tmp_path / "acct-ses1", "cont1", "v1", one)


def test_import_cluster_takes_each_session_alone_through_a_scheduler(tmp_path: Path) -> None:
    """`import --cluster ADDRESS --journal-dir J --session-id S`, once per session, through
    a real scheduler: the worker holding the drive imports only S, byte for byte, into its
    own account; `verify --cluster` checks each session there too."""
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    procs: list[Proc] = []
    try:
        procs.append(start_scheduler(tmp_path))
        address = scheduler_address(procs[0])
        procs.append(Proc([sys.executable, "-m", "pipeline", "worker", "--scheduler", address,
                           "--name", "w1", "--drive", str(tmp_path / "d1.img"), "--threads",
                           "1"], tmp_path / "w1.log").start())
        procs[1].wait_log("Registered to:")
        for session, container, vdir, files in (("ses2", "cont2", "v2", two),
                                                ("ses1", "cont1", "v1", one)):
            acct, logs = tmp_path / f"acct-{session}", tmp_path / f"logs-{session}"
            acct.mkdir()
            out = run_cli("import", "--cluster", address, "--journal-dir", str(tmp_path / "j"),
                          "--session-id", session, "--to", str(acct), "--log-dir", str(logs),
                          check_code=0).stdout
            assert "0 corrupt, 0 missing" in out, out
            check_account(acct, container, vdir, files)
            assert [p.name for p in logs.iterdir()] == [f"copylog-{session}-drive01.jsonl"]
            out = run_cli("verify", "--cluster", address, "--journal-dir", str(tmp_path / "j"),
                          "--session-id", session, check_code=0).stdout
            assert out.count(": ok:") == 1, out
    finally:
        for proc in procs:
            proc.stop()
