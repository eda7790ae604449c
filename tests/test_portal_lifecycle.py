"""The portal through a job's whole life, in headless Chromium (issue 16, "Portal").

The job is moved by catalog calls with each role's own credential (the customer's
for shipping, the site's for everything after), as the CLI and the import do;
the pages are read as a person reads them: the timeline and who acts next, the
confirmation pages (a GET changes nothing, the POST does, a reload re-sends
nothing), copy logs viewed and downloaded, every page at 390 px wide without
sideways scrolling, the wizard by keyboard alone, and validation that names
every field in words, focuses the first and links each message to its field.

The service is the real one (``python -m pipeline service`` on a free port);
this module needs no prepared drives (``jobservice.drive_list`` builds drive
lists the service accepts), so it runs without a ``pipeline prep``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from pipeline.jobs import auth
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.model import JobRef
from pipeline.jobs.portal import forms, lifecycle
from pipeline.jobs.rules import JobState, Role
from tests import jobservice

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADDRESS = {"recipientName": "Ops Desk", "email": "ops@example.com", "phone": "+1 555 0100",
           "streetAddress1": "1 Main St", "city": "Springfield", "postalCode": "12345",
           "countryOrRegion": "United States"}


@dataclass
class Env:
    url: str
    data: Path
    catalog: Catalog
    owner: Path              # contoso's publish settings
    other: Path              # fabrikam's: another subscription
    sub: str
    site_token: str

    def token(self, settings: Path | None = None) -> str:
        return auth.token_from_publish_settings(settings or self.owner)

    def ref(self, name: str, rg: str = "rg1") -> JobRef:
        return JobRef.parse(self.sub, rg, name)

    def create(self, name: str, drives: int = 2, **props: Any) -> JobRef:
        ref = self.ref(name)
        props.setdefault("returnAddress", ADDRESS)
        body = jobservice.job_body(jobservice.drive_list(drives, name), logLevel="Error",
                                   **props)
        self.catalog.put_job(ref, body, if_none_match=True)
        return ref

    def state(self, ref: JobRef) -> JobState:
        return self.catalog.get_job(ref).state

    def advance(self, ref: JobRef, until: JobState) -> None:
        """Move a job along Creating -> ... -> ``until``, each step by the role whose it is."""
        while (job := self.catalog.get_job(ref)).state != until:
            ids = [d.drive_id for d in job.drives]
            body, role = _STEPS[job.state](ids)
            self.catalog.update_job(ref, body, role=role)


def _drives(ids: list[str], **fields: Any) -> list[dict[str, Any]]:
    return [{"driveId": d, **fields} for d in ids]


_STEPS = {  # the step out of each state, as the customer, the site and the import send it
    JobState.CREATING: lambda ids: ({"properties": {"state": "Shipping", "deliveryPackage": {
        "carrierName": "DHL", "trackingNumber": "OUT-123", "shipDate": "2026-11-20",
        "driveCount": len(ids)}}}, Role.CUSTOMER),
    JobState.SHIPPING: lambda ids: ({"properties": {"state": "Received", "driveList": _drives(
        ids, state="Received")}}, Role.SITE),
    JobState.RECEIVED: lambda ids: ({"properties": {"state": "Transferring", "driveList": _drives(
        ids, state="Transferring", copyStatus="InProgress", percentComplete=10)}}, Role.SITE),
    JobState.TRANSFERRING: lambda ids: ({"properties": {"state": "Packaging", "driveList": _drives(
        ids, state="Completed", copyStatus="Completed", percentComplete=100)}}, Role.SITE),
    JobState.PACKAGING: lambda ids: ({"properties": {"state": "Completed", "returnPackage": {
        "carrierName": "UPS", "trackingNumber": "BACK-777", "shipDate": "2026-11-28",
        "driveCount": len(ids)}, "driveList": _drives(ids, state="ShippedBack")}}, Role.SITE),
    JobState.COMPLETED: lambda ids: ({"properties": {"state": "Closed"}}, Role.SITE),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("portal-life")
    data = tmp / "data"
    with Catalog.open(data) as catalog:
        sub = auth.add_subscription(catalog, "contoso", tmp / "contoso.publishsettings")
        auth.add_subscription(catalog, "fabrikam", tmp / "fabrikam.publishsettings")
        with jobservice.ServiceProcess(data) as svc:
            yield Env(url=svc.url, data=data, catalog=catalog, sub=sub.id,
                      owner=tmp / "contoso.publishsettings",
                      other=tmp / "fabrikam.publishsettings", site_token=svc.site_token())
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


def context(browser: Browser, env: Env, width: int = 1100) -> BrowserContext:
    ctx = browser.new_context(base_url=env.url, viewport={"width": width, "height": 800},
                              accept_downloads=True)
    ctx.set_default_timeout(10_000)
    return ctx


def sign_in(page: Page, token: str) -> None:
    page.goto("/portal/signin")
    page.fill("#f-token", token)
    page.click("form:has(#f-token) button[type=submit]")
    assert urlsplit(page.url).path in ("/portal/jobs", "/portal/site")


def owner_page(browser: Browser, env: Env, settings: Path | None = None,
               width: int = 1100) -> Page:
    page = context(browser, env, width).new_page()
    sign_in(page, env.token(settings))
    return page


def site_page(browser: Browser, env: Env, width: int = 1100) -> Page:
    page = context(browser, env, width).new_page()
    sign_in(page, env.site_token)
    return page


def job_path(env: Env, ref: JobRef, site: bool = False) -> str:
    if site:
        return f"/portal/site/jobs/{env.sub}/{ref.resource_group}/{ref.name}"
    return f"/portal/jobs/{ref.resource_group}/{ref.name}"


def reload_sends_nothing(page: Page) -> None:
    """A reload of the page a form led to is a GET: no form is sent again."""
    methods: list[str] = []

    def seen(request: Any) -> None:
        methods.append(request.method)

    page.on("request", seen)
    page.reload()
    page.wait_for_load_state()
    page.remove_listener("request", seen)
    assert methods and set(methods) == {"GET"}, methods


def timeline_of(page: Page) -> list[tuple[str, str, str]]:
    """(state, status, who) for each step of the timeline."""
    steps = page.locator("ol.timeline > li")
    return [(steps.nth(i).locator(".step-name").text_content() or "",
             steps.nth(i).get_attribute("class") or "",
             steps.nth(i).locator(".step-who").text_content() or "")
            for i in range(steps.count())]


# --------------------------------------------------------------------------- timeline


def test_the_timeline_follows_the_job_to_closed(env: Env, browser: Browser) -> None:
    ref = env.create("life-job")
    owner = owner_page(browser, env)
    site = site_page(browser, env)
    path = ["Creating", "Shipping", "Received", "Transferring", "Packaging", "Completed",
            "Closed"]
    who_owner = {"Creating": "YOU", "Shipping": "THE RECEIVING SITE",
                 "Received": "THE RECEIVING SITE", "Transferring": "THE RECEIVING SITE",
                 "Packaging": "THE RECEIVING SITE", "Completed": "THE RECEIVING SITE",
                 "Closed": "NOBODY"}
    for i, state in enumerate(path):
        env.advance(ref, JobState(state))
        owner.goto(job_path(env, ref))
        steps = timeline_of(owner)
        assert [s for s, _, _ in steps] == path
        assert [c for _, c, _ in steps] == ["done"] * i + ["current"] + ["todo"] * (6 - i)
        current = owner.locator("ol.timeline li[aria-current=step]")
        expect(current).to_have_count(1)
        expect(current.locator(".step-name")).to_have_text(state)
        expect(current.locator(".step-who")).to_have_text(who_owner[state], ignore_case=True)
        # the site's page: the same timeline, with "You" where the site acts
        site.goto(job_path(env, ref, site=True))
        site_current = site.locator("ol.timeline li[aria-current=step]")
        expect(site_current.locator(".step-name")).to_have_text(state)
        if who_owner[state] == "THE RECEIVING SITE":
            expect(site_current.locator(".step-who")).to_have_text("You")
    # what each step says to do, at the states where a person must act
    env2 = env.create("life-words")
    owner.goto(job_path(env, env2))
    expect(owner.locator("ol.timeline li[aria-current=step] .step-text")).to_contain_text(
        "enter the carrier and tracking number")
    env.advance(env2, JobState.SHIPPING)
    site.goto(job_path(env, env2, site=True))
    expect(site.locator("ol.timeline li[aria-current=step] .step-text")).to_contain_text(
        "mark each drive Received")
    env.advance(env2, JobState.PACKAGING)
    owner.goto(job_path(env, env2))
    expect(owner.locator("ol.timeline li[aria-current=step] .step-text")).to_contain_text(
        "ships them back by UPS (account A1B2C3)")
    expect(owner.locator(".return-leg")).to_contain_text("Tracking number: not yet")
    env.advance(env2, JobState.COMPLETED)
    owner.goto(job_path(env, env2))
    expect(owner.locator(".return-leg .return-tracking")).to_contain_text("BACK-777")
    expect(owner.locator(".return-leg")).to_contain_text("UPS")
    # a customer's page never offers a site step
    for text in ("Mark Received", "Record the return", "Close this job", "Undo mark"):
        expect(owner.locator(f":text('{text}')")).to_have_count(0)
    # a canceled job: the steps it reached, then Canceled
    canceled = env.create("life-cancel")
    env.advance(canceled, JobState.SHIPPING)
    env.catalog.update_job(canceled, lifecycle.cancel_body())
    owner.goto(job_path(env, canceled))
    assert [(s, c) for s, c, _ in timeline_of(owner)] == [
        ("Creating", "done"), ("Shipping", "done"), ("Canceled", "current")]
    owner.context.close()
    site.context.close()


# --------------------------------------------------------------------------- confirmations


def test_cancel_and_discard_ask_first(env: Env, browser: Browser) -> None:
    ref = env.create("confirm-cancel")
    page = owner_page(browser, env)
    page.goto(job_path(env, ref))
    page.click("a:has-text('Cancel this job')")
    expect(page.locator("h1")).to_have_text("Cancel job confirm-cancel?")
    page.reload()                                   # the GET changes nothing, however often
    assert env.state(ref) == JobState.CREATING
    page.click("a:has-text('No, keep it')")
    assert urlsplit(page.url).path == job_path(env, ref)
    page.click("a:has-text('Cancel this job')")
    page.click("button:has-text('Yes, cancel job confirm-cancel')")
    assert urlsplit(page.url).path == job_path(env, ref)
    expect(page.locator(".flash")).to_contain_text("confirm-cancel is Canceled")
    assert env.state(ref) == JobState.CANCELED
    version = env.catalog.get_job(ref).version
    reload_sends_nothing(page)
    assert env.catalog.get_job(ref).version == version
    # once the site has the package, the page says why it cannot be canceled
    late = env.create("confirm-late")
    env.advance(late, JobState.RECEIVED)
    page.goto(job_path(env, late) + "/cancel")
    expect(page.locator("main")).to_contain_text("can no longer be canceled")
    expect(page.locator("button:has-text('Yes, cancel')")).to_have_count(0)

    # discard the draft: the GET page asks, the POST drops it
    page.goto("/portal/new")
    page.fill("#f-drivelist_text", json.dumps(jobservice.drive_list(1, "draft")))
    page.click("button:has-text('Next')")
    page.click("a:has-text('Discard draft')")
    expect(page.locator("h1")).to_have_text("Discard the draft job?")
    page.click("a:has-text('No, go on with it')")
    assert urlsplit(page.url).path == "/portal/new/contact"  # the draft is still there
    page.click("a:has-text('Discard draft')")
    page.click("button:has-text('Yes, discard the draft')")
    assert urlsplit(page.url).path == "/portal/jobs"
    expect(page.locator(".flash")).to_contain_text("The draft job was discarded")
    reload_sends_nothing(page)
    page.goto("/portal/new")
    assert urlsplit(page.url).path == "/portal/new/drives"
    expect(page.locator(".kept")).to_have_count(0)
    page.context.close()


def test_site_marks_undo_return_and_close_ask_first(env: Env, browser: Browser) -> None:
    ref = env.create("confirm-site", drives=3)
    env.advance(ref, JobState.SHIPPING)
    d1, d2, d3 = (d.drive_id for d in env.catalog.get_job(ref).drives)
    page = site_page(browser, env)
    page.goto(job_path(env, ref, site=True))
    page.check(f"input[name=drive][value='{d1}']")
    page.check(f"input[name=drive][value='{d2}']")
    page.click("button:has-text('Mark Received')")
    expect(page.locator("main")).to_contain_text("job confirm-site goes from Shipping to "
                                                 "Received")
    page.reload()
    job = env.catalog.get_job(ref)
    assert job.state == JobState.SHIPPING and {d.state for d in job.drives} == {"Specified"}
    page.click("button:has-text('Mark 2 drives Received')")
    expect(page.locator(".flash")).to_contain_text("Marked 2 drives Received; job "
                                                   "confirm-site is Received")
    version = env.catalog.get_job(ref).version
    reload_sends_nothing(page)
    assert env.catalog.get_job(ref).version == version
    # the third drive is missing from the package
    page.check(f"input[name=drive][value='{d3}']")
    page.click("button:has-text('Mark NeverReceived')")
    page.click("button:has-text('Mark 1 drive NeverReceived')")
    states = {d.drive_id: d.state for d in env.catalog.get_job(ref).drives}
    assert states == {d1: "Received", d2: "Received", d3: "NeverReceived"}

    # undo a wrong mark: the GET page asks, the POST undoes
    page.click(f"tr:has-text('{d3}') a:has-text('Undo mark')")
    expect(page.locator("h1")).to_contain_text(d3)
    page.reload()
    assert env.catalog.get_job(ref).drive(d3).state == "NeverReceived"
    page.click("button:has-text('Undo the mark')")
    expect(page.locator(".flash")).to_contain_text(f"Drive {d3} is Specified again")
    assert env.catalog.get_job(ref).drive(d3).state == "Specified"
    reload_sends_nothing(page)
    # undoing every mark puts the job back to Shipping (the package as if not opened)
    for drive in (d1, d2):
        page.click(f"tr:has-text('{drive}') a:has-text('Undo mark')")
        page.click("button:has-text('Undo the mark')")
    assert env.state(ref) == JobState.SHIPPING
    # once a drive's copy starts, its mark cannot be undone
    env.advance(ref, JobState.TRANSFERRING)
    page.goto(job_path(env, ref, site=True))
    expect(page.locator("a:has-text('Undo mark')")).to_have_count(0)
    page.goto(job_path(env, ref, site=True) + f"/drives/{d1}/undo")
    expect(page.locator("main")).to_contain_text("can no longer be undone")

    # the return: a refused form names every problem, then Packaging -> Completed
    env.advance(ref, JobState.PACKAGING)
    page.goto(job_path(env, ref, site=True))
    future = (date.today() + timedelta(days=3)).isoformat()
    page.fill("#f-shipDate", future)
    page.click("button:has-text('Record the return')")
    expect(page.locator(".error-summary li")).to_have_count(2)
    expect(page.locator("#e-trackingNumber")).to_have_text(
        "Return tracking number is required")
    expect(page.locator("#e-shipDate")).to_contain_text("cannot be in the future")
    expect(page.locator("#f-carrierName")).to_have_value("UPS")  # the customer's carrier
    reload_sends_nothing(page)                     # the refusal came through a redirect
    page.fill("#f-trackingNumber", "1Z-RETURN-42")
    page.fill("#f-shipDate", date.today().isoformat())
    page.click("button:has-text('Record the return')")
    expect(page.locator(".flash")).to_contain_text("job confirm-site is Completed")
    job = env.catalog.get_job(ref)
    assert job.details["returnPackage"]["trackingNumber"] == "1Z-RETURN-42"
    assert job.details["returnPackage"]["driveCount"] == 3
    assert {d.state for d in job.drives} == {"ShippedBack"}
    # the customer sees Completed and the return tracking number
    owner = owner_page(browser, env)
    owner.goto(job_path(env, ref))
    expect(owner.locator("h1 .state")).to_have_text("Completed")
    expect(owner.locator(".return-tracking")).to_contain_text("1Z-RETURN-42")
    owner.context.close()

    # close: the GET page asks, the POST closes
    page.click("a:has-text('Close this job')")
    expect(page.locator("h1")).to_have_text("Close job confirm-site?")
    page.reload()
    assert env.state(ref) == JobState.COMPLETED
    page.click("button:has-text('Close job confirm-site')")
    expect(page.locator("h1 .state")).to_have_text("Closed")
    reload_sends_nothing(page)
    assert env.state(ref) == JobState.CLOSED
    page.context.close()


# --------------------------------------------------------------------------- copy logs


def _log(rows: list[tuple[str, str, str]]) -> bytes:
    lines = [json.dumps({"t": 1.0, "type": "blob", "status": status, "blob": blob, "size": 9,
                         "reason": reason}) for status, blob, reason in rows]
    totals = {"type": "totals", "drive": "x", "result": "CompletedMoreInfo", "message": "",
              "ok": 0, "unvouched": 0, "corrupt": 2, "missing": 1, "skipped": 0, "bytes": 0}
    return ("\n".join([*lines, json.dumps(totals)]) + "\n").encode()


def test_copy_logs_are_viewed_and_downloaded_with_the_jobs_access(env: Env,
                                                                   browser: Browser) -> None:
    ref = env.create("logs-job")
    env.advance(ref, JobState.TRANSFERRING)
    d1, d2 = (d.drive_id for d in env.catalog.get_job(ref).drives)
    error_log = _log([("corrupt", "seed/a.bin", "xxh3 mismatch at extent 3"),
                      ("missing", "seed/b.bin", "extent on drive 2 not imported"),
                      ("corrupt", "seed/c.bin", "zstd frame truncated")])
    env.catalog.put_copy_log(ref, d1, "error", error_log, role=Role.SITE)
    env.catalog.put_copy_log(ref, d2, "error", _log([])[:-1] + b"\n", role=Role.SITE)
    page = owner_page(browser, env)
    page.goto(job_path(env, ref))
    summary = page.locator(f".log-summary:has(h3:text-is('{d1}'))")
    expect(summary.locator(".counts")).to_have_text("2 corrupt, 1 missing")
    expect(summary.locator(".entries li")).to_have_count(3)
    expect(summary.locator(".entries li").first).to_contain_text("xxh3 mismatch at extent 3")
    expect(page.locator(f".log-summary:has(h3:text-is('{d2}'))")).to_contain_text("No errors")
    # only the kinds present: the job's logLevel is Error, so no verbose log is offered
    expect(page.locator("a:has-text('verbose log')")).to_have_count(0)
    summary.locator("a:has-text('View the error log')").click()
    expect(page.locator("table.log tbody tr")).to_have_count(3)
    expect(page.locator(".counts")).to_contain_text("2 corrupt")
    with page.expect_download() as download:
        page.click("a:has-text('Download the error log')")
    saved = download.value.path()
    assert saved is not None and Path(saved).read_bytes() == error_log
    assert download.value.suggested_filename == f"logs-job-{d1}-error.jsonl"
    log_url = job_path(env, ref) + f"/drives/{d1}/logs/error"
    # the site reads the same log with its own session
    site = site_page(browser, env)
    r = site.context.request.get(job_path(env, ref, site=True) + f"/drives/{d1}/logs/error/"
                                 "download")
    assert r.status == 200 and r.body() == error_log
    # another subscription's session: no such job (404), for the page and the download
    other = owner_page(browser, env, env.other)
    for url in (log_url, log_url + "/download"):
        assert other.goto(url).status == 404
        assert error_log not in other.content().encode()
    # a kind the drive does not have
    assert page.goto(job_path(env, ref) + f"/drives/{d1}/logs/verbose").status == 404
    expect(page.locator("main")).to_contain_text("has no verbose copy log")
    for p in (page, site, other):
        p.context.close()


# --------------------------------------------------------------------------- narrow screens


def test_every_page_fits_390px(env: Env, browser: Browser) -> None:
    ref = env.create("narrow-job-name-24chars", drives=3, returnShipping=None,
                     returnAddress=None)
    shipped = env.create("narrow-shipped", drives=3)
    env.advance(shipped, JobState.TRANSFERRING)
    drive = env.catalog.get_job(shipped).drives[0].drive_id
    env.catalog.put_copy_log(shipped, drive, "error", _log([
        ("corrupt", "seed/" + "very-long-directory-name/" * 6 + "file.bin", "x" * 200)]),
        role=Role.SITE)
    page = owner_page(browser, env, width=390)
    owner_paths = ["/portal/jobs", job_path(env, ref), job_path(env, ref) + "/cancel",
                   job_path(env, ref) + "/keys", job_path(env, shipped),
                   job_path(env, shipped) + f"/drives/{drive}/logs/error",
                   "/portal/jobs/rg1/no-such-job", "/portal/no-such-page",
                   "/portal/new/drives", "/portal/new-discard"]
    # the ship form refused (every error of the return address and shipping at once)
    page.goto(job_path(env, ref))
    page.click("button:has-text('Mark as shipped')")
    assert page.locator(".error-summary li").count() >= 9
    pages = [page.url]
    for path in owner_paths:
        page.goto(path)
        pages.append(page.url)
        assert_fits(page)
    # each wizard step, with a draft
    page.goto("/portal/new/drives")
    page.fill("#f-drivelist_text", json.dumps(jobservice.drive_list(3, "narrow")))
    page.click("button:has-text('Next')")
    for step in ("contact", "details", "region", "carrier", "review"):
        assert urlsplit(page.url).path == f"/portal/new/{step}"
        assert_fits(page)
        if step == "contact":
            page.click("button:has-text('Next')")  # refused: the error summary, narrow too
            assert_fits(page)
            for key, value in ADDRESS.items():
                if key == "countryOrRegion":
                    page.select_option("#f-countryOrRegion", value)
                else:
                    page.fill(f"#f-{key}", value)
        elif step == "details":
            page.fill("#f-name", "narrow-wizard")
            page.fill("#f-storageAccount", "seedacct")
        elif step == "region":
            page.check("#r-westeurope")
        elif step == "carrier":
            page.select_option("#f-carrierName", "DHL")
            page.fill("#f-carrierAccountNumber", "A-1")
        if step != "review":
            page.click("button:has-text('Next')")
    page.context.close()
    # the site's pages, and pages for nobody signed in
    site = site_page(browser, env, width=390)
    env.advance(shipped, JobState.PACKAGING)
    for path in ("/portal/site", job_path(env, shipped, site=True),
                 job_path(env, shipped, site=True) + f"/drives/{drive}/logs/error",
                 job_path(env, shipped, site=True) + "/close"):
        site.goto(path)
        assert_fits(site)
    site.goto(job_path(env, shipped, site=True))
    site.click("button:has-text('Record the return')")
    assert_fits(site)
    site.click("button:has-text('Sign out')")
    assert urlsplit(site.url).path == "/portal/signed-out"
    for path in ("/portal/signed-out", "/portal/signin", "/portal/nothing"):
        site.goto(path)
        assert_fits(site)
    site.context.close()


# --------------------------------------------------------------------------- keyboard, validation


def assert_fits(page: Page, width: int = 390) -> None:
    """No sideways scrolling once the page (and its stylesheet) has loaded; else name the
    elements that stick out."""
    page.wait_for_load_state()
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, (page.url, scroll, page.evaluate(
        """() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > innerWidth).slice(0, 5)
        .map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"""))


def tab_to(page: Page, selector: str, limit: int = 120) -> None:
    """Press Tab until the focused element matches ``selector`` (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_a_job_created_with_the_keyboard_alone(env: Env, browser: Browser) -> None:
    page = context(browser, env).new_page()
    page.goto("/portal/signin")
    page.keyboard.press("Tab")                     # the first stop is the skip link
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    tab_to(page, "#f-token")
    page.keyboard.type(env.token())
    tab_to(page, "form:has(#f-token) button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/jobs")
    tab_to(page, "main a.button")                  # "New job"
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/new/drives")
    expect(page.locator("ol.steps li[aria-current=step]")).to_contain_text("Drives")
    tab_to(page, "#f-drivelist_text")
    page.keyboard.type(json.dumps(jobservice.drive_list(2, "kbd")))
    tab_to(page, "button[value=next]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/new/contact")
    expect(page.locator("ol.steps li[aria-current=step]")).to_contain_text("Contact")
    for key, value in ADDRESS.items():
        tab_to(page, f"#f-{key}")
        page.keyboard.type(value)                  # a <select> picks by typing its name
    expect(page.locator("#f-countryOrRegion")).to_have_value("United States")
    tab_to(page, "button[value=next]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/new/details")
    tab_to(page, "#f-name")
    page.keyboard.type("kbd-job")
    tab_to(page, "#f-storageAccount")
    page.keyboard.type("seedacct")
    page.keyboard.press("Enter")                   # Enter in a field: the form's first button
    page.wait_for_url("**/portal/new/region")
    tab_to(page, "input[name=region]")            # the radio group: one Tab stop
    page.keyboard.press("Space")
    assert page.evaluate("document.activeElement.checked")
    region = page.evaluate("document.activeElement.value")
    tab_to(page, "button[value=next]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/new/carrier")
    tab_to(page, "#f-carrierName")
    page.keyboard.type("DHL")
    expect(page.locator("#f-carrierName")).to_have_value("DHL")
    tab_to(page, "#f-carrierAccountNumber")
    page.keyboard.type("KBD-1")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/new/review")
    tab_to(page, "button[value=next]")            # "Create job"
    page.keyboard.press("Space")                   # a button activates with Space too
    page.wait_for_url("**/portal/jobs/seed/kbd-job")
    job = env.catalog.get_job(JobRef.parse(env.sub, "seed", "kbd-job"))
    assert job.location == region and job.details["returnShipping"]["carrierName"] == "DHL"
    assert job.details["returnAddress"]["countryOrRegion"] == "United States"
    page.context.close()


def test_validation_names_every_field_focuses_the_first_and_links_them(
        env: Env, browser: Browser) -> None:
    page = owner_page(browser, env)
    used = env.create("busy-job", drives=1)
    busy = env.catalog.get_job(used).drives[0]
    page.goto("/portal/new/drives")
    drives = [*jobservice.drive_list(1, "val"),
              {"driveId": busy.drive_id, "bitLockerKey": jobservice.recovery_password(),
               "manifestFile": busy.manifest_file, "manifestHash": busy.manifest_hash}]
    page.fill("#f-drivelist_text", json.dumps(drives))
    page.click("button:has-text('Next')")
    # a drive already in another active job of this subscription: a warning, not a refusal
    expect(page.locator(".flash.warning")).to_contain_text(
        f"Drive {busy.drive_id} is already in job busy-job (Creating)")
    assert urlsplit(page.url).path == "/portal/new/contact"
    page.click("button:has-text('Next')")          # nothing filled in
    assert urlsplit(page.url).path == "/portal/new/contact"
    required = [k for k, _, needed in forms.ADDRESS_FIELDS if needed]
    links = page.locator(".error-summary li a")
    expect(links).to_have_count(len(required))
    assert [links.nth(i).get_attribute("href") for i in range(len(required))] == [
        f"#f-{k}" for k in required]
    expect(page.locator(".error-summary")).to_contain_text(
        "Return address: postal code is required")
    assert "properties." not in page.content() and "postalCode is" not in page.content()
    expect(page.locator("#f-recipientName")).to_be_focused()
    for key in required:
        field = page.locator(f"#f-{key}")
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_attribute("aria-describedby", f"e-{key}")
        expect(page.locator(f"#e-{key}")).to_contain_text("is required")
    # a link in the summary moves to its field
    page.click(".error-summary a[href='#f-postalCode']")
    expect(page.locator("#f-postalCode")).to_be_focused()
    reload_sends_nothing(page)                     # the refusal came through a redirect
    # the country comes from the ISO 3166 list; a bad email is named with the rest
    options = page.locator("#f-countryOrRegion option").all_inner_texts()
    assert "Portugal" in options and "United States" in options and len(options) > 240
    for key, value in {**ADDRESS, "email": "not-an-email"}.items():
        if key == "countryOrRegion":
            page.select_option("#f-countryOrRegion", value)
        else:
            page.fill(f"#f-{key}", value)
    page.click("button:has-text('Next')")
    expect(page.locator(".error-summary li")).to_have_count(1)
    expect(page.locator("#f-email")).to_be_focused()
    expect(page.locator("#e-email")).to_have_text(
        "Return address: email must look like name@example.com")
    page.fill("#f-email", "ops@example.com")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/details"
    # Previous keeps what was typed here; Next on the drives step keeps the drives
    page.fill("#f-name", "val-job")
    page.click("button:has-text('Previous')")
    assert urlsplit(page.url).path == "/portal/new/contact"
    expect(page.locator("#f-city")).to_have_value("Springfield")
    page.click("button:has-text('Previous')")
    assert urlsplit(page.url).path == "/portal/new/drives"
    expect(page.locator(".kept")).to_contain_text("Already given: 2 drives")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/contact"
    expect(page.locator("#f-city")).to_have_value("Springfield")
    page.click("button:has-text('Next')")
    assert urlsplit(page.url).path == "/portal/new/details"
    expect(page.locator("#f-name")).to_have_value("val-job")
    page.context.close()


def test_the_ship_form_asks_for_the_return_leg_and_a_past_date(env: Env,
                                                               browser: Browser) -> None:
    ref = env.create("ship-bare", returnAddress=None, returnShipping=None)
    page = owner_page(browser, env)
    page.goto(job_path(env, ref))
    page.select_option("#f-carrierName", "DHL")
    page.fill("#f-trackingNumber", "TRK-1")
    page.fill("#f-shipDate", (date.today() + timedelta(days=5)).isoformat())
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator("#e-shipDate")).to_contain_text("Ship date cannot be in the future")
    summary = page.locator(".error-summary")
    expect(summary).to_contain_text("Return address: recipient name is required")
    expect(summary).to_contain_text("Return carrier: choose one from the list")
    expect(page.locator("#f-shipDate")).to_be_focused()
    expect(page.locator("#f-trackingNumber")).to_have_value("TRK-1")  # kept after the redirect
    assert env.state(ref) == JobState.CREATING
    page.fill("#f-shipDate", date.today().isoformat())
    for key, value in ADDRESS.items():
        if key == "countryOrRegion":
            page.select_option("#f-countryOrRegion", value)
        else:
            page.fill(f"#f-{key}", value)
    page.select_option("#f-return_carrierName", "UPS")
    page.fill("#f-return_carrierAccountNumber", "UPS-9")
    page.click("button:has-text('Mark as shipped')")
    expect(page.locator("h1 .state")).to_have_text("Shipping")
    job = env.catalog.get_job(ref)
    assert job.details["returnShipping"] == {"carrierName": "UPS",
                                             "carrierAccountNumber": "UPS-9"}
    assert job.details["returnAddress"]["postalCode"] == "12345"
    page.context.close()


