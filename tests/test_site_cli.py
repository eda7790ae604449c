"""The receiving site's command line (`pipeline site ...`) and the customer's side of the
return leg (`jobs ship` needs a return address), against a running service, each role with
its own credential: the listing across subscriptions, receive with --never-received and
--undo, return refused in the wrong state, a job name found in two subscriptions, bad
site-token files, and the service's own URL in new publish settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import EXIT_BAD_INPUT, EXIT_REFUSED
from pipeline.jobs import auth
from pipeline.jobs.client import ServiceClient
from tests import jobservice

from .conftest import run_cli


@dataclass
class World:
    svc: jobservice.ServiceProcess
    data: Path
    alice: Path          # publish settings of two customers
    bob: Path
    token_file: Path     # the site's credential
    token: str

    def customer(self, settings: Path) -> ServiceClient:
        return ServiceClient.from_file(str(settings), url=self.svc.url)

    def site(self, *args: str, code: int | None = None):
        return run_cli("site", *args, "--service", self.svc.url, "--site-token-file",
                       str(self.token_file), check_code=code)

    def jobs(self, settings: Path, *args: str, code: int | None = None):
        return run_cli("jobs", *args, "--publish-settings", str(settings), "--service",
                       self.svc.url, check_code=code)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("site")
    data = base / "data"
    with jobservice.ServiceProcess(data) as svc:
        for name in ("alice", "bob"):
            run_cli("service", "subscription", "add", name, "--data", str(data), "--out",
                    str(base / f"{name}.publishsettings"), check_code=0)
        token_file = base / "site.token"
        made = run_cli("service", "site-token", "--data", str(data), "--out", str(token_file),
                       check_code=0)
        token = token_file.read_text().strip()
        assert made.stdout == "" and token not in made.stderr      # written, never shown
        assert token_file.stat().st_mode & 0o777 == 0o600
        again = run_cli("service", "site-token", "--data", str(data), "--out", str(token_file))
        assert again.returncode == EXIT_BAD_INPUT and "already exists" in again.stderr
        assert token_file.read_text().strip() == token
        yield World(svc, data, base / "alice.publishsettings", base / "bob.publishsettings",
                    token_file, token)


def _shipped(world: World, settings: Path, name: str, drives: int = 2) -> list[str]:
    """A job of ``drives`` drives, created and shipped by the customer: its drive ids."""
    cust = world.customer(settings)
    body = jobservice.job_body(jobservice.drive_list(drives))
    cust.put(name, body)
    cust.patch(name, {"properties": {"state": "Shipping", "deliveryPackage": {
        "carrierName": "DHL", "trackingNumber": f"T-{name}", "driveCount": drives}}})
    return [d["driveId"] for d in body["properties"]["driveList"]]


def _drives(world: World, settings: Path, name: str) -> dict[str, str]:
    job = world.customer(settings).get(name)
    return {d["driveId"]: d["state"] for d in job["properties"]["driveList"]}


def test_site_jobs_lists_every_subscription_with_what_comes_next(world: World) -> None:
    _shipped(world, world.alice, "list-alice")
    world.customer(world.bob).put("list-bob", jobservice.job_body(jobservice.drive_list(1)))
    out = world.site("jobs", code=0).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "Shipping" in rows["list-alice"] and "site: receive the package" in rows["list-alice"]
    assert "Creating" in rows["list-bob"] and "customer: ship the drives" in rows["list-bob"]
    subs = {s: auth.read_publish_settings(p).subscription_id
            for s, p in (("alice", world.alice), ("bob", world.bob))}
    assert subs["alice"] in rows["list-alice"] and subs["bob"] in rows["list-bob"]

    listed = json.loads(world.site("jobs", "--json", code=0).stdout)
    mine = {r["name"]: r for r in listed}
    assert mine["list-alice"]["subscription"] == subs["alice"]
    assert mine["list-alice"]["nextBy"] == "site"
    assert "pipeline site receive" in mine["list-alice"]["nextCommand"]
    assert mine["list-bob"] == {**mine["list-bob"], "state": "Creating", "drives": 1,
                                "drivesReceived": 0, "nextBy": "customer",
                                "subscription": subs["bob"], "resourceGroup": "pipeline"}
    only = json.loads(world.site("jobs", "--json", "--state", "creating", code=0).stdout)
    assert only and {r["state"] for r in only} == {"Creating"}
    assert "list-bob" in {r["name"] for r in only}
    assert "list-alice" not in {r["name"] for r in only}
    bad = world.site("jobs", "--state", "Lost", code=EXIT_BAD_INPUT)
    assert "not a job state" in bad.stderr and "Shipping" in bad.stderr
    # The customer's listing stays its own subscription's.
    assert "list-bob" not in world.jobs(world.alice, "list", code=0).stdout


def test_receive_with_a_drive_missing_then_undo(world: World) -> None:
    first, second = _shipped(world, world.alice, "recv-missing")
    out = world.site("receive", "--job", "recv-missing", "--never-received", second,
                     code=0).stdout
    assert "job recv-missing: Received" in out and "next: pipeline import" in out
    assert _drives(world, world.alice, "recv-missing") == {first: "Received",
                                                           second: "NeverReceived"}
    assert world.customer(world.alice).get("recv-missing")["properties"]["state"] == "Received"
    # A wrong mark is undone before the import starts; then the drive turns up after all.
    world.site("receive", "--job", "recv-missing", "--undo", second, code=0)
    assert _drives(world, world.alice, "recv-missing")[second] == "Specified"
    world.site("receive", "--job", "recv-missing", "--drive", second, code=0)
    assert set(_drives(world, world.alice, "recv-missing").values()) == {"Received"}
    # A drive id that is not the job's is named with the job's drives.
    bad = world.site("receive", "--job", "recv-missing", "--drive", "nope",
                     code=EXIT_BAD_INPUT)
    assert "--drive nope is not a drive of job recv-missing" in bad.stderr
    assert first in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_receive_and_return_refused_in_the_wrong_state(world: World) -> None:
    world.customer(world.alice).put("not-shipped", jobservice.job_body(
        jobservice.drive_list(1)))
    early = world.site("receive", "--job", "not-shipped", code=EXIT_BAD_INPUT)
    assert "job not-shipped is Creating" in early.stderr and "jobs ship" in early.stderr
    _shipped(world, world.alice, "ret-early")
    for state in ("Shipping", "Received"):
        proc = world.site("return", "--job", "ret-early", "--carrier", "DHL", "--tracking",
                          "R-1", code=EXIT_BAD_INPUT)
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"job ret-early is {state}, not Packaging" in line
        assert "next: pipeline " + ("site receive" if state == "Shipping" else "import") in line
        if state == "Shipping":
            world.site("receive", "--job", "ret-early", code=0)
    job = world.customer(world.alice).get("ret-early")["properties"]
    assert job["state"] == "Received" and "returnPackage" not in job
    closing = world.site("close", "--job", "ret-early", code=EXIT_BAD_INPUT)
    assert "is Received, not Completed" in closing.stderr


def test_a_name_in_two_subscriptions_needs_subscription(world: World) -> None:
    _shipped(world, world.alice, "twin")
    bob_drives = _shipped(world, world.bob, "twin", drives=1)
    proc = world.site("receive", "--job", "twin", code=EXIT_BAD_INPUT)
    assert "2 import jobs are called twin" in proc.stderr
    assert "--subscription" in proc.stderr and "--resource-group" in proc.stderr
    bob = auth.read_publish_settings(world.bob).subscription_id
    world.site("receive", "--job", "twin", "--subscription", bob, code=0)
    assert _drives(world, world.bob, "twin") == {bob_drives[0]: "Received"}
    assert set(_drives(world, world.alice, "twin").values()) == {"Specified"}
    missing = world.site("receive", "--job", "nobody-has-it", code=EXIT_BAD_INPUT)
    assert "no import job nobody-has-it" in missing.stderr


def test_ship_needs_a_return_address(world: World) -> None:
    cust = world.customer(world.alice)
    cust.put("no-return", jobservice.job_body(jobservice.drive_list(1), returnAddress=None,
                                              returnShipping=None))
    proc = world.jobs(world.alice, "ship", "--job", "no-return", "--carrier", "DHL",
                      "--tracking", "T-1", code=EXIT_BAD_INPUT)
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "cannot ship without a return address" in line
    for flag in ("--return-name", "--return-street", "--return-city", "--return-postal-code",
                 "--return-country", "--return-phone", "--return-email", "--return-carrier",
                 "--return-account"):
        assert flag in line
    assert "--return-state" not in line          # optional
    assert cust.get("no-return")["properties"]["state"] == "Creating"
    # Half an address names what is still missing; the whole one ships.
    half = world.jobs(world.alice, "ship", "--job", "no-return", "--carrier", "DHL",
                      "--tracking", "T-1", "--return-name", "Ops", "--return-carrier", "DHL",
                      code=EXIT_BAD_INPUT)
    assert "--return-street" in half.stderr and "--return-name" not in half.stderr
    assert "--return-carrier" not in half.stderr
    world.jobs(world.alice, "ship", "--job", "no-return", "--carrier", "DHL", "--tracking",
               "T-1", "--return-name", "Ops", "--return-street", "1 Data Way",
               "--return-city", "Lisboa", "--return-postal-code", "1000-001",
               "--return-country", "PT", "--return-phone", "+351 1", "--return-email",
               "ops@example.org", "--return-carrier", "DHL", "--return-account", "A-1", code=0)
    props = cust.get("no-return")["properties"]
    assert props["state"] == "Shipping"
    assert props["returnAddress"]["city"] == "Lisboa"
    assert props["returnShipping"] == {"carrierName": "DHL", "carrierAccountNumber": "A-1"}


def test_site_token_file_mistakes_are_one_line(world: World, tmp_path: Path) -> None:
    _shipped(world, world.alice, "tok-job")
    missing = run_cli("site", "jobs", "--service", world.svc.url, "--site-token-file",
                      str(tmp_path / "none"))
    assert missing.returncode == EXIT_BAD_INPUT and "does not exist" in missing.stderr
    # The customer's token in the file: not a site token, said without echoing it.
    jwt = run_cli("jobs", "token", "--publish-settings", str(world.alice), check_code=0).stdout
    (tmp_path / "customer.token").write_text(jwt)
    proc = run_cli("site", "receive", "--job", "tok-job", "--service", world.svc.url,
                   "--site-token-file", str(tmp_path / "customer.token"))
    assert proc.returncode == EXIT_BAD_INPUT
    assert "does not hold a site token" in proc.stderr and jwt.strip() not in proc.stderr
    # A forged site token: the service refuses it (401), with how to get a good one.
    (tmp_path / "forged.token").write_text(world.token[:-4] + "AAAA")
    proc = run_cli("site", "jobs", "--service", world.svc.url, "--site-token-file",
                   str(tmp_path / "forged.token"))
    assert proc.returncode == EXIT_REFUSED and "site-token" in proc.stderr
    assert world.token not in proc.stderr
    # A token file others can read works, with a warning naming the chmod (never the token).
    shared = tmp_path / "shared.token"
    shared.write_text(world.token)
    shared.chmod(0o644)
    proc = run_cli("site", "jobs", "--service", world.svc.url, "--site-token-file",
                   str(shared), check_code=0)
    assert f"warning: --site-token-file {shared} is readable by anyone" in proc.stderr
    assert f"chmod 600 {shared}" in proc.stderr and world.token not in proc.stderr
    assert "tok-job" in proc.stdout
    assert _drives(world, world.alice, "tok-job") == dict.fromkeys(
        _drives(world, world.alice, "tok-job"), "Specified")


def test_subscription_add_uses_the_url_the_service_serves(world: World, tmp_path: Path
                                                          ) -> None:
    recorded = json.loads((world.data / "service.json").read_text())
    assert recorded == {"url": world.svc.url}
    out = tmp_path / "carol.publishsettings"
    run_cli("service", "subscription", "add", "carol", "--data", str(world.data), "--out",
            str(out), check_code=0)
    assert auth.read_publish_settings(out).url == world.svc.url
    # Its jobs work at once, at that address, with no --service at all.
    run_cli("jobs", "list", "--publish-settings", str(out), check_code=0)
    # A data directory no service has run on: the default, with a note.
    fresh = tmp_path / "fresh"
    proc = run_cli("service", "subscription", "add", "dave", "--data", str(fresh), "--out",
                   str(tmp_path / "dave.publishsettings"), check_code=0)
    assert "no service has started on" in proc.stderr and auth.DEFAULT_URL in proc.stderr
    assert auth.read_publish_settings(tmp_path / "dave.publishsettings").url == auth.DEFAULT_URL


def test_subscription_list_reissue_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        old = tmp_path / "erin.publishsettings"
        run_cli("service", "subscription", "add", "erin", "--data", str(data), "--out",
                str(old), check_code=0)
        sub = auth.read_publish_settings(old).subscription_id
        listed = [json.loads(x) for x in run_cli("service", "subscription", "list", "--data",
                                                 str(data), "--json", check_code=0
                                                 ).stdout.splitlines()]
        assert [(s["id"], s["name"]) for s in listed] == [(sub, "erin")]
        ServiceClient.from_file(str(old)).put("erin-job", jobservice.job_body(
            jobservice.drive_list(1)))
        new = tmp_path / "erin-new.publishsettings"
        run_cli("service", "subscription", "reissue", "erin", "--data", str(data), "--out",
                str(new), check_code=0)
        assert auth.read_publish_settings(new).subscription_id == sub
        assert auth.read_publish_settings(new).url == svc.url
        refused = run_cli("jobs", "list", "--publish-settings", str(old))
        assert refused.returncode == EXIT_REFUSED and "refused the token" in refused.stderr
        assert "erin-job" in run_cli("jobs", "list", "--publish-settings", str(new),
                                     check_code=0).stdout
        # Remove: asks first (not a terminal here: refused), then the job under way stops it.
        ask = run_cli("service", "subscription", "remove", "erin", "--data", str(data))
        assert ask.returncode == EXIT_REFUSED and "--yes" in ask.stderr
        busy = run_cli("service", "subscription", "remove", sub, "--data", str(data), "--yes")
        assert busy.returncode == EXIT_BAD_INPUT and "erin-job" in busy.stderr
        gone = run_cli("service", "subscription", "remove", "erin", "--data", str(data),
                       "--yes", "--force", check_code=0)
        assert "removed with 1 job(s)" in gone.stdout
        assert run_cli("jobs", "list", "--publish-settings", str(new)).returncode == \
            EXIT_REFUSED
        assert run_cli("service", "subscription", "list", "--data", str(data),
                       check_code=0).stdout == ""
        unknown = run_cli("service", "subscription", "reissue", "nobody", "--data", str(data))
        assert unknown.returncode == EXIT_BAD_INPUT and "no subscription 'nobody'" in \
            unknown.stderr


def _to_packaging(world: World, name: str) -> list[str]:
    """A shipped job taken to Packaging by the site's own REST calls (no drives imported:
    the site's steps as the service sees them)."""
    ids = _shipped(world, world.alice, name)
    site = ServiceClient.from_site_token_file(world.svc.url, str(world.token_file))
    site = site.bound_to(site.find(name))
    site.patch(name, {"properties": {"state": "Received", "driveList": [
        {"driveId": d, "state": "Received"} for d in ids]}})
    site.patch(name, {"properties": {"state": "Transferring", "driveList": [
        {"driveId": d, "state": "Transferring"} for d in ids]}})
    site.patch(name, {"properties": {"state": "Packaging", "driveList": [
        {"driveId": ids[0], "state": "Completed", "percentComplete": 100},
        {"driveId": ids[1], "state": "CompletedMoreInfo", "percentComplete": 100}]}})
    return ids


