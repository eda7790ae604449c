"""Import and export jobs as values: ARM JSON in (PUT/PATCH bodies), dataclasses, ARM JSON out.

Pure, like ``rules``: the catalog stores what these functions return and the
REST API returns ``Job.to_resource()``.  The shapes are those of Azure's
``Microsoft.ImportExport`` 2016-11-01 REST spec (``JobResponse``, ``JobDetails``,
``DriveStatus``, ``UpdateJobParameters``), so the Azure SDKs read them unchanged.

Recovery passwords (``bitLockerKey``) never live in a ``Job``: parsing returns
them beside the job, the catalog encrypts them, and only ``listBitLockerKeys``
reads them back.  A ``Job`` can therefore be logged, rendered or returned by
any endpoint without leaking a key.

Unknown fields are refused (400, naming the field) rather than ignored, so a
typo in a request never silently drops, say, the return address; ARM's
read-only fields (``percentComplete``, ``provisioningState``, ...) are ignored
when a client echoes them back.

An export job (``jobType: Export``) names its blobs in ``properties.export``:
``blobList`` (``blobPath`` and ``blobPathPrefix`` lists) or ``blobListBlobPath``
(a blob in the account that lists them; the 2016-11-01 spec spells it
``blobListblobPath``, and both spellings are read and returned).  It lists no
drives: the site adds them as it writes them (``rules``), and records what did
not fit in ``incompleteBlobListUri``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.jobs import rules
from pipeline.jobs.errors import BadRequest, Conflict
from pipeline.jobs.regions import Region
from pipeline.jobs.rules import DriveState, JobState, Role

PROVIDER = "Microsoft.ImportExport"
RESOURCE_TYPE = "Microsoft.ImportExport/jobs"
MAX_TAGS = 50
MAX_STRING = 256
MAX_LONG_STRING = 2048

# JobDetails fields kept in Job.details, in the order the API returns them.
DETAIL_FIELDS = ("storageAccountId", "jobType", "returnAddress", "returnShipping",
                 "shippingInformation", "deliveryPackage", "returnPackage", "diagnosticsPath",
                 "logLevel", "backupDriveManifest", "encryptionKey", "export",
                 "incompleteBlobListUri")
# Job.details also keeps the resource's "identity" and the "systemData" actors (not properties)
_READ_ONLY = frozenset({"percentComplete", "provisioningState", "shippingInformation",
                        "returnPackage", "incompleteBlobListUri"})
_KEK_TYPES = ("MicrosoftManaged", "CustomerManaged")
_IDENTITY_TYPES = ("None", "SystemAssigned", "UserAssigned")
DEFAULT_ENCRYPTION_KEY = {"kekType": "MicrosoftManaged"}
DEFAULT_IDENTITY = {"type": "None"}
_PATCHABLE = frozenset({"cancelRequested", "state", "returnAddress", "returnShipping",
                        "deliveryPackage", "returnPackage", "logLevel", "backupDriveManifest",
                        "driveList", "incompleteBlobListUri"})
_ADDRESS_REQUIRED = ("recipientName", "streetAddress1", "city", "postalCode", "countryOrRegion",
                     "phone", "email")
_ADDRESS_OPTIONAL = ("streetAddress2", "stateOrProvince")
_DRIVE_IDENTITY = ("manifestFile", "manifestHash", "driveHeaderHash")
# A drive's progress is the outcome of its copy once it is one of these: no longer patched.
_COPY_ENDED = frozenset({DriveState.COMPLETED, DriveState.COMPLETED_MORE_INFO,
                         DriveState.SHIPPED_BACK})
_DRIVE_PROGRESS = ("copyStatus", "percentComplete", "bytesSucceeded", "errorLogUri",
                   "verboseLogUri", "manifestUri")


@dataclass(frozen=True, slots=True)
class JobRef:
    """Which job: subscription, resource group, name (all three checked by ``parse``)."""

    subscription_id: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, subscription_id: object, resource_group: object, name: object) -> JobRef:
        return cls(rules.check_subscription_id(subscription_id),
                   rules.check_resource_group(resource_group), rules.check_job_name(name))

    @property
    def resource_id(self) -> str:
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/{PROVIDER}/jobs/{self.name}")

    def __str__(self) -> str:
        return f"job {self.name} (resource group {self.resource_group})"


@dataclass(frozen=True, slots=True)
class JobDrive:
    """One drive of a job, as ``DriveStatus`` minus its recovery password."""

    drive_id: str
    manifest_file: str
    manifest_hash: str
    drive_header_hash: str | None = None
    state: DriveState = DriveState.SPECIFIED
    copy_status: str | None = None
    percent_complete: int = 0
    bytes_succeeded: int = 0
    error_log_uri: str | None = None
    verbose_log_uri: str | None = None
    manifest_uri: str | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "driveId": self.drive_id, "manifestFile": self.manifest_file,
            "manifestHash": self.manifest_hash, "driveHeaderHash": self.drive_header_hash,
            "state": self.state.value, "copyStatus": self.copy_status,
            "percentComplete": self.percent_complete, "verboseLogUri": self.verbose_log_uri,
            "errorLogUri": self.error_log_uri, "manifestUri": self.manifest_uri,
            "bytesSucceeded": self.bytes_succeeded,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Job:
    """An import job as stored: no secrets, ``version`` bumped by every write (the ETag)."""

    ref: JobRef
    location: str
    details: Mapping[str, Any]
    drives: tuple[JobDrive, ...]
    state: JobState = JobState.CREATING
    cancel_requested: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    version: int = 0
    created: str = ""
    updated: str = ""

    @property
    def is_export(self) -> bool:
        return self.details.get("jobType") == "Export"

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    @property
    def percent_complete(self) -> int:
        """Mean of the drives that arrived (a NeverReceived drive has nothing to copy)."""
        counted = [d.percent_complete for d in self.drives
                   if d.state != DriveState.NEVER_RECEIVED]
        return sum(counted) // len(counted) if counted else 0

    def drive(self, drive_id: str) -> JobDrive | None:
        return next((d for d in self.drives if d.drive_id == drive_id), None)

    def to_resource(self) -> dict[str, Any]:
        """The ARM ``JobResponse`` body: what GET, PUT, PATCH and list return."""
        props: dict[str, Any] = {k: copy.deepcopy(self.details[k])
                                 for k in DETAIL_FIELDS if self.details.get(k) is not None}
        props.update({
            "state": self.state.value, "cancelRequested": self.cancel_requested,
            "percentComplete": self.percent_complete,
            "driveList": [d.to_api() for d in self.drives],
            "provisioningState": "Succeeded",
        })
        props.setdefault("encryptionKey", dict(DEFAULT_ENCRYPTION_KEY))
        export = props.get("export")
        if export is not None and "blobListBlobPath" in export:  # both specs' spellings
            export["blobListblobPath"] = export["blobListBlobPath"]
        system = {**self.details.get("systemData", {}), "createdAt": self.created,
                  "lastModifiedAt": self.updated}
        return {"id": self.ref.resource_id, "name": self.ref.name, "type": RESOURCE_TYPE,
                "location": self.location, "tags": dict(self.tags), "properties": props,
                "identity": dict(self.details.get("identity", DEFAULT_IDENTITY)),
                "systemData": {k: v for k, v in system.items() if v}}


Keys = dict[str, str]  # drive id -> recovery password


def parse_new_job(ref: JobRef, body: Any, regions: Mapping[str, Region]) -> tuple[Job, Keys]:
    """A PUT body -> a job in Creating with its drives Specified, and the drives' keys."""
    body = _object(body, "request body")
    _no_unknown(body, {"location", "tags", "properties", "identity"}, "",
                ignored={"id", "name", "type", "systemData", "etag"})
    region = _region(body.get("location"), regions)
    props = _object(body.get("properties"), "properties")
    known = _PATCHABLE | _READ_ONLY | {"storageAccountId", "jobType", "diagnosticsPath",
                                       "export", "encryptionKey"}
    _no_unknown(props, known, "properties.")
    job_type = _job_type(props.get("jobType"))
    if props.get("state") not in (None, JobState.CREATING.value):
        raise BadRequest(f"a new job starts in Creating, not {rules.quote(props['state'])}; "
                         "leave properties.state out", "InvalidJobState")
    if props.get("cancelRequested") not in (None, False):
        raise BadRequest("a new job cannot be canceled; leave properties.cancelRequested out",
                         "InvalidJobState")
    details: dict[str, Any] = {
        "storageAccountId": _string(props.get("storageAccountId"), "properties.storageAccountId",
                                    MAX_LONG_STRING),
        "jobType": job_type,
        "shippingInformation": region.shipping_information(),
        "diagnosticsPath": rules.check_diagnostics_path(
            _given(props, "diagnosticsPath", "waimportexport")),
        "logLevel": _log_level(_given(props, "logLevel", "Error")),
        "backupDriveManifest": _bool(_given(props, "backupDriveManifest", False),
                                     "properties.backupDriveManifest"),
        "encryptionKey": _encryption_key(_given(props, "encryptionKey",
                                                DEFAULT_ENCRYPTION_KEY)),
        "identity": _identity(_given(body, "identity", DEFAULT_IDENTITY)),
    }
    for name in ("returnAddress", "returnShipping", "deliveryPackage"):
        if props.get(name) is not None:
            details[name] = _DETAIL_PARSERS[name](props[name], region)
    export = job_type == "Export"
    if export:
        details["export"] = _export(props.get("export"))
        if props.get("driveList"):
            raise BadRequest("an export job lists no drives: the site records each drive as "
                             "it writes it; leave properties.driveList out and say how many "
                             "empty drives you ship in deliveryPackage.driveCount",
                             "InvalidDriveList")
    elif props.get("export") is not None:
        raise BadRequest("properties.export is for jobType Export; leave it out of an import "
                         "job", "InvalidRequestContent")
    entries = [] if export else props.get("driveList")
    if not isinstance(entries, list):
        raise BadRequest("properties.driveList must be a list of drives "
                         "(`pipeline journal export` prints it)", "InvalidDriveList")
    rules.check_drive_count(len(entries), export)
    drives: list[JobDrive] = []
    keys: Keys = {}
    for i, entry in enumerate(entries):
        drive, key = _new_drive(entry, f"properties.driveList[{i}]")
        if drive.drive_id in keys:
            raise BadRequest(f"drive {drive.drive_id} is listed twice in properties.driveList",
                             "InvalidDriveList")
        drives.append(drive)
        keys[drive.drive_id] = key
    job = Job(ref=ref, location=region.name, details=details, drives=tuple(drives),
              tags=_tags(body.get("tags")))
    return job, keys