# --------------------------------------------------------------------------- stale tabs


def test_a_stale_tab_says_what_happened(env: Env, browser: Browser) -> None:
    page = owner_page(browser, env)
    page.goto("/portal/new/drives")
    page.fill("#f-drivelist_text", json.dumps(jobservice.drive_list(1, "tabs")))
    page.click("button:has-text('Next')")
    for key, value in ADDRESS.items():
        if key == "countryOrRegion":
            page.select_option("#f-countryOrRegion", value)
        else:
            page.fill(f"#f-{key}", value)
    page.click("button:has-text('Next')")
    page.fill("#f-name", "tabs-job")
    page.fill("#f-storageAccount", "seedacct")
    page.click("button:has-text('Next')")
    page.check("#r-eastus")
    page.click("button:has-text('Next')")
    page.select_option("#f-carrierName", "UPS")
    page.fill("#f-carrierAccountNumber", "U-1")
    page.click("button:has-text('Next')")
    other = page.context.new_page()                # a second tab, same session, same review
    other.goto("/portal/new/review")
    page.click("button:has-text('Create job')")
    assert urlsplit(page.url).path == "/portal/jobs/seed/tabs-job"
    other.click("button:has-text('Create job')")   # the stale tab
    flash = other.locator(".flash.error")
    expect(flash).to_contain_text("created in another window as job tabs-job")
    flash.locator("a:has-text('Open job tabs-job')").click()
    assert urlsplit(other.url).path == "/portal/jobs/seed/tabs-job"
    # a job changed in another tab: named, with its state now; nothing done
    ref = env.create("tabs-changed")
    page.goto(job_path(env, ref))
    other.goto(job_path(env, ref))
    page.click("a:has-text('Cancel this job')")
    page.click("button:has-text('Yes, cancel')")
    other.select_option("#f-carrierName", "DHL")
    other.fill("#f-trackingNumber", "T-9")
    other.click("button:has-text('Mark as shipped')")
    expect(other.locator(".flash.error")).to_contain_text(
        "Job tabs-changed changed since this page was loaded")
    expect(other.locator(".flash.error")).to_contain_text("it is now Canceled")
    assert env.state(ref) == JobState.CANCELED
    # a job deleted elsewhere: named, and the list it is no longer in
    gone = env.create("tabs-gone")
    other.goto(job_path(env, gone))
    other.click("a:has-text('Cancel this job')")
    env.catalog.delete_job(gone)
    other.click("button:has-text('Yes, cancel')")
    assert urlsplit(other.url).path == "/portal/jobs"
    expect(other.locator(".flash.error")).to_contain_text("Job tabs-gone was deleted elsewhere")
    page.context.close()


