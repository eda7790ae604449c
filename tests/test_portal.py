"""The web portal in headless Chromium, driven as a person would (issue 7, part 3 and 5).

Debian's ``chromium`` (``/usr/bin/chromium``, installed by scripts/install) runs
under Playwright for Python with ``executable_path``: no browser download.
Playwright's ``launch`` gives each run a fresh temporary ``--user-data-dir``
(it refuses one in ``args``).  The service is the real one, ``python -m
pipeline service`` on a free port (``jobservice.ServiceProcess``), and the drive
list comes from a real ``pipeline prep`` of a tiny tree to two image drives.

Screenshots go to a temporary folder; with ``PIPELINE_SCREENSHOTS=1`` they
replace the committed ones in ``docs/portal/`` (palette-reduced with Pillow).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from pipeline.jobs import auth, service
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.portal import tokens
from tests import jobservice
from tests.conftest import FAST_KDF_ARGS, ROOT, run_cli

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
V = "2016-11-01"
PASSWORD = re.compile(r"\b\d{6}(?:-\d{6}){7}\b")


@dataclass
class World:
    url: str
    data: Path
    tmp: Path
    settings: Path           # the owner's publish settings file
    sub: str
    drive_file: Path         # `pipeline journal export` output of a real prep
    drives: list[dict[str, Any]]
    site_token: str
    svc: jobservice.ServiceProcess

    def token(self) -> str:
        return auth.token_from_publish_settings(self.settings)

    def api(self, method: str, path: str, body: Any = None, *,
            site: bool = False) -> httpx.Response:
        """A REST call with the owner's token, or the receiving site's (``site=True``)."""
        sep = "&" if "?" in path else "?"
        token = self.site_token if site else self.token()
        return httpx.request(method, f"{self.url}{path}{sep}api-version={V}", json=body,
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def job_path(self, name: str, rg: str = "rg1") -> str:
        return (f"/subscriptions/{self.sub}/resourceGroups/{rg}/providers/"
                f"Microsoft.ImportExport/jobs/{name}")

    def create_job(self, name: str, rg: str = "rg1") -> dict[str, Any]:
        body = jobservice.job_body(self.drives, location="westeurope",
                                returnAddress=ADDRESS, returnShipping={
                                    "carrierName": "DHL", "carrierAccountNumber": "123"})
        r = self.api("PUT", self.job_path(name, rg), body)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, name: str, rg: str = "rg1") -> dict[str, Any]:
        r = self.api("GET", self.job_path(name, rg))
        assert r.status_code == 200, r.text
        return r.json()

    def passwords(self) -> set[str]:
        return {d["bitLockerKey"] for d in self.drives}


ADDRESS = {"recipientName": "Ops Desk", "streetAddress1": "1 Main St", "city": "Springfield",
           "postalCode": "12345", "countryOrRegion": "United States", "phone": "+1 555 0100",
           "email": "ops@example.com"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("portal")
    src, jdir = tmp / "src", tmp / "journals"
    (src / "d").mkdir(parents=True)
    for i in range(12):
        (src / "d" / f"f{i}.bin").write_bytes(os.urandom(20_000 + i))
    (src / "notes.txt").write_text("portal test\n" * 100)
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seed/vdir/", "--journal-dir", str(jdir),
            "--session-id", "portal-1", *FAST_KDF_ARGS, "--fill", "parallel",
            "--drive", str(tmp / "a.img"), "--drive", str(tmp / "b.img"),
            "--drive-size", "40M", check_code=0)
    exported = run_cli("journal", "export", "--journal-dir", str(jdir), check_code=0).stdout
    drive_file = tmp / "drivelist.json"
    drive_file.write_text(exported)
    drives = json.loads(exported)
    assert len(drives) == 2 and all(PASSWORD.fullmatch(d["bitLockerKey"]) for d in drives)
    data = tmp / "data"
    settings = tmp / "owner.publishsettings"
    added = run_cli("service", "subscription", "add", "contoso", "--data", str(data), "--out",
                    str(settings), "--url", "http://127.0.0.1", check_code=0)
    site = run_cli("service", "site-token", "--data", str(data), check_code=0)
    assert stat.S_IMODE((data / "site.key").stat().st_mode) == 0o600
    with jobservice.ServiceProcess(data) as svc:
        yield World(url=svc.url, data=data, tmp=tmp, settings=settings,
                    sub=added.stdout.split()[-1], drive_file=drive_file, drives=drives,
                    site_token=site.stdout.strip(), svc=svc)
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


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("PIPELINE_SCREENSHOTS"):
        out = ROOT / "docs" / "portal"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path


def new_context(browser: Browser, world: World) -> BrowserContext:
    context = browser.new_context(base_url=world.url, viewport={"width": 1100, "height": 760})
    context.set_default_timeout(10_000)
    return context


def sign_in_with_token(page: Page, token: str) -> None:
    page.goto("/portal/signin")
    page.fill("#f-token", token)
    page.click("form:has(#f-token) button[type=submit]")


def shot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert 0 < path.stat().st_size < 400_000, path
    if path.is_relative_to(ROOT):  # for docs/: a 64-colour palette, a third of the size
        from PIL import Image  # only where screenshots are regenerated (PIPELINE_SCREENSHOTS)

        Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)


def fill_address(page: Page, address: dict[str, str]) -> None:
    """Type an address into the form; the country is chosen from the list."""
    for key, value in address.items():
        if key == "countryOrRegion":
            page.select_option(f"#f-{key}", value)
        else:
            page.fill(f"#f-{key}", value)


def csrf_of(page: Page) -> str:
    return page.locator("input[name=csrf]").first.get_attribute("value") or ""


# --------------------------------------------------------------------------- the scenario


def test_wizard_to_a_job_shipping_form_and_site_receiving(world: World, browser: Browser,
                                                          shots: Path) -> None:
    owner = new_context(browser, world)
    page = owner.new_page()

    # not signed in: the portal sends a person to sign-in, then back where they wanted to go
    page.goto("/portal/jobs")
    assert urlsplit(page.url).path == "/portal/signin"
    page.set_input_files("#f-settings", str(world.settings))
    page.click("form:has(#f-settings) button[type=submit]")
    assert urlsplit(page.url).path == "/portal/jobs"
    expect(page.locator("header .who")).to_have_text("subscription contoso")
    expect(page.locator("p.empty")).to_contain_text("No jobs yet")
    # the uploaded file's private key went nowhere: not into the data directory
    secret = re.search(r'ManagementCertificate="([^"]+)"', world.settings.read_text())
    assert secret is not None
    for path in world.data.rglob("*"):
        if path.is_file():
            assert secret.group(1).encode()[:40] not in path.read_bytes(), path

    offered = _fill_the_wizard(page, world, shots)

    # review + create
    assert urlsplit(page.url).path == "/portal/new/review"
    for d in world.drives:
        expect(page.locator("dl.review")).to_contain_text(d["driveId"])
    assert "Ops Desk &lt;ops@example.com&gt;" in page.content()
    expect(page.locator("dl.review address").first).to_contain_text("Ops Desk <ops@example.com>")
    page.click("button:has-text('Create job')")
    assert urlsplit(page.url).path == "/portal/jobs/seed/seed-2026-11"
    expect(page.locator("h1 .state")).to_have_text("Creating")
    expect(page.locator("table.drives tbody tr")).to_have_count(2)
    for state in page.locator("table.drives tbody .state").all_inner_texts():
        assert state == "Specified"
    job = world.job("seed-2026-11", "seed")
    props = job["properties"]
    assert props["returnAddress"]["recipientName"] == "Ops Desk <ops@example.com>"
    assert props["returnShipping"] == {"carrierName": offered[0], "carrierAccountNumber":
                                       "ACCT-991"}
    assert [d["driveId"] for d in props["driveList"]] == [d["driveId"] for d in world.drives]
    assert props["storageAccountId"].endswith("/resourceGroups/seed/providers/"
                                              "Microsoft.Storage/storageAccounts/seedacct")
    assert job["location"] == "westeurope" and props["logLevel"] == "Error"

    # the shipping form moves the job Creating -> Shipping (an empty tracking number first)
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-trackingNumber", " ")
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator(".field:has(#f-trackingNumber) .error")).to_have_text(
        "Tracking number is required")
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-trackingNumber", "JD014600006281230704")
    shot(page, shots / "job-shipping.png")
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator("h1 .state")).to_have_text("Shipping")
    expect(page.locator(".flash")).to_contain_text("now Shipping")
    expect(page.locator("form.ship")).to_have_count(0)
    package = world.job("seed-2026-11", "seed")["properties"]["deliveryPackage"]
    assert package["carrierName"] == "DHL" and package["trackingNumber"] == "JD014600006281230704"
    assert package["driveCount"] == 2

    site = _site_receives_then_the_import_runs(browser, world, page, shots)
    owner.close()
    site.close()


def _fill_the_wizard(page: Page, world: World, shots: Path) -> list[str]:
    """The wizard's steps up to the review; returns the carriers the region offered."""
    # 1. drives prepared: the journal export, uploaded as a file
    page.click("a.button:has-text('New job')")
    assert urlsplit(page.url).path == "/portal/new/drives"
    page.set_input_files("#f-drivelist", str(world.drive_file))
    page.click("button:has-text('Next')")

    # 2. contact / return address (user data with markup: escaped, never markup)
    assert urlsplit(page.url).path == "/portal/new/contact"
    fill_address(page, {**ADDRESS, "recipientName": "Ops Desk <ops@example.com>"})
    page.click("button:has-text('Next')")

    # 3. job name: the rules inline; an invalid name is refused next to the field
    assert urlsplit(page.url).path == "/portal/new/details"
    expect(page.locator(".field:has(#f-name) .help")).to_contain_text(
        "3-24 characters: lowercase letters a-z, digits, '-' and '_'; starts with a letter")
    page.fill("#f-name", "seed job")
    page.fill("#f-storageAccount", "seedacct")
    page.click("button:has-text('Next')")
    error = page.locator(".field:has(#f-name) .error")
    expect(error).to_contain_text("Job name 'seed job' contains a space")
    expect(page.locator("#f-name")).to_have_value("seed job")
    expect(page.locator("#f-name")).to_have_attribute("aria-invalid", "true")
    shot(page, shots / "wizard.png")
    page.fill("#f-name", "Seed-1")
    page.click("button:has-text('Next')")
    expect(error).to_contain_text("does not start with a lowercase letter")
    page.fill("#f-name", "seed-2026-11")
    page.click("button:has-text('Next')")

    # 4. region: selecting one shows its shipping address
    assert urlsplit(page.url).path == "/portal/new/region"
    west = page.locator(".region:has(#r-westeurope) .address")
    expect(west).to_be_hidden()
    page.check("#r-westeurope")
    expect(west).to_be_visible()
    expect(west).to_contain_text("Ship the drives to")
    expect(page.locator(".region:has(#r-eastus) .address")).to_be_hidden()
    page.click("button:has-text('Next')")

    # 5. return carrier: only the region's carriers are offered
    assert urlsplit(page.url).path == "/portal/new/carrier"
    offered = page.locator("#f-carrierName option").all_inner_texts()[1:]
    locations = world.api("GET", "/providers/Microsoft.ImportExport/locations/westeurope")
    assert offered == locations.json()["properties"]["supportedCarriers"]
    page.select_option("#f-carrierName", offered[0])
    page.fill("#f-carrierAccountNumber", "ACCT-991")
    page.click("button:has-text('Next')")
    return offered


