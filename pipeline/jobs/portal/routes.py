"""The portal's pages and the route table ``service.create_app`` mounts under ``/portal``.

Owner pages (a subscription's sessions)::

    GET       /portal/                          -> jobs, site view or sign-in
    GET POST  /portal/signin                    token (pasted) or .publishsettings (upload)
    POST      /portal/signout                   -> /portal/signed-out
    GET       /portal/signed-out                "you are signed out"
    GET       /portal/jobs                      the subscription's jobs and their states
    GET       /portal/new                       -> the wizard's first unanswered step
    GET POST  /portal/new/{step}                drives, contact, details, region, carrier, review
    GET POST  /portal/new-discard               confirm, then drop the draft
    GET       /portal/jobs/{rg}/{name}          job page: timeline, drives, copy logs, ship form
    POST      /portal/jobs/{rg}/{name}/ship     Creating -> Shipping (package + the return leg)
    GET POST  /portal/jobs/{rg}/{name}/cancel   confirm, then cancel
    GET       /portal/jobs/{rg}/{name}/keys     the recovery passwords: the only page with them
    GET       /portal/jobs/{rg}/{name}/drives/{drive}/logs/{kind}[/download]   a copy log

Receiving-site pages (a site token's sessions): ``site.py``, under
``/portal/site``.

Every GET changes nothing; every POST changes at most one job and answers with
a redirect to a GET (POST-redirect-GET: a reload never sends a form again; a
refused form comes back through the session, ``Ctx.fail``).  Every change is a
``catalog.update_job`` PATCH body (the REST API's, built in ``lifecycle``) with
the role of the session (``Ctx.role``) and the ETag the page was rendered from
(``If-Match``), so the rules decide, and a page older than the job gets "changed
meanwhile, it is now X" instead of overwriting someone else's change.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import date
from typing import Any
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.jobs import auth
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.errors import ApiError, BadRequest, Conflict, NotFound, PreconditionFailed
from pipeline.jobs.model import Job, JobRef
from pipeline.jobs.portal import copylogs, forms, lifecycle, sessions, site, tokens, wizard
from pipeline.jobs.portal.sessions import OWNER, SITE
from pipeline.jobs.portal.web import HERE, Ctx, Portal, SecurityHeaders, job_url, safe_next
from pipeline.jobs.rules import MAX_DRIVES, JobState, Role

PAGE_SIZE = 50
SIGNIN_REFUSALS = 1000   # refused sign-ins kept for the GET after the redirect


# --------------------------------------------------------------------------- sign in / out


def index(ctx: Ctx) -> Response:
    if ctx.session is None:
        return ctx.redirect("/portal/signin")
    return ctx.redirect("/portal/site" if ctx.session.kind == SITE else "/portal/jobs")


def signin(ctx: Ctx) -> Response:
    if ctx.request.method == "POST":
        return _signin_post(ctx)
    token = ctx.request.cookies.get(sessions.SIGNIN_COOKIE)
    refused = ctx.portal.signin_refusals.pop(token, None) if token else None
    return _signin_form(ctx, refused or {})


def _signin_form(ctx: Ctx, errors: dict[str, str]) -> Response:
    token = ctx.request.cookies.get(sessions.SIGNIN_COOKIE)
    if not token or len(token) > 100:
        token = secrets.token_urlsafe(32)
    query = ctx.request.query_params
    response = ctx.portal.render("signin.html", ctx.session, errors=errors, signin_csrf=token,
                                 next=query.get("next", ""), ended=bool(query.get("ended")))
    response.set_cookie(sessions.SIGNIN_COOKIE, token,
                        **sessions.cookie_options(ctx.request, sessions.SIGNIN_COOKIE_S))
    return response


def _signin_refused(ctx: Ctx, errors: dict[str, str]) -> Response:
    """POST-redirect-GET for a refused sign-in: the reason is kept (by the sign-in form's own
    cookie: there is no session yet) for the sign-in page the browser is sent back to."""
    kept = ctx.portal.signin_refusals
    while len(kept) >= SIGNIN_REFUSALS:
        kept.pop(next(iter(kept)))
    kept[ctx.request.cookies.get(sessions.SIGNIN_COOKIE, "")] = errors
    target = safe_next(ctx.field("next"), "")
    return ctx.redirect("/portal/signin" + (f"?next={quote(target)}" if target else ""))


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
        return _signin_refused(ctx, {where: str(exc)})
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
    response = ctx.redirect("/portal/signed-out")
    response.delete_cookie(sessions.COOKIE, path=sessions.COOKIE_PATH,
                           secure=ctx.request.url.scheme == "https", httponly=True,
                           samesite="strict")
    return response


def signed_out(ctx: Ctx) -> Response:
    """Where sign-out lands: says the session is over (on the service too)."""
    return ctx.render("signed_out.html")


# --------------------------------------------------------------------------- owner pages


def _ref(ctx: Ctx) -> JobRef:
    return JobRef.parse(ctx.owner.subject, ctx.params["rg"], ctx.params["name"])


def _log_url(job: Job) -> Callable[[str, str], str]:
    """(drive id, kind) -> the owner's page of that copy log."""
    return lambda drive_id, kind: job_url(job, f"/drives/{quote(drive_id, safe='')}/logs/{kind}")


