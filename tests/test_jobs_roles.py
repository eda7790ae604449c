"""Two roles over REST: the customer's token and the receiving site's, table-driven.

Every site step (each job state past Shipping and the undo back to it, each drive
state, each progress field, the return package), from every job state, is tried
with the customer's token (403 with ARM's error body, the job untouched) and
with a site token (allowed where the issue's tables allow it, else 409).  The
expected outcomes are written out here from the issue, not read from ``rules``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.jobs import service, sitetoken
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.model import JobRef
from pipeline.jobs.rules import Role
from tests import jobservice
from tests.test_jobs_api import Account, error, new_account

V = "2021-01-01"
S_, R_, NR, T_, C_, CM, SB = ("Specified", "Received", "NeverReceived", "Transferring",
                              "Completed", "CompletedMoreInfo", "ShippedBack")
# the drives (d0, d1) of a job brought to each state the ordinary way
NATURAL = {"Creating": (S_, S_), "Shipping": (S_, S_), "Received": (R_, S_),
           "Transferring": (T_, NR), "Packaging": (C_, NR), "Completed": (SB, NR),
           "Closed": (SB, NR), "Canceled": (S_, S_)}
PACKAGE = {"carrierName": "DHL", "trackingNumber": "IN1"}


def drives(*states: tuple[int, str]) -> list[dict[str, str]]:
    return [{"driveId": f"d{i}", "state": s} for i, s in states]


# name -> (job state it asks for or None, {drive index: state}, other site fields)
BODIES: dict[str, tuple[str | None, dict[int, str], dict[str, Any]]] = {
    "job Received": ("Received", {0: R_}, {}),
    "job back to Shipping (undo)": ("Shipping", {0: S_}, {}),
    "job Transferring": ("Transferring", {0: T_}, {}),
    "job Packaging": ("Packaging", {0: C_}, {}),
    "job Completed": ("Completed", {0: SB}, {"returnPackage": "unique"}),
    "job Closed": ("Closed", {}, {}),
    "drive Received": (None, {0: R_}, {}),
    "drive NeverReceived": (None, {1: NR}, {}),
    "drive back to Specified (undo)": (None, {0: S_}, {}),
    "drive Transferring": (None, {0: T_}, {}),
    "drive Completed": (None, {0: C_}, {}),
    "drive CompletedMoreInfo": (None, {0: CM}, {}),
    "drive ShippedBack": (None, {0: SB}, {}),
    "copyStatus": (None, {}, {"copyStatus": "unique"}),
    "percentComplete": (None, {}, {"percentComplete": 37}),
    "bytesSucceeded": (None, {}, {"bytesSucceeded": 12345}),
    "errorLogUri": (None, {}, {"errorLogUri": "https://logs.example/unique-error.log"}),
    "verboseLogUri": (None, {}, {"verboseLogUri": "https://logs.example/unique-verbose.log"}),
    "manifestUri": (None, {}, {"manifestUri": "https://logs.example/unique.manifest"}),
    "returnPackage": (None, {}, {"returnPackage": "unique"}),
}
# (start, body) pairs the site may do; every other change by the site is 409 ...
SITE_ALLOWED = {
    ("Shipping", "job Received"), ("Received", "job back to Shipping (undo)"),
    ("Received", "job Transferring"), ("Transferring", "job Packaging"),
    ("Packaging", "job Completed"), ("Completed", "job Completed"), ("Completed", "job Closed"),
    ("Shipping", "drive Received"), ("Received", "drive NeverReceived"),
    ("Received", "drive back to Specified (undo)"), ("Transferring", "drive Completed"),
    ("Transferring", "drive CompletedMoreInfo"), ("Packaging", "drive ShippedBack"),
    *((s, f) for s in ("Received", "Transferring")  # Packaging: d0 Completed, its progress final
      for f in ("copyStatus", "percentComplete", "bytesSucceeded", "errorLogUri",
                "verboseLogUri", "manifestUri")),
    *((s, "returnPackage") for s in ("Packaging", "Completed", "Canceled")),
}
# ... except moving a Creating job to Shipping, which is the customer's step
SITE_FORBIDDEN = {("Creating", "job back to Shipping (undo)")}


def body_for(name: str, n: int) -> dict[str, Any]:
    state, drive_states, fields = BODIES[name]
    props: dict[str, Any] = {}
    if state is not None:
        props["state"] = state
    entries = {i: {"driveId": f"d{i}", "state": s} for i, s in drive_states.items()}
    for key, value in fields.items():
        if key == "returnPackage":
            props[key] = {"carrierName": "DHL", "trackingNumber": f"R{n}", "driveCount": 1,
                          "shipDate": "2026-12-01"}
        else:
            value = value.replace("unique", f"u{n}") if isinstance(value, str) else value
            entries.setdefault(0, {"driveId": "d0"})[key] = value
    if entries:
        props["driveList"] = list(entries.values())
    return {"properties": props}


def is_change(start: str, name: str) -> bool:
    state, drive_states, fields = BODIES[name]
    return (bool(fields) or (state is not None and state != start)
            or any(NATURAL[start][i] != s for i, s in drive_states.items()))


def site_change(start: str, name: str) -> bool:
    """Does the body carry anything that is the site's (the customer must get 403)?"""
    state, drive_states, fields = BODIES[name]
    site_state = state not in (None, "Shipping") or (state == "Shipping" and start == "Received")
    return (bool(fields) or (state is not None and state != start and site_state)
            or any(NATURAL[start][i] != s for i, s in drive_states.items()))