def _site_receives_then_the_import_runs(browser: Browser, world: World, page: Page,
                                        shots: Path) -> BrowserContext:
    """The site marks the drives Received; the import reports progress; both views follow."""
    # the receiving site: every subscription's jobs; it marks the drives Received
    site = new_context(browser, world)
    spage = site.new_page()
    sign_in_with_token(spage, world.site_token)
    assert urlsplit(spage.url).path == "/portal/site"
    expect(spage.locator("header .who")).to_have_text("Receiving site")
    row = spage.locator("table.list tr:has(a:text-is('seed-2026-11'))")
    expect(row).to_contain_text("contoso")
    expect(row).to_contain_text("Shipping")
    expect(row).to_contain_text("JD014600006281230704")
    shot(spage, shots / "site-jobs.png")
    row.locator("a").click()
    for box in spage.locator("input[name=drive]").all():
        box.check()
    shot(spage, shots / "site.png")
    spage.click("button:has-text('Mark Received')")
    expect(spage.locator("h1")).to_contain_text("Received?")  # a confirmation changes nothing
    assert world.job("seed-2026-11", "seed")["properties"]["state"] == "Shipping"
    spage.click("button:has-text('Mark 2 drives Received')")
    expect(spage.locator(".flash")).to_contain_text("Marked 2 drives Received; job "
                                                    "seed-2026-11 is Received")
    expect(spage.locator("h1 .state")).to_have_text("Received")
    assert spage.locator("table.drives tbody .state").all_inner_texts() == ["Received"] * 2

    # the import runs (as `pipeline import --service` reports it); both views follow it
    d1, d2 = (d["driveId"] for d in world.drives)
    r = world.api("PATCH", world.job_path("seed-2026-11", "seed"), site=True, body={
        "properties": {"state": "Transferring", "driveList": [
            {"driveId": d1, "state": "Transferring", "percentComplete": 40,
             "bytesSucceeded": 123_456, "copyStatus": "InProgress",
             "verboseLogUri": "https://logs.example/seed/d1-verbose.log"},
            {"driveId": d2, "state": "Transferring", "percentComplete": 100,
             "bytesSucceeded": 7_654_321, "copyStatus": "Completed",
             "errorLogUri": "javascript:alert(1)"}]}})
    assert r.status_code == 200, r.text
    spage.click("a.button:has-text('Refresh')")
    expect(spage.locator("table.drives")).to_contain_text("40%")
    expect(spage.locator("input[name=drive]")).to_have_count(0)  # nothing to mark now

    page.reload()
    expect(page.locator("h1 .state")).to_have_text("Transferring")
    drives = page.locator("table.drives tbody tr")
    expect(drives.nth(0)).to_contain_text("Transferring")
    expect(drives.nth(0)).to_contain_text("40%")
    expect(drives.nth(0)).to_contain_text("120.6 KiB")
    expect(drives.nth(1)).to_contain_text("100%")
    expect(drives.nth(1)).to_contain_text("7.3 MiB")
    expect(page.locator("a:text-is('verbose log')")).to_have_attribute(
        "href", "https://logs.example/seed/d1-verbose.log")
    assert page.locator("a[href^='javascript']").count() == 0  # shown as text, never a link
    expect(drives.nth(1)).to_contain_text("error log: javascript:alert(1)")
    expect(page.locator(":text('Cancel this job')")).to_have_count(0)
    shot(page, shots / "job.png")

    # the jobs list shows the state
    page.click("header a:text-is('Jobs')")
    expect(page.locator("table.list tr:has(a:text-is('seed-2026-11'))")).to_contain_text(
        "Transferring")
    return site


