"""Copy logs as the portal shows them: which kinds a drive has, and what its error log says.

A copy log is what ``pipeline import`` wrote for one drive (``receive/copylog.py``):
JSON Lines, one object per blob (``"type": "blob"``, ``"status"`` among ok,
unvouched, corrupt, missing, skipped, with ``blob`` and ``reason``), then a
``"type": "totals"`` line.  The service keeps them per drive and kind
(``Catalog.copy_log``); which kinds exist follows the job's logLevel (the error
log always, the verbose log with Verbose).  Reading is defensive: a line that
is not a JSON object is counted as unreadable, never an error page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from pipeline.jobs.catalog import Catalog
from pipeline.jobs.errors import NotFound
from pipeline.jobs.model import Job
from pipeline.jobs.portal.web import Ctx

KINDS = ("error", "verbose")
PROBLEMS = ("corrupt", "missing", "unvouched", "skipped")  # the order a summary names them
FIRST = 5              # entries a summary shows
MAX_ROWS = 1000        # entries the view page shows (the download has them all)


@dataclass(frozen=True, slots=True)
class Entry:
    status: str
    blob: str
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class Parsed:
    """A log read back: its blob entries (up to ``limit``), counts by status, the totals."""

    entries: list[Entry]
    counts: dict[str, int]
    lines: int
    totals: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DriveLogs:
    """One drive's stored logs: their kinds and, when it has one, its error log's summary."""

    kinds: list[str]
    errors: Parsed | None

    @property
    def counts(self) -> dict[str, int]:
        """Problems by status, most serious first (only those present)."""
        got = self.errors.counts if self.errors else {}
        return {s: got[s] for s in (*PROBLEMS, "unreadable") if got.get(s)}

    @property
    def first(self) -> list[Entry]:
        return [e for e in (self.errors.entries if self.errors else ())
                if e.status != "ok"][:FIRST]

    @property
    def more(self) -> int:
        return max(0, sum(self.counts.values()) - len(self.first))


def parse(data: bytes, limit: int = MAX_ROWS) -> Parsed:
    """The entries of a copy log (the first ``limit``), every line counted."""
    entries: list[Entry] = []
    counts: dict[str, int] = {}
    totals: dict[str, Any] = {}
    lines = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        lines += 1
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            counts["unreadable"] = counts.get("unreadable", 0) + 1
            continue
        if obj.get("type") == "totals":
            totals = obj
            continue
        status = str(obj.get("status", "unreadable"))
        counts[status] = counts.get(status, 0) + 1
        if len(entries) < limit:
            size = obj.get("size")
            entries.append(Entry(status, str(obj.get("blob", "")),
                                 size if isinstance(size, int) else 0,
                                 str(obj.get("reason", ""))))
    return Parsed(entries, counts, lines, totals)


def drive_logs(catalog: Catalog, job: Job) -> dict[str, DriveLogs]:
    """Drive id -> its stored logs, for the drives that have any."""
    out: dict[str, DriveLogs] = {}
    for drive in job.drives:
        kinds = [k for k in catalog.copy_log_kinds(job.ref, drive.drive_id) if k in KINDS]
        if not kinds:
            continue
        errors = None
        if "error" in kinds:
            data = catalog.copy_log(job.ref, drive.drive_id, "error")
            errors = parse(data, FIRST * 4) if data is not None else None
        out[drive.drive_id] = DriveLogs(kinds, errors)
    return out


def read(catalog: Catalog, job: Job, drive_id: str, kind: str) -> bytes:
    """A stored log, or NotFound naming what is missing (the caller checked the job's access)."""
    if job.drive(drive_id) is None:
        raise NotFound(f"drive {drive_id} is not in {job.ref}", "NotFound")
    data = catalog.copy_log(job.ref, drive_id, kind) if kind in KINDS else None
    if data is None:
        raise NotFound(f"drive {drive_id} of {job.ref} has no {kind} copy log (yet); the site "
                       "stores it when the drive's import ends", "NotFound")
    return data


def filename(job: Job, drive_id: str, kind: str) -> str:
    """A download's file name: safe characters only (a drive id may hold ':')."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in drive_id)
    return f"{job.ref.name}-{safe}-{kind}.jsonl"


def summary_line(parsed: Parsed) -> Mapping[str, int]:
    """Counts by status in a fixed order (ok first), for the view page's heading."""
    order = ("ok", *PROBLEMS, "unreadable")
    return {s: parsed.counts[s] for s in order if parsed.counts.get(s)}


# --------------------------------------------------------------------------- pages


def page(ctx: Ctx, job: Job, back: str, log_url: Callable[[str, str], str]) -> Response:
    """A copy log as a table (the first ``MAX_ROWS`` entries), with its totals and download.
    The caller found ``job`` with the session's own access (owner: its subscription)."""
    drive_id, kind = ctx.params["drive"], ctx.params["kind"]
    parsed = parse(read(ctx.portal.catalog, job, drive_id, kind))
    return ctx.render("copylog.html", job=job, drive_id=drive_id, kind=kind, parsed=parsed,
                      counts=summary_line(parsed), back=back,
                      download=log_url(drive_id, kind) + "/download", max_rows=MAX_ROWS)


def download(ctx: Ctx, job: Job) -> Response:
    """The stored bytes as they are, as a file (JSON Lines)."""
    drive_id, kind = ctx.params["drive"], ctx.params["kind"]
    data = read(ctx.portal.catalog, job, drive_id, kind)
    return Response(data, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{filename(job, drive_id, kind)}"'})