def replace_job(old: Job, new: Job) -> Job:
    """PUT over an existing job: allowed only while it is Creating (nothing has shipped)."""
    if old.state != JobState.CREATING:
        raise Conflict(f"{old.ref} is {old.state}; PUT can replace a job only while it is "
                       "Creating: use PATCH to update it", "JobNotReplaceable")
    return replace(new, version=old.version, created=old.created)


def apply_update(job: Job, body: Any, regions: Mapping[str, Region],
                 role: Role = Role.CUSTOMER) -> tuple[Job, Keys]:
    """A PATCH body by ``role`` -> the updated job and any new recovery passwords, through
    the rules: a change that is the other role's is 403 (``rules.FIELD_ROLE``), one the
    job's state forbids 409.

    Fields change first, then the state changes are checked against the job as it
    will be after the PATCH (see ``rules``), so one request may carry a delivery
    package and the move to Shipping.
    """
    body = _object(body, "request body")
    _no_unknown(body, {"tags", "properties"}, "",
                ignored={"id", "name", "type", "location", "identity", "systemData", "etag"})
    if "location" in body and body["location"] is not None:
        try:
            same = rules.location_key(body["location"]) == job.location
        except BadRequest:
            same = False
        if not same:
            raise BadRequest("a job's location cannot change; create a new job for another "
                             "location", "PropertyNotEditable")
    props = _object(body.get("properties", {}), "properties")
    for key in props:
        if key not in _PATCHABLE and props[key] is not None:
            raise BadRequest(f"properties.{key} cannot be changed by PATCH; the fields a PATCH "
                             f"may set are {', '.join(sorted(_PATCHABLE))}", "PropertyNotEditable")
    region = regions.get(job.location)
    if region is None:
        raise Conflict(f"{job.ref} is at location {job.location}, which is no longer in "
                       "the service's regions file; restore it there", "LocationNotFound")
    details = dict(job.details)
    for name in ("returnAddress", "returnShipping", "deliveryPackage", "returnPackage",
                 "logLevel", "backupDriveManifest"):
        if props.get(name) is None:
            continue
        value = _DETAIL_PARSERS[name](props[name], region)
        if value != details.get(name):
            rules.check_role(name, role, f"properties.{name}")
            rules.check_editable(name, job.state)
            details[name] = value
    if props.get("incompleteBlobListUri") is not None:
        uri = _uri(props["incompleteBlobListUri"], "properties.incompleteBlobListUri")
        if uri != details.get("incompleteBlobListUri"):
            rules.check_role("incompleteBlobListUri", role, "properties.incompleteBlobListUri")
            if not job.is_export:
                raise BadRequest("properties.incompleteBlobListUri is an export job's",
                                 "PropertyNotEditable")
            rules.check_editable("incompleteBlobListUri", job.state)
            details["incompleteBlobListUri"] = uri
    target, cancel = _target_state(job, props)
    drives, keys = _update_drives(job, props.get("driveList"), role)
    tags = _tags(body["tags"]) if body.get("tags") is not None else job.tags
    if tags != job.tags:
        rules.check_role("tags", role)
    after = rules.After(state=target, has_delivery_package="deliveryPackage" in details,
                        drive_states=tuple(d.state for d in drives),
                        has_return_address="returnAddress" in details,
                        has_return_shipping="returnShipping" in details,
                        export=job.is_export)
    rules.check_job_transition(job.state, after, role)
    old = {d.drive_id: d for d in job.drives}
    for d in drives:
        if d.drive_id in old:
            was = old[d.drive_id]
            rules.check_drive_transition(
                d.drive_id, was.state, d.state, after, role,
                copy_started=(was.copy_status or "") not in rules.COPY_NOT_STARTED)
    updated = replace(job, details=details, drives=drives, state=target, tags=tags,
                      cancel_requested=cancel)
    return updated, keys