# --------------------------------------------------------------------------- secrets


def test_recovery_passwords_only_on_the_keys_page(world: World, browser: Browser) -> None:
    world.create_job("keys-job")
    owner = new_context(browser, world)
    page = owner.new_page()
    sign_in_with_token(page, world.token())
    assert urlsplit(page.url).path == "/portal/jobs"
    # the wizard with a pasted drive list: the draft holds passwords, its pages never show them
    page.goto("/portal/new")
    page.fill("#f-drivelist_text", world.drive_file.read_text())
    page.click("button:has-text('Next')")
    fill_address(page, ADDRESS)
    page.click("button:has-text('Next')")
    page.fill("#f-name", "draft-job")
    page.fill("#f-storageAccount", "seedacct")
    page.click("button:has-text('Next')")
    page.check("#r-eastus")
    page.click("button:has-text('Next')")
    page.select_option("#f-carrierName", index=1)
    page.fill("#f-carrierAccountNumber", "A1")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/review"
    page.click("dl.review a[href='/portal/new/contact']")  # an edit returns to the review
    page.fill("#f-city", "Shelbyville")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/review"
    expect(page.locator("dl.review")).to_contain_text("Shelbyville")
    # a bad paste is refused without echoing the pasted text (it may hold passwords)
    page.goto("/portal/new/drives")
    bad = json.dumps([{**world.drives[0], "bitLockerKey": "111111-222222"}, *world.drives[1:]])
    page.fill("#f-drivelist_text", bad)
    page.click("button:has-text('Next')")
    expect(page.locator(".field:has(#f-drivelist_text) .error")).to_contain_text(
        "is not a recovery password")
    assert "111111-222222" not in page.content()

    site = new_context(browser, world)
    spage = site.new_page()
    sign_in_with_token(spage, world.site_token)
    owner_pages = ["/portal/", "/portal/jobs", "/portal/jobs/rg1/keys-job",
                   "/portal/jobs/rg1/nope", "/portal/jobs/rg1/Bad%20Name", "/portal/signin",
                   "/portal/no-such-page", "/portal/site",
                   *(f"/portal/new/{s}" for s in ("drives", "contact", "details", "region",
                                                  "carrier", "review"))]
    site_pages = ["/portal/site", f"/portal/site/jobs/{world.sub}/rg1/keys-job",
                  "/portal/site?state=Creating", "/portal/jobs/rg1/keys-job/keys",
                  "/portal/jobs/rg1/keys-job"]
    seen = 0
    for context, paths in ((owner, owner_pages), (site, site_pages)):
        for path in paths:
            r = context.request.get(path)
            html = r.text()
            assert "Traceback" not in html and 'File "' not in html, path
            assert not world.passwords() & set(PASSWORD.findall(html)), path
            assert not PASSWORD.search(html), path
            seen += r.status == 200
    assert seen >= 12
    # the site cannot open the keys page; the owner's keys page has every password
    assert site.request.get("/portal/jobs/rg1/keys-job/keys").status == 403
    page.goto("/portal/jobs/rg1/keys-job")
    page.click("a:has-text('Recovery passwords')")
    assert urlsplit(page.url).path == "/portal/jobs/rg1/keys-job/keys"
    shown = dict(zip(page.locator("table.keys td:first-child").all_inner_texts(),
                     page.locator("table.keys td.secret").all_inner_texts(), strict=True))
    assert shown == {d["driveId"]: d["bitLockerKey"] for d in world.drives}
    # nor in the service's log
    log = world.svc.log()
    assert not world.passwords() & set(PASSWORD.findall(log))
    owner.close()
    site.close()


