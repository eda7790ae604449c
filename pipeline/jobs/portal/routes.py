"""The portal's pages and the route table ``service.create_app`` mounts under ``/portal``.

Owner pages (a subscription's sessions)::

    GET       /portal/                          -> jobs, site view or sign-in
    GET POST  /portal/signin                    token (pasted) or .publishsettings (upload)
    POST      /portal/signout
    GET       /portal/jobs                      the subscription's jobs and their states
    GET       /portal/new                       -> the wizard's first unanswered step
    GET POST  /portal/new/{step}                drives, contact, details, region, carrier, review
    POST      /portal/new-discard               drop the draft
    GET       /portal/jobs/{rg}/{name}          job page: state, drives, shipping form
    POST      /portal/jobs/{rg}/{name}/ship     Creating -> Shipping (carrier, tracking number)
    POST      /portal/jobs/{rg}/{name}/cancel   where the state machine allows it
    GET       /portal/jobs/{rg}/{name}/keys     the recovery passwords: the only page with them

Receiving-site pages (a site token's sessions)::

    GET       /portal/site                      every subscription's jobs, by state
    GET       /portal/site/jobs/{sub}/{rg}/{name}
    POST      /portal/site/jobs/{sub}/{rg}/{name}/drives   mark drives Received / NeverReceived

Every change is a ``catalog.update_job`` PATCH body (the REST API's), sent with
the ETag the page was rendered from (``If-Match``), so the state machine in
``rules`` decides and a page older than the job gets "changed meanwhile"
instead of overwriting someone else's change.
"""

from __future__ import annotations

import secrets
import time
from datetime import date
from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.jobs import auth, rules
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.errors import ApiError, BadRequest, Conflict, PreconditionFailed
from pipeline.jobs.model import Job, JobRef
from pipeline.jobs.portal import sessions, tokens, wizard
from pipeline.jobs.portal.sessions import OWNER, SITE
from pipeline.jobs.portal.web import (
    HERE,
    Ctx,
    Portal,
    SecurityHeaders,
    job_url,
    safe_next,
    site_job_url,
)
from pipeline.jobs.rules import DriveState, JobState

PAGE_SIZE = 50
MARKS = (DriveState.RECEIVED, DriveState.NEVER_RECEIVED)


# --------------------------------------------------------------------------- sign in / out


def index(ctx: Ctx) -> Response:
    if ctx.session is None:
        return ctx.redirect("/portal/signin")
    return ctx.redirect("/portal/site" if ctx.session.kind == SITE else "/portal/jobs")