CASES = [(start, name) for start, name in itertools.product(NATURAL, BODIES)
         if is_change(start, name)]


def bring(catalog: Catalog, ref: JobRef, start: str) -> None:
    """Create the job with drives d0, d1 and walk it to ``start`` through the catalog."""
    drive_list = jobservice.drive_list(2)
    for i, d in enumerate(drive_list):
        d["driveId"] = f"d{i}"
    catalog.put_job(ref, jobservice.job_body(drive_list))
    site, customer = Role.SITE, Role.CUSTOMER
    path: list[tuple[Role, dict[str, Any]]] = {
        "Canceled": [(customer, {"cancelRequested": True})]}.get(start, [
            (customer, {"state": "Shipping", "deliveryPackage": PACKAGE}),
            (site, {"state": "Received", "driveList": drives((0, R_))}),
            (site, {"state": "Transferring", "driveList": drives((0, T_), (1, NR))}),
            (site, {"state": "Packaging", "driveList": drives((0, C_))}),
            (site, {"state": "Completed", "driveList": drives((0, SB)), "returnPackage": {
                "carrierName": "DHL", "trackingNumber": "R0", "driveCount": 1,
                "shipDate": "2026-12-01"}}),
            (site, {"state": "Closed"})])
    order = ["Creating", "Shipping", "Received", "Transferring", "Packaging", "Completed",
             "Closed"]
    steps = path if start == "Canceled" else path[:order.index(start)]
    for role, props in steps:
        catalog.update_job(ref, {"properties": props}, role=role)
    job = catalog.get_job(ref)
    assert job.state == start and tuple(d.state for d in job.drives) == NATURAL[start]


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog.open(tmp_path / "data") as c:
        yield c


@pytest.fixture
def alice(catalog: Catalog, tmp_path: Path) -> Account:
    return new_account(catalog, tmp_path, "alice")


@pytest.fixture
def site(catalog: Catalog) -> dict[str, str]:
    return jobservice.site_headers(catalog.data_dir)


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.create_app(catalog)),
                                 base_url="http://testserver") as c:
        yield c


def url(who: Account, name: str, tail: str = "") -> str:
    return (f"/subscriptions/{who.sub}/resourceGroups/rg1/providers/Microsoft.ImportExport/"
            f"jobs/{name}{tail}?api-version={V}")


async def test_every_site_step_by_either_role(client: httpx.AsyncClient, catalog: Catalog,
                                              alice: Account, site: dict[str, str]) -> None:
    assert len(CASES) > 100
    for n, (start, name) in enumerate(CASES):
        job_name = f"case-{n}"
        ref = JobRef(alice.sub, "rg1", job_name)
        bring(catalog, ref, start)
        before = catalog.get_job(ref)
        body = body_for(name, n)
        if site_change(start, name):
            r = await client.patch(url(alice, job_name), json=body, headers=alice.headers)
            message = error(r, 403, "AuthorizationFailed")
            assert "receiving site's step" in message, (start, name, message)
            assert catalog.get_job(ref) == before, (start, name)
        r = await client.patch(url(alice, job_name), json=body, headers=site)
        if (start, name) in SITE_FORBIDDEN:
            assert "customer's" in error(r, 403, "AuthorizationFailed")
        elif (start, name) in SITE_ALLOWED:
            assert r.status_code == 200, (start, name, r.text)
            assert r.json()["systemData"]["lastModifiedBy"] == "receiving-site"
        else:
            error(r, 409)
            assert catalog.get_job(ref) == before, (start, name)
    # every allowed pair was met (the table has no dead rows)
    assert set(CASES) >= SITE_ALLOWED


async def test_customer_steps_are_not_the_sites(client: httpx.AsyncClient, alice: Account,
                                                site: dict[str, str]) -> None:
    drive_list = jobservice.drive_list(1)
    body = jobservice.job_body(drive_list)
    error(await client.put(url(alice, "by-site"), json=body, headers=site), 403,
          "AuthorizationFailed")
    r = await client.put(url(alice, "by-alice"), json=body, headers=alice.headers)
    assert r.status_code == 201 and r.json()["systemData"]["createdBy"] == alice.sub
    target = url(alice, "by-alice")
    for props in ({"deliveryPackage": PACKAGE}, {"returnAddress": {
            **jobservice.RETURN_ADDRESS, "city": "Porto"}}, {"logLevel": "Error"},
            {"cancelRequested": True}, {"state": "Canceled"},
            {"driveList": jobservice.drive_list(1, prefix="more")},
            {"driveList": [{"driveId": drive_list[0]["driveId"], "manifestHash": "abcd"}]}):
        message = error(await client.patch(target, json={"properties": props}, headers=site),
                        403, "AuthorizationFailed")
        assert "customer's" in message and "site token" in message
    error(await client.patch(target, json={"tags": {"a": "b"}}, headers=site), 403)
    # the site may read it, list it and read the keys; never delete it
    assert (await client.get(target, headers=site)).status_code == 200
    keys = await client.post(url(alice, "by-alice", "/listBitLockerKeys"), headers=site)
    assert keys.json()["value"][0]["bitLockerKey"] == drive_list[0]["bitLockerKey"]
    error(await client.delete(target, headers=site), 403, "AuthorizationFailed")
    assert (await client.get(target, headers=alice.headers)).headers["ETag"] == '"1"'
    # echoing the current values is no change, so no 403
    job = (await client.get(target, headers=site)).json()
    same = {"properties": {k: job["properties"][k] for k in ("returnAddress", "logLevel")},
            "tags": job["tags"]}
    assert (await client.patch(target, json=same, headers=site)).status_code == 200


