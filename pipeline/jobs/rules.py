"""Import and export job rules: names, the drive list, carriers, and the two state machines.

Pure (no I/O, no trio, no sqlite), so every rule is tested without a service,
and the catalog, the REST API, the portal and the client CLI all refuse the
same things with the same words.  A refused state change raises ``Conflict``
(HTTP 409) naming both states and the reason; bad input raises ``BadRequest``.

Names
-----
Job name: 3-24 characters, lowercase ASCII letters, digits, ``-`` and ``_``,
starting with a letter (the character rules Azure documents for import job
names).  The 24-character limit is ours: Azure states none, and 24 fits a
shipping label and the job-name field of a drive's superblock.  Resource group:
1-90 ASCII letters, digits, ``_ - . ( )``, not ending in ``.`` (ARM's rule, ASCII
only, so ``..`` is never a name).  Subscription: a UUID.  diagnosticsPath: a
virtual blob directory, by the blob-name rules of ``pipeline.names`` (the ones
prep, preview and import use).

Rule 1 (as in h11's ``_state.py``): every transition lives in the two tables
below, and nowhere else, with the role that may make it.  Naming the current
state again is not a transition (it is accepted and changes nothing).  A PATCH
is checked as one step: each guard sees the job as it will be *after* the
PATCH, so "job Transferring and its drives Transferring" can be one request.

Roles
-----
Two roles act on a job, as in Azure: the **customer** (the subscription's
token) creates it, ships it, cancels it and edits its shipping details; the
**site** (the receiving data center's site token) does everything after the
package arrives.  ``FIELD_ROLE`` says whose each PATCH field is, the tables say
whose each state change is.  A change made by the other role is refused with
``Forbidden`` (HTTP 403, ``AuthorizationFailed``) before the state machine is
asked, so a customer learns "that is the site's step", never whether the step
would have been allowed.  Sending a field's current value is no change.

Job states::

    from          to             by        guard (the job after the change)
    Creating      Shipping       customer  returnAddress, returnShipping, deliveryPackage (400)
    Creating      Canceled       customer  -
    Shipping      Received       site      -
    Shipping      Canceled       customer  -
    Received      Shipping       site      every drive Specified (undo of a wrong mark)
    Received      Transferring   site      at least one drive Received or Transferring
    Transferring  Packaging      site      every drive Completed, CompletedMoreInfo or NeverReceived
    Packaging     Completed      site      every drive ShippedBack or NeverReceived
    Completed     Closed         site      -
    Closed, Canceled: final

Drive states (every drive state change is the site's)::

    from               to                 guard (the job's state after the change)
    Specified          Received           Shipping, Received or Transferring (package arrived)
    Specified          NeverReceived      Received, Transferring or Packaging (drive missing)
    NeverReceived      Received           Received or Transferring (arrived late)
    Received           Specified          Shipping or Received, copy not started (undo)
    NeverReceived      Specified          Shipping or Received, copy not started (undo)
    Received           Transferring       Transferring
    Received           ShippedBack        Canceled (returned without import)
    Transferring       Completed          Transferring or Packaging
    Transferring       CompletedMoreInfo  Transferring or Packaging (some blobs failed: errorLogUri)
    Completed          ShippedBack        Packaging, Completed or Canceled
    CompletedMoreInfo  ShippedBack        Packaging, Completed or Canceled
    ShippedBack: final

A NeverReceived drive is not shipped back (there is nothing to ship); if it
turns up late it becomes Received.  Canceling is the customer's, and only
before the site has the package (Creating or Shipping), as Azure's portal has
it ("you can only cancel a job while it's in Creating state" once tracking is
in, Azure says; we keep Shipping too, since the drives may still be on the
way, and a drive the site already received goes back: Received -> ShippedBack).
Moving to Shipping without a return address, return carrier or delivery
package is a 400 (``InvalidRequest``) naming every missing piece: bad input,
not a state conflict.  (Packaging in a drive's guard lets the last drive finish
in the PATCH that packs the job.)

Export jobs (``jobType: Export``) take the same path with the drives the other way
round: the customer ships *empty* drives and lists none; the site adds each drive
as it writes the job's blobs onto it (``FIELD_ROLE["export drive"]``, with its
recovery password, while the job is Received or Transferring), so an export job
moves to Transferring with no drive yet, and to Packaging only once it has at
least one drive and every drive is Completed.  The blob list is checked by
``check_blob_path``: ``/container/blob`` (``blobPath``) or ``/container/prefix``
(``blobPathPrefix``), by the name rules of ``pipeline.names``.

Beside the state machines, ``EDITABLE`` says in which job states a PATCH may
change each field (the delivery package only until the package arrives, a
drive's identity and key only while Creating, ...), and ``DELETABLE`` which
jobs DELETE removes.  A refusal of either is a 409 naming the allowed states.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from pipeline import names
from pipeline.errors import BadInput
from pipeline.jobs.errors import BadRequest, Conflict, Forbidden

JOB_NAME_MIN = 3
JOB_NAME_MAX = 24
RESOURCE_GROUP_MAX = 90
MAX_DRIVES = 10


class Role(StrEnum):
    """Who asks: the job's owner (a subscription token) or the receiving site (a site token)."""

    CUSTOMER = "customer"
    SITE = "site"


