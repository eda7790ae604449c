"""`pipeline export`: the receiving site writes an export job's blobs onto drives;
`pipeline export preview`: how many drives an export needs (Azure's PreviewExport).

The site's run, with its site token, as for import::

    job Received -> Transferring
    blob list (the job's export.blobList, or the blob export.blobListBlobPath names)
      -> select (prep/blobsource.py: list the prefixes, size every blob)
      -> prep's pipeline (prep/run.py with blobsource.feed as its source): the same
         drive format, journals and spill over --drive; one session per container (the
         job's name; NAME-1, NAME-2, ... when there are several), each on its own drives
    drives recorded on the job (with their recovery passwords, which the customer reads
    with listBitLockerKeys), Received -> Transferring -> Completed
    what did not fit or could not be read: a blob list in the account (Azure's XML,
    usable as a new job's blobListBlobPath), named in incompleteBlobListUri
    job -> Packaging; `pipeline site return` completes it

Run it again after any crash: the journals say what is on the drives already, and
the job's state what was recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from pipeline import journal, progress
from pipeline.commands import _options, preview
from pipeline.commands import prep as prep_cmd
from pipeline.drive import codec, format
from pipeline.errors import (
    EXIT_OK,
    EXIT_OUT_OF_DRIVES,
    EXIT_REFUSED,
    EXIT_STORAGE,
    EXIT_WARNING,
    BadInput,
    IntegrityError,
    Outcome,
    OutOfDrives,
    PipelineError,
)
from pipeline.jobs.client import ServiceClient
from pipeline.prep import blobsource
from pipeline.prep.run import DrivePool, PrepConfig, run_prep
from pipeline.prep.session import Session
from pipeline.receive import importer, service_import
from pipeline.storage.base import Storage
from pipeline.storage.target import open_storage
from pipeline.volume import drives

EXITS = (EXIT_WARNING, EXIT_OUT_OF_DRIVES, EXIT_REFUSED, EXIT_STORAGE)
INCOMPLETE_LIST = "incomplete-blobs.xml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="the site: write an export job's blobs onto drives (or preview it)",
        description="Write an export job's blobs from the storage account onto the "
        "customer's empty drives, as prep writes drives (same format, journals, resume), "
        "record the drives and their keys on the job and move it to Packaging.  Run it "
        "again after a crash.  `pipeline export preview` sizes an export first.")
    esub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    v = esub.add_parser("preview", help="how many drives an export needs",
                        description="Say how many drives of --drive-size the blobs need "
                        "(Azure's PreviewExport), with totals.  Reads a sample; writes "
                        "nothing.")
    _blob_arguments(v)
    v.add_argument("--drive-size", required=True, metavar="SIZE",
                   help="size of each drive (e.g. 4T, or 64M for image files)")
    v.add_argument("--level", type=int, default=1, metavar="N", help="zstd level (default 1)")
    v.add_argument("--sample", default="64M", metavar="SIZE",
                   help="how much data to compress for the ratio (default 64M)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=run_preview)

    p.add_argument("--service", metavar="URL", help="the import/export service")
    p.add_argument("--site-token-file", metavar="FILE",
                   help="file holding the site token (pipeline service site-token --data DIR)")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    p.add_argument("--job", metavar="NAME", help="the export job's name")
    p.add_argument("--subscription", metavar="ID",
                   help="the job's subscription, when several jobs have its name")
    p.add_argument("--resource-group", metavar="NAME",
                   help="the job's resource group, when several jobs have its name")
    p.add_argument("--from", dest="source", metavar="STORAGE",
                   help="the storage account: a directory, or an Azure connection string / "
                   "account URL")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="an empty drive of the customer's: block device or image file "
                   "(repeat; filled in order)")
    p.add_argument("--drive-size", metavar="SIZE", help="size of new image files, e.g. 64M")
    p.add_argument("--journal-dir", metavar="JDIR",
                   help="where the per-drive journals live (never on a target drive)")
    p.add_argument("--yes", action="store_true",
                   help="format drives that hold data without asking")
    _options.add_threads_argument(p, "compression/encryption threads")
    p.add_argument("--memory", default="256M", metavar="SIZE",
                   help="memory budget for data in flight (default 256M)")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    _options.add_kdf_arguments(p)
    p.set_defaults(func=run_site)


def _blob_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="STORAGE",
                   help="the storage account: a directory, or an Azure connection string / "
                   "account URL")
    p.add_argument("--blob-prefix", action="append", default=[], metavar="/CONTAINER/PREFIX",
                   help="export every blob whose path starts so (repeat)")
    p.add_argument("--blob-path", action="append", default=[], metavar="/CONTAINER/BLOB",
                   help="export this blob (repeat)")


# --------------------------------------------------------------------------- preview


@dataclass
class ExportEstimate:
    blobs: int
    bytes: int
    sampled_bytes: int
    ratio: float  # stored / raw over the sample (zero cells store nothing)
    stored_bytes: int
    drive_size: int
    usable_per_drive: int
    drives: int
    missing: list[dict[str, str]]


def estimate(store: Storage, sel: blobsource.Selection, drive_size: int, level: int,
             sample: int) -> ExportEstimate:
    """Prep's arithmetic (``preview``) over blobs: a spread of cells read and packed."""
    cells = ((b, off) for b in sel.blobs for off in range(0, b.size, format.CELL))  # lazily
    step = max(1, math.ceil(sel.total / max(sample, 1)))
    raw = stored = 0
    for blob, off in itertools.islice(cells, 0, None, step):
        data = store.read(blob.container, blob.name, off, min(format.CELL, blob.size - off))
        raw += len(data)
        stored += 0 if codec.is_zero(data) else len(codec.pack(data, level).stored)
    ratio = stored / raw if raw else 1.0
    need = int(sel.total * ratio) + preview.PER_FILE_OVERHEAD * len(sel.blobs)
    per = preview.usable(drive_size)
    if per <= 0:
        raise BadInput(f"--drive-size {drives.human(drive_size)} is smaller than the minimum "
                       f"volume of {drives.human(drives.MIN_DRIVE_SIZE)}")
    return ExportEstimate(len(sel.blobs), sel.total, raw, round(ratio, 4), need, drive_size,
                          per, max(1, math.ceil(need / per)) if sel.blobs else 0,
                          [{"path": p, "reason": r} for p, r in sel.missing])