def _target_state(job: Job, props: Mapping[str, Any]) -> tuple[JobState, bool]:
    target = job.state if props.get("state") is None else rules.job_state(props["state"])
    cancel = props.get("cancelRequested")
    if cancel is None:  # state=Canceled is a cancellation too
        return target, job.cancel_requested or target == JobState.CANCELED
    if not isinstance(cancel, bool):
        raise BadRequest("properties.cancelRequested must be true or false", "InvalidRequest")
    if not cancel:
        if job.cancel_requested:
            raise Conflict(f"{job.ref} was canceled; a cancellation cannot be undone",
                           "InvalidStateTransition")
        return target, False
    if props.get("state") is not None and target != JobState.CANCELED:
        raise BadRequest(f"cancelRequested asks for Canceled but state asks for {target}; "
                         "send one of them", "InvalidRequest")
    return JobState.CANCELED, True


def _update_drives(job: Job, entries: Any, role: Role) -> tuple[tuple[JobDrive, ...], Keys]:
    """Merge a PATCH's driveList into the job's drives, matched by driveId."""
    if entries is None:
        return job.drives, {}
    if not isinstance(entries, list):
        raise BadRequest("properties.driveList must be a list", "InvalidDriveList")
    drives = {d.drive_id: d for d in job.drives}
    keys: Keys = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"properties.driveList[{i}]"
        entry = _object(entry, where)
        drive_id = rules.check_drive_id(entry.get("driveId"))
        if drive_id in seen:
            raise BadRequest(f"drive {drive_id} is listed twice in properties.driveList",
                             "InvalidDriveList")
        seen.add(drive_id)
        current = drives.get(drive_id)
        if current is None:
            field = "export drive" if job.is_export else "drive identity"
            rules.check_role(field, role, f"adding drive {drive_id}")
            rules.check_editable(field, job.state)
            drives[drive_id], keys[drive_id] = _new_drive(entry, where, job.is_export)
            continue
        _no_unknown(entry, {"driveId", "bitLockerKey", "state", *_DRIVE_IDENTITY,
                            *_DRIVE_PROGRESS}, where + ".")
        changes: dict[str, Any] = {}
        if entry.get("bitLockerKey") is not None:
            rules.check_role("drive identity", role, f"the recovery password of drive {drive_id}")
            rules.check_editable("drive identity", job.state)
            keys[drive_id] = rules.check_recovery_password(drive_id, entry["bitLockerKey"])
        identity = _drive_identity(entry, where, partial=True)
        if any(getattr(current, k) != v for k, v in identity.items()):
            rules.check_role("drive identity", role, f"the manifest of drive {drive_id}")
            rules.check_editable("drive identity", job.state)
            changes.update(identity)
        progress = _drive_progress(entry, where)
        if any(getattr(current, k) != v for k, v in progress.items()):
            rules.check_role("drive progress", role, f"the copy progress of drive {drive_id} "
                             "(copyStatus, percentComplete, bytesSucceeded, log URIs)")
            rules.check_editable("drive progress", job.state)
            if current.state in _COPY_ENDED:  # a late or repeated report would undo its outcome
                raise Conflict(f"drive {drive_id} is {current.state}: its copy progress "
                               "(copyStatus, percentComplete, bytesSucceeded, log URIs) is "
                               "final once the drive is done", "PropertyNotEditable")
            changes.update(progress)
        if entry.get("state") is not None:
            changes["state"] = rules.drive_state(entry["state"])
            if changes["state"] != current.state:  # 403 before any 409 of the job's
                rules.check_role("drive state", role,
                                 f"marking drive {drive_id} {changes['state']}")
        drives[drive_id] = replace(current, **changes)
    rules.check_drive_count(len(drives), job.is_export)
    return tuple(drives.values()), keys