class JobState(StrEnum):
    CREATING = "Creating"
    SHIPPING = "Shipping"
    RECEIVED = "Received"
    TRANSFERRING = "Transferring"
    PACKAGING = "Packaging"
    COMPLETED = "Completed"
    CLOSED = "Closed"
    CANCELED = "Canceled"


class DriveState(StrEnum):
    SPECIFIED = "Specified"
    RECEIVED = "Received"
    NEVER_RECEIVED = "NeverReceived"
    TRANSFERRING = "Transferring"
    COMPLETED = "Completed"
    COMPLETED_MORE_INFO = "CompletedMoreInfo"
    SHIPPED_BACK = "ShippedBack"


@dataclass(frozen=True, slots=True)
class After:
    """What a guard may look at: the job as it will be after the update.

    The return fields default to present so that a caller previewing a site step
    (which never needs them) can leave them out; ``model`` always fills them in."""

    state: JobState
    has_delivery_package: bool
    drive_states: tuple[DriveState, ...]
    has_return_address: bool = True
    has_return_shipping: bool = True
    export: bool = False  # an export job: the site adds the drives as it writes them


Guard = Callable[[After], str | None]  # None: allowed; otherwise the reason it is not


class Step(NamedTuple):
    """One job transition: who may make it, and what must hold after it."""

    role: Role
    guard: Guard


def _always(_: After) -> str | None:
    return None


def _ready_to_ship(after: After) -> str | None:
    """Azure's rule: the return leg and the delivery package are known before Shipping.
    Missing input is a 400 naming every missing piece, not a 409."""
    missing = [what for have, what in (
        (after.has_return_address, "the return address (properties.returnAddress: "
                                   "name, street, city, postal code, country, phone, email)"),
        (after.has_return_shipping, "the return carrier and its account number "
                                    "(properties.returnShipping)"),
        (after.has_delivery_package, "the carrier and tracking number of the package "
                                     "(properties.deliveryPackage)"))
        if not have]
    if missing:
        raise BadRequest("the job cannot ship yet: give " + "; ".join(missing)
                         + ", in this or an earlier request", "InvalidRequest")
    return None


def _nothing_received(after: After) -> str | None:
    return _all_drives(after, (DriveState.SPECIFIED,),
                       "undo every drive's mark first (back to Specified)")


def _some_drive_received(after: After) -> str | None:
    if after.export:  # the site writes the customer's empty drives once Transferring
        return None
    if not any(s in (DriveState.RECEIVED, DriveState.TRANSFERRING) for s in after.drive_states):
        return "no drive has been received; mark the drives Received first"
    return None


def _every_drive_copied(after: After) -> str | None:
    done = (DriveState.COMPLETED, DriveState.COMPLETED_MORE_INFO, DriveState.NEVER_RECEIVED)
    if after.export and not after.drive_states:
        return "no drive has been written yet; write the blobs first (pipeline export)"
    return _all_drives(after, done, "finish copying every drive first")


def _every_drive_returned(after: After) -> str | None:
    return _all_drives(after, (DriveState.SHIPPED_BACK, DriveState.NEVER_RECEIVED),
                       "ship every received drive back first")


def _all_drives(after: After, allowed: tuple[DriveState, ...], fix: str) -> str | None:
    pending = sorted({s.value for s in after.drive_states if s not in allowed})
    if pending:
        return f"drives are still {', '.join(pending)}; {fix}"
    return None