async def run_preview(args: argparse.Namespace) -> Outcome:
    if not args.blob_prefix and not args.blob_path:
        raise BadInput("give --blob-prefix /CONTAINER/PREFIX or --blob-path /CONTAINER/BLOB")
    if not 1 <= args.level <= 22:
        raise BadInput(f"--level {args.level} is out of range; zstd levels are 1 to 22")
    store = open_storage(args.source)
    store.check()
    sel = await blobsource.select(store, args.blob_path, args.blob_prefix)
    est = await trio.to_thread.run_sync(estimate, store, sel, drives.parse_size(
        args.drive_size), args.level, drives.parse_size(args.sample))
    done = Outcome(EXIT_WARNING if est.missing else EXIT_OK)
    if args.json:
        print(json.dumps(asdict(est), indent=2))
        return done
    h = drives.human
    print(f"blobs           {est.blobs}")
    print(f"size            {h(est.bytes)}")
    print(f"compression     {est.ratio:.2f} of the data (sampled {h(est.sampled_bytes)})")
    print(f"on drives       about {h(est.stored_bytes)}")
    print(f"drives needed   {est.drives} of {h(est.drive_size)} "
          f"({h(est.usable_per_drive)} for data each)")
    for m in est.missing:
        print(f"  not found: {m['path']}: {m['reason']}")
    return done


# --------------------------------------------------------------------------- the site's run


