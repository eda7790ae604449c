"""`import --cluster --again --drive DRIVE`: a drive already imported, whose staged parts
Azure dropped (7 days) before the session's other drive came in, is imported once more by
the worker that holds it, then the others as before; end to end on a real local Dask
cluster (a `dask scheduler`, two `pipeline worker`s) into Azurite, as
tests/test_import_expired_azure.py does on one machine.  Expiry is simulated by putting
the block list of the committed blocks only, which drops every uncommitted block, as
Azure's expiry does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from pipeline import journal
from pipeline.cluster import receive, target
from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, IntegrityError
from pipeline.receive.markers import STATE_CONTAINER, marker_name
from pipeline.storage.base import CELL, PartsMissing
from tests.azurite import azurite  # noqa: F401 - the fixture
from tests.conftest import run_cli
from tests.drivedata import make_tree, read_tree
from tests.test_cluster import Proc, start_worker
from tests.test_cluster_secrets import scheduler  # noqa: F401 - the fixture
from tests.test_import import copy_log, prep

CONTAINER = "expire"
SPANNING = "vdir/blobs/random.bin"  # as the copy log names it
SESSION = "cl-again"


def _account(conn: str) -> dict[str, bytes]:
    client = BlobServiceClient.from_connection_string(conn).get_container_client(CONTAINER)
    return {b.name.removeprefix("vdir/"): client.download_blob(b.name).readall()
            for b in client.list_blobs(name_starts_with="vdir/")}


def _import(address: str, jdir: Path, to: str, logs: Path, code: int, *more: str) -> str:
    proc = run_cli("import", "--cluster", address, "--journal-dir", str(jdir), "--to", to,
                   "--log-dir", str(logs), *more, check_code=code)
    return proc.stdout + proc.stderr


def _drive_lines(out: str) -> dict[int, str]:
    """Each drive's line (`drive N of session S ...`), by drive number, what follows."""
    head = f" of session {SESSION} "
    return {int(line.split()[1]): line.split(head, 1)[1] for line in out.splitlines()
            if line.startswith("drive ") and head in line}


def session_on_two_workers(tmp_path: Path, address: str, procs: dict[str, Proc],
                           conn: str) -> tuple[Path, Path, Path, Path]:
    """A session prepped onto w1's and w2's first drives (a file spanning them), both
    workers started against Azurite: (source, journal dir, drive 1, drive 2)."""
    src = tmp_path / "src"
    make_tree(src, small_files=40, random_mb=20, sparse_mb=4, seed=2)
    jdir = tmp_path / "journals"
    d1, d2 = tmp_path / "w1-a.img", tmp_path / "w2-a.img"  # each worker's first drive
    prep(src, jdir, SESSION, [d1, d2], "32M", dstdir=f"{CONTAINER}/vdir/")
    for name in ("w1", "w2"):
        procs[name] = start_worker(tmp_path, address, name, env={target.ENV: conn})
    return src, jdir, d1, d2


def drive_uuids(jdir: Path, session: str) -> dict[int, str]:
    """Each drive's uuid by its number, from the session's journals (two drives)."""
    uuids = {}
    for j in journal.session_journals(jdir, session):
        uuids[j.drive.seq] = j.drive.uuid
        j.close()
    assert sorted(uuids) == [1, 2]
    return uuids


def _statuses(logs: Path, seq: int) -> dict[str, str]:
    return {x["blob"]: x["status"] for x in copy_log(logs, SESSION, seq) if "blob" in x}


