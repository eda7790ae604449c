"""The receiving site's pages: every subscription's jobs, and the site's steps on each.

    GET       /portal/site                                   every job, by state, who acts next
    GET       /portal/site/jobs/{sub}/{rg}/{name}            timeline, drives, return form
    GET POST  /portal/site/jobs/{sub}/{rg}/{name}/mark       confirm, then mark drives Received
                                                             or NeverReceived (?mark=&drive=...)
    GET POST  .../drives/{drive}/undo                        confirm, then undo a wrong mark
    POST      .../return                                     the return package: Packaging ->
                                                             Completed, copied drives ShippedBack
    GET POST  .../close                                      confirm, then Completed -> Closed
    GET       .../drives/{drive}/logs/{kind}[/download]      a copy log

Every change is sent with ``role=Role.SITE`` (the session's role, ``Ctx.role``):
the rules let the site do exactly these steps, and nothing of the customer's.
The pages offer only what ``lifecycle`` finds the REST API would accept now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipeline.jobs import rules
from pipeline.jobs.errors import BadRequest, Conflict, NotFound, PreconditionFailed
from pipeline.jobs.model import Job, JobRef
from pipeline.jobs.portal import copylogs, forms, lifecycle
from pipeline.jobs.portal.sessions import SITE
from pipeline.jobs.portal.web import Ctx, site_job_url
from pipeline.jobs.rules import DriveState, JobState, Role

PAGE_SIZE = 50


def _ref(ctx: Ctx) -> JobRef:
    return JobRef.parse(ctx.params["sub"], ctx.params["rg"], ctx.params["name"])


def _log_url(job: Job) -> Callable[[str, str], str]:
    return lambda drive_id, kind: site_job_url(
        job, f"/drives/{quote(drive_id, safe='')}/logs/{kind}")


def _undo_url(job: Job) -> Callable[[str], str]:
    return lambda drive_id: site_job_url(job, f"/drives/{quote(drive_id, safe='')}/undo")


def jobs(ctx: Ctx) -> Response:
    """Every subscription's jobs, filtered by state, with who acts next."""
    query = ctx.request.query_params
    state = rules.job_state(query["state"]) if query.get("state") else None
    catalog = ctx.portal.catalog
    page = catalog.list_jobs(None, state=state, top=PAGE_SIZE, skip_token=query.get("page"))
    names = {s.id: s.name for s in catalog.subscriptions()}
    return ctx.render("site.html", jobs=page.jobs, next_page=page.next_token, state=state,
                      names=names, stats=catalog.statistics(),
                      who=lambda s: lifecycle.who(lifecycle.actor(s), Role.SITE))


def job_page(ctx: Ctx) -> Response:
    """One job as the site sees it: the marks, undos, return form and close it may do now."""
    catalog = ctx.portal.catalog
    job = catalog.get_job(_ref(ctx))
    kept = ctx.kept_form()
    regions = ctx.portal.regions
    region = regions.get(job.location)
    sub = catalog.subscription(job.ref.subscription_id)
    can_close = lifecycle.allowed(job, lifecycle.close_body(), regions, Role.SITE)
    return ctx.render("site_job.html", job=job, owner=sub.name if sub else "?",
                      steps=lifecycle.timeline(job, Role.SITE),
                      marks=lifecycle.marks(job, regions),
                      undo=lifecycle.undoable(job, regions), undo_url=_undo_url(job),
                      can_return=job.state == JobState.PACKAGING, can_close=can_close,
                      carriers=region.supported_carriers if region else (),
                      logs=copylogs.drive_logs(catalog, job), log_url=_log_url(job),
                      values=kept.values, errors=kept.errors,
                      latest=forms.latest_ship_date().isoformat(),
                      today=date.today().isoformat())


def _load(ctx: Ctx) -> Job | Response:
    """The job of this URL; for a POST whose job is gone, the redirect that says so."""
    ref = _ref(ctx)
    try:
        return ctx.portal.catalog.get_job(ref)
    except NotFound:
        if ctx.request.method == "POST":
            return ctx.gone(ref.name, "/portal/site")
        raise


def _apply(ctx: Ctx, job: Job, body: dict[str, Any], done: str) -> Response:
    """Send one PATCH as the site, If-Match the page's ETag; flash ``done`` or the refusal."""
    url = site_job_url(job)
    if ctx.field("etag") != job.etag:
        return ctx.changed(job, url)
    try:
        job = ctx.portal.catalog.update_job(job.ref, body, if_match=job.etag, role=ctx.role)
    except (BadRequest, Conflict) as exc:
        ctx.flash(forms.plain(str(exc)), "error")
        return ctx.redirect(url)
    except PreconditionFailed:
        return ctx.changed(ctx.portal.catalog.get_job(job.ref), url)
    ctx.flash(done.format(job=job))
    return ctx.redirect(url)