def jobs(ctx: Ctx) -> Response:
    """The subscription's jobs, each with who acts next."""
    page = ctx.portal.catalog.list_jobs(ctx.owner.subject, top=PAGE_SIZE,
                                        skip_token=ctx.request.query_params.get("page"))
    return ctx.render("jobs.html", jobs=page.jobs, next_page=page.next_token,
                      has_draft=bool(ctx.owner.draft), who=lambda s: lifecycle.who(
                          lifecycle.actor(s), Role.CUSTOMER))


def job_page(ctx: Ctx) -> Response:
    """One job: timeline, drives and copy logs, the ship form while Creating (with a form the
    ship POST refused, kept through the redirect)."""
    job = ctx.portal.catalog.get_job(_ref(ctx))
    kept = ctx.kept_form()
    regions = ctx.portal.regions
    region = regions.get(job.location)
    return ctx.render("job.html", job=job, region=region,
                      carriers=region.supported_carriers if region else (),
                      steps=lifecycle.timeline(job, Role.CUSTOMER),
                      can_ship=job.state == JobState.CREATING,
                      need_address="returnAddress" not in job.details,
                      need_return="returnShipping" not in job.details,
                      can_cancel=(not job.cancel_requested and lifecycle.allowed(
                          job, lifecycle.cancel_body(), regions, Role.CUSTOMER)),
                      logs=copylogs.drive_logs(ctx.portal.catalog, job), log_url=_log_url(job),
                      values=kept.values, errors=kept.errors,
                      latest=forms.latest_ship_date().isoformat(),
                      today=date.today().isoformat())


def _ship_form(ctx: Ctx, job: Job, carriers: tuple[str, ...] | list[str]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """The ship form's values, every error at once (in the form's order), and the PATCH."""
    values = {k: ctx.field(k) for k in ("carrierName", "trackingNumber", "shipDate")}
    errors = forms.check_package(values, carriers)
    props: dict[str, Any] = {
        "deliveryPackage": {"carrierName": values["carrierName"],
                            "trackingNumber": values["trackingNumber"],
                            "driveCount": len(job.drives), "shipDate": values["shipDate"]},
        "state": JobState.SHIPPING.value}
    if job.is_export:  # empty drives: the customer says how many
        values["driveCount"] = ctx.field("driveCount")
        count = values["driveCount"].strip()
        if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_DRIVES):
            errors["driveCount"] = (f"Empty drives: give how many are in the package, 1 to "
                                    f"{MAX_DRIVES}")
        else:
            props["deliveryPackage"]["driveCount"] = int(count)
    if "returnAddress" not in job.details:
        address = {k: ctx.field(k) for k in forms.ADDRESS_KEYS}
        values.update(address)
        errors.update(forms.check_address(address))
        props["returnAddress"] = forms.address_values(address)
    if "returnShipping" not in job.details:
        carrier, account = ctx.field("return_carrierName"), ctx.field("return_carrierAccountNumber")
        values.update(return_carrierName=carrier, return_carrierAccountNumber=account)
        errors.update(forms.check_return_shipping(carrier, account, carriers, "return_"))
        props["returnShipping"] = {"carrierName": carrier, "carrierAccountNumber": account}
    return values, errors, {"properties": props}