def signin(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        return _signin_post(ctx)
    return _signin_form(ctx, {})


def _signin_form(ctx: Ctx, errors: dict[str, str], status: int = 200) -> Response:
    token = ctx.request.cookies.get(sessions.SIGNIN_COOKIE)
    if not token or len(token) > 100:
        token = secrets.token_urlsafe(32)
    response = ctx.portal.render("signin.html", ctx.session, status=status, errors=errors,
                                 signin_csrf=token, next=ctx.request.query_params.get("next", ""))
    response.set_cookie(sessions.SIGNIN_COOKIE, token,
                        **sessions.cookie_options(ctx.request, sessions.SIGNIN_COOKIE_S))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="pipeline-portal"'
    return response


def _signin_post(ctx: Ctx) -> Response:
    catalog = ctx.portal.catalog

    def public_key(sub: str) -> bytes | None:
        found = catalog.subscription(sub)
        return None if found is None else found.public_key

    how = ctx.field("method")
    where = "file" if how == "file" else "token"
    try:
        if how == "file":
            upload = ctx.file("settings")
            if upload is None:
                raise BadRequest("choose the .publishsettings file to upload", "MissingFile")
            token = tokens.token_from_settings(upload[1], sessions.MAX_SESSION_S)
            expires = time.time() + sessions.MAX_SESSION_S
        else:
            token = ctx.field("token").removeprefix("Bearer ").strip()
            if not token:
                raise BadRequest("paste a token first", "MissingToken")
            expires = 0.0
        if tokens.is_site_token(token):
            exp, fingerprint = tokens.verify_site_token(ctx.portal.data_dir, token)
            kind, subject, label = SITE, fingerprint, "Receiving site"
            expires = float(exp)
        else:
            subject = auth.verify_token(token, public_key)
            sub = catalog.subscription(subject)
            assert sub is not None  # verify_token found its key
            kind, label = OWNER, f"subscription {sub.name}"
            expires = expires or float(auth.token_expiry(token))
    except ApiError as exc:
        return _signin_form(ctx, {where: str(exc)}, exc.status)
    ctx.portal.sessions.drop(ctx.session_id)  # a new id at each sign-in (no fixation)
    session_id, ctx.session = ctx.portal.sessions.create(kind, subject, label, expires)
    default = "/portal/site" if kind == SITE else "/portal/jobs"
    response = ctx.redirect(safe_next(ctx.field("next"), default))
    max_age = max(1, int(ctx.session.expires - time.time()))
    response.set_cookie(sessions.COOKIE, session_id,
                        **sessions.cookie_options(ctx.request, max_age))
    response.delete_cookie(sessions.SIGNIN_COOKIE, path=sessions.COOKIE_PATH)
    return response


def signout(ctx: Ctx) -> Response:
    ctx.portal.sessions.drop(ctx.session_id)
    response = ctx.redirect("/portal/signin")
    response.delete_cookie(sessions.COOKIE, path=sessions.COOKIE_PATH,
                           secure=ctx.request.url.scheme == "https", httponly=True,
                           samesite="strict")
    return response


# --------------------------------------------------------------------------- owner pages


def _ref(ctx: Ctx, subscription_id: str | None = None) -> JobRef:
    sub = subscription_id if subscription_id is not None else ctx.owner.subject
    return JobRef.parse(sub, ctx.params["rg"], ctx.params["name"])


def jobs(ctx: Ctx) -> Response:
    page = ctx.portal.catalog.list_jobs(ctx.owner.subject, top=PAGE_SIZE,
                                        skip_token=ctx.request.query_params.get("page"))
    return ctx.render("jobs.html", jobs=page.jobs, next_page=page.next_token,
                      has_draft=bool(ctx.owner.draft))


def job_page(ctx: Ctx) -> Response:
    return _job(ctx, ctx.portal.catalog.get_job(_ref(ctx)))


def _job(ctx: Ctx, job: Job, values: dict[str, str] | None = None,
         errors: dict[str, str] | None = None, status: int = 200) -> Response:
    region = ctx.portal.regions.get(job.location)
    return ctx.render("job.html", status=status, job=job,
                      carriers=region.supported_carriers if region else (),
                      can_ship=job.state == JobState.CREATING,
                      can_cancel=(JobState.CANCELED in rules.JOB_TRANSITIONS[job.state]
                                  and not job.cancel_requested),
                      values=values or {}, errors=errors or {}, today=date.today().isoformat())


def ship(ctx: Ctx) -> Response:
    ref = _ref(ctx)
    job = ctx.portal.catalog.get_job(ref)
    values = {k: ctx.field(k) for k in ("carrierName", "trackingNumber", "shipDate")}
    try:
        date.fromisoformat(values["shipDate"])
    except ValueError:
        return _job(ctx, job, values, {"shipDate": "give the date the package left (YYYY-MM-DD)"},
                    400)
    package = {"carrierName": values["carrierName"], "trackingNumber": values["trackingNumber"],
               "driveCount": len(job.drives), "shipDate": values["shipDate"]}
    body = {"properties": {"deliveryPackage": package, "state": JobState.SHIPPING.value}}
    try:
        job = ctx.portal.catalog.update_job(ref, body, if_match=ctx.field("etag") or None)
    except BadRequest as exc:
        errors = ({"carrierName": str(exc)} if exc.code == "UnsupportedCarrier" else
                  wizard.field_errors(exc, {
                      "properties.deliveryPackage.trackingNumber": "trackingNumber",
                      "properties.deliveryPackage.carrierName": "carrierName",
                      "properties.deliveryPackage.shipDate": "shipDate"}))
        return _job(ctx, job, values, errors, 400)
    except Conflict as exc:
        return _job(ctx, job, values, {"_form": str(exc)}, 409)
    except PreconditionFailed:
        return _changed(ctx, job_url(job))
    ctx.flash(f"Job {job.ref.name} is now {job.state}: carrier {package['carrierName']}, "
              f"tracking number {package['trackingNumber']}.")
    return ctx.redirect(job_url(job))


def cancel(ctx: Ctx) -> Response:
    ref = _ref(ctx)
    body = {"properties": {"cancelRequested": True}}
    try:
        job = ctx.portal.catalog.update_job(ref, body, if_match=ctx.field("etag") or None)
    except Conflict as exc:
        return _job(ctx, ctx.portal.catalog.get_job(ref), errors={"_form": str(exc)},
                    status=409)
    except PreconditionFailed:
        return _changed(ctx, job_url(ctx.portal.catalog.get_job(ref)))
    ctx.flash(f"Job {job.ref.name} is {job.state}.")
    return ctx.redirect(job_url(job))


def keys(ctx: Ctx) -> Response:
    ref = _ref(ctx)
    job = ctx.portal.catalog.get_job(ref)
    return ctx.render("keys.html", job=job, keys=ctx.portal.catalog.bitlocker_keys(ref))


def _changed(ctx: Ctx, url: str) -> Response:
    ctx.flash("The job changed since the page was loaded (another window, the site or the "
              "import). Check it below and try again.", "error")
    return ctx.redirect(url)


# --------------------------------------------------------------------------- site pages


def site_jobs(ctx: Ctx) -> Response:
    query = ctx.request.query_params
    state = rules.job_state(query["state"]) if query.get("state") else None
    catalog = ctx.portal.catalog
    page = catalog.list_jobs(None, state=state, top=PAGE_SIZE, skip_token=query.get("page"))
    names = {s.id: s.name for s in catalog.subscriptions()}
    return ctx.render("site.html", jobs=page.jobs, next_page=page.next_token, state=state,
                      names=names, stats=catalog.statistics())


def site_job(ctx: Ctx) -> Response:
    job = ctx.portal.catalog.get_job(_ref(ctx, ctx.params["sub"]))
    return _site_job(ctx, job)


def _site_job(ctx: Ctx, job: Job, errors: dict[str, str] | None = None,
              status: int = 200) -> Response:
    sub = ctx.portal.catalog.subscription(job.ref.subscription_id)
    return ctx.render("site_job.html", status=status, job=job, owner=sub.name if sub else "?",
                      marks=_marks(job), errors=errors or {})


def _job_after_mark(job: Job) -> JobState:
    """Marking a drive of a Shipping job says the package arrived: the job is Received."""
    return JobState.RECEIVED if job.state == JobState.SHIPPING else job.state


def _marks(job: Job) -> dict[str, list[str]]:
    """Drive id -> the marks the state machine allows it now (asking ``rules``)."""
    after_state = _job_after_mark(job)
    try:
        rules.check_job_transition(job.state, rules.After(after_state, True, ()))
    except Conflict:
        return {}
    out: dict[str, list[str]] = {}
    for drive in job.drives:
        allowed = []
        for mark in MARKS:
            states = tuple(mark if d is drive else d.state for d in job.drives)
            try:
                rules.check_drive_transition(drive.drive_id, drive.state, mark,
                                             rules.After(after_state, True, states))
            except Conflict:
                continue
            if mark != drive.state:
                allowed.append(mark.value)
        if allowed:
            out[drive.drive_id] = allowed
    return out


def site_mark(ctx: Ctx) -> Response:
    catalog = ctx.portal.catalog
    ref = _ref(ctx, ctx.params["sub"])
    job = catalog.get_job(ref)
    mark = ctx.field("mark")
    chosen = ctx.fields("drive")
    if mark not in MARKS:
        return _site_job(ctx, job, {"_form": "choose Received or NeverReceived"}, 400)
    if not chosen:
        return _site_job(ctx, job, {"_form": "tick the drives to mark first"}, 400)
    unknown = sorted(set(chosen) - {d.drive_id for d in job.drives})
    if unknown:
        return _site_job(ctx, job, {"_form": f"drive {rules.quote(unknown[0])} is not in "
                                    f"{job.ref}"}, 400)
    body: dict[str, Any] = {"properties": {
        "driveList": [{"driveId": drive_id, "state": mark} for drive_id in chosen]}}
    if _job_after_mark(job) != job.state:
        body["properties"]["state"] = _job_after_mark(job).value
    try:
        job = catalog.update_job(ref, body, if_match=ctx.field("etag") or None)
    except (BadRequest, Conflict) as exc:
        return _site_job(ctx, job, {"_form": str(exc)}, exc.status)
    except PreconditionFailed:
        return _changed(ctx, site_job_url(job))
    ctx.flash(f"Marked {len(chosen)} drive{'s' if len(chosen) != 1 else ''} {mark}; "
              f"job {job.ref.name} is {job.state}.")
    return ctx.redirect(site_job_url(job))


# --------------------------------------------------------------------------- wiring


class RootRedirect:
    """``GET /`` -> the portal; every other request to ``/`` goes on to the REST API."""

    def __init__(self, fallback: ASGIApp) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await RedirectResponse("/portal/", status_code=303)(scope, receive, send)
        else:
            await self.fallback(scope, receive, send)


def routes(catalog: Catalog, fallback: ASGIApp) -> list[BaseRoute]:
    """The portal's routes: ``/portal/...`` and ``GET /`` (``fallback`` serves the rest)."""
    portal = Portal(catalog)
    ep = portal.endpoint
    pages = [
        Route("/", ep(index, None), methods=["GET"]),
        Route("/signin", ep(signin, None, signin=True), methods=["GET", "POST"]),
        Route("/signout", ep(signout, None), methods=["POST"]),
        Route("/jobs", ep(jobs, OWNER), methods=["GET"]),
        Route("/new", ep(wizard.start, OWNER), methods=["GET"]),
        Route("/new-discard", ep(wizard.discard, OWNER), methods=["POST"]),
        Route("/new/{step}", ep(wizard.step, OWNER), methods=["GET", "POST"]),
        Route("/jobs/{rg}/{name}", ep(job_page, OWNER), methods=["GET"]),
        Route("/jobs/{rg}/{name}/ship", ep(ship, OWNER), methods=["POST"]),
        Route("/jobs/{rg}/{name}/cancel", ep(cancel, OWNER), methods=["POST"]),
        Route("/jobs/{rg}/{name}/keys", ep(keys, OWNER), methods=["GET"]),
        Route("/site", ep(site_jobs, SITE), methods=["GET"]),
        Route("/site/jobs/{sub}/{rg}/{name}", ep(site_job, SITE), methods=["GET"]),
        Route("/site/jobs/{sub}/{rg}/{name}/drives", ep(site_mark, SITE), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static")),
    ]
    router = Router(routes=pages, default=portal.not_found)
    return [Mount("/portal", app=SecurityHeaders(router)),
            Route("/", RootRedirect(fallback))]