def blob_list(store: Storage, props: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(paths, prefixes) of an export job: its blobList, or the blob listing them."""
    export = props.get("export") or {}
    listed = export.get("blobListBlobPath") or export.get("blobListblobPath")
    if listed:
        container, name = blobsource.split_path(listed, "export.blobListBlobPath")
        data = store.get(container, name)
        if data is None:
            raise BadInput(f"the job's blob list {listed} is not in {store.name}; ask the "
                           "customer to upload it, or check --from")
        return blobsource.parse_blob_list(data)
    blobs = export.get("blobList") or {}
    return list(blobs.get("blobPath", [])), list(blobs.get("blobPathPrefix", []))


def _check_args(args: argparse.Namespace) -> None:
    missing = [flag for flag, value in (
        ("--service URL", args.service), ("--site-token-file FILE", args.site_token_file),
        ("--job NAME", args.job), ("--from STORAGE", args.source),
        ("--journal-dir JDIR", args.journal_dir)) if not value]
    if missing:
        raise BadInput(f"pipeline export needs {', '.join(missing)} (or `pipeline export "
                       "preview` to size an export)")


def _located(args: argparse.Namespace) -> tuple[ServiceClient, dict[str, Any]]:
    client = ServiceClient.from_site_token_file(args.service, args.site_token_file,
                                                args.ca_file)
    svc, job = service_import.locate(client, args.job, args.subscription, args.resource_group)
    props = job["properties"]
    if props.get("jobType") != "Export":
        raise BadInput(f"job {args.job} is an import job; import its drives with pipeline "
                       "import --service URL --site-token-file FILE --job NAME")
    state = props["state"]
    if state == "Shipping":
        raise BadInput(f"job {args.job} is Shipping: record the empty drives' arrival first: "
                       f"pipeline site receive --service URL --site-token-file FILE --job "
                       f"{args.job}")
    if state not in ("Received", "Transferring"):
        raise BadInput(f"job {args.job} is {state}: only a Received or Transferring export "
                       f"job is written; next: {service_import.next_step(state, args.job)}")
    return svc, job


def _config(args: argparse.Namespace, store: Storage, container: str, session_id: str,
            journals: list[journal.Journal], free: list[str]) -> PrepConfig:
    dstdir = f"{container}/"
    if journals and journals[0].session.dstdir != dstdir:
        raise BadInput(f"the journals of {session_id} in {args.journal_dir} wrote container "
                       f"{journals[0].session.dstdir}, not {dstdir}; give this job's own "
                       "--journal-dir")
    threads = _options.threads_from_args(args)
    root = getattr(store, "root", None)  # a local account: no drive may lie inside it
    return PrepConfig(
        srcdir=Path(root or args.journal_dir).resolve(), dstdir=dstdir,
        jdir=Path(args.journal_dir), session_id=session_id, drives=free,
        drive_size=drives.parse_size(args.drive_size) if args.drive_size else None,
        yes=args.yes, kdf=_options.kdf_from_args(args), cpu_threads=max(1, threads),
        memory=drives.parse_size(args.memory),
        dataset=[])  # not None: drives of version 2, each file with its blob's attributes


def _sessions(args: argparse.Namespace, sel: blobsource.Selection
              ) -> list[tuple[str, str, list[journal.Journal]]]:
    """(container, session id, its journals so far) for each container of the export: a
    drive holds one session, and a session one container (docs/FORMAT.md), so each
    container is a session of its own, on drives of its own (the job's name, with -N
    when the export spans several containers)."""
    if not sel.blobs:
        shown = "; ".join(f"{p}: {why}" for p, why in sel.missing[:3])
        raise BadInput(f"none of job {args.job}'s blobs is in the account ({shown}); check "
                       "--from")
    jdir = Path(args.journal_dir)
    try:
        jdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create journal directory {jdir}: {exc.strerror}") from None
    containers = sel.containers
    out = []
    for i, container in enumerate(containers):
        sid = args.job if len(containers) == 1 else f"{args.job}-{i + 1}"
        journals = journal.session_journals(jdir, sid)
        if any(j.drive.state == "void" for j in journals):
            raise BadInput(f"the export of job {args.job} in {jdir} was aborted; use a new "
                           "--journal-dir")
        out.append((container, sid, journals))
    return out


def _free(paths: list[str], others: list[journal.Journal]) -> list[str]:
    """The --drive paths no other session of this export has written to."""
    used = {str(Path(j.drive.path).resolve()) for j in others}
    return [p for p in paths if str(Path(p).resolve()) not in used]


async def run_site(args: argparse.Namespace) -> Outcome:
    _check_args(args)
    svc, job = _located(args)
    store = open_storage(args.source)
    await trio.to_thread.run_sync(store.check)
    paths, prefixes = await trio.to_thread.run_sync(blob_list, store, job["properties"])
    sel = await blobsource.select(store, paths, prefixes)
    sessions = _sessions(args, sel)
    every = [j for _, _, journals in sessions for j in journals]
    if not args.drive and not every:
        raise BadInput("give at least one --drive: the customer's empty drives")
    first = _config(args, store, sessions[0][0], sessions[0][1], sessions[0][2],
                    _free(args.drive, [j for j in every if j not in sessions[0][2]]))
    # every new drive checked before the job moves (against the account, as prep's staging)
    prep_cmd.preflight(dataclasses.replace(first, dataset=None), every)
    if job["properties"]["state"] == "Received":
        job = service_import.site_call(args.job, svc.patch, args.job,
                                       {"properties": {"state": "Transferring"}})
    renderer, stats = progress.make_renderer(args.json), progress.Stats()
    stats.files_total, stats.bytes_total = len(sel.blobs), sel.total
    renderer.start("export", job=args.job, files=len(sel.blobs), bytes=sel.total,
                   sessions=[sid for _, sid, _ in sessions])
    runs: list[_Export] = []
    full = False
    for container, sid, journals in sessions:
        written = [j for r in runs for j in r.all_journals]
        others = written + [j for _, s, js in sessions if s != sid for j in js]
        cfg = _config(args, store, container, sid, journals, _free(args.drive, others))
        run = _Export(cfg, journals, store, [b for b in sel.blobs if b.container == container],
                      renderer, stats, functools.partial(_record_full, svc, args.job))
        runs.append(run)
        if full:
            continue  # no drive left: this container's blobs are listed as not exported
        try:
            await progress.with_progress(renderer, stats, run.run)
        except* OutOfDrives:
            full = True
    incomplete = list(sel.missing) + [x for r in runs for x in r.incomplete(full)]
    return await _finish(args, svc, job, store, runs, incomplete, renderer, stats)


async def _finish(args: argparse.Namespace, svc: ServiceClient, job: dict[str, Any],
                  store: Storage, runs: list[_Export], incomplete: list[tuple[str, str]],
                  renderer: progress.Renderer, stats: progress.Stats) -> Outcome:
    """The drives onto the job, what was not exported into the account, the summary."""
    uri = None
    if incomplete:
        uri = await trio.to_thread.run_sync(_put_incomplete, store, args.job, incomplete)
    job = _record(svc, args.job, job, [j for r in runs for j in r.all_journals], uri)
    for r in runs:
        for j in r.all_journals:
            j.close()
    state, written = job["properties"]["state"], len(job["properties"]["driveList"])
    code, message = EXIT_OK, ""
    if incomplete:
        code, message = EXIT_WARNING, (f"{len(incomplete)} blob(s) not exported (first: "
                                       f"{incomplete[0][0]}: {incomplete[0][1]}); listed "
                                       f"in {uri}")
    renderer.update(stats, force=True)
    if args.json:
        renderer.event("summary", **stats.statistics(), job_state=state,
                       drives_written=written, incomplete_blob_list_uri=uri)
        renderer.event("exit", code=code, message=message)
    renderer.close()
    print(f"job {args.job}: {state}, {written} drive(s) written; next: "
          f"{service_import.next_step(state, args.job)}", file=sys.stderr)
    return Outcome(code, message)


@dataclass
class _Export:
    """One container's session: prep's pipeline over its blobs, and what it left out."""

    cfg: PrepConfig
    journals: list[journal.Journal]
    store: Storage
    blobs: list[blobsource.ExportBlob]
    renderer: progress.Renderer
    stats: progress.Stats
    record: Callable[[journal.Journal], str | None] | None = None  # a drive that filled
    pool: DrivePool | None = None

    def __post_init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    @property
    def all_journals(self) -> list[journal.Journal]:
        return self.pool.journals if self.pool else self.journals

    def on_skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        self.renderer.event("warning", message=f"skipped {path}: {reason}")

    def on_full(self, writer: Any) -> None:
        """A drive is full (and closed): it goes on the job now, before the next drive is
        formatted, so the customer sees it and its key while the export goes on.  One
        request per filled drive, in the Trio thread on purpose: that order is what a crash
        leaves behind, and a drive takes hours to fill; a refusal is a warning (the end of
        the run records every drive again)."""
        info = writer.journal.drive
        self.renderer.event("drive_full", seq=info.seq, path=info.path,
                            session_id=self.cfg.session_id)
        if self.record is not None:
            problem = self.record(writer.journal)
            if problem:
                self.renderer.event("warning", message=problem)

    async def run(self) -> None:
        cfg, stats = self.cfg, self.stats
        session = Session(cfg.srcdir, cfg.dstdir, self.journals)
        self.pool = DrivePool(cfg, self.journals, trio.CapacityLimiter(cfg.cpu_threads), stats)
        journal_io = trio.CapacityLimiter(1)

        async def feed(raw_tx: Any, packed_tx: Any) -> None:
            await blobsource.feed(self.store, self.blobs, session, raw_tx, packed_tx,
                                  cfg.readers, journal_io, stats, self.on_skip, self.on_skip)

        await run_prep(cfg, session, self.pool, stats, self.on_skip, self.on_skip,
                       self.on_full, feed=feed)

    def incomplete(self, full: bool) -> list[tuple[str, str]]:
        """Every blob of this session not wholly on its drives (the journals say), and why."""
        out = list(self.skipped)
        named = {p for p, _ in out}
        committed = Session(self.cfg.srcdir, self.cfg.dstdir,
                            self.all_journals).planner.committed
        why = "did not fit on the drives" if full else "not written"
        for b in self.blobs:
            c = committed.get(b.name)
            if b.path not in named and (c is None or c.size != b.size or len(c.offsets)
                                        < format.grid_cells(b.size)):
                out.append((b.path, why))
        return out


def _record_full(svc: ServiceClient, name: str, jrn: journal.Journal) -> str | None:
    """A filled drive onto the job (Received, with its recovery password); None, or why
    it could not be recorded now."""
    entry = journal.drive_list([jrn])[0]
    try:
        service_import.site_call(name, svc.patch, name, {"properties": {"driveList": [
            {**entry, "state": "Received"}]}})
    except PipelineError as exc:
        return f"drive {jrn.drive.seq} is full but not yet on job {name} ({exc}); the end " \
               "of the export records it"
    return None


def _put_incomplete(store: Storage, job: str, incomplete: list[tuple[str, str]]) -> str:
    """The blobs not exported, as Azure's blob list (a new export job can name it)."""
    name = importer.state_name(job, INCOMPLETE_LIST)
    store.ensure_container(importer.STATE_CONTAINER)
    store.put(importer.STATE_CONTAINER, name,
              blobsource.format_blob_list([p for p, _ in incomplete]))
    return service_import.log_uri(store, importer.STATE_CONTAINER, name)


def _record(svc: ServiceClient, name: str, job: dict[str, Any],
            journals: list[journal.Journal], uri: str | None) -> dict[str, Any]:
    """The drives written go on the job (Received -> Transferring -> Completed, with their
    keys), then the job Packaging.  Each step is skipped when a rerun finds it done."""
    def patch(props: dict[str, Any]) -> dict[str, Any]:
        return service_import.site_call(name, svc.patch, name, {"properties": props})

    job = svc.get(name)  # as it is now: the drives that filled are on it already
    known = {d["driveId"]: d for d in job["properties"].get("driveList", [])}
    written = [j for j in sorted(journals, key=lambda j: j.drive.seq)
               if j.drive.state in ("closed", "full")]
    entries = journal.drive_list(written)
    new = [{**e, "state": "Received"} for e in entries if e["driveId"] not in known]
    if new:
        job = patch({"driveList": new})
    used = {j.drive.uuid: j.counts()["raw_bytes"] for j in written}
    states = {d["driveId"]: d.get("state") for d in job["properties"]["driveList"]}
    moving = [{"driveId": d, "state": "Transferring"} for d, s in states.items()
              if s == "Received"]
    if moving:
        job = patch({"driveList": moving})
    props: dict[str, Any] = {"driveList": [
        {"driveId": d, "state": "Completed", "copyStatus": "Completed", "percentComplete": 100,
         "bytesSucceeded": used.get(d, 0)}
        for d, s in states.items() if s in ("Received", "Transferring")]}
    if uri:
        props["incompleteBlobListUri"] = uri
    if job["properties"]["state"] == "Transferring" and states:
        props["state"] = "Packaging"
    return patch(props) if props["driveList"] or len(props) > 1 else job


# --------------------------------------------------------------------------- repair --export


def differs(store: Storage, local: Storage, blob: blobsource.ExportBlob) -> str | None:
    """Why the unpacked file differs from the blob in the account (None: identical)."""
    size = local.size(blob.container, blob.name)
    if size is None:
        return "missing"
    if size != blob.size:
        return f"size {size}, the account's {blob.size}"
    for offset in range(0, blob.size, format.CELL):
        length = min(format.CELL, blob.size - offset)
        if (store.read(blob.container, blob.name, offset, length)
                != local.read(blob.container, blob.name, offset, length)):
            return f"differs at offset {offset}"
    return None


def fetch(store: Storage, local: Storage, blob: blobsource.ExportBlob) -> int:
    """The blob from the account into the unpack target, cell by cell, committed whole."""
    local.ensure_container(blob.container)
    local.discard(blob.container, blob.name)
    zero = []
    for offset in range(0, blob.size, format.CELL):
        data = store.read(blob.container, blob.name, offset,
                          min(format.CELL, blob.size - offset))
        if len(data) != min(format.CELL, blob.size - offset):
            raise BadInput(f"{blob.path} changed in the account while it was fetched; run "
                           "repair again")
        if codec.is_zero(data):
            zero.append(offset)
        else:
            local.write_part(blob.container, blob.name, format.BlobType.BLOCK, blob.size,
                             offset, data)
    local.commit(blob.container, blob.name, format.BlobType.BLOCK, blob.size, zero)
    info = blob.info or store.get_attributes(blob.container, blob.name)  # select read it
    if info is not None:  # the blob's metadata and properties, as unpack gives them
        rec = blobsource.blob_attrs(info)
        local.set_attributes(blob.container, blob.name, info.blob_type, rec.metadata,
                             rec.properties)
    return blob.size


def _repair_blobs(store: Storage, local: Storage, sel: blobsource.Selection,
                  dry_run: bool) -> tuple[list[str], int]:
    """(lines saying what differed and what was done, blobs fetched): one storage thread."""
    lines, fetched = [], 0
    for blob in sel.blobs:
        why = differs(store, local, blob)
        if why is None:
            continue
        if dry_run:
            lines.append(f"differs: {blob.path}: {why}")
            continue
        fetch(store, local, blob)
        fetched += 1
        lines.append(f"fetched: {blob.path}: {why}")
    local.sync()
    return lines, fetched


async def run_repair(args: argparse.Namespace) -> Outcome:
    """`pipeline repair --export`: the returned drives' files against the job's blob list;
    what is missing or differs comes from the account (Azure's RepairExport)."""
    from pipeline.receive.unpack import UnpackTarget  # the layout unpack wrote

    missing = [flag for flag, value in (("--job NAME", args.job),
                                        ("--publish-settings FILE", args.publish_settings),
                                        ("--from STORAGE", args.account),
                                        ("--target DIR", args.target)) if not value]
    if missing:
        raise BadInput(f"repair --export needs {', '.join(missing)}")
    svc = ServiceClient.from_file(args.publish_settings, url=args.service,
                                  resource_group=args.resource_group, ca_file=args.ca_file)
    props = svc.get(args.job)["properties"]
    if props.get("jobType") != "Export":
        raise BadInput(f"job {args.job} is an import job; repair it with --journal-dir and "
                       "--source")
    store = open_storage(args.account)
    await trio.to_thread.run_sync(store.check)
    paths, prefixes = await trio.to_thread.run_sync(blob_list, store, props)
    sel = await blobsource.select(store, paths, prefixes)
    local = UnpackTarget(args.target)
    local.check()
    lines, fetched = await trio.to_thread.run_sync(_repair_blobs, store, local, sel,
                                                   args.dry_run)
    for line in lines:
        print(line)
    for path, why in sel.missing:
        print(f"not in the account: {path}: {why}", file=sys.stderr)
    if args.dry_run and lines:
        raise IntegrityError(f"{len(lines)} of {len(sel.blobs)} blob(s) missing or different "
                             f"in {args.target} (first: {lines[0]})")
    print(f"checked {len(sel.blobs)} blob(s) in {args.target}; fetched {fetched} from "
          f"{store.name}", file=sys.stderr)
    return Outcome()