def _job_in(*states: JobState) -> Guard:
    def guard(after: After) -> str | None:
        if after.state in states:
            return None
        return f"the job is {after.state.value}, and this needs it {' or '.join(states)}"
    return guard


J, D, C, S = JobState, DriveState, Role.CUSTOMER, Role.SITE

# Rule 1: the job state machine.  from -> {to: (who, guard)}
JOB_TRANSITIONS: Mapping[JobState, Mapping[JobState, Step]] = {
    J.CREATING: {J.SHIPPING: Step(C, _ready_to_ship), J.CANCELED: Step(C, _always)},
    J.SHIPPING: {J.RECEIVED: Step(S, _always), J.CANCELED: Step(C, _always)},
    J.RECEIVED: {J.SHIPPING: Step(S, _nothing_received),
                 J.TRANSFERRING: Step(S, _some_drive_received)},
    J.TRANSFERRING: {J.PACKAGING: Step(S, _every_drive_copied)},
    J.PACKAGING: {J.COMPLETED: Step(S, _every_drive_returned)},
    J.COMPLETED: {J.CLOSED: Step(S, _always)},
    J.CLOSED: {},
    J.CANCELED: {},
}

# the states each role may name in properties.state (derived: the table is the rule)
TARGETS: Mapping[Role, frozenset[JobState]] = {
    role: frozenset(to for steps in JOB_TRANSITIONS.values()
                    for to, step in steps.items() if step.role == role)
    for role in Role}

_ARRIVED = _job_in(J.SHIPPING, J.RECEIVED, J.TRANSFERRING)
_OPENED = _job_in(J.RECEIVED, J.TRANSFERRING)
_MISSING = _job_in(J.RECEIVED, J.TRANSFERRING, J.PACKAGING)
_UNDO = _job_in(J.SHIPPING, J.RECEIVED)
_COPYING = _job_in(J.TRANSFERRING)
_COPIED = _job_in(J.TRANSFERRING, J.PACKAGING)
_RETURNING = _job_in(J.PACKAGING, J.COMPLETED, J.CANCELED)

# Rule 1: the drive state machine.  from -> {to: guard on the job}; all the site's
DRIVE_ROLE = Role.SITE
DRIVE_TRANSITIONS: Mapping[DriveState, Mapping[DriveState, Guard]] = {
    D.SPECIFIED: {D.RECEIVED: _ARRIVED, D.NEVER_RECEIVED: _MISSING},
    D.NEVER_RECEIVED: {D.RECEIVED: _OPENED, D.SPECIFIED: _UNDO},
    D.RECEIVED: {D.SPECIFIED: _UNDO, D.TRANSFERRING: _COPYING,
                 D.SHIPPED_BACK: _job_in(J.CANCELED)},
    D.TRANSFERRING: {D.COMPLETED: _COPIED, D.COMPLETED_MORE_INFO: _COPIED},
    D.COMPLETED: {D.SHIPPED_BACK: _RETURNING},
    D.COMPLETED_MORE_INFO: {D.SHIPPED_BACK: _RETURNING},
    D.SHIPPED_BACK: {},
}

# A drive's copy has started once the site reports a copyStatus other than these.
COPY_NOT_STARTED = frozenset({"", "NotStarted"})

# Whose each PATCH field is (job states: the table above).
FIELD_ROLE: Mapping[str, Role] = {
    "tags": C, "cancelRequested": C, "returnAddress": C, "returnShipping": C,
    "deliveryPackage": C, "logLevel": C, "backupDriveManifest": C,
    "drive identity": C,      # a drive's manifest, hashes and recovery password; new drives
    "export drive": S,        # an export job's drive, added by the site as it writes it
    "incompleteBlobListUri": S,  # an export's blobs that did not fit on the drives
    "returnPackage": S,
    "drive state": S,         # properties.driveList[*].state
    "drive progress": S,      # copyStatus, percentComplete, bytesSucceeded, the log URIs
    "copy log": S,            # PUT .../copyLogs/{drive}/{kind}
    # operations rather than fields
    "create": C, "delete": C,
    "list every subscription": S,  # GET /providers/Microsoft.ImportExport/jobs
}

