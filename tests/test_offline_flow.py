"""Issue 8's scenario, as a person runs it: backup --offline -> diskprep s: p: in a
pseudo-terminal (a second drive asked for when the first fills; region and return address
as flags) -> the job on the service -> jobs ship -> the site (its own token): receive,
import --service, return -> job Completed -> the source changes -> online backup ->
restore of both snapshots, each byte-identical to its time.  And backup --offline refuses
a job name that is taken before it writes anything (issue 16)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import pexpect
import pytest

from pipeline.errors import EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_STORAGE
from pipeline.jobs import auth
from pipeline.jobs.client import ServiceClient
from tests import jobservice

from .conftest import FAST_KDF_ARGS, ROOT, run_cli
from .drivedata import make_tree, read_tree

RETURN_FLAGS = ["--return-name", "Ops", "--return-street", "1 Data Way", "--return-city",
                "Lisboa", "--return-postal-code", "1000-001", "--return-country", "PT",
                "--return-phone", "+351 1", "--return-email", "ops@example.org",
                "--return-carrier", "DHL", "--return-account", "ACC-1"]


@pytest.mark.parametrize("account_kind", ["local", "azurite"])
def test_offline_seed_then_incremental_backup(tmp_path: Path, account_kind: str,
                                              request: pytest.FixtureRequest) -> None:
    src = tmp_path / "source"
    make_tree(src, small_files=300, random_mb=20, sparse_mb=16)
    container = f"offline-{secrets.token_hex(4)}"  # Azurite is shared by the whole test run
    first = read_tree(src)
    config, staging = tmp_path / "config", tmp_path / "staging"
    staging.mkdir()
    env = {"PIPELINE_CONFIG_DIR": str(config)}
    passphrase = tmp_path / "backup.pass"
    passphrase.write_text("a long backup passphrase\n")
    data, settings = tmp_path / "svc", tmp_path / "ops.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "ops", "--data", str(data), "--out",
                str(settings), check_code=0)
        sub = auth.read_publish_settings(settings).subscription_id
        run_cli("backup", "--source", str(src), "--offline", "--staging", str(staging),
                "--job-name", "offline-seed", "--account", "opsacct",  # subscription: p:'s
                "--container", container, "--publish-settings", str(settings),
                "--passphrase-file", str(passphrase), *FAST_KDF_ARGS, env=env, check_code=0)
        assert json.loads((staging / "pipeline-offline.json").read_text())[
            "subscription"] == sub

        child = pexpect.spawn(
            sys.executable, ["-m", "pipeline", "diskprep", f"s:{staging}", f"p:{settings}",
                             "--service", svc.url, "--location", "westeurope", *RETURN_FLAGS,
                             *FAST_KDF_ARGS],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=str(ROOT),
            encoding="utf-8", timeout=180)
        child.expect(r"Prepare drives for job offline-seed\? \[Y/n\]: ")
        child.sendline("y")
        child.expect("Path of the target drive")
        child.sendline(str(tmp_path / "d1.img"))
        child.expect("size of the image file to create")
        child.sendline("32M")
        child.expect(r"Format .*d1.img .*\?")
        child.sendline("y")
        child.expect("the drive is full: attach another drive")
        child.expect("Path of the next drive")
        child.sendline(str(tmp_path / "d2.img"))
        child.expect("size of the image file to create")
        child.sendline("64M")
        child.expect(r"Format .*d2.img .*\?")
        child.sendline("y")
        child.expect("import job offline-seed created with 2 drive")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before

        common = ["--publish-settings", str(settings), "--service", svc.url]
        run_cli("jobs", "ship", "--job", "offline-seed", "--carrier", "DHL", "--tracking",
                "T-1", *common, check_code=0)  # the return leg: recorded by diskprep
        if account_kind == "local":
            (tmp_path / "account").mkdir()
            account = str(tmp_path / "account")
        else:
            account = request.getfixturevalue("azurite")
        token = tmp_path / "site.token"
        token.write_text(svc.site_token())
        site = ["--service", svc.url, "--site-token-file", str(token)]
        run_cli("site", "receive", "--job", "offline-seed", *site, check_code=0)
        proc = run_cli("import", "--drive", str(tmp_path / "d1.img"), "--drive",
                       str(tmp_path / "d2.img"), "--to", account, "--job", "offline-seed",
                       *site, "--log-dir", str(tmp_path), env=env)
        assert proc.returncode == 0, proc.stderr
        run_cli("site", "return", "--job", "offline-seed", "--carrier", "DHL", "--tracking",
                "R-1", *site, check_code=0)
        job = json.loads(run_cli("jobs", "show", "--job", "offline-seed", "--json", *common,
                                 check_code=0).stdout)
        assert job["properties"]["state"] == "Completed"
        assert job["properties"]["returnPackage"]["trackingNumber"] == "R-1"
        assert all(d["state"] == "ShippedBack" for d in job["properties"]["driveList"])

        # The source moves on; the next backup goes over the network, on top of the seed.
        (src / "logs" / "sys log.txt").write_text("a new day\n" * 1000)
        (src / "new report.txt").write_text("quarterly numbers\n")
        (src / "blobs" / "odd size.bin").unlink()
        second = read_tree(src)
        proc = run_cli("backup", "--source", str(src), "--to", account, "--passphrase-file",
                       str(passphrase), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        snaps = json.loads(run_cli("snapshots", "--from", account, "--container",
                                   container, "--json", env=env, check_code=0).stdout)
        assert len(snaps) == 2
        for snap, want in zip(snaps, (first, second), strict=True):
            target = tmp_path / f"restore-{snap['id'][:8]}"
            run_cli("restore", "--from", account, "--container", container, "--snapshot",
                    snap["id"], "--target", str(target), "--passphrase-file", str(passphrase),
                    env=env, check_code=0)
            assert read_tree(target) == want
            shutil.rmtree(target)
        # The passphrase is nowhere on disk outside its own file.
        secret = b"a long backup passphrase"
        places = [staging, tmp_path / "d1.img", tmp_path / "d2.img", config]
        if account_kind == "local":
            places.append(tmp_path / "account")
        for where in places:
            files = [where] if where.is_file() else [p for p in where.rglob("*") if p.is_file()]
            for f in files:
                assert secret not in f.read_bytes(), f


def test_backup_offline_refuses_a_taken_job_name_first(tmp_path: Path) -> None:
    """The job name is asked of the service before the staging location is written: a
    name another job holds in the subscription stops the backup with one line, exit 5."""
    src = tmp_path / "source"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=20)
    config, staging = tmp_path / "config", tmp_path / "staging"
    staging.mkdir()
    passphrase = tmp_path / "backup.pass"
    passphrase.write_text("another long passphrase\n")
    passphrase.chmod(0o600)
    data, settings = tmp_path / "svc", tmp_path / "ops.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "ops", "--data", str(data), "--out",
                str(settings), check_code=0)
        ServiceClient.from_file(str(settings)).put(
            "taken-seed", jobservice.job_body(jobservice.drive_list(1)))
        args = ["backup", "--source", str(src), "--offline", "--staging", str(staging),
                "--account", "opsacct", "--container", "backups", "--publish-settings",
                str(settings), "--passphrase-file", str(passphrase), *FAST_KDF_ARGS]
        proc = run_cli(*args, "--job-name", "taken-seed",
                       env={"PIPELINE_CONFIG_DIR": str(config)})
        assert proc.returncode == EXIT_REFUSED, proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "import job taken-seed already exists" in line and "another job name" in line
        assert list(staging.iterdir()) == [] and not config.exists()
        # A subscription the publish settings do not hold is named, also before writing.
        other = run_cli(*args, "--job-name", "free-seed", "--subscription",
                        "00000000-0000-0000-0000-000000000000",
                        env={"PIPELINE_CONFIG_DIR": str(config)})
        assert other.returncode == EXIT_BAD_INPUT and list(staging.iterdir()) == []
        # The service gone: it cannot say, so nothing is written either (exit 6).
        svc.stop()
        gone = run_cli(*args, "--job-name", "free-seed",
                       env={"PIPELINE_CONFIG_DIR": str(config)})
        assert gone.returncode == EXIT_STORAGE and "unreachable" in gone.stderr
        assert "free-seed" in gone.stderr and list(staging.iterdir()) == []
