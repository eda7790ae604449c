"""diskprep as a person runs it, in a pseudo-terminal: s:/p:, job confirmation, region and
return address (the seed's "shipping info -> contact details", asked before any drive),
drive paths, format confirmation, a second drive when the first fills, then the import job
exists on the service with the drives' journals and the return leg.  A taken job name, or
a missing answer off a terminal, stops it before any drive is touched."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pexpect
import pytest

from pipeline.errors import EXIT_BAD_INPUT, EXIT_NO_SEED, EXIT_REFUSED
from pipeline.jobs.client import JobNameTaken, ServiceClient
from tests import jobservice

from .conftest import FAST_KDF_ARGS, ROOT, run_cli

MiB = 1 << 20


def fake_offline_backup(staging: Path, config: Path, job: str, sub: str,
                        settings: Path | None) -> None:
    """What `backup --offline` leaves: a repository of 512-aligned packs, the settings file,
    and (on the source machine) the config entry."""
    rng = random.Random(3)
    repo = staging / "repo"
    (repo / "data").mkdir(parents=True)
    for i in range(6):
        (repo / "data" / f"pack-{i:02d}").write_bytes(rng.randbytes(6 * MiB))
    (repo / "config").write_bytes(rng.randbytes(4096))
    (staging / "pipeline-offline.json").write_text(json.dumps({
        "version": 1, "staging": str(staging), "repository": "repo", "job_name": job,
        "subscription": sub, "account": "seedacct", "container": "backups",
        "created": "2026-11-26T00:00:00Z"}))
    if settings is not None:
        config.mkdir(parents=True, exist_ok=True)
        (config / "offline.json").write_text(json.dumps({str(staging): {
            "publish_settings": str(settings), "container": "backups", "job_name": job,
            "subscription": sub, "account": "seedacct", "source": "/src"}}))


RETURN_ADDRESS = {"recipientName": "Ops Team", "streetAddress1": "1 Data Way", "city": "Lisboa",
                  "postalCode": "1000-001", "countryOrRegion": "PT", "phone": "+351 21 000 0000",
                  "email": "ops@example.org"}
ANSWERS = [("Who receives the drives back (contact name): ", "Ops Team"),
           ("Street address for the drives' return: ", "1 Data Way"),
           ("City of the return address: ", "Lisboa"),
           ("Postal code of the return address: ", "1000-001"),
           ("Country of the return address (ISO code, e.g. PT): ", "PT"),
           ("Contact phone for the return shipment: ", "+351 21 000 0000"),
           ("Contact email for the return shipment: ", "ops@example.org"),
           ("Carrier that brings the drives back: ", "DHL"),
           ("Your account number with that carrier: ", "ACC-9")]
RETURN_FLAGS = ["--return-name", "Ops", "--return-street", "1 Data Way", "--return-city",
                "Lisboa", "--return-postal-code", "1000-001", "--return-country", "PT",
                "--return-phone", "+351 1", "--return-email", "ops@example.org",
                "--return-carrier", "DHL", "--return-account", "ACC-9"]


def subscription(data: Path, out: Path) -> str:
    run_cli("service", "subscription", "add", "backup-ops", "--data", str(data), "--out",
            str(out), check_code=0)
    from pipeline.jobs import auth
    return auth.read_publish_settings(out).subscription_id


def test_diskprep_interactive_two_drives(tmp_path: Path) -> None:
    data, settings = tmp_path / "svc", tmp_path / "ops.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        sub = subscription(data, settings)
        staging, config = tmp_path / "staging", tmp_path / "config"
        fake_offline_backup(staging, config, "nightly-seed", sub, settings)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_CONFIG_DIR": str(config)}
        child = pexpect.spawn(sys.executable, ["-m", "pipeline", "diskprep", f"s:{staging}",
                                               "--service", svc.url, *FAST_KDF_ARGS],
                              env=env, cwd=str(ROOT), encoding="utf-8", timeout=120)
        child.expect("offline backup for import job nightly-seed")
        child.expect(r"Prepare drives for job nightly-seed\? \[Y/n\]: ")
        child.sendline("")
        child.expect(r"Data-center region for the job \(.*westeurope.*\): ")
        child.sendline("westeurope")
        child.expect("Return address and contact for the drives' way back:")
        for prompt, answer in ANSWERS:
            child.expect_exact(prompt)
            child.sendline(answer)
        child.expect("Path of the target drive")
        child.sendline(str(tmp_path / "d1.img"))
        child.expect("size of the image file to create")
        child.sendline("32M")
        child.expect(r"Format .*d1.img \(a new image file of 32M\)\? Everything on it is "
                     r"lost. \[y/N\]: ")
        child.sendline("y")
        child.expect("the drive is full: attach another drive")
        # the operator's slips at 3 a.m.: each is said in a line and the question comes back
        child.expect("Path of the next drive")
        child.sendline("/dev/loop9z")
        child.expect("/dev/loop9z does not exist; check the device name")
        child.expect("Path of the next drive")
        child.sendline(str(tmp_path / "d1.img"))
        child.expect(r"d1.img is already drive 1 of this job \(full\); attach another drive")
        child.expect("Path of the next drive")
        child.sendline(str(tmp_path / "d2.img"))
        child.expect("size of the image file to create")
        child.sendline("")
        child.expect("give a size, e.g. 2G")
        child.expect("size of the image file to create")
        child.sendline("64M")
        child.expect(r"Format .*d2.img \(a new image file of 64M\)\? .* \[y/N\]: ")
        child.sendline("maybe")
        child.expect("answer y or n")
        child.sendline("n")
        child.expect("d2.img left as it is; give another drive")
        child.expect("Path of the next drive")
        child.sendline(str(tmp_path / "d2.img"))
        child.expect("size of the image file to create")
        child.sendline("64M")
        child.expect(r"Format .*d2.img")
        child.sendline("y")
        child.expect("import job nightly-seed created with 2 drive")
        child.expect("ship the drives to:")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        job = json.loads(run_cli("jobs", "show", "--job", "nightly-seed", "--json",
                                 "--publish-settings", str(settings), "--service", svc.url,
                                 check_code=0).stdout)
        props = job["properties"]
        assert props["state"] == "Creating" and len(props["driveList"]) == 2
        assert props["returnAddress"] == {**props["returnAddress"], **RETURN_ADDRESS}
        assert props["returnShipping"] == {"carrierName": "DHL", "carrierAccountNumber": "ACC-9"}
        # The name check knows this machine's own job (its journals' drives) from another's.
        client = ServiceClient.from_file(str(settings), url=svc.url)
        own = {d["driveId"] for d in props["driveList"]}
        assert client.check_job_name("nightly-seed", own)["name"] == "nightly-seed"
        with pytest.raises(JobNameTaken, match="already exists"):
            client.check_job_name("nightly-seed", {next(iter(own))})
        assert client.check_job_name("another-seed", own) is None
        journals = sorted((config / "journals" / "nightly-seed").glob("*.journal"))
        assert len(journals) == 2
        assert all(os.stat(j).st_mode & 0o777 == 0o600 for j in journals)
        # Nothing secret went into the staging location.
        keys = run_cli("jobs", "keys", "--job", "nightly-seed", "--publish-settings",
                       str(settings), "--service", svc.url, check_code=0).stdout
        for line in keys.splitlines():
            password = line.split()[1]
            for f in staging.rglob("*"):
                if f.is_file():
                    assert password.encode() not in f.read_bytes()


def test_diskprep_refusals(tmp_path: Path) -> None:
    staging = tmp_path / "empty-staging"
    staging.mkdir()
    env_config = {"PIPELINE_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = run_cli("diskprep", f"s:{staging}", "--yes", env=env_config)
    assert proc.returncode == EXIT_NO_SEED
    assert "holds no offline backup" in proc.stderr and "backup --offline" in proc.stderr
    other = tmp_path / "staging"
    fake_offline_backup(other, tmp_path / "unused", "nightly-seed",
                        "00000000-0000-0000-0000-000000000000", None)
    proc = run_cli("diskprep", f"s:{other}", "--yes", env=env_config)  # another copy machine
    assert proc.returncode == EXIT_BAD_INPUT
    assert "give the publish settings file as p:<file>" in proc.stderr
    bogus = tmp_path / "bogus.publishsettings"
    bogus.write_text("not xml")
    proc = run_cli("diskprep", f"s:{other}", f"p:{bogus}", "--yes", env=env_config)
    assert proc.returncode == EXIT_BAD_INPUT and "cannot be read as XML" in proc.stderr
    proc = run_cli("diskprep", "x:/nowhere", env=env_config)
    assert proc.returncode == EXIT_BAD_INPUT and "is not s:<staging location>" in proc.stderr


def test_diskprep_stops_before_any_drive(tmp_path: Path) -> None:
    """A taken job name, or the return address missing off a terminal: one line, and the
    drive image, the journal directory and the service are as they were."""
    data, settings = tmp_path / "svc", tmp_path / "ops.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        sub = subscription(data, settings)
        staging, config = tmp_path / "staging", tmp_path / "config"
        fake_offline_backup(staging, config, "taken-seed", sub, settings)
        drive = tmp_path / "precious.img"
        drive.write_bytes(random.Random(5).randbytes(4 * MiB))
        before = drive.read_bytes()
        env = {"PIPELINE_CONFIG_DIR": str(config)}
        common = ["diskprep", f"s:{staging}", "--service", svc.url, "--drive", str(drive),
                  "--location", "westeurope", "--yes", *FAST_KDF_ARGS]

        missing = run_cli(*common, env=env, input="")  # stdin is not a terminal
        assert missing.returncode == EXIT_BAD_INPUT
        line = missing.stderr.strip()
        assert len(line.splitlines()) == 1 and "nothing was written" in line
        assert "--return-name" in line and "--return-account" in line

        # Someone else's job of that name in the subscription: refused before formatting.
        ServiceClient.from_file(str(settings), url=svc.url).put(
            "taken-seed", jobservice.job_body(jobservice.drive_list(1)))
        taken = run_cli(*common, *RETURN_FLAGS, env=env, input="")
        assert taken.returncode == EXIT_REFUSED
        line = taken.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "import job taken-seed already exists" in line and "nothing was written" in line
        for proc in (missing, taken):
            assert "Format" not in proc.stdout
        assert drive.read_bytes() == before
        assert not (config / "journals").exists()
        job = ServiceClient.from_file(str(settings), url=svc.url).get("taken-seed")
        assert len(job["properties"]["driveList"]) == 1  # the other job, unchanged

        # No --yes and nobody to answer "Format?": a missing confirmation, refused (5).
        free = tmp_path / "free-staging"
        fake_offline_backup(free, config, "free-seed", sub, settings)
        unanswered = run_cli("diskprep", f"s:{free}", "--service", svc.url, "--job",
                             "free-seed", "--drive", str(drive), "--location", "westeurope",
                             *RETURN_FLAGS, *FAST_KDF_ARGS, env=env, input="")
        assert unanswered.returncode == EXIT_REFUSED, unanswered.stderr
        assert "pass --yes" in unanswered.stderr.strip().splitlines()[-1]
        assert drive.read_bytes() == before


def test_diskprep_json_unattended_two_drives(tmp_path: Path) -> None:
    """--json: one event stream (diskprep's notes, prep's progress and summaries, the job,
    one exit at the very end); nothing asked; out of drives is exit 3 naming diskprep."""
    data, settings = tmp_path / "svc", tmp_path / "ops.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        sub = subscription(data, settings)
        staging, config = tmp_path / "staging", tmp_path / "config"
        fake_offline_backup(staging, config, "json-seed", sub, settings)
        env = {"PIPELINE_CONFIG_DIR": str(config)}
        common = ["diskprep", f"s:{staging}", "--service", svc.url, "--location",
                  "westeurope", "--yes", "--json", "--drive-size", "32M", *RETURN_FLAGS,
                  *FAST_KDF_ARGS]
        short = run_cli(*common, "--drive", str(tmp_path / "d1.img"), env=env, input="")
        assert short.returncode == 3, short.stderr
        events = [json.loads(line) for line in short.stdout.splitlines()]
        assert events[-1]["type"] == "exit" and events[-1]["code"] == 3
        assert f"pipeline diskprep s:{staging}" in events[-1]["message"]
        assert "pipeline prep" not in short.stdout + short.stderr  # diskprep speaks for itself
        done = run_cli(*common, "--drive", str(tmp_path / "d2.img"), "--drive",
                       str(tmp_path / "d3.img"), env=env, input="")
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        types = [e["type"] for e in events]
        assert types.count("exit") == 1 and types[-1] == "exit" and events[-1]["code"] == 0
        assert "note" in types and "progress" in types and "summary" in types
        [job] = [e for e in events if e["type"] == "job"]
        assert job["name"] == "json-seed" and job["drives"] >= 2
        assert job["ship_to"]["countryOrRegion"]
