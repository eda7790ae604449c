"""The create-job wizard, in the seed's steps: drives, contact, job name, region, return shipping.

The first step chooses the direction: an import job (its drive list from `pipeline
journal export`) or an export job (the blobs to bring back: paths and prefixes, one a
line, or a blob list file in the account; the customer ships empty drives).

The draft lives in the owner's session (server memory), never in hidden form
fields: its drive list carries the recovery passwords, which no page but the
keys page may show.  Each step is checked when posted, by the same code the
REST API runs (``model.parse_new_job`` on the job body built so far, ``rules``
for names and carriers), and a refusal is shown next to the field it names.
"Create" is one ``catalog.put_job(..., if_none_match=True)``: the portal makes
exactly the job a ``PUT`` with that body would, and never replaces one.

Every step's POST answers with a redirect (POST-redirect-GET): to the next step,
or back to the same step with what was typed and every error at once
(``Ctx.fail``), or to the previous step ("Previous" keeps what was typed on
this one, unchecked, for when the person comes back).  Each form carries the
draft's id: a form from a tab whose draft was created or discarded in another
window says so ("created in another window: open job X") instead of starting a
new draft from half a form.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from pipeline.jobs import model, rules
from pipeline.jobs.catalog import ENDED  # an ended job's drives are free again
from pipeline.jobs.errors import ApiError, BadRequest, NotFound, PreconditionFailed
from pipeline.jobs.model import JobRef
from pipeline.jobs.portal import forms
from pipeline.jobs.portal.forms import ADDRESS_FIELDS
from pipeline.jobs.portal.web import Ctx, job_url

STEPS = (("drives", "Drives"), ("contact", "Contact"), ("details", "Job name"),
         ("region", "Region"), ("carrier", "Return shipping"), ("review", "Review"))
STEP_NAMES = tuple(name for name, _ in STEPS)

LOG_LEVELS = ("Error", "Verbose")
_STORAGE_NAME = re.compile(r"[a-z0-9]{3,24}\Z")
MAX_FINISHED = 20  # drafts a session remembers the end of (for stale tabs)
_PLACEHOLDER_STORAGE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
                        "probe/providers/Microsoft.Storage/storageAccounts/probe")


def name_rule() -> str:
    """The job-name rule, as ``rules.check_job_name`` enforces it."""
    return (f"{rules.JOB_NAME_MIN}-{rules.JOB_NAME_MAX} characters: lowercase letters a-z, "
            "digits, '-' and '_'; starts with a letter; no spaces. It cannot be changed later.")


def next_missing(draft: Mapping[str, Any]) -> str:
    """The first step whose answer the draft lacks ('review' when none)."""
    for step in STEP_NAMES[:-1]:
        if step not in draft:
            return step
    return "review"


def storage_account_id(value: str, subscription_id: str, resource_group: str) -> str:
    """A storage account's name (in this subscription and resource group) or its full ID."""
    if _STORAGE_NAME.match(value):
        return (f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/"
                f"Microsoft.Storage/storageAccounts/{value}")
    if value.startswith("/subscriptions/") and "/storageAccounts/" in value:
        return value
    raise BadRequest("give the storage account's name (3-24 lowercase letters and digits) or "
                     "its resource ID (/subscriptions/.../storageAccounts/NAME)",
                     "InvalidStorageAccount")


def drives_in_use(ctx: Ctx, drive_ids: list[str]) -> list[str]:
    """Warnings: the drives already in another active job of this subscription (a drive
    ships in one job at a time; an ended job's drives are free again)."""
    wanted = set(drive_ids)
    found: list[str] = []
    token = None
    while True:
        page = ctx.portal.catalog.list_jobs(ctx.owner.subject, top=100, skip_token=token)
        for job in page.jobs:
            if job.state in ENDED:
                continue
            for drive in job.drives:
                if drive.drive_id in wanted:
                    found.append(f"Drive {drive.drive_id} is already in job {job.ref.name} "
                                 f"({job.state}) of this subscription; a drive ships in one "
                                 "job at a time. Check the drive list, or cancel that job.")
        token = page.next_token
        if token is None:
            return found