def mark(ctx: Ctx) -> Response:
    """GET (from the drive list's form): what marking these drives does; POST: mark them."""
    job = _load(ctx)
    if isinstance(job, Response):
        return job
    source = ctx.request.query_params if ctx.request.method == "GET" else None
    chosen = source.getlist("drive") if source is not None else ctx.fields("drive")
    value = source.get("mark", "") if source is not None else ctx.field("mark")
    url = site_job_url(job)
    allowed = lifecycle.marks(job, ctx.portal.regions)
    problem = None
    package = job.is_export and not chosen and value == DriveState.RECEIVED.value
    if package:  # an export's empty drives: the package arrived, the job is Received
        if job.state != JobState.SHIPPING:
            problem = f"job {job.ref.name} is {job.state}, not Shipping"
    elif value not in lifecycle.MARKS:
        problem = "choose Received or NeverReceived"
    elif not chosen:
        problem = "tick the drives to mark first"
    else:
        refused = [d for d in chosen if DriveState(value) not in allowed.get(d, ())]
        if refused:
            problem = (f"drive {rules.quote(refused[0])} cannot be marked {value} now "
                       f"(job {job.ref.name} is {job.state})")
    if problem is not None:
        if ctx.request.method == "POST":
            ctx.flash(problem[:1].upper() + problem[1:] + ".", "error")
            return ctx.redirect(url)
        return ctx.render("confirm_mark.html", status=400, job=job, problem=problem,
                          mark=value, drives=[], after=job.state)
    target = DriveState(value)
    body = (lifecycle.mark_body(job, target, chosen) if not package
            else {"properties": {"state": JobState.RECEIVED.value}})
    after = JobState(body["properties"].get("state", job.state))
    if ctx.request.method == "GET":
        return ctx.render("confirm_mark.html", job=job, problem=None, mark=target.value,
                          drives=chosen, after=after)
    n = len(chosen)
    if package:
        return _apply(ctx, job, body, "The empty drives arrived; job {job.ref.name} is "
                      "{job.state}: write them with pipeline export.")
    return _apply(ctx, job, body, f"Marked {n} drive{'s' if n != 1 else ''} {target.value}; "
                  "job {job.ref.name} is {job.state}.")


def undo(ctx: Ctx) -> Response:
    """GET: what undoing this drive's mark does; POST: undo it (before its copy starts)."""
    job = _load(ctx)
    if isinstance(job, Response):
        return job
    drive = job.drive(ctx.params["drive"])
    if drive is None:
        raise NotFound(f"drive {rules.quote(ctx.params['drive'])} is not in {job.ref}",
                       "NotFound")
    ok = drive.drive_id in lifecycle.undoable(job, ctx.portal.regions)
    body = lifecycle.undo_body(job, drive.drive_id)
    after = JobState(body["properties"].get("state", job.state))
    if ctx.request.method == "GET":
        return ctx.render("confirm_undo.html", job=job, drive=drive, allowed=ok, after=after)
    if not ok:
        ctx.flash(f"The mark of drive {drive.drive_id} can no longer be undone (job "
                  f"{job.ref.name} is {job.state}, drive {drive.state}).", "error")
        return ctx.redirect(site_job_url(job))
    return _apply(ctx, job, body, f"Drive {drive.drive_id} is Specified again (was "
                  f"{drive.state.value}); job {{job.ref.name}} is {{job.state}}.")


def record_return(ctx: Ctx) -> Response:
    """The return package: carrier, tracking number, ship date; Packaging -> Completed."""
    job = _load(ctx)
    if isinstance(job, Response):
        return job
    url = site_job_url(job)
    values = {k: ctx.field(k) for k in ("carrierName", "trackingNumber", "shipDate")}
    region = ctx.portal.regions.get(job.location)
    errors = forms.check_package(values, region.supported_carriers if region else (), "Return")
    if ctx.field("etag") != job.etag:
        return ctx.changed(job, url)
    if errors:
        return ctx.fail(url, values, errors)
    body = lifecycle.return_body(job, values["carrierName"], values["trackingNumber"],
                                 values["shipDate"])
    try:
        job = ctx.portal.catalog.update_job(job.ref, body, if_match=job.etag, role=ctx.role)
    except (BadRequest, Conflict) as exc:
        return ctx.fail(url, values, {"_form": forms.plain(str(exc))})
    except PreconditionFailed:
        return ctx.changed(ctx.portal.catalog.get_job(job.ref), url)
    ctx.flash(f"Return recorded: {values['carrierName']}, tracking number "
              f"{values['trackingNumber']}; job {job.ref.name} is {job.state}.")
    return ctx.redirect(url)


def close(ctx: Ctx) -> Response:
    """GET: what closing does; POST: Completed -> Closed."""
    job = _load(ctx)
    if isinstance(job, Response):
        return job
    body = lifecycle.close_body()
    if ctx.request.method == "GET":
        ok = lifecycle.allowed(job, body, ctx.portal.regions, Role.SITE)
        return ctx.render("confirm_close.html", job=job, allowed=ok)
    return _apply(ctx, job, body, "Job {job.ref.name} is {job.state}.")


def log_view(ctx: Ctx) -> Response:
    """A copy log of any job (the site sees every subscription's)."""
    job = ctx.portal.catalog.get_job(_ref(ctx))
    return copylogs.page(ctx, job, site_job_url(job), _log_url(job))


def log_download(ctx: Ctx) -> Response:
    """The same log as a file."""
    return copylogs.download(ctx, ctx.portal.catalog.get_job(_ref(ctx)))


def routes(ep: Callable[..., Any]) -> list[BaseRoute]:
    """The site's routes, relative to the portal's mount; ``ep`` is ``Portal.endpoint``."""
    job = "/site/jobs/{sub}/{rg}/{name}"
    get, both = ["GET"], ["GET", "POST"]
    return [
        Route("/site", ep(jobs, SITE), methods=get),
        Route(job, ep(job_page, SITE), methods=get),
        Route(job + "/mark", ep(mark, SITE), methods=both),
        Route(job + "/drives/{drive}/undo", ep(undo, SITE), methods=both),
        Route(job + "/return", ep(record_return, SITE), methods=["POST"]),
        Route(job + "/close", ep(close, SITE), methods=both),
        Route(job + "/drives/{drive}/logs/{kind}", ep(log_view, SITE), methods=get),
        Route(job + "/drives/{drive}/logs/{kind}/download", ep(log_download, SITE),
              methods=get),
    ]
