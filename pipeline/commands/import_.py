"""`pipeline import`: drives -> storage account, with a copy log per drive."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline import journal, progress
from pipeline.commands import _options
from pipeline.errors import (
    EXIT_INCOMPLETE,
    EXIT_INTEGRITY,
    EXIT_NO_SPACE,
    EXIT_REFUSED,
    EXIT_STORAGE,
    BadInput,
    Incomplete,
    IntegrityError,
    NoSpace,
    Outcome,
    is_no_space,
)
from pipeline.jobs.client import ServiceClient
from pipeline.receive import importer, onedrive, service_import
from pipeline.receive import reader as driveread
from pipeline.storage import open_storage
from pipeline.storage.base import Storage

# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE, EXIT_INCOMPLETE, EXIT_NO_SPACE)

_NO_JOURNAL = ("this journal directory (a drive of another session?); pass the journal "
               "directory of its session")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="import drives into a storage account",
        description="Unlock each drive, check every extent (xxh3-128), decompress and write "
        "the blobs into the storage account under the session's container and virtual "
        "directory.  Drives can be imported in any order, in separate runs; importing a "
        "drive twice changes nothing.  A copy log (JSON Lines) per drive says what "
        "happened to every blob.")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="drive to import (repeat for more); with --cluster, only with "
                   "--again: a drive to import again, by its volume uuid or its path on its "
                   "worker")
    p.add_argument("--session-id", metavar="ID",
                   help="the copy session to import, on drives that hold several (each "
                   "session imports on its own); with --journal-dir, also picks its journals")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="import on the Dask cluster at this scheduler: each drive of the "
                   "session (--journal-dir) or job (--service, --job) by the `pipeline "
                   "worker` it is attached to, which holds its own site token; "
                   "the workers get only the account's address from --to and use their own "
                   "credential (`pipeline worker --storage-key-file`)")
    p.add_argument("--to", metavar="STORAGE",
                   help="storage account: a directory (or file://PATH), an Azure connection "
                   "string or account URL with SAS (default: $AZURE_STORAGE_CONNECTION_STRING)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--journal-dir", metavar="JDIR", help="the session's journals (passwords "
                   "and the expected records)")
    g.add_argument("--service", metavar="URL", help="the import service: take the drives' keys "
                   "from the job (--job, --site-token-file) and report progress to it")
    g.add_argument("--recovery-password-file", metavar="FILE",
                   help="the drive's recovery password, when the journal is lost")
    g.add_argument("--passphrase-file", metavar="FILE", help="the operator passphrase (slot 1)")
    g.add_argument("--key-file", metavar="FILE", help="the operator key file (slot 1)")
    s = p.add_argument_group("with --service (the receiving site)")
    s.add_argument("--job", metavar="NAME", help="the import job the drives belong to")
    s.add_argument("--site-token-file", metavar="FILE",
                   help="file holding the site token (pipeline service site-token): the "
                   "site's own credential; the job is found by name in every subscription")
    s.add_argument("--subscription", metavar="ID",
                   help="the job's subscription, when several jobs have its name")
    s.add_argument("--resource-group", metavar="NAME",
                   help="the job's resource group, when several jobs have its name")
    s.add_argument("--publish-settings", metavar="FILE",
                   help="the customer's credential: the service refuses it the site's "
                   "steps; use --site-token-file")
    s.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    s.add_argument("--return-tracking", metavar="NUMBER",
                   help="shortcut for `pipeline site return` once every drive is imported: "
                   "the drives went back with this tracking number (carrier: the job's "
                   "return carrier); the job is Completed")
    p.add_argument("--again", action="store_true",
                   help="import drives already imported once more (each is skipped "
                   "otherwise): to send again the parts a commit found missing (Azure drops "
                   "staged parts after 7 days); nothing committed changes.  With "
                   "--cluster: the drives named by --drive, first, then the others as usual")
    p.add_argument("--log-dir", default=".", metavar="DIR",
                   help="where to write the copy logs (default: current directory)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines events on stdout: start, progress, one `drive` event per "
                   "drive, summary, exit")
    p.set_defaults(func=run)


def _site_client(args: argparse.Namespace) -> ServiceClient:
    """The site's client (--site-token-file); a customer's --publish-settings is still
    read, and the service refuses it the site's steps (a 403 that says what to use)."""
    if not args.job:
        raise BadInput("--service needs --job NAME (and --site-token-file FILE)")
    if args.site_token_file and args.publish_settings:
        raise BadInput("give --site-token-file (the site's credential), not --publish-settings")
    if args.site_token_file:
        return ServiceClient.from_site_token_file(args.service, args.site_token_file,
                                                  args.ca_file)
    if args.publish_settings:
        return ServiceClient.from_file(args.publish_settings, url=args.service,
                                       resource_group=args.resource_group,
                                       ca_file=args.ca_file)
    raise BadInput("--service needs the site's credential: --site-token-file FILE (from "
                   "pipeline service site-token --data DIR)")


