"""`import --cluster --service URL --job NAME --again --drive DRIVE`: at the receiving site, a
drive already Completed is imported once more by the worker holding it (to send again the
parts a later drive's commit needs), while the job is still Transferring; then the job's
other drives as usual.  The drive's state is not touched: it stays Completed, its reported
bytes stand (the service's state machine has no way back to Transferring, and needs none:
tests/test_jobs_roles.py pins that).  Once the job is Packaging, the same command is refused
in one line naming that state.  End to end: the import service, a `dask scheduler`, two
`pipeline worker`s holding the site token, a local account."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import EXIT_REFUSED
from tests import jobservice
from tests.conftest import run_cli
from tests.drivedata import make_tree, read_tree
from tests.test_cluster import Proc, start_worker
from tests.test_cluster_again import drive_uuids
from tests.test_cluster_secrets import scheduler  # noqa: F401 - the fixture
from tests.test_cluster_site import RETURN
from tests.test_import import copy_log, prep

SESSION = "site-again"
SPANNING = "vdir/blobs/random.bin"


def _drives(customer: tuple[str, ...]) -> dict[str, dict]:
    job = json.loads(run_cli("jobs", "show", "--job", "seed-a", "--json", *customer,
                             check_code=0).stdout)["properties"]
    return {"state": job["state"], **{d["driveId"]: d for d in job["driveList"]}}


def test_again_at_the_site_on_the_worker_holding_the_drive(
        tmp_path: Path, scheduler: tuple[str, dict[str, Proc]]) -> None:  # noqa: F811
    address, procs = scheduler
    src = tmp_path / "src"
    make_tree(src, small_files=40, random_mb=20, sparse_mb=4, seed=2)
    jdir = tmp_path / "journals"
    d1, d2 = tmp_path / "w1-a.img", tmp_path / "w2-a.img"  # each worker's first drive
    prep(src, jdir, SESSION, [d1, d2], "32M", dstdir="cont/vdir/")
    uuids = drive_uuids(jdir, SESSION)
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = tmp_path / "sub.publishsettings"
        run_cli("service", "subscription", "add", "customer", "--data", str(data), "--out",
                str(settings), check_code=0)
        customer = ("--publish-settings", str(settings), "--service", svc.url)
        run_cli("jobs", "create", "--job", "seed-a", "--journal-dir", str(jdir), "--location",
                "westeurope", "--storage-account", "seedacct", *RETURN, *customer,
                check_code=0)
        run_cli("jobs", "ship", "--job", "seed-a", "--carrier", "DHL", "--tracking", "TRK-1",
                *customer, check_code=0)
        token = tmp_path / "site.token"
        token.write_text(svc.site_token() + "\n")
        token.chmod(0o600)
        site = ["--service", svc.url, "--site-token-file", str(token)]
        store, logs = tmp_path / "account", tmp_path / "logs"
        store.mkdir()
        args = ["import", "--cluster", address, *site, "--job", "seed-a", "--to", str(store),
                "--log-dir", str(logs)]

        # Drive 1 arrives first (w1 only): Completed; the job waits Transferring for drive 2.
        procs["w1"] = start_worker(tmp_path, address, "w1", extra=site)
        run_cli(*args, check_code=0)
        first = _drives(customer)
        assert (first["state"], first[uuids[1]]["state"], first[uuids[2]]["state"]) == (
            "Transferring", "Completed", "Specified")
        assert "continues on another drive" in next(
            x["reason"] for x in copy_log(logs, SESSION, 1) if x.get("blob") == SPANNING)

        # --again --drive (its path on w1): imported once more, not skipped; the drive stays
        # Completed with the bytes it reported (before: refused, exit 2, nothing run).
        out = run_cli(*args, "--again", "--drive", str(d1), "--json", check_code=0).stdout
        got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        drive = next(e for e in got if e["type"] == "drive")
        assert (drive["seq"], drive["worker"], drive["already_imported"]) == (1, "w1", False)
        assert drive["copy_log"] == str(logs / f"copylog-{SESSION}-drive01.jsonl")
        assert copy_log(logs, SESSION, 1)[-1]["result"] == "done"
        assert _drives(customer) == first

        # Drive 2 arrives (w2): the spanning file is committed, the job moves to Packaging.
        procs["w2"] = start_worker(tmp_path, address, "w2", extra=site)
        run_cli(*args, check_code=0)
        done = _drives(customer)
        assert (done["state"], done[uuids[1]]["state"], done[uuids[2]]["state"]) == (
            "Packaging", "Completed", "Completed")
        assert read_tree(store / "cont" / "vdir") == read_tree(src)

        # The job has left the site's transfer: --again is refused in one line, its state named.
        proc = run_cli(*args, "--again", "--drive", uuids[1], check_code=EXIT_REFUSED)
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
            "pipeline import: job seed-a is Packaging; drives are imported only once the job "
            "is Shipping, Received or Transferring; next: "), proc.stderr
        assert _drives(customer) == done
