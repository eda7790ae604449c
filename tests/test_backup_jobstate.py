"""While the seed is not in the account yet, online `backup`, `restore` and `snapshots` ask
the import service recorded by `backup --offline` and say the job's state and what comes
next, still exit 7; with the service down, the generic line says why it was not asked."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.backup import JOB_STATE_TIMEOUT, _job_state
from pipeline.errors import EXIT_NO_SEED, EXIT_OK
from pipeline.jobs.client import ServiceClient, ServiceUnavailable
from pipeline.storage import open_storage
from tests import jobservice
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.test_backup_repo import CONTAINER, import_seed

SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"
JOB, OTHER = "seed-2026", "seed-2027"
PACKAGE = {"carrierName": "DHL", "trackingNumber": "IN1"}


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == EXIT_NO_SEED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A running import service, the offline seed recorded with its publish settings, and
    an empty directory account (the import has not happened)."""
    src, staging, account = tmp_path / "src", tmp_path / "staging", tmp_path / "account"
    for d in (src, staging, account):
        d.mkdir()
    (src / "a.txt").write_text("seeded\n")
    secret, settings = tmp_path / "pass", tmp_path / "sub.publishsettings"
    secret.write_text("a backup passphrase\n")
    secret.chmod(0o600)
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "config"))
    with jobservice.ServiceProcess(tmp_path / "svc") as svc:
        jobservice.subscription_settings(svc, settings, SUB)
        run_cli("backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
                str(staging), "--job-name", JOB, "--account", "backupacct", "--container",
                CONTAINER, "--publish-settings", str(settings), "--passphrase-file",
                str(secret), check_code=EXIT_OK)
        yield {"svc": svc, "src": src, "staging": staging, "account": account, "pass": secret,
               "settings": settings, "tmp": tmp_path}


def backup(env: dict[str, Any]) -> str:
    return one_line(run_cli("backup", "--source", str(env["src"]), "--to", str(env["account"]),
                            "--passphrase-file", str(env["pass"])))


def restore_and_snapshots(env: dict[str, Any]) -> list[str]:
    where = ["--from", str(env["account"]), "--container", CONTAINER, "--passphrase-file",
             str(env["pass"])]
    return [one_line(run_cli("restore", *where, "--target", str(env["tmp"] / "out"))),
            one_line(run_cli("snapshots", *where)),
            one_line(run_cli("snapshots", *where[:4]))]      # keyless listing too


def test_each_job_state_has_its_sentence(env: dict[str, Any]) -> None:
    customer = ServiceClient.from_file(str(env["settings"]))
    drives = jobservice.drive_list(2)
    for i, d in enumerate(drives):
        d["driveId"] = f"d{i}"
    customer.put(JOB, jobservice.job_body(drives))
    site = ServiceClient(None, env["svc"].url, site_token=env["svc"].site_token()).bound_to(
        customer.get(JOB))

    def to(who: ServiceClient, **props: Any) -> None:
        who.patch(JOB, {"properties": props})

    line = backup(env)
    assert f"no backup repository in {CONTAINER}" in line or "no backup repository" in line
    assert f"job {JOB} is Creating: the drives have not been shipped" in line
    assert f"pipeline jobs ship --job {JOB} --publish-settings {env['settings']}" in line

    to(customer, state="Shipping", deliveryPackage=PACKAGE)
    line = backup(env)
    assert (f"job {JOB} is Shipping: the seed is not imported yet; the receiving site imports "
            "it once the drives arrive") in line
    for other in restore_and_snapshots(env):
        assert f"job {JOB} is Shipping: the seed is not imported yet" in other
    assert not (env["tmp"] / "out").exists()

    to(site, state="Received", driveList=[{"driveId": "d0", "state": "Received"}])
    assert f"job {JOB} is Received: the receiving site has the drives; the import starts" \
        in backup(env)

    to(site, state="Transferring", driveList=[
        {"driveId": "d0", "state": "Transferring", "percentComplete": 40},
        {"driveId": "d1", "state": "NeverReceived"}])
    line = backup(env)
    assert f"job {JOB} is Transferring (40% copied): the receiving site has the drives and " \
        "is importing the seed; run this again once the job is Completed" in line

    to(site, state="Packaging", driveList=[{"driveId": "d0", "state": "Completed",
                                            "percentComplete": 100}])
    line = backup(env)
    assert f"job {JOB} is Packaging: the import is done, so container {CONTAINER}" in line
    assert "check --container" in line

    to(site, state="Completed", driveList=[{"driveId": "d0", "state": "ShippedBack"}],
       returnPackage={"carrierName": "DHL", "trackingNumber": "R0", "driveCount": 1,
                      "shipDate": "2026-12-01"})
    line = backup(env)
    assert f"job {JOB} is Completed: the import is done, so container {CONTAINER}" in line
    for other in restore_and_snapshots(env):
        assert f"job {JOB} is Completed: the import is done, so container {CONTAINER}" in other

    to(site, state="Closed")
    # part of the repository there (a drive's blobs failed): incomplete, and why to look
    import_seed(env["staging"] / "repo", open_storage(f"file://{env['account']}"),
                skip=lambda n: n.startswith("data/"))
    line = backup(env)
    assert "is incomplete" in line and f"job {JOB} is Closed: the import is done, yet" in line
    assert f"pipeline jobs show --job {JOB}" in line

    # a canceled job (another name, recorded for this seed instead)
    customer.put(OTHER, jobservice.job_body(jobservice.drive_list(1)))
    customer.patch(OTHER, {"properties": {"cancelRequested": True}})
    config = env["tmp"] / "config" / "offline.json"
    recorded = json.loads(config.read_text())
    for entry in recorded.values():
        entry["job_name"] = OTHER
    config.write_text(json.dumps(recorded))
    line = backup(env)
    assert f"job {OTHER} is Canceled: the seed will not be imported through it" in line
    assert "pipeline backup --offline --job NEW-NAME" in line