def _new_drive(entry: Any, where: str, export: bool = False) -> tuple[JobDrive, str]:
    """A drive as first listed: Specified (the customer's, import), or Received (the
    site's, export: the empty drive is in the site's hands as it adds it)."""
    entry = _object(entry, where)
    _no_unknown(entry, {"driveId", "bitLockerKey", "state", *_DRIVE_IDENTITY}, where + ".",
                ignored=set(_DRIVE_PROGRESS))
    drive_id = rules.check_drive_id(entry.get("driveId"))
    if entry.get("bitLockerKey") is None:
        raise BadRequest(f"{where}.bitLockerKey is missing: drive {drive_id} needs its recovery "
                         "password (`pipeline keys` shows it)", "InvalidBitLockerKey")
    key = rules.check_recovery_password(drive_id, entry["bitLockerKey"])
    first = DriveState.RECEIVED if export else DriveState.SPECIFIED
    if entry.get("state") not in (None, first.value):
        raise BadRequest(f"{where}.state: a new drive starts {first}; leave state out",
                         "InvalidDriveState")
    identity = _drive_identity(entry, where, partial=False)
    return JobDrive(drive_id=drive_id, state=first, **identity), key


def _drive_identity(entry: Mapping[str, Any], where: str, *, partial: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for api, attr, required in (("manifestFile", "manifest_file", True),
                                ("manifestHash", "manifest_hash", True),
                                ("driveHeaderHash", "drive_header_hash", False)):
        value = entry.get(api)
        if value is None:
            if required and not partial:
                raise BadRequest(f"{where}.{api} is missing; `pipeline journal export` "
                                 "prints the drive list with it", "InvalidDriveList")
            continue
        if api == "manifestFile":
            out[attr] = _string(value, f"{where}.{api}", MAX_LONG_STRING)
        elif api == "driveHeaderHash":
            out[attr] = _header_hash(value, f"{where}.{api}")
        else:
            out[attr] = _hex(value, f"{where}.{api}")
    return out


def _drive_progress(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entry.get("copyStatus") is not None:
        out["copy_status"] = _string(entry["copyStatus"], f"{where}.copyStatus")
    if entry.get("percentComplete") is not None:
        out["percent_complete"] = _int(entry["percentComplete"], f"{where}.percentComplete",
                                       0, 100)
    if entry.get("bytesSucceeded") is not None:
        out["bytes_succeeded"] = _int(entry["bytesSucceeded"], f"{where}.bytesSucceeded",
                                      0, 2**63 - 1)
    for api, attr in (("errorLogUri", "error_log_uri"), ("verboseLogUri", "verbose_log_uri"),
                      ("manifestUri", "manifest_uri")):
        if entry.get(api) is not None:
            out[attr] = _uri(entry[api], f"{where}.{api}")
    return out


# --------------------------------------------------------------------------
# Field checks: each returns the canonical value or raises BadRequest naming the field.


def _given(obj: Mapping[str, Any], key: str, default: Any) -> Any:
    """JSON null means "not given", as msrest-based SDKs send it."""
    value = obj.get(key)
    return default if value is None else value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object", "InvalidRequestContent")
    return value


def _no_unknown(obj: Mapping[str, Any], known: set[str] | frozenset[str], prefix: str,
                ignored: set[str] | frozenset[str] = frozenset()) -> None:
    for key in obj:
        if key not in known and key not in ignored:
            raise BadRequest(f"unknown field {prefix}{rules.quote(key)}; check its spelling "
                             "against the Microsoft.ImportExport 2016-11-01 API",
                             "InvalidRequestContent")


def _string(value: Any, where: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where} must be a non-empty string", "InvalidRequestContent")
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{where} must be at most {limit} printable characters",
                         "InvalidRequestContent")
    return value


def _hex(value: Any, where: str) -> str:
    text = _string(value, where, 256)
    if not all(c in "0123456789abcdefABCDEF" for c in text):
        raise BadRequest(f"{where} must be a hexadecimal hash", "InvalidRequestContent")
    return text


def _header_hash(value: Any, where: str) -> str:
    """A hex hash (ours), or Azure's ``offset:length:hash;offset:length:hash...`` form
    (the WAImportExport tool's hashes of the drive's header regions)."""
    text = _string(value, where, MAX_LONG_STRING)
    if ":" not in text:
        return _hex(text, where)
    for part in text.split(";"):
        fields = part.split(":")
        if (len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields[:2])
                or not fields[2] or not all(c in "0123456789abcdefABCDEF" for c in fields[2])):
            raise BadRequest(f"{where} must be a hexadecimal hash, or Azure's "
                             "offset:length:hash;... list", "InvalidRequestContent")
    return text


