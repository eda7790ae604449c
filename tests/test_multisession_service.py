"""A drive of two copy sessions imported by the receiving site with no journal (`import
--service URL --job NAME`): each session's job lists the drive with the same driveId and
key and its own manifest (its session's closing index), so each job's import takes its
own session; a job whose manifest is none of the drive's sessions (by place, or by hash) is
refused, named."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from pipeline.cluster import site_remote
from pipeline.errors import EXIT_REFUSED
from pipeline.jobs.client import ServiceClient
from pipeline.receive import service_import
from pipeline.storage.local import LocalStorage

from . import jobservice
from .conftest import run_cli
from .test_multisession import check_account, first_session, import_session, second_session

RETURN = ["--location", "westeurope", "--storage-account", "seedacct", "--return-name",
          "Ops Team", "--return-street", "1 Data Way", "--return-city", "Lisboa",
          "--return-postal-code", "1000-001", "--return-country", "PT", "--return-phone",
          "+351 21 000 0000", "--return-email", "ops@example.org", "--return-carrier", "DHL",
          "--return-account", "ACC-123"]


def test_each_session_s_job_imports_its_own_session(tmp_path: Path) -> None:
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    data, settings = tmp_path / "svc", tmp_path / "site.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        customer = ["--publish-settings", str(settings), "--service", svc.url]
        for job, session in (("job-one", "ses1"), ("job-two", "ses2"),
                             ("job-two-cluster", "ses2")):
            out = run_cli("jobs", "create", "--job", job, "--journal-dir", str(tmp_path / "j"),
                          "--session-id", session, *RETURN, *customer, check_code=0).stdout
            assert f"job {job} created: Creating, 1 drive(s)" in out
            run_cli("jobs", "ship", "--job", job, "--carrier", "DHL", "--tracking", "T-1",
                    *customer, check_code=0)
        # A third job lists the drive (same driveId, key, header) with a manifest that is
        # no session's closing index.
        (entry,) = json.loads(run_cli("journal", "export", "--journal-dir",
                                      str(tmp_path / "j"), "--session-id", "ses1",
                                      check_code=0).stdout)
        entry = {**entry, "manifestFile": "/index@8192+4096", "manifestHash": "ab" * 32}
        ServiceClient.from_file(str(settings)).put("job-none", jobservice.job_body([entry]))
        # A fourth names session 2's index by its place, with another hash.
        (two_entry,) = json.loads(run_cli("journal", "export", "--journal-dir",
                                          str(tmp_path / "j"), "--session-id", "ses2",
                                          check_code=0).stdout)
        ServiceClient.from_file(str(settings)).put("job-hash", jobservice.job_body(
            [{**two_entry, "manifestHash": "cd" * 32}]))
        for job in ("job-none", "job-hash"):
            run_cli("jobs", "ship", "--job", job, "--carrier", "DHL", "--tracking", "T-2",
                    *customer, check_code=0)
        (tmp_path / "acct5").mkdir()
        token = tmp_path / "site.token"
        token.write_text(svc.site_token() + "\n")
        site = ["--service", svc.url, "--site-token-file", str(token)]
        # Each job's import takes its own session, byte for byte, and nothing of the other.
        import_session(tmp_path, "ses1", tmp_path / "acct1", *site, "--job", "job-one")
        check_account(tmp_path / "acct1", "cont1", "v1", one)
        import_session(tmp_path, "ses2", tmp_path / "acct2", *site, "--job", "job-two")
        check_account(tmp_path / "acct2", "cont2", "v2", two)
        # The cluster's site task (what a worker runs for `import --cluster --service`)
        # picks the session from the job the same way.
        (uuid,) = {e["driveId"] for e in (entry, two_entry)}
        site_client = ServiceClient.from_site_token_file(svc.url, str(token))
        # the client's step before the tasks (cluster.receive): the drives Transferring
        service_import.JobImport.connect(site_client, "job-two-cluster").start([uuid])
        got = trio.run(site_remote._import_job, site_client, ("job-two-cluster", None, None),
                       [uuid],
            {uuid: str(tmp_path / "d1.img")}, lambda: LocalStorage(tmp_path / "acct5"),
            lambda _: None)
        assert got["code"] == 0, got
        (drive,) = got["drives"]
        assert (drive["session_id"], drive["source"]) == ("ses2", "index")
        check_account(tmp_path / "acct5", "cont2", "v2", two)
        for job in ("job-one", "job-two", "job-two-cluster"):
            shown = json.loads(run_cli("jobs", "show", "--job", job, "--json", *customer,
                                       check_code=0).stdout)
            (d,) = shown["properties"]["driveList"]
            assert d["state"] == "Completed" and d["percentComplete"] == 100, d
        # The job whose manifest is none of the drive's sessions: refused, named, nothing
        # written.
        proc = import_session(tmp_path, "none", tmp_path / "acct3", *site, "--job", "job-none",
                              code=EXIT_REFUSED)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"pipeline import: {tmp_path / 'd1.img'} holds 2 copy session(s) (ses1, ses2), "
            "none whose closing index is job job-none's manifest /index@8192+4096: the drive "
            "holds no session of that job; check the drive and --job")
        assert [p for p in (tmp_path / "acct3").iterdir() if not p.name.startswith(".")] == []
        offset = two_entry["manifestFile"].removeprefix("/index@").split("+")[0]
        proc = import_session(tmp_path, "hash", tmp_path / "acct4", *site, "--job", "job-hash",
                              code=EXIT_REFUSED)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"pipeline import: {tmp_path / 'd1.img'}: the closing index of session ses2 at "
            f"offset {offset} is not the one job job-hash declared (manifestHash): the drive "
            "was changed in transit or is not the one prepared; to import what its log "
            "holds, pass --session-id ses2")
        assert [p for p in (tmp_path / "acct4").iterdir() if not p.name.startswith(".")] == []
