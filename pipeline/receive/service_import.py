"""The receiving site's side of an import job: `pipeline import --service` and `pipeline
site receive|return|close|jobs`.

It reads drives (volume UUID, LUKS2 header) and talks to the service through
``pipeline.jobs.client`` with the site's credential (a site token: the customer's
publish settings may not take the site's steps, the service answers 403), so it
lives with the receiving side, not in jobs/ (which never touches drives).

The drives' keys come from the job (listBitLockerKeys), each drive is matched
to the job by its volume UUID and its LUKS2 header hash, and the job moves as
the work does::

    site receive: job Shipping -> Received, drives Received (or NeverReceived)
    import:       job Received -> Transferring (drives Transferring)
    each drive: progress (percentComplete, bytesSucceeded) every few seconds, then
        Completed, or CompletedMoreInfo with errorLogUri; its copy logs go to the
        service as the job's logLevel asks (Error: the error log when there are
        errors; Verbose: the verbose log, and the error log when there are errors)
    every drive done -> job Packaging
    site return:  drives ShippedBack, returnPackage recorded, job Completed
    site close:   job Closed

``NEXT`` is the one table of what comes next in each job state, for the site's
listing and for every refusal that names a wrong state.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from pipeline import credentials
from pipeline.drive import format
from pipeline.errors import BadInput, Caution, Refused
from pipeline.jobs.client import MAX_COPY_LOG, ServiceClient, ServiceError
from pipeline.receive import importer
from pipeline.receive import reader as driveread
from pipeline.storage.base import Storage
from pipeline.volume import drives, luks2

REPORT_EVERY_S = 2.0
_DONE = ("Completed", "CompletedMoreInfo", "NeverReceived", "ShippedBack")
_COPIED = ("Completed", "CompletedMoreInfo")
_MANIFEST = re.compile(r"/index@([0-9]{1,20})\+([0-9]{1,20})")  # journal.drive_list's form
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SITE_CMD = "pipeline site {what} --service URL --site-token-file FILE --job {job}"

# Job state -> (who acts next, what to do, the command): the site's listing and every
# message that refuses a step in the wrong state read this one table.
NEXT: dict[str, tuple[str, str, str]] = {
    "Creating": ("customer", "ship the drives",
                 "the customer: pipeline jobs ship --job {job} ... (with a return address)"),
    "Shipping": ("site", "receive the package", _SITE_CMD.format(what="receive", job="{job}")
                 + " [--never-received DRIVE-ID]"),
    "Received": ("site", "import the drives",
                 "pipeline import --service URL --site-token-file FILE --job {job} "
                 "--drive PATH ... --to STORAGE"),
    "Transferring": ("site", "finish importing",
                     "pipeline import --service URL --site-token-file FILE --job {job} "
                     "--drive PATH (every drive not Completed yet) --to STORAGE"),
    "Packaging": ("site", "ship the drives back", _SITE_CMD.format(what="return", job="{job}")
                  + " --carrier C --tracking N"),
    "Completed": ("site", "close when the customer has its drives",
                  _SITE_CMD.format(what="close", job="{job}")),
    "Closed": ("-", "nothing", "nothing: the job is closed"),
    "Canceled": ("-", "nothing", "nothing: the job was canceled"),
}


def next_step(state: str, job: str) -> str:
    """What comes next for a job in ``state``, as a command line."""
    return NEXT.get(state, ("-", "", f"nothing known for state {state}"))[2].format(job=job)


def log_uri(store: Storage, container: str, blob: str) -> str:
    base = store.name if "://" in store.name else "file://" + store.name
    return f"{base.rstrip('/')}/{container}/{blob}"


T = TypeVar("T")


def site_call(name: str, call: Callable[..., T], *args: Any) -> T:
    """One call on job ``name`` that takes a site step: a 403 (the customer's publish
    settings, which may not) becomes a line saying which credential to use."""
    try:
        return call(*args)
    except ServiceError as exc:
        if exc.status == 403:
            raise BadInput(f"job {name}: the import service refused a receiving site's step to "
                           f"this credential ({exc}); the site uses its own: --site-token-file "
                           "FILE (from pipeline service site-token --data DIR), not the "
                           "customer's --publish-settings") from None
        raise


def locate(client: ServiceClient, name: str, subscription: str | None = None,
           resource_group: str | None = None) -> tuple[ServiceClient, dict[str, Any]]:
    """The job and a client bound to its subscription: found by name across every
    subscription with a site token, in the publish settings' subscription otherwise."""
    if client.is_site:
        job = client.find(name, subscription, resource_group)
        return client.bound_to(job), job
    if resource_group:
        client.resource_group = resource_group
    return client, client.get(name)