def _job_type(value: Any) -> str:
    for kind in ("Import", "Export"):
        if value is None and kind == "Import" or (
                isinstance(value, str) and value.lower() == kind.lower()):
            return kind
    raise BadRequest(f"properties.jobType {rules.quote(value)} must be Import or Export",
                     "UnsupportedJobType")


def _export(value: Any) -> dict[str, Any]:
    """properties.export: exactly one of blobList (paths and prefixes, at least one in
    all) and blobListBlobPath (Azure's blob listing them, as /container/blob)."""
    where = "properties.export"
    if value is None:
        raise BadRequest(f"{where} is missing: an export job names its blobs in "
                         f"{where}.blobList (blobPath, blobPathPrefix) or "
                         f"{where}.blobListBlobPath", "InvalidRequestContent")
    obj = _object(value, where)
    _no_unknown(obj, {"blobList", "blobListBlobPath", "blobListblobPath"}, where + ".")
    path = obj.get("blobListBlobPath", obj.get("blobListblobPath"))
    if (obj.get("blobList") is None) == (path is None):
        raise BadRequest(f"{where} needs exactly one of blobList and blobListBlobPath",
                         "InvalidRequestContent")
    if path is not None:
        return {"blobListBlobPath": rules.check_blob_path(
            path, f"{where}.blobListBlobPath", prefix=False)}
    blobs = _object(obj["blobList"], f"{where}.blobList")
    _no_unknown(blobs, {"blobPath", "blobPathPrefix"}, f"{where}.blobList.")
    out: dict[str, list[str]] = {}
    for key, prefix in (("blobPath", False), ("blobPathPrefix", True)):
        items = blobs.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise BadRequest(f"{where}.blobList.{key} must be a list of paths",
                             "InvalidRequestContent")
        out[key] = [rules.check_blob_path(item, f"{where}.blobList.{key}[{i}]", prefix=prefix)
                    for i, item in enumerate(items)]
    count = sum(len(v) for v in out.values())
    if not 1 <= count <= rules.MAX_BLOB_PATHS:
        raise BadRequest(f"{where}.blobList must name 1 to {rules.MAX_BLOB_PATHS} paths and "
                         f"prefixes, not {count}", "InvalidRequestContent")
    return {"blobList": out}