# Which job fields a PATCH may change, by job state.  Tags may always change.
_BEFORE_RETURN = frozenset({J.CREATING, J.SHIPPING, J.RECEIVED, J.TRANSFERRING, J.CANCELED})
EDITABLE: Mapping[str, frozenset[JobState]] = {
    "deliveryPackage": frozenset({J.CREATING, J.SHIPPING}),
    "returnAddress": _BEFORE_RETURN,
    "returnShipping": _BEFORE_RETURN,
    "returnPackage": frozenset({J.PACKAGING, J.COMPLETED, J.CANCELED}),
    "logLevel": frozenset({J.CREATING, J.SHIPPING, J.RECEIVED}),
    "backupDriveManifest": frozenset({J.CREATING, J.SHIPPING, J.RECEIVED}),
    # a drive's identity and key: only before the drives leave
    "drive identity": frozenset({J.CREATING}),
    "export drive": frozenset({J.RECEIVED, J.TRANSFERRING}),
    "incompleteBlobListUri": frozenset({J.TRANSFERRING, J.PACKAGING}),
    # copyStatus, percentComplete, bytesSucceeded and the log URIs: while the site works on it
    "drive progress": frozenset({J.RECEIVED, J.TRANSFERRING, J.PACKAGING}),
    "copy log": frozenset({J.TRANSFERRING, J.PACKAGING, J.COMPLETED, J.CLOSED}),
}

# DELETE removes a job only before anything shipped or after it ended, as Azure
# (Creating, Completed).  Canceled is Azure's "Completed after cancelRequested", so
# it goes too; Closed does not (the site closes a job it keeps on record).
DELETABLE = frozenset({J.CREATING, J.COMPLETED, J.CANCELED})

_WHOSE = {C: "the customer's (the subscription's token)",
          S: "the receiving site's step (a site token)"}


def check_role(field: str, role: Role, label: str | None = None) -> None:
    """Refuse (403) a change to a field that is the other role's."""
    owner = FIELD_ROLE[field]
    if owner != role:
        raise Forbidden(f"{label or field} is {_WHOSE[owner]}, not a {role.value} token's",
                        "AuthorizationFailed")


def job_state(value: object) -> JobState:
    try:
        return JobState(value if isinstance(value, str) else repr(value))
    except ValueError:
        raise BadRequest(f"job state {quote(value)} is not one of {', '.join(JobState)}",
                         "InvalidJobState") from None


def drive_state(value: object) -> DriveState:
    try:
        return DriveState(value if isinstance(value, str) else repr(value))
    except ValueError:
        raise BadRequest(f"drive state {quote(value)} is not one of {', '.join(DriveState)}",
                         "InvalidDriveState") from None


def check_job_transition(current: JobState, after: After, role: Role = Role.CUSTOMER) -> None:
    """Refuse a job state change: 403 if it is the other role's, else 409 (with the reason)
    if the table does not allow it, or 400 if the job lacks what Shipping needs."""
    target = after.state
    if target == current:
        return
    step = JOB_TRANSITIONS[current].get(target)
    owner = step.role if step is not None else (role if target in TARGETS[role] else None)
    if owner != role:
        if role == Role.CUSTOMER:
            fix = ("a customer token may set properties.state only to Shipping, and cancel "
                   "with properties.cancelRequested")
        else:
            fix = "the customer ships and cancels with the subscription's token"
        raise Forbidden(f"moving a {current} job to {target} is "
                        f"{_WHOSE[Role.SITE if role == Role.CUSTOMER else Role.CUSTOMER]}, "
                        f"not a {role.value} token's; {fix}", "AuthorizationFailed")
    if step is None:
        allowed = ", ".join(JOB_TRANSITIONS[current]) or "nothing (final state)"
        why = (" (a job can be canceled only before the site receives it)"
               if target == J.CANCELED else "")
        raise Conflict(f"job cannot go from {current} to {target}{why}; from {current} "
                       f"it can go to {allowed}", "InvalidStateTransition")
    reason = step.guard(after)
    if reason is not None:
        raise Conflict(f"job cannot go from {current} to {target}: {reason}",
                       "InvalidStateTransition")