# --------------------------------------------------------------------------- signing in and out


def test_sign_in_refusal_sign_out_and_missing_pages(env: Env, browser: Browser) -> None:
    page = context(browser, env).new_page()
    page.goto("/portal/signin")
    page.fill("#f-token", "not-a-token")
    page.click("form:has(#f-token) button[type=submit]")
    assert urlsplit(page.url).path == "/portal/signin"
    expect(page.locator("#e-token")).to_contain_text("not valid")
    expect(page.locator("#f-token")).to_have_attribute("aria-describedby", "h-token e-token")
    expect(page.locator("#f-token")).to_be_focused()
    reload_sends_nothing(page)                     # the token is not sent again
    sign_in(page, env.token())
    cookie = next(c for c in page.context.cookies() if c["name"] == "pipeline_portal")
    page.click("button:has-text('Sign out')")
    assert urlsplit(page.url).path == "/portal/signed-out"
    expect(page.locator("main")).to_contain_text("Your session has ended in this browser")
    expect(page.locator("main a:has-text('Sign in again')")).to_be_visible()
    # a browser still holding the ended session's cookie (another window): told, not just
    # shown a sign-in form
    stale = context(browser, env)
    stale.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path")}])
    stale_page = stale.new_page()
    stale_page.goto("/portal/jobs")
    assert urlsplit(stale_page.url).path == "/portal/signin"
    expect(stale_page.locator(".flash.warning")).to_contain_text("Your session has ended")
    stale.close()
    # a missing page or job: a 404 with the way onwards
    sign_in(page, env.token())
    for path, says in (("/portal/no-such-page", "no such page"),
                       ("/portal/jobs/rg1/no-such-job", "does not exist")):
        assert page.goto(path).status == 404
        expect(page.locator("main")).to_contain_text(says)
        expect(page.locator("main nav a:has-text('Your jobs')")).to_have_attribute(
            "href", "/portal/jobs")
        expect(page.locator("header nav a:has-text('New job')")).to_be_visible()
    anonymous = context(browser, env).new_page()
    assert anonymous.goto("/portal/no-such-page").status == 404
    expect(anonymous.locator("main nav a:has-text('Sign in')")).to_be_visible()
    page.context.close()
    anonymous.context.close()


# --------------------------------------------------------------------------- words


def test_service_messages_in_plain_words() -> None:
    """The service's refusals as a page shows them: no JSON path survives."""
    cases = {
        "properties.returnAddress.postalCode must be a non-empty string":
            "Return address: postal code is required",
        "properties.deliveryPackage.trackingNumber must be a non-empty string":
            "Tracking number is required",
        "the job cannot ship yet: give the return address (properties.returnAddress: name, "
        "street, city, postal code, country, phone, email); the return carrier and its "
        "account number (properties.returnShipping), in this or an earlier request":
            "The job cannot ship yet: give the return address; the return carrier and its "
            "account number",
        "properties.driveList[1].bitLockerKey is missing":
            "Drive 2 in the list: recovery password is missing",
    }
    for message, words in cases.items():
        assert forms.plain(message) == words
        assert "properties." not in forms.plain(message)