def _encryption_key(value: Any) -> dict[str, str]:
    """EncryptionKeyDetails (2021-01-01): who holds the key-encryption key.  Stored and
    returned as given; this service wraps nothing with it (recovery passwords are sealed
    with the catalog's own key), which a CustomerManaged job is told nowhere else."""
    where = "properties.encryptionKey"
    obj = _object(value, where)
    _no_unknown(obj, {"kekType", "kekUrl", "kekVaultResourceID"}, where + ".")
    kek = obj.get("kekType", "MicrosoftManaged")
    if kek not in _KEK_TYPES:
        raise BadRequest(f"{where}.kekType must be {' or '.join(_KEK_TYPES)}",
                         "InvalidRequestContent")
    out = {"kekType": kek}
    if kek == "CustomerManaged":
        out["kekUrl"] = _uri(obj.get("kekUrl"), f"{where}.kekUrl")
        out["kekVaultResourceID"] = _string(obj.get("kekVaultResourceID"),
                                            f"{where}.kekVaultResourceID", MAX_LONG_STRING)
    else:
        for name in ("kekUrl", "kekVaultResourceID"):
            if obj.get(name) is not None:
                raise BadRequest(f"{where}.{name} is only for kekType CustomerManaged",
                                 "InvalidRequestContent")
    return out