def test_service_down_keeps_the_generic_line_and_says_why(env: dict[str, Any]) -> None:
    url = env["svc"].url
    env["svc"].kill()
    line = backup(env)
    assert f"wait until import job {JOB} is Completed" in line
    assert line.endswith(")") and f"(the import service at {url} could not be asked: " in line
    assert "refused" in line.lower()
    for other in restore_and_snapshots(env):
        assert "no backup repository" in other or "does not exist" in other
        assert f"(the import service at {url} could not be asked: " in other


def test_publish_settings_gone(env: dict[str, Any]) -> None:
    env["settings"].unlink()
    line = backup(env)
    assert f"wait until import job {JOB} is Completed" in line
    assert "(the import service could not be asked: " in line and "does not exist" in line


@pytest.mark.parametrize("answer, want", [
    ({"properties": {"state": "Transferring", "percentComplete": 55}}, ("Transferring", 55)),
    ({"properties": {"state": "Transferring", "percentComplete": 250}}, ("Transferring", None)),
    ({"properties": {"state": "Transferring", "percentComplete": True}}, ("Transferring", None)),
    ({"properties": {"state": "Transferring", "percentComplete": "50"}}, ("Transferring", None)),
    ({"properties": {"state": "\x1b[31mShipping"}}, ("unknown", None)),
    ({"properties": {"state": "x" * 500}}, ("unknown", None)),
    ({"properties": {"state": 7}}, ("unknown", None)),
    ({"properties": []}, ("unknown", None)),
    ([1, 2], ("unknown", None)),
    (None, ("unknown", None)),
], ids=["ok", "percent-range", "percent-bool", "percent-str", "escape", "long", "int",
        "props-list", "list", "none"])
def test_the_service_answer_is_hostile(answer: Any, want: tuple[str, int | None]) -> None:
    assert _job_state(answer) == want


@pytest.fixture
def silent_service() -> Iterator[str]:
    """A URL whose listener takes connections into its backlog and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_service_unavailable_carries_the_reason(env: dict[str, Any], silent_service: str
                                                ) -> None:
    client = ServiceClient.from_file(str(env["settings"]), url=silent_service, timeout=0.5)
    with pytest.raises(ServiceUnavailable) as caught:
        client.get(JOB)
    assert caught.value.reason == "timed out"
    assert f"the import service at {silent_service} is unreachable (timed out)" in str(
        caught.value)
    env["svc"].kill()
    with pytest.raises(ServiceUnavailable) as caught:
        ServiceClient.from_file(str(env["settings"]), url=env["svc"].url).get(JOB)
    assert "refused" in caught.value.reason.lower()


def test_a_service_that_does_not_answer_does_not_hang_backup(env: dict[str, Any],
                                                             silent_service: str) -> None:
    """The job-state lookup gives up after JOB_STATE_TIMEOUT: still exit 7, saying why."""
    config = env["tmp"] / "config" / "offline.json"
    recorded = json.loads(config.read_text())
    for entry in recorded.values():
        entry["service"] = silent_service
    config.write_text(json.dumps(recorded))
    line = backup(env)
    assert f"wait until import job {JOB} is Completed" in line
    assert line.endswith(f"(the import service at {silent_service} could not be asked: "
                         "timed out)")
    assert JOB_STATE_TIMEOUT <= 10


def test_restore_and_snapshots_ask_every_recorded_seed(env: dict[str, Any]) -> None:
    """Two seeds recorded for one container: each one's job is asked and named."""
    src2, staging2 = env["tmp"] / "src2", env["tmp"] / "staging2"
    src2.mkdir()
    staging2.mkdir()
    (src2 / "b.txt").write_text("the second seed\n")
    run_cli("backup", "--offline", *FAST_KDF_ARGS, "--source", str(src2), "--staging",
            str(staging2), "--job-name", OTHER, "--account", "backupacct", "--container",
            CONTAINER, "--publish-settings", str(env["settings"]), "--passphrase-file",
            str(env["pass"]), check_code=EXIT_OK)
    customer = ServiceClient.from_file(str(env["settings"]))
    customer.put(OTHER, jobservice.job_body(jobservice.drive_list(1)))
    customer.put(JOB, jobservice.job_body(jobservice.drive_list(1)))
    customer.patch(JOB, {"properties": {"state": "Shipping", "deliveryPackage": PACKAGE}})
    for line in restore_and_snapshots(env):
        assert f"job {JOB} is Shipping: the seed is not imported yet" in line
        assert f"job {OTHER} is Creating: the drives have not been shipped yet" in line