# --------------------------------------------------------------------------- CSRF


def test_cross_site_posts_are_refused(world: World, browser: Browser) -> None:
    world.create_job("csrf-job")
    owner = new_context(browser, world)
    page = owner.new_page()
    sign_in_with_token(page, world.token())
    page.goto("/portal/jobs/rg1/csrf-job")
    token = csrf_of(page)
    etag = page.locator("form.ship input[name=etag]").get_attribute("value")
    ship = {"csrf": token, "etag": etag, "carrierName": "DHL", "trackingNumber": "X1",
            "shipDate": "2026-11-26"}
    target = "/portal/jobs/rg1/csrf-job/ship"
    own = world.url
    refused = {
        "foreign Origin": ({**ship}, {"Origin": "https://evil.example"}),
        "null Origin": ({**ship}, {"Origin": "null"}),
        "foreign Referer": ({**ship}, {"Referer": "https://evil.example/page"}),
        "neither Origin nor Referer": ({**ship}, {}),
        "no CSRF token": ({k: v for k, v in ship.items() if k != "csrf"}, {"Origin": own}),
        "wrong CSRF token": ({**ship, "csrf": "x" * 43}, {"Origin": own}),
    }
    for what, (form, headers) in refused.items():
        r = owner.request.post(target, form=form, headers=headers, max_redirects=0)
        assert r.status == 403, (what, r.status)
        assert "Traceback" not in r.text()
    # sign-in and sign-out are forms too
    r = owner.request.post("/portal/signin", form={"method": "token", "token": world.token()},
                           headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert r.status == 403
    r = owner.request.post("/portal/signout", form={"csrf": token},
                           headers={"Origin": "https://evil.example"}, max_redirects=0)
    assert r.status == 403
    # a real cross-site page that posts a form to the portal (SameSite=Strict: no cookie)
    attacker = owner.new_page()
    attacker.set_content(f'<form method="post" action="{own}/portal/jobs/rg1/csrf-job/cancel">'
                         f'<input name="csrf" value="{token}"></form>')
    with attacker.expect_navigation() as navigation:
        attacker.evaluate("document.forms[0].submit()")
    assert navigation.value is not None and navigation.value.status == 403
    assert world.job("csrf-job")["properties"]["state"] == "Creating"
    # the same post from the portal's own page works (Origin + token + cookie)
    r = owner.request.post(target, form=ship, headers={"Origin": own}, max_redirects=0)
    assert r.status == 303
    assert world.job("csrf-job")["properties"]["state"] == "Shipping"
    page.reload()
    page.click("a:has-text('Cancel this job')")
    page.click("button:has-text('Yes, cancel job csrf-job')")
    expect(page.locator("h1 .state")).to_have_text("Canceled")
    expect(page.locator(":text('Cancel this job')")).to_have_count(0)
    owner.close()


# --------------------------------------------------------------------------- access


def test_pages_need_the_right_sign_in(world: World, browser: Browser) -> None:
    world.create_job("access-job")
    anon = new_context(browser, world)
    page = anon.new_page()
    for path in ("/", "/portal/", "/portal/jobs", "/portal/new", "/portal/new/review",
                 "/portal/jobs/rg1/access-job", "/portal/jobs/rg1/access-job/keys",
                 "/portal/site", f"/portal/site/jobs/{world.sub}/rg1/access-job"):
        page.goto(path)
        assert urlsplit(page.url).path == "/portal/signin", path
    # a POST without a session is refused, not redirected
    r = anon.request.post("/portal/jobs/rg1/access-job/cancel", form={"csrf": "x"},
                          headers={"Origin": world.url}, max_redirects=0)
    assert r.status == 403
    # bad credentials: the reason next to the field, no session
    for bad in ("not-a-token", world.site_token[:-4] + "AAAA", "site1.e30.AAAA"):
        sign_in_with_token(page, bad)
        assert urlsplit(page.url).path == "/portal/signin"
        expect(page.locator(".field:has(#f-token) .error")).to_contain_text("not valid")
    page.set_input_files("#f-settings", {"name": "x.publishsettings", "mimeType": "text/xml",
                                         "buffer": b"<PublishData/>"})
    page.click("form:has(#f-settings) button[type=submit]")
    expect(page.locator(".field:has(#f-settings) .error")).to_contain_text("0 PublishData")
    assert anon.request.get("/portal/jobs", max_redirects=0).status == 303

    # owner and site each see only their own pages
    sign_in_with_token(page, world.token())
    assert page.goto(f"/portal/site/jobs/{world.sub}/rg1/access-job").status == 403
    assert page.goto("/portal/jobs/rg1/nope").status == 404
    expect(page.locator("main")).to_contain_text("does not exist")
    assert page.goto("/portal/jobs/rg1/Bad%20Name").status == 400
    sign_in_with_token(page, world.site_token)
    assert page.goto("/portal/jobs/rg1/access-job").status == 403
    assert page.goto("/portal/site?state=Nope").status == 400
    anon.close()


def test_session_cookie_and_sign_out(world: World, browser: Browser) -> None:
    context = new_context(browser, world)
    page = context.new_page()
    sign_in_with_token(page, world.token())
    cookie = next(c for c in context.cookies() if c["name"] == "pipeline_portal")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/portal"
    assert not cookie["secure"]  # plain HTTP here; Secure when the service has --tls-cert
    assert world.token() not in cookie["value"] and len(cookie["value"]) < 64
    headers = context.request.get("/portal/jobs").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
    page.click("button:has-text('Sign out')")
    assert urlsplit(page.url).path == "/portal/signed-out"
    expect(page.locator("h1")).to_have_text("You are signed out")
    # the old cookie is dead on the server too, not just deleted in this browser
    replay = new_context(browser, world)
    replay.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path")}])
    assert replay.request.get("/portal/jobs", max_redirects=0).status == 303
    replay.close()
    context.close()


def test_rotating_the_site_key_revokes_site_tokens(world: World, browser: Browser) -> None:
    context = new_context(browser, world)
    page = context.new_page()
    sign_in_with_token(page, world.site_token)
    assert urlsplit(page.url).path == "/portal/site"
    rotated = run_cli("service", "site-token", "--data", str(world.data), "--rotate",
                      "--hours", "1", check_code=0)
    assert "revoked" in rotated.stderr
    page.goto("/portal/site")
    assert urlsplit(page.url).path == "/portal/signin"  # the session went with the key
    sign_in_with_token(page, world.site_token)
    expect(page.locator(".field:has(#f-token) .error")).to_contain_text("not valid")
    world.site_token = rotated.stdout.strip()
    sign_in_with_token(page, world.site_token)
    assert urlsplit(page.url).path == "/portal/site"
    assert run_cli("service", "site-token", "--data", str(world.data), "--hours",
                   "9999").returncode == 2
    context.close()


# --------------------------------------------------------------------------- TLS


async def test_cookies_are_secure_over_tls(tmp_path: Path) -> None:
    """Served over HTTPS, both cookies get Secure (in-process app; the scheme is https)."""
    with Catalog.open(tmp_path / "data") as catalog:
        auth.add_subscription(catalog, "tls", tmp_path / "tls.publishsettings")
        app = service.create_app(catalog)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://portal.test") as client:
            r = await client.get("/portal/signin")
            signin_cookie = r.headers["set-cookie"]
            for attribute in ("HttpOnly", "Path=/portal", "SameSite=strict", "Secure"):
                assert attribute.lower() in signin_cookie.lower(), signin_cookie
            token = auth.token_from_publish_settings(tmp_path / "tls.publishsettings")
            csrf = client.cookies["pipeline_signin"]
            r = await client.post("/portal/signin", data={"csrf": csrf, "method": "token",
                                                          "token": token},
                                  headers={"Origin": "https://portal.test"})
            assert r.status_code == 303 and r.headers["location"] == "/portal/jobs"
            session = next(v for k, v in r.headers.multi_items()
                           if k == "set-cookie" and v.startswith("pipeline_portal="))
            for attribute in ("HttpOnly", "Path=/portal", "SameSite=strict", "Secure"):
                assert attribute.lower() in session.lower(), session
            assert token not in session
            r = await client.get("/portal/jobs")
            assert r.status_code == 200 and "subscription tls" in r.text
            # http:// is another origin than https://
            r = await client.post("/portal/signout", data={"csrf": "x"},
                                  headers={"Origin": "http://portal.test"})
            assert r.status_code == 403


async def test_internal_errors_show_no_traceback(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A failure inside a page (here a damaged site key) is a 500 page saying only that."""
    data = tmp_path / "data"
    with Catalog.open(data) as catalog:
        site_token = tokens.make_site_token(data)
        app = service.create_app(catalog)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://portal.test") as client:
            await client.get("/portal/signin")
            r = await client.post("/portal/signin", data={
                "csrf": client.cookies["pipeline_signin"], "method": "token",
                "token": site_token}, headers={"Origin": "http://portal.test"})
            assert r.status_code == 303 and r.headers["location"] == "/portal/site"
            (data / "site.key").write_bytes(b"short")
            r = await client.get("/portal/site")
            assert r.status_code == 500
            assert "Internal error" in r.text
            for leak in ("Traceback", "site.key", str(data), 'File "', "BadInput"):
                assert leak not in r.text, leak
    assert "Traceback" in caplog.text or any(rec.exc_info for rec in caplog.records)
