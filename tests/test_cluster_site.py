"""`import --cluster --service URL --job NAME --site-token-file F`: the receiving site imports
a job's drives on the workers they are attached to.  Each worker holds the site token itself
(`pipeline worker --service URL --site-token-file F`) and takes its drives' keys from the
job; the tasks carry the job's name and volume uuids only.  The job ends Completed, every
drive's bytes reported, the blobs byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import journal
from tests import jobservice
from tests.conftest import FAST_KDF_ARGS, require_root, run_cli
from tests.drivedata import make_tree, read_tree
from tests.test_cluster import cli, scheduler_address, start_scheduler, start_worker

RETURN = ("--return-name", "Ops Team", "--return-street", "1 Data Way", "--return-city",
          "Lisboa", "--return-postal-code", "1000-001", "--return-country", "PT",
          "--return-phone", "+351 21 000 0000", "--return-email", "ops@example.org",
          "--return-carrier", "DHL", "--return-account", "ACC-123")


def test_site_imports_a_job_across_workers(tmp_path: Path) -> None:
    require_root()
    data = tmp_path / "data"
    procs = {}
    with jobservice.ServiceProcess(data) as svc:
        try:
            settings = tmp_path / "sub.publishsettings"
            run_cli("service", "subscription", "add", "customer", "--data", str(data),
                    "--out", str(settings), check_code=0)
            token = tmp_path / "site.token"
            token.write_text(svc.site_token() + "\n")
            token.chmod(0o600)
            procs["scheduler"] = start_scheduler(tmp_path)
            address = scheduler_address(procs["scheduler"])
            site = ["--service", svc.url, "--site-token-file", str(token)]
            for name in ("w1", "w2"):
                procs[name] = start_worker(tmp_path, address, name, extra=site)
            src = tmp_path / "staging"
            make_tree(src, small_files=40, random_mb=6, sparse_mb=18)
            jdir = tmp_path / "journals"
            cli("prep", "--cluster", address, "--source", str(src), "--dstdir", "cont/seed/",
                "--journal-dir", str(jdir), "--session-id", "site-1", *FAST_KDF_ARGS)
            count = len(journal.session_journals(jdir))
            customer = ("--publish-settings", str(settings), "--service", svc.url)
            out = run_cli("jobs", "create", "--job", "seed-c", "--journal-dir", str(jdir),
                          "--location", "westeurope", "--storage-account", "seedacct",
                          *RETURN, *customer, check_code=0).stdout
            assert f"{count} drive(s)" in out
            run_cli("jobs", "ship", "--job", "seed-c", "--carrier", "DHL", "--tracking",
                    "TRK-1", *customer, check_code=0)
            store = tmp_path / "account"
            store.mkdir()
            out = cli("import", "--cluster", address, *site, "--job", "seed-c", "--to",
                      str(store), "--log-dir", str(tmp_path / "logs"),
                      "--return-tracking", "RET-9")
            assert "0 corrupt, 0 missing" in out.stdout, out.stdout
            assert read_tree(store / "cont" / "seed") == read_tree(src)
            job = json.loads(run_cli("jobs", "show", "--job", "seed-c", "--json", *customer,
                                     check_code=0).stdout)["properties"]
            assert job["state"] == "Completed"
            assert [d["state"] for d in job["driveList"]] == ["ShippedBack"] * count
            assert sum(d["bytesSucceeded"] for d in job["driveList"]) == sum(
                map(len, read_tree(src).values()))
            for j in journal.session_journals(jdir):  # no key in a log of theirs
                for p in procs.values():
                    assert j.recovery_password not in p.log.read_text(errors="replace")
                j.close()
        finally:
            for p in procs.values():
                p.stop()