async def run(args: argparse.Namespace) -> Outcome:
    if getattr(args, "cluster", None):  # the cluster's own path: pipeline/cluster/receive.py
        from pipeline.cluster import receive as cluster_receive
        cluster_receive.check_args(args)  # before the site's credential is read
        return await cluster_receive.import_run(args, _site_client(args) if args.service
                                                else None)
    if not args.drive:
        raise BadInput("give --drive PATH: the drive to import (repeat for more)")
    log_dir = Path(args.log_dir)
    try:  # a log directory is ours to make, as prep makes its journal directory
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(log_dir, f"log directory {log_dir}") from None
        raise BadInput(f"cannot create log directory {log_dir}: {exc.strerror}; pass another "
                       "--log-dir") from None
    session_id = getattr(args, "session_id", None)
    journals = journal.session_journals(args.journal_dir, session_id) if args.journal_dir else []
    if args.journal_dir and not journals:
        raise BadInput(f"no journals in {args.journal_dir}"
                       + (f" of session {session_id}" if session_id else "")
                       + "; check --journal-dir and --session-id")
    job: service_import.JobImport | None = None
    if args.service:
        job = service_import.JobImport.connect(_site_client(args), args.job, args.subscription,
                                               args.resource_group)
    elif args.site_token_file or args.publish_settings or args.return_tracking:
        raise BadInput("--site-token-file, --publish-settings and --return-tracking go with "
                       "--service URL")
    secret = None if (args.journal_dir or job) else _options.unlock_secret(args)
    store = open_storage(args.to or os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    store.check()

    opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]] = []
    try:
        for path in args.drive:  # every drive unlocked and checked before anything is written
            jrn = (driveread.journal_of(journals, path, _NO_JOURNAL, session_id) if journals
                   else None)
            if jrn is not None:  # the journal's key and records: damage is named, not fatal
                od = driveread.unlock_with_journal(path, jrn)
            else:
                key = job.key_for(path) if job is not None else secret
                assert key is not None
                od = driveread.unlock_drive(path, key.value, key.kind, session_id=session_id,
                                            manifest=job.manifest_for(path) if job else None)
            for warning in od.volume.warnings:  # a damaged header copy, read past
                print(f"pipeline import: warning: {path}: {warning}", file=sys.stderr)
            opened.append((od, importer.plan_drive(od, jrn)))
            importer.check_names(opened[-1][1])
        if job is not None:
            job.start([od.volume.uuid for od, _ in opened])
        stats = progress.Stats(files_total=sum(len(p.files) for _, p in opened),
                               bytes_total=sum(e.raw_len for _, p in opened for e in p.extents))
        renderer = progress.make_renderer(args.json)
        renderer.start("import", drives=[str(od.drive.path) for od, _ in opened],
                       storage=store.name, files=stats.files_total, bytes=stats.bytes_total)
        bad, unvouched = await progress.with_progress(
            renderer, stats, lambda: _import_all(opened, store, log_dir, job, renderer, stats,
                                               again=getattr(args, "again", False)))
        if job is not None:
            job.finish(args.return_tracking)
    finally:
        for od, _ in opened:
            od.close()
        for j in journals:
            j.close()
    _finish(renderer, stats, args.json, len(opened))
    if bad:
        raise IntegrityError(f"{bad} blob(s) corrupt or missing; see the copy logs in "
                             f"{log_dir}, then re-send them from the staging directory: "
                             f"pipeline repair --journal-dir {args.journal_dir or 'JDIR'} "
                             f"--source STAGING --to {args.to or 'STORAGE'}")
    if unvouched:
        raise Incomplete(f"{', '.join(unvouched)}: imported what the drive holds, every extent "
                         "checked, but it cannot vouch that nothing is missing (see above); "
                         "import it with its journal (--journal-dir) to know, or compare with "
                         "the source: pipeline repair")
    return Outcome()