def _identity(value: Any) -> dict[str, str]:
    """IdentityDetails: its type is the caller's; principalId and tenantId are ARM's
    (read-only), so an echoed value is kept only if it is a string."""
    obj = _object(value, "identity")
    _no_unknown(obj, {"type", "principalId", "tenantId"}, "identity.")
    kind = obj.get("type", "None")
    if kind not in _IDENTITY_TYPES:
        raise BadRequest(f"identity.type must be one of {', '.join(_IDENTITY_TYPES)}",
                         "InvalidRequestContent")
    out = {"type": kind}
    for name in ("principalId", "tenantId"):
        if obj.get(name) is not None:
            out[name] = _string(obj[name], f"identity.{name}", 64)
    return out


def _uri(value: Any, where: str) -> str:
    text = _string(value, where, MAX_LONG_STRING)
    scheme, sep, _ = text.partition(":")
    if not sep or not scheme.isascii() or not scheme.isalpha() or " " in text:
        raise BadRequest(f"{where} must be a URI such as https://host/container/drive.log",
                         "InvalidRequestContent")
    return text


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where} must be an integer from {low} to {high}",
                         "InvalidRequestContent")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false", "InvalidRequestContent")
    return value


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    tags = _object(value, "tags")
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"a job has at most {MAX_TAGS} tags", "InvalidTags")
    for k, v in tags.items():
        _string(k, "a tag name", 512)
        _string(v, f"tag {rules.quote(k)}", MAX_STRING)
    return dict(tags)