async def test_tenant_wide_listing(client: httpx.AsyncClient, catalog: Catalog,
                                   alice: Account, tmp_path: Path,
                                   site: dict[str, str]) -> None:
    bob = new_account(catalog, tmp_path, "bob")
    for who, names in ((alice, ("a-one", "a-two")), (bob, ("b-one",))):
        for name in names:
            r = await client.put(url(who, name), json=jobservice.job_body(
                jobservice.drive_list(1)), headers=who.headers)
            assert r.status_code == 201
    everyone = f"/providers/Microsoft.ImportExport/jobs?api-version={V}"
    error(await client.get(everyone, headers=alice.headers), 403, "AuthorizationFailed")
    seen, link = [], everyone + "&$top=2"
    while link:
        body = (await client.get(link, headers=site)).json()
        seen += [j["id"] for j in body["value"]]
        link = body.get("nextLink", "").removeprefix("http://testserver")
    assert sorted(seen) == sorted(
        f"/subscriptions/{w.sub}/resourceGroups/rg1/providers/Microsoft.ImportExport/jobs/{n}"
        for w, n in ((alice, "a-one"), (alice, "a-two"), (bob, "b-one")))
    # per subscription too, and a subscription that does not exist is 404
    r = await client.get(f"/subscriptions/{bob.sub}/providers/Microsoft.ImportExport/jobs"
                         f"?api-version={V}", headers=site)
    assert [j["name"] for j in r.json()["value"]] == ["b-one"]
    error(await client.get("/subscriptions/99999999-9999-9999-9999-999999999999/providers/"
                           f"Microsoft.ImportExport/jobs?api-version={V}", headers=site), 404,
          "SubscriptionNotFound")


async def test_site_tokens_that_do_not_count(client: httpx.AsyncClient, catalog: Catalog,
                                             alice: Account, site: dict[str, str]) -> None:
    everyone = f"/providers/Microsoft.ImportExport/jobs?api-version={V}"
    good = site["Authorization"].removeprefix("Bearer ")
    prefix, claims, mac = good.split(".")
    for bad in (f"{prefix}.{claims}.{mac[:-4]}AAAA", "site1.e30.AAAA", "site1..",
                f"{prefix}.{claims}", "site1." + "A" * 5000):
        error(await client.get(everyone, headers={"Authorization": f"Bearer {bad}"}), 401)
    expired = sitetoken.make_site_token(catalog.data_dir, hours=1, now=0)
    error(await client.get(everyone, headers={"Authorization": f"Bearer {expired}"}), 401,
          "ExpiredSiteToken")
    assert (await client.get(everyone, headers=site)).status_code == 200
    sitetoken.rotate_site_key(catalog.data_dir)  # voids every site token at once
    error(await client.get(everyone, headers=site), 401, "InvalidSiteToken")


async def test_a_completed_drive_stays_completed_while_the_job_transfers(
        client: httpx.AsyncClient, catalog: Catalog, alice: Account,
        site: dict[str, str]) -> None:
    """A drive Completed while its job is still Transferring (another drive to come) does
    not go back to Transferring, by either role: the customer's token gets 403, the site's
    409 naming the way on.  Importing it again at the site (`import --service --again`,
    with or without --cluster) leaves its state and reported bytes as they are
    (tests/test_cluster_site_again.py): its copy did complete, and Azure's drive states
    have no step back."""
    ref = JobRef(alice.sub, "rg1", "again-1")
    bring(catalog, ref, "Transferring")
    catalog.update_job(ref, {"properties": {"driveList": drives((0, C_))}}, role=Role.SITE)
    before = catalog.get_job(ref)
    assert (before.state, [d.state for d in before.drives]) == ("Transferring", [C_, NR])
    body = {"properties": {"driveList": drives((0, T_))}}
    r = await client.patch(url(alice, "again-1"), json=body, headers=alice.headers)
    assert "receiving site's step" in error(r, 403, "AuthorizationFailed")
    r = await client.patch(url(alice, "again-1"), json=body, headers=site)
    assert error(r, 409, "InvalidDriveStateTransition") == (
        "drive d0 cannot go from Completed to Transferring; from Completed it can go to "
        "ShippedBack")
    assert catalog.get_job(ref) == before
