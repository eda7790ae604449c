"""Review of ``import --cluster --again --drive`` (78eece8) against a worker killed with
kill -9 in the middle of the --again import (crash point ``import_after_commit_round``
in that worker's process): the client says the worker was lost, in one line, exit 130
(safe to repeat), and no other drive ran; with the worker started again, the same
command imports the drive again and then the other, the spanning blob byte for byte the
source's and every marker done.  On a real local Dask cluster into Azurite, set up as
test_cluster_again's main test (drive 1 alone first, its staged parts then dropped)."""

from __future__ import annotations

import shutil
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from pipeline import journal
from pipeline.cluster import target
from pipeline.errors import EXIT_INTERRUPTED
from pipeline.receive.markers import STATE_CONTAINER, marker_name
from tests.azurite import azurite  # noqa: F401 - the fixture
from tests.drivedata import read_tree
from tests.test_cluster import Proc, start_worker
from tests.test_cluster_again import (
    CONTAINER,
    SESSION,
    SPANNING,
    _account,
    _import,
    session_on_two_workers,
)
from tests.test_cluster_secrets import scheduler  # noqa: F401 - the fixture


def test_a_worker_killed_during_again_then_the_same_command_completes(
        tmp_path: Path, scheduler: tuple[str, dict[str, Proc]],  # noqa: F811 - the fixture
        azurite: str) -> None:  # noqa: F811 - the fixture
    address, procs = scheduler
    src, jdir, d1, _ = session_on_two_workers(tmp_path, address, procs, azurite)
    first = tmp_path / "journals-drive1"
    first.mkdir()
    shutil.copy2(journal.journal_path(jdir, SESSION, 1), first)
    logs = tmp_path / "logs"
    _import(address, first, azurite, logs, 0)
    blob = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        CONTAINER, SPANNING)
    blob.commit_block_list([])        # drive 1's staged parts "expired", as there
    blob.delete_blob()

    procs["w1"].stop()                # w1 again, to die at its first commit round
    procs["w1"] = start_worker(tmp_path, address, "w1", env={
        target.ENV: azurite, "PIPELINE_CRASH_AT": "import_after_commit_round:1"})
    out = _import(address, jdir, azurite, logs, EXIT_INTERRUPTED, "--again", "--drive",
                  str(d1))
    assert "Traceback" not in out and "worker(s) w1 lost mid-run" in out, out
    assert "drive 2 of session" not in out, out          # the others did not run
    assert SPANNING.removeprefix("vdir/") not in _account(azurite)

    procs["w1"].stop()
    procs["w1"] = start_worker(tmp_path, address, "w1", env={target.ENV: azurite})
    out = _import(address, jdir, azurite, logs, 0, "--again", "--drive", str(d1))
    assert {f"vdir/{k}": v for k, v in _account(azurite).items()} == {
        f"vdir/{k}": v for k, v in read_tree(src).items()}, out
    state = BlobServiceClient.from_connection_string(azurite).get_container_client(
        STATE_CONTAINER)
    for seq in (1, 2):
        assert b'"done"' in state.download_blob(marker_name(SESSION, seq)).readall()