def test_again_on_the_worker_holding_the_drive(
        tmp_path: Path, scheduler: tuple[str, dict[str, Proc]],  # noqa: F811 - the fixture
        azurite: str) -> None:  # noqa: F811 - the fixture
    address, procs = scheduler
    src, jdir, d1, d2 = session_on_two_workers(tmp_path, address, procs, azurite)
    uuids = drive_uuids(jdir, SESSION)

    # Drive 1 comes in first, alone (its journal only: the session's other drive is not
    # here yet); the spanning file waits for drive 2, its cells staged.
    first = tmp_path / "journals-drive1"
    first.mkdir()
    shutil.copy2(journal.journal_path(jdir, SESSION, 1), first)
    logs = tmp_path / "logs"
    out = _import(address, first, azurite, logs, 0)
    assert "drive 1 of session cl-again (w1: " in out, out
    assert "continues on another drive" in next(
        x["reason"] for x in copy_log(logs, SESSION, 1) if x.get("blob") == SPANNING)
    blob = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        CONTAINER, SPANNING)
    committed, staged = blob.get_block_list("all")
    assert committed == [] and staged
    blob.commit_block_list([])  # drop the staged blocks: "expired", then the empty blob
    blob.delete_blob()  # that made: a blob never committed is gone with its blocks
    assert SPANNING.removeprefix("vdir/") not in _account(azurite)

    # Drive 2, a week later: drive 1 is skipped (its marker says done), drive 2's commit
    # finds drive 1's parts gone: refused, exit 4, and the line says how, for the cluster.
    out = _import(address, jdir, azurite, logs, EXIT_INTEGRITY)
    assert "cannot be committed" in out and SPANNING in out, out
    assert (f"(pipeline import --cluster {address} --journal-dir {jdir} --to STORAGE --again "
            "--drive DRIVE: each such drive by its volume uuid or its path on its worker)"
            in out), out
    assert set(_statuses(logs, 1).values()) == {"skipped"}  # gathered before the refusal
    assert SPANNING.removeprefix("vdir/") not in _account(azurite)  # nothing half-made
    # Drive 2's copy log, of the import that failed on w2, is fetched into --log-dir as
    # on one machine (before, w2 deleted it): its last line says why it stopped.
    failed_log = logs / f"copylog-{SESSION}-drive02.jsonl"
    assert (f"pipeline import: drive 2's import failed on worker w2 ({d2}); its copy log "
            f"is {failed_log}") in out, out
    last = copy_log(logs, SESSION, 2)[-1]
    assert (last["type"], last["result"]) == ("totals", "failed"), last
    assert "cannot be committed" in last["message"] and SPANNING in last["message"], last

    # A plain import again changes nothing: drive 1 skipped, the same refusal.
    out = _import(address, jdir, azurite, logs, EXIT_INTEGRITY)
    assert "cannot be committed" in out and set(_statuses(logs, 1).values()) == {"skipped"}

    # A drive that is not the session's is named, in one line, exit 2; nothing runs.
    out = _import(address, jdir, azurite, logs, EXIT_BAD_INPUT, "--again", "--drive",
                  str(tmp_path / "w1-b.img"))
    assert out.count("\n") == 1 and out.startswith(
        f"pipeline import: --drive {tmp_path / 'w1-b.img'}: no drive of the session"), out
    assert f"{uuids[1]} (w1: {d1})" in out and f"{uuids[2]} (w2: {d2})" in out, out

    # --again --drive (its path on w1): w1 sends drive 1 once more, then w2 imports drive 2
    # and commits: the blob is the source's, byte for byte; every marker done.
    out = _import(address, jdir, azurite, logs, 0, "--again", "--drive", str(d1))
    assert _statuses(logs, 1)[SPANNING] == "ok", out
    assert _statuses(logs, 2)[SPANNING] == "ok", out
    lines = _drive_lines(out)
    assert lines[1].startswith(f"(w1: {d1}): ") and "complete" in lines[1], out
    assert lines[2].startswith(f"(w2: {d2}): ") and "complete" in lines[2], out
    assert {f"vdir/{k}": v for k, v in _account(azurite).items()} == {
        f"vdir/{k}": v for k, v in read_tree(src).items()}
    state = BlobServiceClient.from_connection_string(azurite).get_container_client(
        STATE_CONTAINER)
    for seq in (1, 2):
        assert b'"done"' in state.download_blob(marker_name(SESSION, seq)).readall()

    # Once more, by volume uuid this time (--json): drive 1 imported again (nothing
    # committed changes), drive 2 skipped as before; the summary counts both runs of tasks.
    out = _import(address, jdir, azurite, logs, 0, "--again", "--drive", uuids[1], "--json")
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    drives = {e["seq"]: e for e in got if e["type"] == "drive"}
    assert (drives[1]["worker"], drives[1]["already_imported"], drives[1]["ok"] > 0) == (
        "w1", False, True), out
    assert (drives[2]["worker"], drives[2]["already_imported"]) == ("w2", True), out
    assert drives[2]["copy_log"] == str(logs / f"copylog-{SESSION}-drive02.jsonl")
    summary = next(e for e in got if e["type"] == "summary")
    assert summary["files_done"] == summary["files_total"] > 0, summary
    assert {f"vdir/{k}": v for k, v in _account(azurite).items()} == {
        f"vdir/{k}": v for k, v in read_tree(src).items()}


@pytest.mark.parametrize(("more", "line"), [
    (["--again"], "pipeline import: import --cluster --again needs --drive DRIVE (repeat for "
     "more): the drive to import again, by its volume uuid or its path on its worker; the "
     "others are imported as before\n"),
    (["--drive", "/dev/sdb"], "pipeline import: import --cluster takes --drive only with "
     "--again (a drive to import again): each worker imports the drives attached to it\n"),
])
def test_again_with_cluster_refused_in_one_line(tmp_path: Path, more: list[str],
                                                line: str) -> None:
    """What --cluster cannot take is said before any worker is asked (no scheduler here)."""
    proc = run_cli("import", "--cluster", "tcp://127.0.0.1:1", "--journal-dir", str(tmp_path),
                   "--to", str(tmp_path / "acct"), *more, check_code=EXIT_BAD_INPUT)
    assert proc.stderr == line


@pytest.mark.parametrize("how", [
    "pipeline import --cluster tcp://s:8786 --journal-dir J --to STORAGE --again --drive DRIVE",
    "pipeline import --cluster tcp://s:8786 --service URL --job j1 --site-token-file FILE "
    "--to STORAGE --again --drive DRIVE: each such drive by its volume uuid or its path on its "
    "worker"])
def test_a_worker_s_parts_missing_line_names_the_cluster_s_command(how: str) -> None:
    """A worker's PartsMissing comes back as text; the client's line names the command that
    sends the parts again from where it runs, exit 4 kept.  PartsMissing's own wording is
    what the client replaces: a change there fails here, not silently."""
    local = str(PartsMissing("acct", "expire/vdir/blobs/random.bin", [0, CELL]))
    assert "(pipeline import --again)" in local
    results = {"w1": {"code": 0, "drives": []},
               "w2": {"code": EXIT_INTEGRITY, "message": local, "drives": []}}
    with pytest.raises(IntegrityError) as err:
        receive._raise_worst(results, how)
    assert err.value.exit_code == EXIT_INTEGRITY
    assert str(err.value) == "worker w2: " + local.replace("(pipeline import --again)",
                                                           f"({how})")