def test_return_from_packaging(world: World) -> None:
    ids = _to_packaging(world, "ret-pack")
    listed = {r["name"]: r for r in json.loads(world.site("jobs", "--json", code=0).stdout)}
    assert listed["ret-pack"]["next"] == "ship the drives back"
    for date, why in (("2999-01-01", "is in the future"), ("01/12/2026", "is not a date")):
        proc = world.site("return", "--job", "ret-pack", "--tracking", "R-2", "--ship-date",
                          date, code=EXIT_BAD_INPUT)
        assert why in proc.stderr
    assert world.customer(world.alice).get("ret-pack")["properties"]["state"] == "Packaging"
    out = world.site("return", "--job", "ret-pack", "--tracking", "R-2", "--ship-date",
                     "2026-11-30", "--json", code=0).stdout
    props = json.loads(out)["properties"]
    assert props["state"] == "Completed"
    # No --carrier: the carrier the customer chose for the way back (job_body's UPS).
    assert props["returnPackage"] == {"carrierName": "UPS", "trackingNumber": "R-2",
                                      "driveCount": 2, "shipDate": "2026-11-30"}
    assert _drives(world, world.alice, "ret-pack") == dict.fromkeys(ids, "ShippedBack")
    shown = world.jobs(world.alice, "show", "--job", "ret-pack", code=0).stdout
    assert "state Completed" in shown
    assert "drives returned with UPS tracking R-2 on 2026-11-30 (2 drive(s))" in shown
    again = world.site("return", "--job", "ret-pack", "--tracking", "R-3", code=EXIT_BAD_INPUT)
    assert "is Completed, not Packaging" in again.stderr and "site close" in again.stderr
