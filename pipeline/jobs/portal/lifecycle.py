"""A job's lifecycle as a person reads it: the timeline, who acts next, and which actions the
rules allow right now.

Nothing here decides: each "can this be done?" runs the REST API's own update
(``model.apply_update``, pure) on the job as it is, with the role of the
person asking, so a page offers exactly what a PATCH would accept, and the
actor of each step is read from ``rules.JOB_TRANSITIONS`` (whose step it is),
never restated.  The PATCH bodies the portal sends are built here too, so the
page that offers an action and the POST that does it agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.jobs import model, rules
from pipeline.jobs.errors import ApiError
from pipeline.jobs.model import Job
from pipeline.jobs.regions import Region
from pipeline.jobs.rules import DriveState, JobState, Role

J, D = JobState, DriveState

# The way a job goes when nothing goes wrong; Canceled leaves it.
PATH = (J.CREATING, J.SHIPPING, J.RECEIVED, J.TRANSFERRING, J.PACKAGING, J.COMPLETED, J.CLOSED)
MARKS = (D.RECEIVED, D.NEVER_RECEIVED)
_COPIED = (D.COMPLETED, D.COMPLETED_MORE_INFO)

# What happens while a job is in each state (the timeline's steps that are not current).
ABOUT: Mapping[JobState, str] = {
    J.CREATING: "The job is set up: drives, return address, data center.",
    J.SHIPPING: "The drives travel to the data center.",
    J.RECEIVED: "The site checks the drives in.",
    J.TRANSFERRING: "The site copies the drives into the storage account.",
    J.PACKAGING: "The site packs the drives and ships them back.",
    J.COMPLETED: "The drives are on their way back.",
    J.CLOSED: "The job is closed.",
    J.CANCELED: "The job was canceled.",
}


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the timeline, in the viewer's words."""

    state: JobState
    status: str          # "done", "current" or "todo"
    who: str             # who acts while the job is in this state: "You", "The receiving site"
    text: str


def actor(state: JobState) -> Role | None:
    """Who moves a job on from ``state`` along ``PATH`` (the rules' table says); None at the end."""
    if state not in PATH or state == PATH[-1]:
        return None
    return rules.JOB_TRANSITIONS[state][PATH[PATH.index(state) + 1]].role


def who(role: Role | None, viewer: Role) -> str:
    """The actor in the viewer's words: "You" when it is the viewer's own step."""
    if role is None:
        return "Nobody"
    if role == viewer:
        return "You"
    return "The receiving site" if role == Role.SITE else "The customer"


def _carrier(package: Mapping[str, Any] | None) -> str:
    if not package:
        return ""
    text = str(package.get("carrierName", ""))
    if package.get("trackingNumber"):
        text += f", tracking number {package['trackingNumber']}"
    return text


def return_by(job: Job) -> str:
    """How the drives come back: the customer's return carrier and account."""
    shipping = job.details.get("returnShipping") or {}
    if not shipping:
        return "the return carrier (not given yet)"
    return f"{shipping.get('carrierName')} (account {shipping.get('carrierAccountNumber')})"


def _now_text(job: Job, viewer: Role) -> str:
    """What to do now, for the one who acts (or what to wait for, for the other)."""
    site = viewer == Role.SITE
    sent = _carrier(job.details.get("deliveryPackage"))
    back = _carrier(job.details.get("returnPackage"))
    texts: dict[JobState, tuple[str, str]] = {  # (customer's words, site's words)
        J.CREATING: ("Ship the drives to the data center's address below, then enter the "
                     "carrier and tracking number.",
                     "Wait for the customer to ship the drives."),
        J.SHIPPING: (f"The drives are on their way ({sent}). The receiving site marks each "
                     "drive Received when the package arrives.",
                     f"When the package ({sent}) arrives, mark each drive Received, or "
                     "NeverReceived if it is missing."),
        J.RECEIVED: ("The site has the package and starts copying the drives into the "
                     "storage account.",
                     "Start the import of each received drive (pipeline import --service URL "
                     f"--site-token-file FILE --job {job.ref.name} --drive ...). A wrong mark "
                     "can still be undone."),
        J.TRANSFERRING: ("The site is copying the drives; progress and copy logs show per "
                         "drive below.",
                         "Let the import finish every drive, then check the copy logs."),
        J.PACKAGING: (f"The site packs the drives and ships them back by {return_by(job)}; "
                      "the return tracking number appears here once it is recorded.",
                      f"Pack the drives, ship them back by {return_by(job)}, then record the "
                      "return package below."),
        J.COMPLETED: (f"The drives are on their way back ({back}). Check the copy logs; the "
                      "site closes the job.",
                      f"The drives went back ({back}). Close the job once the customer has "
                      "them."),
        J.CLOSED: ("Nothing is left to do.", "Nothing is left to do."),
        J.CANCELED: _canceled_texts(job),
    }
    return texts[job.state][1 if site else 0]