# --------------------------------------------------------------------------- site steps


def _drive_ids(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["driveId"]: d for d in job["properties"].get("driveList", [])}


def _check_ids(job: dict[str, Any], name: str, flag: str, ids: Sequence[str]) -> list[str]:
    known = _drive_ids(job)
    lower = {k.lower(): k for k in known}
    out = []
    for given in ids:
        if given.lower() not in lower:
            raise BadInput(f"{flag} {given} is not a drive of job {name}; its drives are "
                           f"{', '.join(sorted(known)) or 'none'}")
        out.append(lower[given.lower()])
    return out


def receive(client: ServiceClient, name: str, job: dict[str, Any], received: Sequence[str],
            never: Sequence[str], undo: Sequence[str] = ()) -> dict[str, Any]:
    """Mark the package's drives: ``received`` (none given: every drive not named in
    ``never``) Received, ``never`` NeverReceived, ``undo`` back to Specified; the job
    Shipping -> Received."""
    state = job["properties"]["state"]
    if state not in ("Shipping", "Received", "Transferring", "Packaging"):
        raise BadInput(f"job {name} is {state}: there is no package to receive; next: "
                       f"{next_step(state, name)}")
    got, missing, back = (_check_ids(job, name, flag, ids) for flag, ids in (
        ("--drive", received), ("--never-received", never), ("--undo", undo)))
    twice = (set(got) & set(missing)) | (set(back) & (set(got) | set(missing)))
    if twice:
        raise BadInput(f"drive {sorted(twice)[0]} is named twice; give each drive once")
    current = _drive_ids(job)
    if not got and not back:
        got = [d for d, v in current.items() if d not in missing
               and v.get("state") in ("Specified", "NeverReceived")]
    marks = ([{"driveId": d, "state": "Received"} for d in got
              if current[d].get("state") != "Received"]
             + [{"driveId": d, "state": "NeverReceived"} for d in missing
                if current[d].get("state") != "NeverReceived"]
             + [{"driveId": d, "state": "Specified"} for d in back])
    props: dict[str, Any] = {"driveList": marks}
    if state == "Shipping":
        props["state"] = "Received"
    return site_call(name, client.patch, name, {"properties": props})


def ship_date(text: str | None) -> str:
    """``--ship-date``: YYYY-MM-DD, not in the future (default today)."""
    today = datetime.date.today()
    if not text:
        return today.isoformat()
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"--ship-date {text!r} is not a date; give YYYY-MM-DD") from None
    if day > today:
        raise BadInput(f"--ship-date {text} is in the future; give the day the drives left")
    return day.isoformat()


def return_drives(client: ServiceClient, name: str, job: dict[str, Any], carrier: str | None,
                  tracking: str, date: str | None = None) -> dict[str, Any]:
    """The drives go back: returnPackage recorded, drives ShippedBack, job Completed."""
    props = job["properties"]
    state = props["state"]
    if state != "Packaging":
        raise BadInput(f"job {name} is {state}, not Packaging: drives go back once every "
                       f"drive is imported; next: {next_step(state, name)}")
    if not tracking.strip():
        raise BadInput("--tracking is empty; give the return shipment's tracking number")
    carrier = carrier or props.get("returnShipping", {}).get("carrierName")
    if not carrier:
        raise BadInput(f"job {name} names no return carrier; give --carrier C")
    back = [{"driveId": d["driveId"], "state": "ShippedBack"}
            for d in props.get("driveList", []) if d.get("state") in _COPIED]
    return site_call(name, client.patch, name, {"properties": {
        "state": "Completed", "driveList": back, "returnPackage": {
            "carrierName": carrier, "trackingNumber": tracking.strip(),
            "driveCount": len(back), "shipDate": ship_date(date)}}})


def close(client: ServiceClient, name: str, job: dict[str, Any]) -> dict[str, Any]:
    """Completed -> Closed: the site is done with the job."""
    state = job["properties"]["state"]
    if state != "Completed":
        raise BadInput(f"job {name} is {state}, not Completed: only a completed job is "
                       f"closed; next: {next_step(state, name)}")
    return site_call(name, client.patch, name, {"properties": {"state": "Closed"}})


# --------------------------------------------------------------------------- the import


