"""The seed's whole lifecycle with the command line alone, each role with its own credential
(issue 16): the customer's publish settings (jobs create, jobs ship, jobs show) and the
receiving site's token (site receive, import, site return, site close).  The customer's
credential cannot take the site's steps, and the site token is never printed or logged."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import journal
from pipeline.errors import EXIT_BAD_INPUT
from pipeline.jobs import auth
from pipeline.jobs.client import ServiceClient, ServiceError
from pipeline.receive import importer
from tests import jobservice

from .conftest import run_cli
from .drivedata import read_tree
from .test_jobs_e2e import prep_two_drives

RETURN = ["--return-name", "Ops Team", "--return-street", "1 Data Way", "--return-city",
          "Lisboa", "--return-postal-code", "1000-001", "--return-country", "PT",
          "--return-phone", "+351 21 000 0000", "--return-email", "ops@example.org",
          "--return-carrier", "DHL", "--return-account", "ACC-123"]


def test_seed_flow_customer_and_site_each_with_their_own_credential(tmp_path: Path) -> None:
    src, jdir, drives = prep_two_drives(tmp_path, "flow-1")
    data = tmp_path / "data"
    outputs: list[str] = []

    def cli(*args: str, code: int | None = 0):
        proc = run_cli(*args, check_code=code)
        outputs.extend((proc.stdout, proc.stderr))
        return proc

    with jobservice.ServiceProcess(data) as svc:
        # The service's operator: a subscription for the customer (its publish settings
        # name the address the service serves) and a token for the site, kept in a file.
        settings = tmp_path / "ops.publishsettings"
        cli("service", "subscription", "add", "ops", "--data", str(data), "--out",
            str(settings))
        assert auth.read_publish_settings(settings).url == svc.url
        token = run_cli("service", "site-token", "--data", str(data),
                        check_code=0).stdout.strip()
        token_file = tmp_path / "site.token"
        token_file.write_text(token + "\n")
        customer = ["--publish-settings", str(settings)]           # no --service: the file's
        site = ["--service", svc.url, "--site-token-file", str(token_file)]

        # Customer: the job from prep's journals, then shipped with the return leg.
        out = cli("jobs", "create", "--job", "seed-flow", "--journal-dir", str(jdir),
                  "--location", "westeurope", "--storage-account", "seedacct",
                  *customer).stdout
        assert "job seed-flow created: Creating, 2 drive(s)" in out
        assert "--return-name" in out                    # the next step says what ship needs
        cli("jobs", "ship", "--job", "seed-flow", "--carrier", "DHL", "--tracking", "OUT-1",
            *RETURN, *customer)

        # The customer's credential cannot take the site's steps: refused, drives untouched.
        account = tmp_path / "account"
        account.mkdir()
        before = [d.read_bytes() for d in drives]
        proc = cli("import", "--drive", str(drives[0]), "--to", str(account), "--service",
                   svc.url, "--job", "seed-flow", *customer, "--log-dir", str(tmp_path),
                   code=EXIT_BAD_INPUT)
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1, line
        assert "--site-token-file" in line and "receiving site" in line
        assert [d.read_bytes() for d in drives] == before
        assert [p for p in account.rglob("*") if p.is_file()] == []   # no blob, no copy log
        assert not list(tmp_path.glob("copylog-*"))
        cust = ServiceClient.from_file(str(settings))
        for body in ({"properties": {"state": "Received"}},
                     {"properties": {"driveList": [{"driveId": journal_ids(jdir)[0],
                                                    "state": "Received"}]}}):
            try:
                cust.patch("seed-flow", body)
                raise AssertionError(f"the customer's token took a site step: {body}")
            except ServiceError as exc:
                assert exc.status == 403 and "AuthorizationFailed" in str(exc)
        assert cust.get("seed-flow")["properties"]["state"] == "Shipping"

        # Site: the package arrives, every drive is imported, the drives go back.
        listed = {r["name"]: r for r in json.loads(cli("site", "jobs", "--json", *site).stdout)}
        assert listed["seed-flow"]["state"] == "Shipping"
        assert listed["seed-flow"]["next"] == "receive the package"
        cli("site", "receive", "--job", "seed-flow", *site)
        for d in drives:  # one drive per run, as a site with one dock does
            cli("import", "--drive", str(d), "--to", str(account), "--job", "seed-flow", *site,
                "--log-dir", str(tmp_path))
        assert read_tree(account / "seeded" / "backup") == read_tree(src)
        job = cust.get("seed-flow")["properties"]
        assert job["state"] == "Packaging"
        # Copy logs held by the service: the job asked for Verbose, no blob failed, so each
        # drive's verbose log is there (as the site's log directory has it) and no error log.
        completed = 0
        for j in journal.session_journals(jdir):
            local = importer.log_path(tmp_path, "flow-1", j.drive.seq)
            held = cust.get_copy_log("seed-flow", j.drive.uuid, "verbose")
            assert held == local.read_bytes() and b'"type": "totals"' in held
            # a drive may hold only parts of files another drive completes (which one
            # depends on the layout): over both logs every file is complete once
            completed += held.count(b'"status": "ok"')
            try:
                cust.get_copy_log("seed-flow", j.drive.uuid, "error")
                raise AssertionError("an error log without errors")
            except ServiceError as exc:
                assert exc.status == 404
            j.close()
        assert completed == len(read_tree(src))
        refused = cli("site", "close", "--job", "seed-flow", *site, code=EXIT_BAD_INPUT)
        assert "is Packaging, not Completed" in refused.stderr
        assert "pipeline site return" in refused.stderr
        out = cli("site", "return", "--job", "seed-flow", "--tracking", "RET-9",
                  *site).stdout                           # carrier: the customer's choice
        assert "Completed" in out and "DHL tracking RET-9" in out

        # Customer: Completed, and the tracking number of the drives coming back.
        shown = cli("jobs", "show", "--job", "seed-flow", *customer).stdout
        assert "state Completed" in shown
        assert "drives returned with DHL tracking RET-9" in shown and "(2 drive(s))" in shown
        props = json.loads(cli("jobs", "show", "--job", "seed-flow", "--json",
                               *customer).stdout)["properties"]
        assert props["returnPackage"]["trackingNumber"] == "RET-9"
        assert {d["state"] for d in props["driveList"]} == {"ShippedBack"}
        cli("site", "close", "--job", "seed-flow", *site)
        assert cust.get("seed-flow")["properties"]["state"] == "Closed"
        # The site's token appeared nowhere but in its file.
        for text in [*outputs, svc.log()]:
            assert token not in text


def journal_ids(jdir: Path) -> list[str]:
    journals = journal.session_journals(jdir)
    try:
        return [j.drive.uuid for j in journals]
    finally:
        for j in journals:
            j.close()
