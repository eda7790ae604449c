"""Export jobs over the REST API (issue 20): Azure's request shape, the blob list's checks,
the lifecycle with the site adding the drives it writes, and their keys for the customer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import names
from pipeline.jobs import rules, service
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.errors import BadRequest
from tests import jobservice
from tests.test_jobs_api import Account, error, new_account

EXPORT = {"blobList": {"blobPathPrefix": ["/photos/2024/"], "blobPath": ["/photos/readme.txt"]}}
DELIVERY = {"carrierName": "DHL", "trackingNumber": "EMPTY-1", "driveCount": 2}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog.open(tmp_path / "data") as c:
        yield c


@pytest.fixture
def alice(catalog: Catalog, tmp_path: Path) -> Account:
    return new_account(catalog, tmp_path, "alice")


@pytest.fixture
async def client(catalog: Catalog) -> AsyncIterator[httpx.AsyncClient]:
    app = service.create_app(catalog)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        yield c


def export_body(export: Any = None, **props: Any) -> dict[str, Any]:
    return jobservice.job_body([], jobType="Export", export=export or EXPORT,
                               driveList=None, **props)


@pytest.mark.parametrize("version", ["2016-11-01", "2020-08-01", "2021-01-01"])
async def test_an_export_job_as_azure_shapes_it(client: httpx.AsyncClient, alice: Account,
                                                version: str) -> None:
    url = alice.job("export-1").replace("2016-11-01", version)
    r = await client.put(url, json=export_body(), headers=alice.headers)
    assert r.status_code == 201, r.text
    props = r.json()["properties"]
    assert props["jobType"] == "Export" and props["state"] == "Creating"
    assert props["export"] == EXPORT and props["driveList"] == []
    listed = await client.put(alice.job("export-2"), headers=alice.headers, json=export_body(
        {"blobListblobPath": "/lists/blobs.xml"}))  # the 2016-11-01 spelling
    assert listed.status_code == 201, listed.text
    export = listed.json()["properties"]["export"]
    assert export["blobListBlobPath"] == export["blobListblobPath"] == "/lists/blobs.xml"


HOSTILE: list[tuple[Any, str]] = [
    ({"blobList": {"blobPath": ["photos/a.jpg"]}}, "properties.export.blobList.blobPath[0]"),
    ({"blobList": {"blobPath": ["/photos/../etc/passwd"]}}, "blobPath[0]"),
    ({"blobList": {"blobPath": ["/Photos/a.jpg"]}}, "blobPath[0]"),
    ({"blobList": {"blobPath": ["/photos"]}}, "blobPath[0]"),
    ({"blobList": {"blobPath": ["/photos/a\x00b"]}}, "blobPath[0]"),
    ({"blobList": {"blobPathPrefix": ["/okay/", "/xyz/a\\..\\"]}}, "blobPathPrefix[1]"),
    ({"blobList": {"blobPathPrefix": [7]}}, "blobPathPrefix[0]"),
    ({"blobList": {"blobPathPrefix": "/photos/"}}, "blobPathPrefix must be a list"),
    ({"blobList": {}}, "1 to 10000 paths"),
    ({"blobList": {"blobPath": ["/a/b"]}, "blobListBlobPath": "/a/list"}, "exactly one"),
    ({"blobList": {"blobPaths": ["/a/b"]}}, "properties.export.blobList.'blobPaths'"),
    ({"blobListBlobPath": "/lists/"}, "blobListBlobPath"),
    ("everything", "properties.export must be a JSON object"),
]


@pytest.mark.parametrize(("export", "words"), HOSTILE)
async def test_a_hostile_blob_list_is_400_naming_the_field(
        client: httpx.AsyncClient, alice: Account, export: Any, words: str) -> None:
    r = await client.put(alice.job("export-bad"), json=export_body(export),
                         headers=alice.headers)
    assert words in error(r, 400), r.text


async def test_export_refuses_a_customer_drive_list(client: httpx.AsyncClient,
                                                    alice: Account) -> None:
    body = export_body()
    body["properties"]["driveList"] = jobservice.drive_list(1)
    r = await client.put(alice.job("export-3"), json=body, headers=alice.headers)
    assert "lists no drives" in error(r, 400, "InvalidDriveList")
    body = jobservice.job_body(jobservice.drive_list(1), export=EXPORT)
    r = await client.put(alice.job("export-3"), json=body, headers=alice.headers)
    assert "for jobType Export" in error(r, 400, "InvalidRequestContent")


async def test_export_lifecycle_with_the_site_adding_drives(
        client: httpx.AsyncClient, alice: Account, catalog: Catalog) -> None:
    site = jobservice.site_headers(catalog.data_dir)
    url = alice.job("export-4")
    assert (await client.put(url, json=export_body(), headers=alice.headers)).status_code == 201
    ship = {"properties": {"state": "Shipping", "deliveryPackage": DELIVERY}}
    assert (await client.patch(url, json=ship, headers=alice.headers)).status_code == 200
    r = await client.patch(url, json={"properties": {"state": "Received"}}, headers=site)
    assert r.json()["properties"]["state"] == "Received"
    drives = jobservice.drive_list(2, prefix="export")
    # the customer cannot add the drives of an export job: the site writes them
    r = await client.patch(url, json={"properties": {"driveList": drives[:1]}},
                           headers=alice.headers)
    assert "the receiving site's step" in error(r, 403, "AuthorizationFailed")
    add = [{**d, "state": "Received"} for d in drives[:1]]
    r = await client.patch(url, json={"properties": {"driveList": add, "state": "Transferring"}},
                           headers=site)
    assert r.status_code == 200, r.text
    # Packaging needs every drive Completed
    r = await client.patch(url, json={"properties": {"state": "Packaging"}}, headers=site)
    assert "finish copying every drive" in error(r, 409, "InvalidStateTransition")
    r = await client.patch(url, headers=site, json={"properties": {"driveList": [
        {"driveId": drives[0]["driveId"], "state": "Transferring"}, drives[1]]}})
    assert r.status_code == 200, r.text
    done = [{"driveId": d["driveId"], "state": s} for d in drives for s in ["Transferring"]]
    r = await client.patch(url, json={"properties": {"driveList": done}}, headers=site)
    assert r.status_code == 200, r.text
    uri = "file:///acct/waimportexport/export-4/incomplete-blobs.txt"
    r = await client.patch(url, headers=site, json={"properties": {
        "state": "Packaging", "incompleteBlobListUri": uri, "driveList": [
            {"driveId": d["driveId"], "state": "Completed"} for d in drives]}})
    assert r.status_code == 200, r.text
    props = r.json()["properties"]
    assert props["state"] == "Packaging" and props["incompleteBlobListUri"] == uri
    assert [d["state"] for d in props["driveList"]] == ["Completed", "Completed"]
    assert "bitLockerKey" not in json.dumps(r.json())
    keys = await client.post(url.replace("?", "/listBitLockerKeys?"), headers=alice.headers)
    assert {k["driveId"]: k["bitLockerKey"] for k in keys.json()["value"]} == {
        d["driveId"]: d["bitLockerKey"] for d in drives}
    r = await client.patch(url, headers=alice.headers, json={"properties": {
        "incompleteBlobListUri": "file:///elsewhere"}})
    assert "receiving site's step" in error(r, 403, "AuthorizationFailed")


async def test_an_empty_export_cannot_pack(client: httpx.AsyncClient, alice: Account,
                                           catalog: Catalog) -> None:
    site = jobservice.site_headers(catalog.data_dir)
    url = alice.job("export-5")
    await client.put(url, json=export_body(), headers=alice.headers)
    await client.patch(url, json={"properties": {"state": "Shipping",
                                                 "deliveryPackage": DELIVERY}},
                       headers=alice.headers)
    for state in ("Received", "Transferring"):
        r = await client.patch(url, json={"properties": {"state": state}}, headers=site)
        assert r.status_code == 200, r.text
    r = await client.patch(url, json={"properties": {"state": "Packaging"}}, headers=site)
    assert "no drive has been written" in error(r, 409, "InvalidStateTransition")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet="/abc.-\\\x00 é", max_size=30),
                 st.integers(), st.none()), st.booleans())
def test_check_blob_path_refuses_with_400_or_accepts_a_valid_name(value: Any,
                                                                  prefix: bool) -> None:
    """Hostile input: a BadRequest naming the field, never another exception; an accepted
    path names a valid container and (a whole path) a valid blob."""
    try:
        got = rules.check_blob_path(value, "properties.export.blobList.blobPath[0]",
                                    prefix=prefix)
    except BadRequest as exc:
        assert str(exc).startswith("properties.export.blobList.blobPath[0] ")
        return
    container, _, blob = got[1:].partition("/")
    assert names.container_problem(container) is None
    assert prefix or names.blob_problem(blob) is None
