"""`jobs create --part N`: a session of more drives than a job holds (a cluster's) becomes
several import jobs of at most ten drives, one per part, each named by its own --job, holding
exactly the drives `journal export --part N` lists."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.jobs.rules import MAX_DRIVES
from tests import jobservice
from tests.conftest import run_cli
from tests.test_cluster_shard import big_session


def test_jobs_create_one_job_per_part_of_ten(tmp_path: Path) -> None:
    jdir = tmp_path / "j"
    jdir.mkdir()
    count = big_session(jdir)
    assert count == 23
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = tmp_path / "sub.publishsettings"
        run_cli("service", "subscription", "add", "customer", "--data", str(data), "--out",
                str(settings), check_code=0)

        def jobs(*args: str, code: int) -> str:
            proc = run_cli("jobs", *args, "--publish-settings", str(settings), "--service",
                           svc.url, check_code=code)
            return proc.stdout + proc.stderr

        create = ("create", "--journal-dir", str(jdir), "--location", "westeurope",
                  "--storage-account", "seedacct")
        out = jobs(*create, "--job", "seed", code=2)
        assert f"has {count} drives" in out and "--part 1 to --part 3" in out
        assert "--job NAME" in out
        assert "Traceback" not in out
        for n, seqs in ((1, "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"),
                        (2, "11, 12, 13, 14, 15, 101, 102, 103, 104, 105"),
                        (3, "106, 107, 108")):
            out = jobs(*create, "--job", f"seed-{n}", "--part", str(n), code=0)
            size = MAX_DRIVES if n < 3 else 3
            assert f"job seed-{n} created: Creating, {size} drive(s)" in out
            assert f"part {n} of 3 of session big-1: drives {seqs}" in out
            job = json.loads(jobs("show", "--job", f"seed-{n}", "--json", code=0))
            exported = json.loads(run_cli("journal", "export", "--journal-dir", str(jdir),
                                          "--part", str(n), check_code=0).stdout)
            assert [d["driveId"] for d in job["properties"]["driveList"]] == \
                [d["driveId"] for d in exported]
        out = jobs(*create, "--job", "seed-4", "--part", "4", code=2)
        assert "make 3 part(s)" in out
        listed = jobs("list", "--json", code=0)
        assert all(f"seed-{n}" in listed for n in (1, 2, 3)) and "seed-4" not in listed