def _canceled_texts(job: Job) -> tuple[str, str]:
    held = [d.drive_id for d in job.drives if d.state == D.RECEIVED]
    if not held:
        return ("The job was canceled; nothing is left to do.",
                "The job was canceled; nothing is left to do.")
    return (f"The job was canceled. The site ships the {len(held)} drive(s) it received back "
            f"by {return_by(job)}.",
            f"The job was canceled. Ship the {len(held)} received drive(s) back by "
            f"{return_by(job)}.")


def timeline(job: Job, viewer: Role) -> list[Step]:
    """Creating -> ... -> Closed with the current step marked; a canceled job shows the steps
    it reached, then Canceled."""
    now = _now_text(job, viewer)
    if job.state == J.CANCELED:
        reached = [J.CREATING]
        if job.details.get("deliveryPackage"):
            reached.append(J.SHIPPING)
        if any(d.state not in (D.SPECIFIED,) for d in job.drives):
            reached.append(J.RECEIVED)
        steps = [Step(s, "done", who(actor(s), viewer), ABOUT[s]) for s in reached]
        held = any(d.state == D.RECEIVED for d in job.drives)
        steps.append(Step(J.CANCELED, "current", who(Role.SITE if held else None, viewer), now))
        return steps
    current = PATH.index(job.state)
    steps = []
    for i, state in enumerate(PATH):
        status = "done" if i < current else "current" if i == current else "todo"
        steps.append(Step(state, status, who(actor(state), viewer),
                          now if status == "current" else ABOUT[state]))
    return steps


# --------------------------------------------------------------------------- what may be done


def allowed(job: Job, body: Mapping[str, Any], regions: Mapping[str, Region],
            role: Role) -> bool:
    """Whether the REST API would accept this PATCH from ``role`` now (nothing is written)."""
    try:
        model.apply_update(job, body, regions, role)
    except ApiError:
        return False
    return True


def cancel_body() -> dict[str, Any]:
    """Azure's way to cancel: cancelRequested, not a state."""
    return {"properties": {"cancelRequested": True}}


def _after_mark(job: Job) -> JobState:
    """Marking a drive of a Shipping job says the package arrived: the job is Received."""
    return J.RECEIVED if job.state == J.SHIPPING else job.state


def mark_body(job: Job, mark: DriveState, drive_ids: Sequence[str]) -> dict[str, Any]:
    """Marks for these drives, moving a Shipping job to Received in the same PATCH."""
    props: dict[str, Any] = {"driveList": [{"driveId": d, "state": mark.value}
                                           for d in drive_ids]}
    if _after_mark(job) != job.state:
        props["state"] = _after_mark(job).value
    return {"properties": props}


def marks(job: Job, regions: Mapping[str, Region]) -> dict[str, list[DriveState]]:
    """Drive id -> the marks the site may give it now."""
    out: dict[str, list[DriveState]] = {}
    for drive in job.drives:
        ok = [m for m in MARKS if m != drive.state
              and allowed(job, mark_body(job, m, [drive.drive_id]), regions, Role.SITE)]
        if ok:
            out[drive.drive_id] = ok
    return out


def undo_body(job: Job, drive_id: str) -> dict[str, Any]:
    """A drive back to Specified; the job back to Shipping when no mark is left (the package
    is then as if it had not arrived)."""
    props: dict[str, Any] = {"driveList": [{"driveId": drive_id,
                                            "state": D.SPECIFIED.value}]}
    others = [d.state for d in job.drives if d.drive_id != drive_id]
    if job.state == J.RECEIVED and all(s == D.SPECIFIED for s in others):
        props["state"] = J.SHIPPING.value
    return {"properties": props}


def undoable(job: Job, regions: Mapping[str, Region]) -> list[str]:
    """The drives whose mark the site may still undo (before their copy starts)."""
    return [d.drive_id for d in job.drives if d.state in MARKS
            and allowed(job, undo_body(job, d.drive_id), regions, Role.SITE)]


def return_body(job: Job, carrier: str, tracking: str, ship_date: str) -> dict[str, Any]:
    """The site's return: the package, every copied drive ShippedBack, the job Completed."""
    shipped = [d.drive_id for d in job.drives if d.state in _COPIED]
    return {"properties": {
        "returnPackage": {"carrierName": carrier, "trackingNumber": tracking,
                          "driveCount": len(shipped), "shipDate": ship_date},
        "driveList": [{"driveId": d, "state": D.SHIPPED_BACK.value} for d in shipped],
        "state": J.COMPLETED.value}}


def close_body() -> dict[str, Any]:
    """Completed -> Closed."""
    return {"properties": {"state": J.CLOSED.value}}