def _finish(renderer: progress.Renderer, stats: progress.Stats, json_mode: bool,
            drives_done: int) -> None:
    """The last bar, then the summary: what was imported, how long it took, how fast."""
    renderer.update(stats, force=True)
    if json_mode:
        renderer.event("summary", **stats.statistics(), drives_imported=drives_done)
        renderer.close()
        return
    renderer.close()
    print(f"imported {progress.format_size(stats.bytes_read)} in {stats.files_done} files "
          f"from {drives_done} drive(s) ({progress.format_size(stats.zero_bytes)} of it zeros, "
          f"not written), {progress.format_duration(stats.elapsed())} wall, "
          f"{progress.format_rate(stats.rate())}"
          + (f"; {progress.format_size(stats.skipped_bytes)} already imported before"
             if stats.skipped_bytes else ""), file=sys.stderr)


async def _import_all(opened: list[tuple[driveread.UnlockedDrive, importer.DrivePlan]],
                      store: Storage, log_dir: Path, job: service_import.JobImport | None,
                      renderer: progress.Renderer, stats: progress.Stats, *,
                      again: bool = False) -> tuple[int, list[str]]:
    """Each drive in turn (the bar ticks beside, in ``with_progress``); the corrupt/missing
    count and the drives that cannot vouch for completeness."""
    unvouched = [str(od.drive.path) for od, plan in opened if plan.incomplete]
    for od, plan in opened:  # named before the bar starts, where nothing can hide them
        for line in [*plan.damage, *filter(None, [plan.incomplete])]:
            print(f"pipeline import: {od.drive.path}: {line}", file=sys.stderr)
    bad = 0
    for od, plan in opened:
        report = job.reporter(od.volume.uuid, plan) if job else None
        n, log = await _import_one(od, plan, store, log_dir, renderer, stats, report,
                                   again=again)
        bad += n
        if job is not None:
            job.finish_drive(od.volume.uuid, log, store, plan,
                             report.done + report.zero if report else 0)
    return bad, unvouched


async def _import_one(od: driveread.UnlockedDrive, plan: importer.DrivePlan, store: Storage,
                      log_dir: Path, renderer: progress.Renderer, stats: progress.Stats,
                      report: service_import.Reporter | None = None, *, again: bool = False
                      ) -> tuple[int, importer.CopyLog]:
    """One drive (``receive.onedrive``: the same as a cluster worker's), then its line or
    --json event; the corrupt/missing count and the closed copy log."""
    sb = plan.superblock
    got = await onedrive.import_one(od, plan, store, log_dir, stats, again=again,
                                    uploaded=None if report is None else report.add,
                                    beside=None if report is None else report.run)
    result, path, t = got.result, got.path, got.log.totals
    if got.not_stored:
        print(f"pipeline import: could not store the copy log in the account "
              f"({got.not_stored}); it is in {path}", file=sys.stderr)
    if isinstance(renderer, progress.JsonRenderer):
        renderer.event("drive", seq=sb.drive_seq, session_id=sb.session_id,
                       path=str(od.drive.path), already_imported=result.already,
                       copy_log=str(path), records_from=plan.source, damage=plan.damage,
                       incomplete=plan.incomplete, **t)
    elif result.already:
        print(f"drive {sb.drive_seq} of session {sb.session_id} ({od.drive.path}) was already "
              "imported; nothing changed")
    else:
        print(f"drive {sb.drive_seq} of session {sb.session_id} ({od.drive.path}): "
              f"{t['ok'] + t['unvouched']} blob(s) complete"
              + (f" ({t['unvouched']} unvouched: the drive cannot vouch they are the newest "
                 "copies)" if t["unvouched"] else "")
              + f", {t['skipped']} waiting for other drives or "
              f"skipped, {t['corrupt']} corrupt, {t['missing']} missing; copy log {path}")
    return t["corrupt"] + t["missing"], got.log