def job_body(portal_regions: Mapping[str, Any], subscription_id: str,
             draft: Mapping[str, Any]) -> dict[str, Any]:
    """The REST API's PUT body for the draft so far (placeholders where a step is missing)."""
    details = draft.get("details", {})
    region = draft.get("region") or sorted(portal_regions)[0]
    props: dict[str, Any] = {
        "storageAccountId": details.get("storageAccountId", _PLACEHOLDER_STORAGE),
        "jobType": "Import", "diagnosticsPath": "waimportexport",
        "logLevel": details.get("logLevel", "Error"), "backupDriveManifest": False,
        "driveList": draft.get("drives", []),
    }
    if "export" in draft:  # the customer ships empty drives; the site lists them
        props.update(jobType="Export", export=draft["export"])
        props.pop("driveList")
    if "contact" in draft:
        props["returnAddress"] = dict(draft["contact"])
    if "carrier" in draft:
        props["returnShipping"] = dict(draft["carrier"])
    return {"location": region, "properties": props}


def field_errors(exc: ApiError, paths: Mapping[str, str]) -> dict[str, str]:
    """Put a refusal, in words, next to the field its message names (``paths``: API path ->
    field)."""
    message = str(exc)
    for path, name in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        if path in message:
            return {name: forms.plain(message)}
    return {"_form": forms.plain(message)}


def _probe(ctx: Ctx, draft: Mapping[str, Any]) -> None:
    """Run the REST API's own checks on the job body so far; raise what they refuse."""
    ref = JobRef.parse(ctx.owner.subject, "probe", "probe")
    model.parse_new_job(ref, job_body(ctx.portal.regions, ctx.owner.subject, draft),
                        ctx.portal.regions)