def check_drive_transition(drive_id: str, current: DriveState, target: DriveState,
                           after: After, role: Role = Role.CUSTOMER, *,
                           copy_started: bool = False) -> None:
    """Refuse a drive state change: 403 unless the site asks, else 409 with the reason.
    ``copy_started``: the drive reported a copyStatus; a mark can no longer be undone."""
    if target == current:
        return
    check_role("drive state", role, f"marking drive {drive_id} {target}")
    guard = DRIVE_TRANSITIONS[current].get(target)
    if guard is None:
        allowed = ", ".join(DRIVE_TRANSITIONS[current]) or "nothing (final state)"
        raise Conflict(f"drive {drive_id} cannot go from {current} to {target}; from "
                       f"{current} it can go to {allowed}", "InvalidDriveStateTransition")
    reason = guard(after)
    if reason is None and target == D.SPECIFIED and copy_started:
        reason = "its copy has started, so the mark cannot be undone"
    if reason is not None:
        raise Conflict(f"drive {drive_id} cannot go from {current} to {target}: {reason}",
                       "InvalidDriveStateTransition")


def check_deletable(state: JobState) -> None:
    if state not in DELETABLE:
        raise Conflict(f"a {state} job cannot be deleted; delete it while it is Creating, or "
                       "once it is Completed or Canceled (cancel it while it is Creating or "
                       "Shipping with PATCH properties.cancelRequested=true)", "JobNotDeletable")


def check_editable(field: str, state: JobState) -> None:
    """Refuse (409) a change to a field the job's state has frozen."""
    states = EDITABLE[field]
    if state not in states:
        raise Conflict(f"{field} cannot change while the job is {state}; it can change while "
                       f"the job is {', '.join(s.value for s in JobState if s in states)}",
                       "PropertyNotEditable")


# --------------------------------------------------------------------------
# Names