def ship(ctx: Ctx) -> Response:
    """Creating -> Shipping in one PATCH: the package, and the return leg if the job lacks it
    (the rules want all three before Shipping); every missing field is named at once."""
    ref = _ref(ctx)
    try:
        job = ctx.portal.catalog.get_job(ref)
    except NotFound:
        return ctx.gone(ref.name, "/portal/jobs")
    url = job_url(job)
    region = ctx.portal.regions.get(job.location)
    values, errors, body = _ship_form(ctx, job, region.supported_carriers if region else ())
    if ctx.field("etag") and ctx.field("etag") != job.etag:
        return ctx.changed(job, url)
    if errors:
        return ctx.fail(url, values, errors)
    try:
        job = ctx.portal.catalog.update_job(ref, body, if_match=ctx.field("etag") or None,
                                            role=ctx.role)
    except (BadRequest, Conflict) as exc:
        return ctx.fail(url, values, {"_form": forms.plain(str(exc))})
    except PreconditionFailed:
        return ctx.changed(ctx.portal.catalog.get_job(ref), url)
    package = body["properties"]["deliveryPackage"]
    ctx.flash(f"Job {job.ref.name} is now {job.state}: carrier {package['carrierName']}, "
              f"tracking number {package['trackingNumber']}.")
    return ctx.redirect(url)


def cancel(ctx: Ctx) -> Response:
    """GET: what canceling does (nothing changes); POST: cancel."""
    ref = _ref(ctx)
    catalog = ctx.portal.catalog
    try:
        job = catalog.get_job(ref)
    except NotFound:
        if ctx.request.method == "POST":
            return ctx.gone(ref.name, "/portal/jobs")
        raise
    url = job_url(job)
    body = lifecycle.cancel_body()
    if ctx.request.method == "GET":
        ok = not job.cancel_requested and lifecycle.allowed(job, body, ctx.portal.regions,
                                                            ctx.role)
        return ctx.render("confirm_cancel.html", job=job, allowed=ok)
    if ctx.field("etag") != job.etag:
        return ctx.changed(job, url)
    try:
        job = catalog.update_job(ref, body, if_match=job.etag, role=ctx.role)
    except (BadRequest, Conflict) as exc:
        ctx.flash(forms.plain(str(exc)), "error")
        return ctx.redirect(url)
    except PreconditionFailed:
        return ctx.changed(catalog.get_job(ref), url)
    ctx.flash(f"Job {job.ref.name} is {job.state}.")
    return ctx.redirect(url)


def keys(ctx: Ctx) -> Response:
    """The recovery passwords: the one page that shows them, to the job's owner only."""
    ref = _ref(ctx)
    job = ctx.portal.catalog.get_job(ref)
    return ctx.render("keys.html", job=job, keys=ctx.portal.catalog.bitlocker_keys(ref))


def log_view(ctx: Ctx) -> Response:
    """A copy log of one of the owner's jobs (another subscription's job is not found)."""
    job = ctx.portal.catalog.get_job(_ref(ctx))
    return copylogs.page(ctx, job, job_url(job), _log_url(job))


def log_download(ctx: Ctx) -> Response:
    """The same log as a file, byte for byte as the site stored it."""
    job = ctx.portal.catalog.get_job(_ref(ctx))
    return copylogs.download(ctx, job)


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
        Route("/signed-out", ep(signed_out, None), methods=["GET"]),
        Route("/jobs", ep(jobs, OWNER), methods=["GET"]),
        Route("/new", ep(wizard.start, OWNER), methods=["GET"]),
        Route("/new-discard", ep(wizard.discard, OWNER), methods=["GET", "POST"]),
        Route("/new/{step}", ep(wizard.step, OWNER), methods=["GET", "POST"]),
        Route("/jobs/{rg}/{name}", ep(job_page, OWNER), methods=["GET"]),
        Route("/jobs/{rg}/{name}/ship", ep(ship, OWNER), methods=["POST"]),
        Route("/jobs/{rg}/{name}/cancel", ep(cancel, OWNER), methods=["GET", "POST"]),
        Route("/jobs/{rg}/{name}/keys", ep(keys, OWNER), methods=["GET"]),
        Route("/jobs/{rg}/{name}/drives/{drive}/logs/{kind}", ep(log_view, OWNER),
              methods=["GET"]),
        Route("/jobs/{rg}/{name}/drives/{drive}/logs/{kind}/download", ep(log_download, OWNER),
              methods=["GET"]),
        *site.routes(ep),
        Mount("/static", app=StaticFiles(directory=HERE / "static")),
    ]
    router = Router(routes=pages, default=portal.not_found)
    return [Mount("/portal", app=SecurityHeaders(router)),
            Route("/", RootRedirect(fallback))]