def _parse_drive_list(raw: bytes) -> list[Any]:
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(raw.decode("utf-8-sig"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise BadRequest("the drive list is not UTF-8 text; upload the file `pipeline journal "
                         "export` printed", "InvalidDriveList") from None
    except (ValueError, RecursionError) as exc:  # the message names a position, not content
        raise BadRequest(f"the drive list is not valid JSON: {str(exc)[:100]}",
                         "InvalidDriveList") from None
    if isinstance(value, dict) and isinstance(value.get("driveList"), list):
        value = value["driveList"]
    if not isinstance(value, list):
        raise BadRequest("the drive list must be the JSON array `pipeline journal export "
                         "--journal-dir JDIR` prints", "InvalidDriveList")
    return value


# --------------------------------------------------------------------------- pages


def start(ctx: Ctx) -> Response:
    return ctx.redirect(f"/portal/new/{next_missing(ctx.owner.draft)}")


def _finish(ctx: Ctx, href: str = "", name: str = "") -> None:
    """Remember what became of the draft (created as a job, or discarded), then drop it."""
    draft = ctx.owner.draft
    finished = ctx.owner.finished
    if draft.get("id"):
        while len(finished) >= MAX_FINISHED:
            finished.pop(next(iter(finished)))
        finished[draft["id"]] = (href, name)
    draft.clear()


def _stale(ctx: Ctx) -> Response | None:
    """A form from another tab's draft: say what became of it instead of acting on it."""
    given = ctx.field("draft")
    current = ctx.owner.draft.get("id", "")
    if given == current or (not given and not current):
        return None
    href, name = ctx.owner.finished.get(given, ("", ""))
    if href:
        ctx.flash(f"This draft was created in another window as job {name}; nothing was done "
                  "here.", "error", href, f"Open job {name}")
        return ctx.redirect("/portal/jobs")
    if given in ctx.owner.finished:
        ctx.flash("This draft was discarded in another window; nothing was done here.", "error")
        return ctx.redirect("/portal/jobs")
    if not given:  # a first step posted from a tab older than the draft another tab began
        ctx.flash("Another window started a new job meanwhile; this page continues it.",
                  "error")
        return ctx.redirect(f"/portal/new/{next_missing(ctx.owner.draft)}")
    ctx.flash("This page belongs to a draft that no longer exists; start again here.", "error")
    return ctx.redirect(f"/portal/new/{next_missing(ctx.owner.draft)}")


def discard(ctx: Ctx) -> Response:
    """GET: what discarding drops (nothing changes); POST: drop the draft."""
    draft = ctx.owner.draft
    if ctx.request.method == "GET":
        return ctx.render("confirm_discard.html", draft=_visible(draft),
                          has_draft=bool(draft), back=f"/portal/new/{next_missing(draft)}")
    stale = _stale(ctx)
    if stale is not None:
        return stale
    _finish(ctx)
    ctx.flash("The draft job was discarded.")
    return ctx.redirect("/portal/jobs")


def step(ctx: Ctx) -> Response:
    name = ctx.params["step"]
    if name not in STEP_NAMES:
        raise NotFound("there is no such step in the create wizard", "NotFound")
    draft = ctx.owner.draft
    if ctx.request.method == "POST":
        stale = _stale(ctx)
        if stale is not None:
            return stale
    missing = next_missing(draft)
    if STEP_NAMES.index(name) > STEP_NAMES.index(missing):
        return ctx.redirect(f"/portal/new/{missing}")
    if ctx.request.method == "POST":
        if ctx.field("nav") == "previous" and name != STEP_NAMES[0]:
            return _previous(ctx, name)
        return _POSTS[name](ctx, draft)
    kept = ctx.kept_form()
    return _show(ctx, name, kept.values, kept.errors)


def _previous(ctx: Ctx, name: str) -> Response:
    """Back one step, keeping what was typed here (unchecked) for when the person returns;
    never the drive list's text (it holds recovery passwords)."""
    keys = {"contact": forms.ADDRESS_KEYS,
            "details": ("name", "resourceGroup", "storageAccount", "logLevel"),
            "region": ("region",), "carrier": ("carrierName", "carrierAccountNumber")}
    typed = {k: ctx.field(k) for k in keys.get(name, ())}
    if typed:
        ctx.fail(f"/portal/new/{name}", typed, {})
    return ctx.redirect(f"/portal/new/{STEP_NAMES[STEP_NAMES.index(name) - 1]}")


def _show(ctx: Ctx, name: str, values: Mapping[str, Any], errors: Mapping[str, str],
          status: int = 200) -> Response:
    draft = ctx.owner.draft
    regions = ctx.portal.regions
    region = regions.get(draft.get("region", ""))
    extra: dict[str, Any] = {}
    if name == "region":
        extra["regions"] = [regions[k] for k in sorted(regions)]
    if name in ("carrier", "review") and region is not None:
        extra["carriers"] = region.supported_carriers
    warnings = []
    if name in ("drives", "review") and draft.get("drives"):
        warnings = drives_in_use(ctx, [d.get("driveId", "") for d in draft["drives"]
                                       if isinstance(d, dict)])
    index = STEP_NAMES.index(name)
    return ctx.render(f"new_{name}.html", status=status, steps=STEPS, step=name,
                      done=[s for s in STEP_NAMES if s in draft], draft=_visible(draft),
                      draft_id=draft.get("id", ""), region=region, values=values,
                      errors=errors, name_rule=name_rule(), log_levels=LOG_LEVELS,
                      warnings=warnings, previous=STEP_NAMES[index - 1] if index else None,
                      **extra)


def _visible(draft: Mapping[str, Any]) -> dict[str, Any]:
    """The draft as pages may show it: the drive list without its recovery passwords."""
    shown = {k: v for k, v in draft.items() if k != "drives"}
    shown["drives"] = [{k: v for k, v in d.items() if k != "bitLockerKey"}
                       for d in draft.get("drives", []) if isinstance(d, dict)]
    return shown


def _next(ctx: Ctx, after: str) -> Response:
    missing = next_missing(ctx.owner.draft)
    following = STEP_NAMES[STEP_NAMES.index(after) + 1]
    if missing == "review":  # complete (an edit from the review page): back to the review
        return ctx.redirect("/portal/new/review")
    target = following if STEP_NAMES.index(following) <= STEP_NAMES.index(missing) else missing
    return ctx.redirect(f"/portal/new/{target}")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _post_export(ctx: Ctx, draft: dict[str, Any]) -> Response:
    """The export choice: blob paths and prefixes (one a line), or a blob list file."""
    url = "/portal/new/drives"
    typed = {k: ctx.field(k) for k in ("blobPathPrefix", "blobPath", "blobListBlobPath")}
    listed = typed["blobListBlobPath"].strip()
    blobs = {k: _lines(typed[k]) for k in ("blobPath", "blobPathPrefix") if _lines(typed[k])}
    if listed and blobs:
        return ctx.fail(url, {**typed, "jobType": "Export"}, {
            "blobListBlobPath": "Give the blobs one way: paths and prefixes, or a blob list "
                                "file, not both"})
    export = {"blobListBlobPath": listed} if listed else {"blobList": blobs}
    try:
        _probe(ctx, {**draft, "drives": [], "export": export})
    except BadRequest as exc:
        errors = field_errors(exc, {"properties.export.blobList.blobPathPrefix":
                                    "blobPathPrefix",
                                    "properties.export.blobList.blobPath": "blobPath",
                                    "properties.export.blobListBlobPath": "blobListBlobPath",
                                    "properties.export.blobList": "blobPathPrefix"})
        return ctx.fail(url, {**typed, "jobType": "Export"}, errors)
    draft.setdefault("id", secrets.token_urlsafe(12))
    draft.update(drives=[], export=export, drives_source="export")
    return _next(ctx, "drives")


def _post_drives(ctx: Ctx, draft: dict[str, Any]) -> Response:
    url = "/portal/new/drives"
    if ctx.field("jobType") == "Export":
        return _post_export(ctx, draft)
    upload, text = ctx.file("drivelist"), ctx.field("drivelist_text")
    if upload is not None and text:
        return ctx.fail(url, {}, {"drivelist": "Give the drive list once: upload the file or "
                                  "paste it, not both"})
    if upload is None and not text:
        if draft.get("drives") and "export" not in draft:  # "Next": keep the drives given
            return _next(ctx, "drives")
        return ctx.fail(url, {}, {"drivelist": "Upload the file `pipeline journal export` "
                                  "wrote, or paste its content"})
    source = upload[0][:100] if upload is not None else "pasted"
    raw = upload[1] if upload is not None else text.encode()
    try:
        drives = _parse_drive_list(raw)
        _probe(ctx, {**draft, "drives": drives})
    except BadRequest as exc:
        # never refill the text area: what was pasted holds recovery passwords
        return ctx.fail(url, {}, {"drivelist": forms.plain(str(exc))})
    draft.setdefault("id", secrets.token_urlsafe(12))
    draft.pop("export", None)
    draft["drives"] = drives
    draft["drives_source"] = source
    for warning in drives_in_use(ctx, [d["driveId"] for d in drives]):
        ctx.flash(warning, "warning")
    return _next(ctx, "drives")


def _post_contact(ctx: Ctx, draft: dict[str, Any]) -> Response:
    typed = {k: ctx.field(k) for k in forms.ADDRESS_KEYS}
    errors = forms.check_address(typed)
    contact = forms.address_values(typed)
    if not errors:
        try:
            _probe(ctx, {**draft, "contact": contact})
        except BadRequest as exc:
            paths = {f"properties.returnAddress.{k}": k for k, _, _ in ADDRESS_FIELDS}
            errors = field_errors(exc, paths)
    if errors:
        return ctx.fail("/portal/new/contact", typed, errors)
    draft["contact"] = contact
    return _next(ctx, "contact")


def _post_details(ctx: Ctx, draft: dict[str, Any]) -> Response:
    values = {"name": ctx.field("name"), "resourceGroup": ctx.field("resourceGroup"),
              "storageAccount": ctx.field("storageAccount"), "logLevel": ctx.field("logLevel")}
    errors: dict[str, str] = {}
    for key, check in (("name", rules.check_job_name),
                       ("resourceGroup", rules.check_resource_group)):
        try:
            check(values[key])
        except BadRequest as exc:
            errors[key] = forms.plain(str(exc))
    storage_id = None
    if not values["storageAccount"]:
        errors["storageAccount"] = "Storage account is required"
    elif "resourceGroup" not in errors:
        try:
            storage_id = storage_account_id(values["storageAccount"], ctx.owner.subject,
                                            values["resourceGroup"])
        except BadRequest as exc:
            errors["storageAccount"] = forms.plain(str(exc))
    if values["logLevel"] not in LOG_LEVELS:
        errors["logLevel"] = "Copy log: choose Error or Verbose"
    if not errors:
        ref = JobRef.parse(ctx.owner.subject, values["resourceGroup"], values["name"])
        try:
            ctx.portal.catalog.get_job(ref)
            errors["name"] = (f"Job {ref.name} already exists in resource group "
                              f"{ref.resource_group}; choose another name (a job's name is "
                              "unique in its resource group)")
        except NotFound:
            pass
    if not errors:
        details = {**values, "storageAccountId": storage_id}
        try:
            _probe(ctx, {**draft, "details": details})
        except BadRequest as exc:
            errors = field_errors(exc, {"properties.storageAccountId": "storageAccount",
                                        "properties.logLevel": "logLevel"})
    if errors:
        return ctx.fail("/portal/new/details", values, errors)
    draft["details"] = details
    return _next(ctx, "details")


def _post_region(ctx: Ctx, draft: dict[str, Any]) -> Response:
    chosen = ctx.field("region")
    region = ctx.portal.regions.get(chosen)
    if region is None:
        return ctx.fail("/portal/new/region", {"region": chosen},
                        {"region": "Data center: choose one of the listed data centers"})
    draft["region"] = region.name
    carrier = draft.get("carrier", {}).get("carrierName")
    if carrier is not None and carrier not in region.supported_carriers:
        draft.pop("carrier")  # the new region's carriers differ: ask again
    return _next(ctx, "region")


def _post_carrier(ctx: Ctx, draft: dict[str, Any]) -> Response:
    carrier = {"carrierName": ctx.field("carrierName"),
               "carrierAccountNumber": ctx.field("carrierAccountNumber")}
    region = ctx.portal.catalog.location(draft["region"])
    errors = forms.check_return_shipping(carrier["carrierName"],
                                         carrier["carrierAccountNumber"],
                                         region.supported_carriers)
    if not errors:
        try:
            _probe(ctx, {**draft, "carrier": carrier})
        except BadRequest as exc:
            errors = field_errors(exc, {"properties.returnShipping.carrierAccountNumber":
                                        "carrierAccountNumber",
                                        "properties.returnShipping.carrierName": "carrierName"})
    if errors:
        return ctx.fail("/portal/new/carrier", carrier, errors)
    draft["carrier"] = carrier
    return _next(ctx, "carrier")


def _post_review(ctx: Ctx, draft: dict[str, Any]) -> Response:
    details = draft["details"]
    ref = JobRef.parse(ctx.owner.subject, details["resourceGroup"], details["name"])
    body = job_body(ctx.portal.regions, ctx.owner.subject, draft)
    try:
        job, _ = ctx.portal.catalog.put_job(ref, body, if_none_match=True)
    except PreconditionFailed:
        draft.pop("details")
        ctx.flash(f"Job {ref.name} was created meanwhile in resource group "
                  f"{ref.resource_group} (by another window or a client); choose another "
                  "name.", "error", job_url(ctx.portal.catalog.get_job(ref)),
                  f"Open job {ref.name}")
        return ctx.redirect("/portal/new/details")
    except BadRequest as exc:
        return ctx.fail("/portal/new/review", {}, {"_form": forms.plain(str(exc))})
    _finish(ctx, job_url(job), job.ref.name)
    ctx.flash(f"Job {job.ref.name} created. Ship the {'empty ' if job.is_export else ''}"
              "drives to the address below, then enter the carrier and tracking number.")
    return ctx.redirect(job_url(job))


_POSTS = {"drives": _post_drives, "contact": _post_contact, "details": _post_details,
          "region": _post_region, "carrier": _post_carrier, "review": _post_review}
