"""The portal's export path in headless Chromium (issue 20): the wizard's Import/Export
choice with the blob list checked as the REST API checks it, the export job page (blob list,
shipping form with the empty drives' count, drives written) and the written drives' keys on
the keys page only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from pipeline.jobs import auth
from tests import jobservice
from tests.conftest import run_cli
from tests.test_portal import ADDRESS, CHROMIUM, FLAGS, fill_address

V = "2016-11-01"


@dataclass
class World:
    url: str
    settings: Path
    sub: str
    site_token: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("export-portal")
    data, settings = tmp / "data", tmp / "owner.publishsettings"
    added = run_cli("service", "subscription", "add", "contoso", "--data", str(data), "--out",
                    str(settings), "--url", "http://127.0.0.1", check_code=0)
    site = run_cli("service", "site-token", "--data", str(data), check_code=0)
    with jobservice.ServiceProcess(data) as svc:
        yield World(svc.url, settings, added.stdout.split()[-1], site.stdout.strip())
        assert "Traceback" not in svc.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; scripts/install installs Debian's chromium "
                    "(this test must not skip)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_wizard_export_job_page_and_keys(world: World, browser: Browser) -> None:
    context = browser.new_context(base_url=world.url, viewport={"width": 1100, "height": 760})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto("/portal/signin")
    page.fill("#f-token", auth.token_from_publish_settings(world.settings))
    page.click("form:has(#f-token) button[type=submit]")

    page.goto("/portal/new")
    assert urlsplit(page.url).path == "/portal/new/drives"
    page.check("#f-jobType-export")
    page.fill("#f-blobPathPrefix", "/photos/2024/")
    page.fill("#f-blobPath", "/photos/readme.txt\nphotos/no-slash")
    page.click("button:has-text('Next')")
    error = page.locator(".field:has(#f-blobPath) .error")
    expect(error).to_contain_text("blobPath[1]")
    expect(page.locator("#f-jobType-export")).to_be_checked()
    expect(page.locator("#f-blobPath")).to_have_value("/photos/readme.txt\nphotos/no-slash")
    page.fill("#f-blobPath", "/photos/readme.txt")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/contact"
    expect(page.locator("h1")).to_have_text("New export job")
    fill_address(page, ADDRESS)
    page.click("button:has-text('Next')")
    page.fill("#f-name", "restore-photos")
    page.fill("#f-storageAccount", "seedacct")
    page.click("button:has-text('Next')")
    page.check("#r-westeurope")
    page.click("button:has-text('Next')")
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-carrierAccountNumber", "ACCT-7")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/review"
    expect(page.locator("dl.review")).to_contain_text("/photos/2024/")
    expect(page.locator("dl.review")).to_contain_text("Ship empty drives")
    page.click("button:has-text('Create job')")

    expect(page.locator("h1 .state")).to_have_text("Creating")
    _, _, _, group, name = urlsplit(page.url).path.split("/")  # /portal/jobs/RG/NAME
    assert name == "restore-photos"
    job_path = (f"/subscriptions/{world.sub}/resourceGroups/{group}/providers/"
                "Microsoft.ImportExport/jobs/restore-photos")
    owner = {"Authorization": f"Bearer {auth.token_from_publish_settings(world.settings)}"}
    site = {"Authorization": f"Bearer {world.site_token}"}
    props = httpx.get(f"{world.url}{job_path}?api-version={V}", headers=owner).json()[
        "properties"]
    assert props["jobType"] == "Export" and props["export"] == {"blobList": {
        "blobPath": ["/photos/readme.txt"], "blobPathPrefix": ["/photos/2024/"]}}
    assert props["driveList"] == []
    expect(page.locator("h1 .state")).to_have_text("Creating")
    expect(page.locator(".export-list")).to_contain_text("/photos/2024/")
    expect(page.locator("main")).to_contain_text("Ship empty drives")

    # shipping an export job asks how many empty drives are in the package
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-trackingNumber", "EMPTY-42")
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator(".field:has(#f-driveCount) .error")).to_contain_text("Empty drives")
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-trackingNumber", "EMPTY-42")
    page.fill("#f-driveCount", "2")
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator("h1 .state")).to_have_text("Shipping")

    # the site marks the package of empty drives received, in its own portal session
    site_context = browser.new_context(base_url=world.url)
    spage = site_context.new_page()
    spage.goto("/portal/signin")
    spage.fill("#f-token", world.site_token)
    spage.click("form:has(#f-token) button[type=submit]")
    spage.goto(f"/portal/site/jobs/{world.sub}/{group}/restore-photos")
    spage.click("button:has-text('The empty drives arrived')")
    expect(spage.locator("main")).to_contain_text("package of empty drives arrived")
    spage.click("button:has-text('Mark the job Received')")
    expect(spage.locator("h1 .state")).to_have_text("Received")
    expect(spage.locator(".flash")).to_contain_text("write them with pipeline export")
    site_context.close()
    # pipeline export writes a drive and records it (as its _record_full does)
    drive = jobservice.drive_list(1, prefix="written")[0]
    r = httpx.patch(f"{world.url}{job_path}?api-version={V}", headers=site, json={
        "properties": {"state": "Transferring", "driveList": [{**drive, "state": "Received"}]}})
    assert r.status_code == 200, r.text
    page.reload()
    expect(page.locator("h2:has-text('Drives written')")).to_be_visible()
    expect(page.locator("table.drives tbody tr")).to_have_count(1)
    assert drive["bitLockerKey"] not in page.content()
    page.goto(f"/portal/jobs/{group}/restore-photos/keys")
    expect(page.locator("main")).to_contain_text(drive["bitLockerKey"])
    context.close()
