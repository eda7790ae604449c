"""The receiving site's side of an import job: `pipeline import --service`.

It reads drives (volume UUID, LUKS2 header) and talks to the service through
``pipeline.jobs.client``, so it lives with the receiving side, not in jobs/
(which never touches drives).

The drives' keys come from the job (listBitLockerKeys), each drive is matched
to the job by its volume UUID and its LUKS2 header hash, and the job moves as
the work does::

    job Shipping -> Received (drives Received) -> Transferring (drives Transferring)
    each drive: progress (percentComplete, bytesSucceeded) every few seconds, then
        Completed, or CompletedMoreInfo with errorLogUri, and its copy log published
    every drive done -> job Packaging; with --return-tracking: drives ShippedBack,
        returnPackage recorded, job Completed
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline import credentials
from pipeline.drive import format
from pipeline.errors import BadInput, Refused
from pipeline.jobs.client import ServiceClient
from pipeline.receive import importer
from pipeline.storage.base import Storage
from pipeline.volume import drives, luks2

REPORT_EVERY_S = 2.0
_DONE = ("Completed", "CompletedMoreInfo", "NeverReceived", "ShippedBack")


def log_uri(store: Storage, container: str, blob: str) -> str:
    base = store.name if "://" in store.name else "file://" + store.name
    return f"{base.rstrip('/')}/{container}/{blob}"


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
        while True:
            await trio.sleep(REPORT_EVERY_S)
            body = {"properties": {"driveList": [{
                "driveId": self.drive_id, "copyStatus": "InProgress",
                "percentComplete": self.percent(), "bytesSucceeded": self.done}]}}
            await trio.to_thread.run_sync(self.job.client.patch, self.job.name, body)


@dataclass
class JobImport:
    client: ServiceClient
    name: str
    job: dict[str, Any]
    keys: dict[str, str] = field(repr=False)

    @classmethod
    def connect(cls, url: str, name: str, publish_settings: str, resource_group: str | None,
                ca_file: str | None) -> JobImport:
        client = ServiceClient.from_file(publish_settings, url=url,
                                         resource_group=resource_group, ca_file=ca_file)
        job = client.get(name)
        state = job["properties"]["state"]
        if state not in ("Shipping", "Received", "Transferring"):
            raise Refused(f"job {name} is {state}; drives are imported only once the job is "
                          "Shipping, Received or Transferring")
        keys = {k["driveId"]: k["bitLockerKey"] for k in client.keys(name)}
        return cls(client, name, job, keys)

    def _drives(self) -> dict[str, dict[str, Any]]:
        return {d["driveId"]: d for d in self.job["properties"]["driveList"]}

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

    def _patch(self, props: dict[str, Any]) -> None:
        self.job = self.client.patch(self.name, {"properties": props})

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
        """Publish the copy logs next to the blobs and record the drive's outcome.

        ``transferred``: bytes of file data this drive carried into the account
        (its holes and zero runs count: they are copied by not being written).
        Not the sizes of the blobs it completed: a drive holding only the first
        parts of files that continue on another completes none, yet its data was
        copied.  Over every drive of a job it adds up to the files' total size.
        """
        t = log.totals
        sb = plan.superblock
        state = importer.STATE_CONTAINER
        verbose = importer.state_name(sb.session_id, f"copylog-drive-{sb.drive_seq:02d}.jsonl")
        entry: dict[str, Any] = {
            "driveId": uuid, "percentComplete": 100, "bytesSucceeded": transferred,
            "verboseLogUri": log_uri(store, state, verbose)}
        if t["corrupt"] or t["missing"]:
            errors = [line for line in log.lines
                      if json.loads(line).get("status") in ("corrupt", "missing")]
            error_blob = importer.state_name(sb.session_id,
                                             f"errorlog-drive-{sb.drive_seq:02d}.jsonl")
            store.put(state, error_blob, ("\n".join(errors) + "\n").encode())
            entry.update(state="CompletedMoreInfo", copyStatus="CompletedWithErrors",
                         errorLogUri=log_uri(store, state, error_blob))
        else:
            entry.update(state="Completed", copyStatus="Completed")
        if self._drives()[uuid].get("state") in _DONE:
            entry.pop("state")  # imported again: the drive's outcome stands
            entry.pop("bytesSucceeded")  # ... and so do the bytes it transferred then
        self._patch({"driveList": [entry]})

    def finish(self, return_tracking: str | None) -> None:
        """Every drive done: Packaging; drives shipped back: Completed."""
        drives_now = self._drives().values()
        if not all(d.get("state") in _DONE for d in drives_now):
            return  # other drives of the job are still to come
        if self.job["properties"]["state"] == "Transferring":
            self._patch({"state": "Packaging"})
        if not return_tracking:
            return
        carrier = self.job["properties"].get("returnShipping", {}).get("carrierName")
        if not carrier:
            raise BadInput(f"job {self.name} has no returnShipping carrier; set it before "
                           "shipping the drives back")
        back = [{"driveId": d["driveId"], "state": "ShippedBack"} for d in drives_now
                if d.get("state") in ("Completed", "CompletedMoreInfo")]
        self._patch({"state": "Completed", "driveList": back, "returnPackage": {
            "carrierName": carrier, "trackingNumber": return_tracking,
            "driveCount": len(back), "shipDate": datetime.date.today().isoformat()}})
