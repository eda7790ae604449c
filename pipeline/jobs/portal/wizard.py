"""The create-job wizard, in the seed's steps: drives, contact, job name, region, return shipping.

The draft lives in the owner's session (server memory), never in hidden form
fields: its drive list carries the recovery passwords, which no page but the
keys page may show.  Each step is checked when posted, by the same code the
REST API runs (``model.parse_new_job`` on the job body built so far, ``rules``
for names and carriers), and a refusal is shown next to the field it names.
"Create" is one ``catalog.put_job(..., if_none_match=True)``: the portal makes
exactly the job a ``PUT`` with that body would, and never replaces one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from pipeline.jobs import model, rules
from pipeline.jobs.errors import ApiError, BadRequest, NotFound, PreconditionFailed
from pipeline.jobs.model import JobRef
from pipeline.jobs.portal.web import Ctx, job_url

STEPS = (("drives", "Drives"), ("contact", "Contact"), ("details", "Job name"),
         ("region", "Region"), ("carrier", "Return shipping"), ("review", "Review"))
STEP_NAMES = tuple(name for name, _ in STEPS)

ADDRESS_FIELDS = (("recipientName", "Recipient name", True), ("email", "Email", True),
                  ("phone", "Phone", True), ("streetAddress1", "Street address", True),
                  ("streetAddress2", "Street address, line 2", False),
                  ("city", "City", True), ("stateOrProvince", "State or province", False),
                  ("postalCode", "Postal code", True), ("countryOrRegion", "Country", True))
LOG_LEVELS = ("Error", "Verbose")
_STORAGE_NAME = re.compile(r"[a-z0-9]{3,24}\Z")
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
    if "contact" in draft:
        props["returnAddress"] = dict(draft["contact"])
    if "carrier" in draft:
        props["returnShipping"] = dict(draft["carrier"])
    return {"location": region, "properties": props}


def field_errors(exc: ApiError, paths: Mapping[str, str]) -> dict[str, str]:
    """Put a refusal next to the field its message names (``paths``: API path -> field)."""
    message = str(exc)
    for path, name in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        if path in message:
            return {name: message}
    return {"_form": message}


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


def discard(ctx: Ctx) -> Response:
    ctx.owner.draft.clear()
    ctx.flash("The draft job was discarded.")
    return ctx.redirect("/portal/jobs")


def step(ctx: Ctx) -> Response:
    name = ctx.params["step"]
    if name not in STEP_NAMES:
        raise NotFound("there is no such step in the create wizard", "NotFound")
    draft = ctx.owner.draft
    missing = next_missing(draft)
    if STEP_NAMES.index(name) > STEP_NAMES.index(missing):
        return ctx.redirect(f"/portal/new/{missing}")
    if ctx.request.method == "POST":
        return _POSTS[name](ctx, draft)
    return _show(ctx, name, {}, {})


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
    return ctx.render(f"new_{name}.html", status=status, steps=STEPS, step=name,
                      done=[s for s in STEP_NAMES if s in draft], draft=_visible(draft),
                      region=region, values=values, errors=errors, name_rule=name_rule(),
                      address_fields=ADDRESS_FIELDS, log_levels=LOG_LEVELS, **extra)


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


def _post_drives(ctx: Ctx, draft: dict[str, Any]) -> Response:
    upload, text = ctx.file("drivelist"), ctx.field("drivelist_text")
    if upload is not None and text:
        return _show(ctx, "drives", {}, {"drivelist": "give the drive list once: upload the "
                                         "file or paste it, not both"}, 400)
    if upload is None and not text:
        return _show(ctx, "drives", {}, {"drivelist": "upload the file `pipeline journal export` "
                                         "wrote, or paste its content"}, 400)
    source = upload[0][:100] if upload is not None else "pasted"
    raw = upload[1] if upload is not None else text.encode()
    try:
        drives = _parse_drive_list(raw)
        _probe(ctx, {**draft, "drives": drives})
    except BadRequest as exc:
        # never refill the text area: what was pasted holds recovery passwords
        return _show(ctx, "drives", {}, {"drivelist": str(exc)}, 400)
    draft["drives"] = drives
    draft["drives_source"] = source
    return _next(ctx, "drives")


def _post_contact(ctx: Ctx, draft: dict[str, Any]) -> Response:
    contact = {k: ctx.field(k) for k, _, _ in ADDRESS_FIELDS if ctx.field(k)}
    try:
        _probe(ctx, {**draft, "contact": contact})
    except BadRequest as exc:
        paths = {f"properties.returnAddress.{k}": k for k, _, _ in ADDRESS_FIELDS}
        return _show(ctx, "contact", contact, field_errors(exc, paths), 400)
    draft["contact"] = contact
    return _next(ctx, "contact")


def _post_details(ctx: Ctx, draft: dict[str, Any]) -> Response:
    values = {"name": ctx.field("name"), "resourceGroup": ctx.field("resourceGroup"),
              "storageAccount": ctx.field("storageAccount"), "logLevel": ctx.field("logLevel")}
    errors: dict[str, str] = {}
    try:
        rules.check_job_name(values["name"])
    except BadRequest as exc:
        errors["name"] = str(exc)
    try:
        rules.check_resource_group(values["resourceGroup"])
    except BadRequest as exc:
        errors["resourceGroup"] = str(exc)
    if values["logLevel"] not in LOG_LEVELS:
        errors["logLevel"] = "choose Error or Verbose"
    storage_id = None
    if "resourceGroup" not in errors:
        try:
            storage_id = storage_account_id(values["storageAccount"], ctx.owner.subject,
                                            values["resourceGroup"])
        except BadRequest as exc:
            errors["storageAccount"] = str(exc)
    if not errors:
        ref = JobRef.parse(ctx.owner.subject, values["resourceGroup"], values["name"])
        try:
            ctx.portal.catalog.get_job(ref)
            errors["name"] = (f"{ref} already exists; choose another name (a job's name is "
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
        return _show(ctx, "details", values, errors, 400)
    draft["details"] = details
    return _next(ctx, "details")


def _post_region(ctx: Ctx, draft: dict[str, Any]) -> Response:
    chosen = ctx.field("region")
    region = ctx.portal.regions.get(chosen)
    if region is None:
        return _show(ctx, "region", {"region": chosen},
                     {"region": "choose one of the listed data centers"}, 400)
    draft["region"] = region.name
    carrier = draft.get("carrier", {}).get("carrierName")
    if carrier is not None and carrier not in region.supported_carriers:
        draft.pop("carrier")  # the new region's carriers differ: ask again
    return _next(ctx, "region")


def _post_carrier(ctx: Ctx, draft: dict[str, Any]) -> Response:
    carrier = {"carrierName": ctx.field("carrierName"),
               "carrierAccountNumber": ctx.field("carrierAccountNumber")}
    try:
        region = ctx.portal.catalog.location(draft["region"])
        carrier["carrierName"] = rules.check_carrier(carrier["carrierName"],
                                                     region.supported_carriers, region.name)
        _probe(ctx, {**draft, "carrier": carrier})
    except BadRequest as exc:
        errors = ({"carrierName": str(exc)} if exc.code == "UnsupportedCarrier" else
                  field_errors(exc, {"properties.returnShipping.carrierAccountNumber":
                                     "carrierAccountNumber",
                                     "properties.returnShipping.carrierName": "carrierName"}))
        return _show(ctx, "carrier", carrier, errors, 400)
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
        ctx.flash(f"{ref} was created meanwhile (another window or client); choose another "
                  "name.", "error")
        return ctx.redirect("/portal/new/details")
    except BadRequest as exc:
        return _show(ctx, "review", {}, {"_form": str(exc)}, 400)
    draft.clear()
    ctx.flash(f"Job {job.ref.name} created. Ship the drives to the address below, then enter "
              "the carrier and tracking number.")
    return ctx.redirect(job_url(job))


_POSTS = {"drives": _post_drives, "contact": _post_contact, "details": _post_details,
          "region": _post_region, "carrier": _post_carrier, "review": _post_review}
