"""Job rules: every job and drive transition, allowed or not; names, drive cap, carriers.

The allowed transitions are written out again here, from the issue, rather
than read from ``rules``: a change to the tables must change this file too.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipeline.errors import BadInput
from pipeline.jobs import model, regions, rules
from pipeline.jobs.errors import BadRequest, Conflict, Forbidden
from pipeline.jobs.rules import After, DriveState, JobState, Role
from tests import jobservice

J, D = JobState, DriveState
C, S = Role.CUSTOMER, Role.SITE
# (job from, job to) -> the role that may make the change
JOB_ALLOWED = {
    (J.CREATING, J.SHIPPING): C, (J.CREATING, J.CANCELED): C,
    (J.SHIPPING, J.RECEIVED): S, (J.SHIPPING, J.CANCELED): C,
    (J.RECEIVED, J.SHIPPING): S, (J.RECEIVED, J.TRANSFERRING): S,
    (J.TRANSFERRING, J.PACKAGING): S, (J.PACKAGING, J.COMPLETED): S, (J.COMPLETED, J.CLOSED): S,
}
# the states each role may name at all (anything else is 403 before the table is asked)
TARGETS = {C: {J.SHIPPING, J.CANCELED},
           S: {J.RECEIVED, J.SHIPPING, J.TRANSFERRING, J.PACKAGING, J.COMPLETED, J.CLOSED}}
# (drive from, drive to) -> the job states (after the update) in which the site may do it
DRIVE_ALLOWED = {
    (D.SPECIFIED, D.RECEIVED): {J.SHIPPING, J.RECEIVED, J.TRANSFERRING},
    (D.SPECIFIED, D.NEVER_RECEIVED): {J.RECEIVED, J.TRANSFERRING, J.PACKAGING},
    (D.NEVER_RECEIVED, D.RECEIVED): {J.RECEIVED, J.TRANSFERRING},
    (D.RECEIVED, D.SPECIFIED): {J.SHIPPING, J.RECEIVED},
    (D.NEVER_RECEIVED, D.SPECIFIED): {J.SHIPPING, J.RECEIVED},
    (D.RECEIVED, D.TRANSFERRING): {J.TRANSFERRING},
    (D.RECEIVED, D.SHIPPED_BACK): {J.CANCELED},
    (D.TRANSFERRING, D.COMPLETED): {J.TRANSFERRING, J.PACKAGING},
    (D.TRANSFERRING, D.COMPLETED_MORE_INFO): {J.TRANSFERRING, J.PACKAGING},
    (D.COMPLETED, D.SHIPPED_BACK): {J.PACKAGING, J.COMPLETED, J.CANCELED},
    (D.COMPLETED_MORE_INFO, D.SHIPPED_BACK): {J.PACKAGING, J.COMPLETED, J.CANCELED},
}
COPIED = {D.COMPLETED, D.COMPLETED_MORE_INFO, D.NEVER_RECEIVED}
RETURNED = {D.SHIPPED_BACK, D.NEVER_RECEIVED}
REGIONS = regions.load(regions.SHIPPED)
REF = model.JobRef("0f0e0d0c-0b0a-0908-0706-050403020100", "rg", "job-1")
ADDRESS = {"recipientName": "Ops", "streetAddress1": "1 Way", "city": "Lisboa",
           "postalCode": "1000-001", "countryOrRegion": "PT", "phone": "+351 1",
           "email": "ops@example.com"}
RETURN = {"returnAddress": ADDRESS,
          "returnShipping": {"carrierName": "DHL", "carrierAccountNumber": "A1"}}


def guard_ok(current: JobState, target: JobState, has_package: bool,
             drives: tuple[DriveState, ...]) -> bool:
    """The guards of the issue: Shipping needs the package (and the return leg, a 400
    the callers check); the copy and return steps need every drive done; Transferring
    needs a received drive; going back to Shipping needs every mark undone."""
    if target == J.SHIPPING:
        return has_package if current == J.CREATING else all(d == D.SPECIFIED for d in drives)
    if target == J.TRANSFERRING:
        return any(d in (D.RECEIVED, D.TRANSFERRING) for d in drives)
    if target == J.PACKAGING:
        return all(d in COPIED for d in drives)
    if target == J.COMPLETED:
        return all(d in RETURNED for d in drives)
    return True


def permissive(target: JobState) -> After:
    """Facts that satisfy every guard into ``target``."""
    drives = {J.TRANSFERRING: (D.RECEIVED,), J.PACKAGING: (D.COMPLETED,),
              J.COMPLETED: (D.SHIPPED_BACK,)}.get(target, (D.SPECIFIED,))
    return After(state=target, has_delivery_package=True, drive_states=drives)


@pytest.mark.parametrize(("current", "target", "role"),
                         list(itertools.product(JobState, JobState, Role)))
def test_every_job_transition(current: JobState, target: JobState, role: Role) -> None:
    after = permissive(target)
    owner = JOB_ALLOWED.get((current, target))
    if current == target or owner == role:
        rules.check_job_transition(current, after, role)
        return
    if owner is not None or target not in TARGETS[role]:
        with pytest.raises(Forbidden) as forbidden:
            rules.check_job_transition(current, after, role)
        assert forbidden.value.status == 403 and forbidden.value.code == "AuthorizationFailed"
        assert f"to {target} is the" in str(forbidden.value)
        return
    with pytest.raises(Conflict) as refused:
        rules.check_job_transition(current, after, role)
    assert refused.value.code == "InvalidStateTransition" and refused.value.status == 409
    assert f"from {current} to {target}" in str(refused.value)
    if target == J.CANCELED:
        assert "only before the site receives it" in str(refused.value)


def test_the_default_role_is_the_customer() -> None:
    with pytest.raises(Forbidden):
        rules.check_job_transition(J.SHIPPING, permissive(J.RECEIVED))
    with pytest.raises(Forbidden):
        rules.check_drive_transition("d1", D.SPECIFIED, D.RECEIVED, permissive(J.SHIPPING))


@pytest.mark.parametrize(("target", "after", "reason"), [
    (J.TRANSFERRING, After(J.TRANSFERRING, True, (D.SPECIFIED, D.NEVER_RECEIVED)),
     "no drive has been received"),
    (J.PACKAGING, After(J.PACKAGING, True, (D.COMPLETED, D.TRANSFERRING)),
     "still Transferring"),
    (J.COMPLETED, After(J.COMPLETED, True, (D.SHIPPED_BACK, D.COMPLETED)), "still Completed"),
])
def test_job_guards_say_why(target: JobState, after: After, reason: str) -> None:
    current = next(a for a, b in JOB_ALLOWED if b == target)
    with pytest.raises(Conflict, match=reason):
        rules.check_job_transition(current, after, S)


def test_undoing_every_mark_takes_the_job_back_to_shipping() -> None:
    with pytest.raises(Conflict, match="still Received; undo every drive's mark"):
        rules.check_job_transition(J.RECEIVED, After(J.SHIPPING, True, (D.SPECIFIED, D.RECEIVED)),
                                   S)
    rules.check_job_transition(J.RECEIVED, After(J.SHIPPING, True, (D.SPECIFIED,)), S)


@pytest.mark.parametrize(("address", "shipping", "package"),
                         [c for c in itertools.product((True, False), repeat=3) if not all(c)])
def test_shipping_needs_the_return_leg_and_the_package(address: bool, shipping: bool,
                                                       package: bool) -> None:
    after = After(J.SHIPPING, package, (D.SPECIFIED,), has_return_address=address,
                  has_return_shipping=shipping)
    with pytest.raises(BadRequest) as bad:
        rules.check_job_transition(J.CREATING, after, C)
    assert bad.value.status == 400 and bad.value.code == "InvalidRequest"
    message = str(bad.value)
    assert ("return address" in message) != address
    assert ("return carrier" in message) != shipping
    assert ("tracking number" in message) != package
    assert "properties.returnAddress.postalCode" not in message


@pytest.mark.parametrize(("current", "target", "job"),
                         list(itertools.product(DriveState, DriveState, JobState)))
def test_every_drive_transition(current: DriveState, target: DriveState, job: JobState) -> None:
    after = After(job, True, (target,))
    if current != target:  # every drive state change is the site's
        with pytest.raises(Forbidden, match="receiving site's step"):
            rules.check_drive_transition("d1", current, target, after, C)
    if current == target or job in DRIVE_ALLOWED.get((current, target), ()):
        rules.check_drive_transition("d1", current, target, after, S)
        return
    with pytest.raises(Conflict) as refused:
        rules.check_drive_transition("d1", current, target, after, S)
    assert refused.value.code == "InvalidDriveStateTransition"
    assert f"drive d1 cannot go from {current} to {target}" in str(refused.value)


@pytest.mark.parametrize("mark", [D.RECEIVED, D.NEVER_RECEIVED])
def test_a_mark_cannot_be_undone_once_the_copy_started(mark: DriveState) -> None:
    after = After(J.RECEIVED, True, (D.SPECIFIED,))
    rules.check_drive_transition("d1", mark, D.SPECIFIED, after, S, copy_started=False)
    with pytest.raises(Conflict, match="copy has started"):
        rules.check_drive_transition("d1", mark, D.SPECIFIED, after, S, copy_started=True)


def test_final_states_say_so() -> None:
    with pytest.raises(Conflict, match="nothing \\(final state\\)"):
        rules.check_job_transition(J.CLOSED, permissive(J.COMPLETED), S)
    with pytest.raises(Conflict, match="nothing \\(final state\\)"):
        rules.check_drive_transition("d", D.SHIPPED_BACK, D.RECEIVED, After(J.RECEIVED, True, ()),
                                     S)


# --------------------------------------------------------------------------- names

JOB_NAME = re.compile(r"[a-z][a-z0-9_-]{2,23}")


@pytest.mark.parametrize("name", ["abc", "a-b_c", "seed-2026_11", "a" * 24, "x1-"])
def test_valid_job_names(name: str) -> None:
    assert rules.check_job_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("ab", "has 2 characters"), ("a" * 25, "has 25 characters"), ("", "has 0 characters"),
    ("1abc", "start with a lowercase letter"), ("Abc", "start with a lowercase letter"),
    ("-abc", "start with a lowercase letter"), ("ab c", "contains a space"),
    ("abC", "other than a-z"), ("a.b", "other than a-z"), ("a/b", "other than a-z"),
    ("..", "has 2 characters"), ("...", "start with a lowercase letter"),
    ("caf\u00e9", "other than a-z"), ("\u00e9t\u00e9s", "start with a lowercase letter"),
    ("ab\x00c", "other than a-z"), ("abc\n", "other than a-z"),
])
def test_invalid_job_names(name: str, why: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(why)) as bad:
        rules.check_job_name(name)
    assert bad.value.code == "InvalidJobName" and "3-24" in str(bad.value)
    assert "\n" not in str(bad.value) and "\x00" not in str(bad.value)


@given(st.text(max_size=30))
def test_job_name_rule_is_the_documented_one(name: str) -> None:
    ok = JOB_NAME.fullmatch(name) is not None
    try:
        rules.check_job_name(name)
    except BadRequest:
        assert not ok
    else:
        assert ok


@pytest.mark.parametrize("name", ["..", ".", "a.", "", "a" * 91, "rg/x", "r\u00e9", "a b"])
def test_invalid_resource_groups(name: str) -> None:
    with pytest.raises(BadRequest, match="resource group"):
        rules.check_resource_group(name)


def test_subscription_ids_and_locations() -> None:
    sub = "0F0E0D0C-0B0A-0908-0706-050403020100"
    assert rules.check_subscription_id(sub) == sub.lower()
    with pytest.raises(BadRequest, match="not a UUID"):
        rules.check_subscription_id("../x")
    assert rules.location_key("West Europe") == "westeurope"
    with pytest.raises(BadRequest, match="location"):
        rules.location_key("west/europe")


def test_recovery_passwords_are_checked_but_never_echoed() -> None:
    good = jobservice.recovery_password()
    assert rules.check_recovery_password("d1", good) == good
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    with pytest.raises(BadRequest) as refused:
        rules.check_recovery_password("d1", bad)
    assert bad not in str(refused.value) and "drive d1" in str(refused.value)


# --------------------------------------------------------------------------- drive list, carriers


def test_at_most_ten_drives() -> None:
    job, keys = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(10)), REGIONS)
    assert len(job.drives) == 10 and len(keys) == 10
    with pytest.raises(BadRequest, match="at most 10 drives") as many:
        model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(11)), REGIONS)
    assert many.value.code == "TooManyDrives"
    with pytest.raises(BadRequest, match="at least one drive"):
        model.parse_new_job(REF, jobservice.job_body([]), REGIONS)
    # a PATCH may add drives while Creating, up to the same cap
    extra = jobservice.drive_list(1, prefix="extra")
    with pytest.raises(BadRequest, match="at most 10 drives"):
        model.apply_update(job, {"properties": {"driveList": extra}}, REGIONS)
    nine, _ = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(9)), REGIONS)
    ten, new_keys = model.apply_update(nine, {"properties": {"driveList": extra}}, REGIONS)
    assert len(ten.drives) == 10 and list(new_keys) == [extra[0]["driveId"]]


def test_duplicate_and_malformed_drives() -> None:
    drives = jobservice.drive_list(2)
    drives[1]["driveId"] = drives[0]["driveId"]
    with pytest.raises(BadRequest, match="listed twice"):
        model.parse_new_job(REF, jobservice.job_body(drives), REGIONS)
    for field, value, match in [("driveId", "has space", "driveId"),
                                ("manifestHash", "xyz", "hexadecimal"),
                                ("bitLockerKey", "123", "not a recovery password"),
                                ("state", "Received", "starts Specified"),
                                ("colour", "blue", "unknown field")]:
        entry = jobservice.drive_list(1)
        entry[0][field] = value
        with pytest.raises(BadRequest, match=match):
            model.parse_new_job(REF, jobservice.job_body(entry), REGIONS)


def test_carriers_come_from_the_location() -> None:
    west = REGIONS["westeurope"]
    assert rules.check_carrier(" dhl ", west.supported_carriers, "westeurope") == "DHL"
    with pytest.raises(BadRequest, match="use one of: DHL, FedEx, TNT, UPS") as bad:
        rules.check_carrier("Correios", west.supported_carriers, "westeurope")
    assert bad.value.code == "UnsupportedCarrier"
    brazil = jobservice.job_body(jobservice.drive_list(1), location="brazilsouth", **RETURN)
    job, _ = model.parse_new_job(REF, brazil, REGIONS)
    package = {"carrierName": "correios", "trackingNumber": "BR123"}
    shipped, _ = model.apply_update(
        job, {"properties": {"deliveryPackage": package, "state": "Shipping"}}, REGIONS)
    assert shipped.details["deliveryPackage"]["carrierName"] == "Correios"
    job2, _ = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(1)), REGIONS)
    with pytest.raises(BadRequest, match="does not deliver to location westeurope"):
        model.apply_update(job2, {"properties": {"deliveryPackage": package}}, REGIONS)
    with pytest.raises(BadRequest, match="returnShipping|carrier"):
        model.apply_update(job2, {"properties": {"returnShipping": {
            "carrierName": "Pony", "carrierAccountNumber": "1"}}}, REGIONS)


def test_shipping_needs_carrier_and_tracking_number() -> None:
    bare = jobservice.job_body(jobservice.drive_list(2), returnAddress=None, returnShipping=None)
    job, _ = model.parse_new_job(REF, bare, REGIONS)
    with pytest.raises(BadRequest, match="return address.*return carrier.*tracking number"):
        model.apply_update(job, {"properties": {"state": "Shipping"}}, REGIONS)
    with pytest.raises(BadRequest, match="trackingNumber"):
        model.apply_update(job, {"properties": {"deliveryPackage": {"carrierName": "DHL"},
                                                "state": "Shipping"}}, REGIONS)
    package = {"carrierName": "DHL", "trackingNumber": "1"}
    with pytest.raises(BadRequest, match="give the return address .*; the return carrier") as bad:
        model.apply_update(job, {"properties": {"deliveryPackage": package,
                                                "state": "Shipping"}}, REGIONS)
    assert "tracking number" not in str(bad.value)
    shipped, _ = model.apply_update(job, {"properties": {"deliveryPackage": package,
                                                         "state": "Shipping", **RETURN}}, REGIONS)
    assert shipped.state == J.SHIPPING


def test_frozen_fields_and_cancellation() -> None:
    job, _ = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(1), **RETURN),
                                 REGIONS)
    package = {"properties": {"deliveryPackage": {"carrierName": "DHL", "trackingNumber": "1"}}}
    job, _ = model.apply_update(job, package, REGIONS)
    job, _ = model.apply_update(job, {"properties": {"state": "Shipping"}}, REGIONS)
    job, _ = model.apply_update(job, {"properties": {"state": "Received"}}, REGIONS, S)
    with pytest.raises(Conflict, match="deliveryPackage cannot change while the job is Received"):
        model.apply_update(job, {"properties": {"deliveryPackage": {
            "carrierName": "UPS", "trackingNumber": "2"}}}, REGIONS)
    drive_id = job.drives[0].drive_id
    with pytest.raises(Conflict, match="drive identity"):
        model.apply_update(job, {"properties": {"driveList": [
            {"driveId": drive_id, "manifestHash": "abcd"}]}}, REGIONS)
    with pytest.raises(Conflict, match="drive identity"):
        model.apply_update(job, {"properties": {"driveList": [
            {"driveId": drive_id, "bitLockerKey": jobservice.recovery_password()}]}}, REGIONS)
    # one PATCH: the drive arrives and the job starts copying it
    moving = {"properties": {"state": "Transferring", "driveList": [
        {"driveId": drive_id, "state": "Received"}]}}
    with pytest.raises(Conflict, match="drive .* Received to Transferring|Received"):
        model.apply_update(job, {"properties": {"driveList": [
            {"driveId": drive_id, "state": "Transferring"}]}}, REGIONS, S)
    job, _ = model.apply_update(job, moving, REGIONS, S)
    assert job.state == J.TRANSFERRING and job.drives[0].state == D.RECEIVED
    with pytest.raises(Conflict, match="only before the site receives it"):
        model.apply_update(job, {"properties": {"cancelRequested": True}}, REGIONS)
    with pytest.raises(BadRequest, match="properties.state cannot|cannot be changed by PATCH"):
        model.apply_update(job, {"properties": {"percentComplete": 5}}, REGIONS)


def test_cancel_and_it_cannot_be_undone() -> None:
    job, _ = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(1)), REGIONS)
    canceled, _ = model.apply_update(job, {"properties": {"cancelRequested": True}}, REGIONS)
    assert canceled.state == J.CANCELED and canceled.cancel_requested
    with pytest.raises(Conflict, match="cannot be undone"):
        model.apply_update(canceled, {"properties": {"cancelRequested": False}}, REGIONS)
    with pytest.raises(BadRequest, match="send one of them"):
        model.apply_update(job, {"properties": {"cancelRequested": True, "state": "Shipping"}},
                           REGIONS)


# --------------------------------------------------------------------------- the whole PATCH path


FORWARD_JOB = {a: b for a, b in JOB_ALLOWED
               if b != J.CANCELED and (a, b) != (J.RECEIVED, J.SHIPPING)}
FORWARD_DRIVE = {D.SPECIFIED: D.RECEIVED, D.NEVER_RECEIVED: D.RECEIVED,
                 D.RECEIVED: D.TRANSFERRING, D.TRANSFERRING: D.COMPLETED,
                 D.COMPLETED: D.SHIPPED_BACK, D.COMPLETED_MORE_INFO: D.SHIPPED_BACK}


class JobLifecycle(RuleBasedStateMachine):
    """Random PATCHes by either role through ``model.apply_update``, checked against the
    tables above: each is allowed, 403 (the other role's), 409 or 400, never something else."""

    def __init__(self) -> None:
        super().__init__()
        self.job, self.keys = model.parse_new_job(
            REF, jobservice.job_body(jobservice.drive_list(3), **RETURN), REGIONS)
        self.ids = [d.drive_id for d in self.job.drives]

    def patch(self, body: dict[str, Any], role: Role, expect: type[Exception] | None) -> None:
        before = self.job
        try:
            self.job, _ = model.apply_update(self.job, body, REGIONS, role)
        except (Forbidden, Conflict, BadRequest) as exc:
            assert type(exc) is expect, f"{role} {body} from {before.state}: {exc!r}"
            assert self.job is before
        else:
            assert expect is None, f"{role} allowed {body} from {before.state}"

    # None: the forward step, drawn often so that runs get past Transferring
    @rule(state=st.sampled_from([*JobState, None, None, None, None]), package=st.booleans(),
          role=st.sampled_from(Role))
    def job_to(self, state: JobState | None, package: bool, role: Role) -> None:
        current = self.job.state
        target = state or FORWARD_JOB.get(current, current)
        owner = JOB_ALLOWED.get((current, target))
        if state is None and owner is not None:
            role = owner
        props: dict[str, Any] = {"state": target.value}
        if package and role == C and current in (J.CREATING, J.SHIPPING):
            props["deliveryPackage"] = {"carrierName": "UPS", "trackingNumber": "T1"}
        has_package = "deliveryPackage" in self.job.details or "deliveryPackage" in props
        drives = tuple(d.state for d in self.job.drives)
        expect: type[Exception] | None = None
        if target == current:
            pass
        elif (owner is not None and owner != role) or (owner is None
                                                       and target not in TARGETS[role]):
            expect = Forbidden
        elif owner is None or not guard_ok(current, target, has_package, drives):
            expect = BadRequest if (current, target) == (J.CREATING, J.SHIPPING) else Conflict
        self.patch({"properties": props}, role, expect)

    @rule(index=st.integers(0, 2), state=st.sampled_from([*DriveState, None, None, None]),
          role=st.sampled_from([S, S, C]))
    def drive_to(self, index: int, state: DriveState | None, role: Role) -> None:
        drive = self.job.drives[index]
        target = state or FORWARD_DRIVE.get(drive.state, D.SHIPPED_BACK)
        ok = target == drive.state or (
            self.job.state in DRIVE_ALLOWED.get((drive.state, target), ())
            and (target != D.SPECIFIED or drive.copy_status in (None, "NotStarted")))
        expect = (Forbidden if role == C and target != drive.state
                  else None if ok else Conflict)
        self.patch({"properties": {"driveList": [{"driveId": self.ids[index],
                                                  "state": target.value}]}}, role, expect)

    @rule()
    def every_drive_forward(self) -> None:
        """One PATCH moving all drives a step: allowed only if each move is."""
        entries, ok = [], True
        for d in self.job.drives:
            target = FORWARD_DRIVE.get(d.state, d.state)
            ok = ok and (target == d.state
                         or self.job.state in DRIVE_ALLOWED.get((d.state, target), ()))
            entries.append({"driveId": d.drive_id, "state": target.value})
        self.patch({"properties": {"driveList": entries}}, S, None if ok else Conflict)

    @precondition(lambda self: self.job.state == J.TRANSFERRING)
    @rule(index=st.integers(0, 2), percent=st.integers(0, 100), role=st.sampled_from(Role))
    def progress(self, index: int, percent: int, role: Role) -> None:
        entry = {"driveId": self.ids[index], "percentComplete": percent,
                 "bytesSucceeded": percent * 1000, "copyStatus": "copying"}
        drive = self.job.drives[index]
        changes = (drive.percent_complete, drive.bytes_succeeded, drive.copy_status) != (
            percent, percent * 1000, "copying")
        done = drive.state in (D.COMPLETED, D.COMPLETED_MORE_INFO, D.SHIPPED_BACK)  # final
        self.patch({"properties": {"driveList": [entry]}}, role,
                   Forbidden if role == C and changes else Conflict if changes and done
                   else None)
        if role == S and not done:
            assert self.job.drives[index].percent_complete == percent

    @invariant()
    def consistent(self) -> None:
        event(f"job {self.job.state}")
        assert self.job.cancel_requested == (self.job.state == J.CANCELED)
        assert [d.drive_id for d in self.job.drives] == self.ids
        text = json.dumps(self.job.to_resource())
        assert not any(key in text for key in self.keys.values())
        assert 0 <= self.job.percent_complete <= 100


TestJobLifecycle = JobLifecycle.TestCase
TestJobLifecycle.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_the_lifecycle_reaches_every_state() -> None:
    """The happy path to Closed, one PATCH at a time, each by the role whose step it is."""
    job, _ = model.parse_new_job(REF, jobservice.job_body(jobservice.drive_list(2), **RETURN),
                                 REGIONS)
    a, b = (d.drive_id for d in job.drives)
    steps: list[tuple[Role, dict[str, Any]]] = [
        (C, {"deliveryPackage": {"carrierName": "FedEx", "trackingNumber": "F1"},
             "state": "Shipping"}),
        (S, {"state": "Received", "driveList": [{"driveId": a, "state": "Received"},
                                                {"driveId": b, "state": "Received"}]}),
        (S, {"state": "Shipping", "driveList": [{"driveId": a, "state": "Specified"},
                                                {"driveId": b, "state": "Specified"}]}),
        (S, {"state": "Received", "driveList": [{"driveId": a, "state": "Received"}]}),
        (S, {"driveList": [{"driveId": b, "state": "NeverReceived"}]}),
        (S, {"state": "Transferring", "driveList": [{"driveId": a, "state": "Transferring"}]}),
        (S, {"driveList": [{"driveId": a, "percentComplete": 100,
                            "errorLogUri": "https://logs.example/a-error.xml"}]}),
        (S, {"state": "Packaging", "driveList": [{"driveId": a, "state": "CompletedMoreInfo"}]}),
        (S, {"driveList": [{"driveId": a, "state": "ShippedBack"}],
             "returnPackage": {"carrierName": "FedEx", "trackingNumber": "R1", "driveCount": 1,
                               "shipDate": "2026-12-01"}}),
        (S, {"state": "Completed"}),
        (S, {"state": "Closed"}),
    ]
    for role, props in steps:
        job, _ = model.apply_update(job, {"properties": props}, REGIONS, role)
    assert job.state == J.CLOSED and job.percent_complete == 100
    assert job.to_resource()["properties"]["returnPackage"]["trackingNumber"] == "R1"


# --------------------------------------------------------------------------- regions file


def test_shipped_regions_file() -> None:
    assert len(REGIONS) == 6
    for region in REGIONS.values():
        api = region.to_api()
        assert api["id"] == f"/providers/Microsoft.ImportExport/locations/{region.name}"
        assert api["properties"]["supportedCarriers"]
        assert region.id in api["properties"]["alternateLocations"]
    assert "FICTIONAL" in json.loads(regions.SHIPPED.read_text())["comment"]


def test_a_broken_regions_file_names_the_entry(tmp_path: Path) -> None:
    doc = json.loads(regions.SHIPPED.read_text())
    doc["value"][2]["properties"]["city"] = ""
    path = tmp_path / "regions.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BadInput, match=r"location #3 \(westus\): properties.city"):
        regions.load(path)
    path.write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        regions.load(path)