_JOB_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")
_RESOURCE_GROUP = re.compile(r"[A-Za-z0-9_().-]+\Z")
_SUBSCRIPTION = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_LOCATION = re.compile(r"[a-z0-9]{1,40}\Z")
_DRIVE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def quote(value: object, limit: int = 40) -> str:
    """A value as it may appear in a message: quoted, escaped, and short."""
    text = repr(value) if not isinstance(value, str) else ascii(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def check_job_name(name: object) -> str:
    """The job name, or BadRequest saying which rule it breaks."""
    rule = (f"use {JOB_NAME_MIN}-{JOB_NAME_MAX} lowercase letters, digits, '-' or '_', "
            "starting with a letter")
    if not isinstance(name, str):
        raise BadRequest(f"job name must be a string; {rule}", "InvalidJobName")
    if not JOB_NAME_MIN <= len(name) <= JOB_NAME_MAX:
        why = f"has {len(name)} characters"
    elif not name[0].isascii() or not name[0].isalpha() or not name[0].islower():
        why = "does not start with a lowercase letter"
    elif " " in name:
        why = "contains a space"
    elif _JOB_NAME.match(name) is None:
        why = "contains a character other than a-z, 0-9, '-' and '_'"
    else:
        return name
    raise BadRequest(f"job name {quote(name)} {why}; {rule}", "InvalidJobName")


def check_resource_group(name: object) -> str:
    rule = (f"use 1-{RESOURCE_GROUP_MAX} ASCII letters, digits, '_', '-', '.', '(' or ')', "
            "not ending in '.'")
    if (not isinstance(name, str) or not 1 <= len(name) <= RESOURCE_GROUP_MAX
            or _RESOURCE_GROUP.match(name) is None or name.endswith(".")):
        raise BadRequest(f"resource group name {quote(name)} is not valid; {rule}",
                         "InvalidResourceGroupName")
    return name


def check_subscription_id(value: object) -> str:
    """A subscription id is a UUID; returned lowercase, as the catalog keys it."""
    text = value.lower() if isinstance(value, str) else None
    if text is None or _SUBSCRIPTION.match(text) is None:
        raise BadRequest(f"subscription id {quote(value)} is not a UUID "
                         "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", "InvalidSubscriptionId")
    return text


def location_key(name: object) -> str:
    """'West Europe', 'westeurope' and 'WestEurope' name the same location (as in ARM)."""
    key = name.replace(" ", "").lower() if isinstance(name, str) else ""
    if _LOCATION.match(key) is None:
        raise BadRequest(f"location {quote(name)} is not a location name; list them with "
                         "GET /providers/Microsoft.ImportExport/locations", "InvalidLocation")
    return key


def check_diagnostics_path(value: object) -> str:
    """properties.diagnosticsPath: the virtual blob directory the copy logs go to, so the
    blob-name rules every command uses (``pipeline.names``); returned as given."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"properties.diagnosticsPath {quote(value)} must be a non-empty "
                         "string such as 'waimportexport'", "InvalidRequestContent")
    try:
        names.check_vdir(value, "properties.diagnosticsPath")
    except BadInput as exc:
        raise BadRequest(str(exc), "InvalidRequestContent") from None
    return value


_SUBSCRIPTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def check_subscription_name(name: object) -> str:
    """Also a file name (NAME.publishsettings), hence no spaces or slashes."""
    if not isinstance(name, str) or _SUBSCRIPTION_NAME.match(name) is None:
        raise BadRequest(f"subscription name {quote(name)} is not valid; use 1-64 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit",
                         "InvalidSubscriptionName")
    return name


def check_drive_id(value: object) -> str:
    if not isinstance(value, str) or _DRIVE_ID.match(value) is None:
        raise BadRequest(f"driveId {quote(value)} is not valid; use the drive's serial number: "
                         "1-128 letters, digits, '.', '_', ':' or '-', no spaces",
                         "InvalidDriveId")
    return value


def check_drive_count(count: int, export: bool = False) -> None:
    """An import job lists its drives when created; an export job gets them from the site."""
    if count < 1 and not export:
        raise BadRequest("an import job needs a driveList with at least one drive",
                         "InvalidDriveList")
    if count > MAX_DRIVES:
        raise BadRequest(f"a job holds at most {MAX_DRIVES} drives, not {count}; "
                         "split the drives over several jobs", "TooManyDrives")


_GROUP_LIMIT = 720896  # 2**16 * 11: each group encodes 16 bits, times 11


def check_recovery_password(drive_id: str, value: object) -> str:
    """BitLocker's recovery password shape (also our LUKS2 keyslot 0's): 8 groups of 6 digits,
    each a multiple of 11 below 720896.  Catches typos before the drives are shipped."""
    groups = value.split("-") if isinstance(value, str) else []
    if len(groups) == 8 and all(len(g) == 6 and g.isascii() and g.isdigit()
                                and int(g) % 11 == 0 and int(g) < _GROUP_LIMIT for g in groups):
        return value  # type: ignore[return-value]
    # the value itself is a secret: never echo it
    raise BadRequest(f"bitLockerKey of drive {drive_id} is not a recovery password (48 digits "
                     "in 8 dash-separated groups of 6, each a multiple of 11); copy it again "
                     "from `pipeline keys`", "InvalidBitLockerKey")


def check_carrier(carrier: object, supported: Sequence[str], location: str) -> str:
    """The carrier as the location spells it, or BadRequest listing the location's carriers."""
    if isinstance(carrier, str):
        for name in supported:
            if name.casefold() == carrier.strip().casefold():
                return name
    raise BadRequest(f"carrier {quote(carrier)} does not deliver to location {location}; "
                     f"use one of: {', '.join(supported)}", "UnsupportedCarrier")


MAX_BLOB_PATHS = 10_000  # entries of export.blobList (blobPath and blobPathPrefix together)


def check_blob_path(value: object, where: str, *, prefix: bool) -> str:
    """An export's ``/container/blob`` (``prefix``: ``/container`` or ``/container/start``),
    by the name rules of ``pipeline.names``; BadRequest naming ``where`` otherwise."""
    shape = "/container/prefix" if prefix else "/container/blob"
    if not isinstance(value, str) or not value.startswith("/"):
        raise BadRequest(f"{where} {quote(value)} must be a path such as {shape}, "
                         "starting with '/'", "InvalidBlobPath")
    container, _, rest = value[1:].partition("/")
    try:
        names.check_container_name(container)
        if rest and not prefix:
            names.check_blob_name(rest)
        elif rest:
            problem = names.blob_problem(rest + "x")  # a prefix may end in '/' or '.'
            if problem is not None:
                raise BadInput(f"{rest!r}: {problem}")
        elif not prefix:
            raise BadInput("no blob name after the container")
    except BadInput as exc:
        raise BadRequest(f"{where} {quote(value)} is not a valid {shape}: {exc}",
                         "InvalidBlobPath") from None
    return value