@dataclass
class Reporter:
    """Progress of one drive, sent to the job every few seconds while it imports."""

    job: JobImport
    drive_id: str
    total: int
    zero: int = 0  # bytes of the drive's holes and zero runs: copied without being written
    done: int = 0

    def add(self, n: int) -> None:
        self.done += n

    def percent(self) -> int:
        return 100 if not self.total else min(99, self.done * 100 // self.total)

    async def run(self) -> None:
        """Until cancelled (the import ended).  A patch in flight then is waited for, not
        abandoned (``to_thread.run_sync``), so it lands before ``finish_drive``'s.  A drive
        already done (imported again) is not reported: its outcome stands, and the service
        refuses progress for it."""
        if self.job.drive_state(self.drive_id) in _DONE:
            return
        while True:
            await trio.sleep(REPORT_EVERY_S)
            body = {"properties": {"driveList": [{
                "driveId": self.drive_id, "copyStatus": "InProgress",
                "percentComplete": self.percent(), "bytesSucceeded": self.done}]}}
            await trio.to_thread.run_sync(site_call, self.job.name, self.job.client.patch,
                                          self.job.name, body)


@dataclass
class JobImport:
    client: ServiceClient
    name: str
    job: dict[str, Any]
    keys: dict[str, str] = field(repr=False)

    @classmethod
    def connect(cls, client: ServiceClient, name: str, subscription: str | None = None,
                resource_group: str | None = None) -> JobImport:
        client, job = locate(client, name, subscription, resource_group)
        state = job["properties"]["state"]
        if state not in ("Shipping", "Received", "Transferring"):
            raise Refused(f"job {name} is {state}; drives are imported only once the job is "
                          f"Shipping, Received or Transferring; next: {next_step(state, name)}")
        keys = {k["driveId"]: k["bitLockerKey"] for k in client.keys(name)}
        return cls(client, name, job, keys)

    def _drives(self) -> dict[str, dict[str, Any]]:
        return _drive_ids(self.job)

    def drive_state(self, uuid: str) -> str | None:
        """The drive's state as of the job's last answer (each patch of ours returns it)."""
        return self._drives().get(uuid, {}).get("state")

    def key_for(self, path: str) -> credentials.Secret:
        """The drive's recovery password from the job, after checking it is the job's drive."""
        with drives.open_drive(path) as d:
            uuid = drives.read_volume(d).uuid
            header = hashlib.sha256(d.pread(luks2.HDR_SIZE, 0)).hexdigest()
        entry = self._drives().get(uuid)
        if entry is None or uuid not in self.keys:
            raise Refused(f"{path} (volume {uuid}) is not a drive of job {self.name}; "
                          "check the drive and --job")
        declared = entry.get("driveHeaderHash")
        if declared and declared.lower() != header:
            raise Refused(f"{path}: its LUKS2 header differs from the one declared for job "
                          f"{self.name} (driveHeaderHash); the drive was changed in transit or "
                          "is not the one prepared")
        return credentials.Secret(self.keys[uuid].encode(), "recovery password")

    def manifest_for(self, path: str) -> driveread.Manifest | None:
        """The job's record of the drive's closing index (``manifestFile``, ``manifestHash``):
        on a drive of several copy sessions it names this job's session, since each
        session's job lists the same drive (driveId, key) with its own manifest; a drive
        of one session (format 1 or 2) is held to it as well, whenever the entry carries a
        manifestHash.  Both are checked by the reader inside its one unlock
        (``reader.unlock_drive``), before anything is written.  None when the entry has no
        manifestHash (then a drive of several sessions is refused, naming them)."""
        with drives.open_drive(path) as d:
            uuid = drives.read_volume(d).uuid
        entry = self._drives().get(uuid, {})
        found = _MANIFEST.fullmatch(str(entry.get("manifestFile", "")))
        digest = str(entry.get("manifestHash", ""))
        if not _HEX64.fullmatch(digest):
            return None
        where = None if found is None else (int(found[1]), int(found[2]))
        return driveread.Manifest(where, bytes.fromhex(digest), f"job {self.name}")

    def _patch(self, props: dict[str, Any]) -> None:
        self.job = site_call(self.name, self.client.patch, self.name, {"properties": props})

    def start(self, uuids: list[str]) -> None:
        """Drives arrived, then transfer begins: two steps, as the state machine wants."""
        current = self._drives()
        arrived = [{"driveId": u, "state": "Received"} for u in uuids
                   if current[u].get("state") in ("Specified", "NeverReceived")]
        state = self.job["properties"]["state"]
        if state == "Shipping" or arrived:
            self._patch({"state": "Received" if state == "Shipping" else state,
                         "driveList": arrived})
        moving = [{"driveId": u, "state": "Transferring", "copyStatus": "InProgress"}
                  for u in uuids if self._drives()[u].get("state") == "Received"]
        self._patch({"state": "Transferring", "driveList": moving})

    def reporter(self, uuid: str, plan: importer.DrivePlan) -> Reporter:
        total = sum(e.raw_len for e in plan.extents if e.codec is not format.Codec.ZERO)
        zero = sum(e.raw_len for e in plan.extents if e.codec is format.Codec.ZERO)
        return Reporter(self, uuid, total, zero)

    def finish_drive(self, uuid: str, log: importer.CopyLog, store: Storage,
                     plan: importer.DrivePlan, transferred: int) -> None:
        """Publish the copy logs (next to the blobs, and to the service as the job's
        logLevel asks) and record the drive's outcome.

        ``transferred``: bytes of file data this drive carried into the account
        (its holes and zero runs count: they are copied by not being written).
        Not the sizes of the blobs it completed: a drive holding only the first
        parts of files that continue on another completes none, yet its data was
        copied.  Over every drive of a job it adds up to the files' total size.
        """
        t = log.totals
        if log.path is None:
            raise ValueError("a job's copy log must be a file: it is read back to hand in")
        sb = plan.superblock
        state = importer.STATE_CONTAINER
        verbose = importer.state_name(sb.session_id, f"copylog-drive-{sb.drive_seq:02d}.jsonl")
        entry: dict[str, Any] = {
            "driveId": uuid, "percentComplete": 100, "bytesSucceeded": transferred,
            "verboseLogUri": log_uri(store, state, verbose)}
        errors: list[str] = []
        if t["corrupt"] or t["missing"]:
            errors = [line for line in importer.read_lines(log.path)  # streamed: only these kept
                      if ('"corrupt"' in line or '"missing"' in line)
                      and json.loads(line).get("status") in ("corrupt", "missing")]
            error_blob = importer.state_name(sb.session_id,
                                             f"errorlog-drive-{sb.drive_seq:02d}.jsonl")
            store.put(state, error_blob, ("\n".join(errors) + "\n").encode())
            entry.update(state="CompletedMoreInfo", copyStatus="CompletedWithErrors",
                         errorLogUri=log_uri(store, state, error_blob))
        else:
            entry.update(state="Completed", copyStatus="Completed")
        again = self.drive_state(uuid) in _DONE  # imported again: the drive's outcome,
        self._hand_in_logs(uuid, log.path, errors)  # its progress and bytes then, stand
        if not again:
            self._patch({"driveList": [entry]})

    def _hand_in_logs(self, uuid: str, path: Path, errors: list[str]) -> None:
        """The copy logs the job's logLevel asks for, to the service; one it does not take
        is a warning (``errors.Caution``): the logs are in the account and the log
        directory anyway.  The verbose log is read from its file only when it fits."""
        kinds: dict[str, bytes | None] = {}
        if errors:
            kinds["error"] = ("\n".join(errors) + "\n").encode()
        if self.job["properties"].get("logLevel", "Error") == "Verbose":
            kinds["verbose"] = importer.read_bytes(path, MAX_COPY_LOG)
        for kind, data in kinds.items():
            if data is None or len(data) > MAX_COPY_LOG:
                size = path.stat().st_size if data is None else len(data)
                warnings.warn(Caution(f"the {kind} log of drive {uuid} is {size} bytes, "
                                      f"over the service's {MAX_COPY_LOG >> 20} MiB; it stays "
                                      "in the account and the log directory only"),
                              stacklevel=2)
                continue
            try:
                site_call(self.name, self.client.put_copy_log, self.name, uuid, kind, data)
            except ServiceError as exc:
                warnings.warn(Caution(f"the service did not take the {kind} log of drive "
                                      f"{uuid} ({exc}); it is in the account and the log "
                                      "directory"), stacklevel=2)

    def finish(self, return_tracking: str | None, carrier: str | None = None) -> None:
        """Every drive done: Packaging; with ``return_tracking`` (import's shortcut for
        ``site return``): the drives go back, job Completed."""
        if not all(d.get("state") in _DONE for d in self._drives().values()):
            return  # other drives of the job are still to come
        if self.job["properties"]["state"] == "Transferring":
            self._patch({"state": "Packaging"})
        if return_tracking:
            self.job = return_drives(self.client, self.name, self.job, carrier,
                                     return_tracking)