def _region(name: Any, regions: Mapping[str, Region]) -> Region:
    if name is None:
        raise BadRequest("location is missing: name the data center the drives go to "
                         "(GET /providers/Microsoft.ImportExport/locations lists them)",
                         "InvalidLocation")
    region = regions.get(rules.location_key(name))
    if region is None:
        raise BadRequest(f"location {rules.quote(name)} is not a data-center location; use one "
                         f"of: {', '.join(sorted(regions))}", "InvalidLocation")
    return region


def _log_level(value: Any, _: Region | None = None) -> str:
    for level in ("Error", "Verbose"):
        if isinstance(value, str) and value.lower() == level.lower():
            return level
    raise BadRequest("properties.logLevel must be Error or Verbose", "InvalidRequestContent")


def _backup_manifest(value: Any, _: Region) -> bool:
    return _bool(value, "properties.backupDriveManifest")


def _return_address(value: Any, _: Region) -> dict[str, str]:
    where = "properties.returnAddress"
    obj = _object(value, where)
    _no_unknown(obj, set(_ADDRESS_REQUIRED + _ADDRESS_OPTIONAL), where + ".")
    out = {k: _string(obj.get(k), f"{where}.{k}") for k in _ADDRESS_REQUIRED}
    out.update({k: _string(obj[k], f"{where}.{k}") for k in _ADDRESS_OPTIONAL
                if obj.get(k) is not None})
    return out


def _return_shipping(value: Any, region: Region) -> dict[str, str]:
    where = "properties.returnShipping"
    obj = _object(value, where)
    _no_unknown(obj, {"carrierName", "carrierAccountNumber"}, where + ".")
    return {"carrierName": rules.check_carrier(obj.get("carrierName"), region.supported_carriers,
                                               region.name),
            "carrierAccountNumber": _string(obj.get("carrierAccountNumber"),
                                            f"{where}.carrierAccountNumber", 64)}


def _package(value: Any, region: Region, where: str, *, complete: bool) -> dict[str, Any]:
    obj = _object(value, where)
    _no_unknown(obj, {"carrierName", "trackingNumber", "driveCount", "shipDate"}, where + ".")
    out: dict[str, Any] = {
        "carrierName": rules.check_carrier(obj.get("carrierName"), region.supported_carriers,
                                           region.name),
        "trackingNumber": _string(obj.get("trackingNumber"), f"{where}.trackingNumber", 64),
    }
    if complete or obj.get("driveCount") is not None:
        out["driveCount"] = _int(obj.get("driveCount"), f"{where}.driveCount", 0,
                                 rules.MAX_DRIVES)
    if complete or obj.get("shipDate") is not None:
        out["shipDate"] = _string(obj.get("shipDate"), f"{where}.shipDate", 64)
    return out


def _delivery_package(value: Any, region: Region) -> dict[str, Any]:
    return _package(value, region, "properties.deliveryPackage", complete=False)


def _return_package(value: Any, region: Region) -> dict[str, Any]:
    return _package(value, region, "properties.returnPackage", complete=True)


_DETAIL_PARSERS: dict[str, Callable[[Any, Region], Any]] = {
    "returnAddress": _return_address, "returnShipping": _return_shipping,
    "deliveryPackage": _delivery_package, "returnPackage": _return_package,
    "logLevel": _log_level, "backupDriveManifest": _backup_manifest,
}
