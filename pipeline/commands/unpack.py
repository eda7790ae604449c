"""`pipeline unpack`: a drive's blobs as files at TARGET/CONTAINER/BLOB (the customer's end of
an export job; an import drive too).  The stages are the import's (receive/unpack.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import journal, progress
from pipeline.commands import _options
from pipeline.commands import import_ as import_cmd
from pipeline.errors import (
    EXIT_INCOMPLETE,
    EXIT_INTEGRITY,
    EXIT_NO_SPACE,
    EXIT_REFUSED,
    BadInput,
    Incomplete,
    IntegrityError,
    Outcome,
)
from pipeline.jobs.client import ServiceClient
from pipeline.receive import unpack

EXITS = (EXIT_INTEGRITY, EXIT_REFUSED, EXIT_INCOMPLETE, EXIT_NO_SPACE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unpack", help="write a drive's blobs as files (an export's drives, or any drive)",
        description="Unlock each drive, check every extent (xxh3-128) and write its blobs as "
        "files at TARGET/CONTAINER/BLOB.  Drives go in any order, in separate runs (a blob "
        "appears once the drives holding all of it are in); run it again after any stop.  "
        "Damage is named in the copy log and the rest is written (exit 4).")
    p.add_argument("--drive", action="append", required=True, metavar="PATH",
                   help="drive to unpack (repeat for more)")
    p.add_argument("--target", required=True, metavar="DIR",
                   help="where the files go: DIR/CONTAINER/BLOB")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--recovery-password-file", metavar="FILE",
                   help="file holding the drive's recovery password (pipeline jobs keys)")
    g.add_argument("--journal-dir", metavar="JDIR",
                   help="the drives' journals (their passwords and records)")
    g.add_argument("--passphrase-file", metavar="FILE", help="the operator passphrase (slot 1)")
    g.add_argument("--key-file", metavar="FILE", help="the operator key file (slot 1)")
    g.add_argument("--publish-settings", metavar="FILE",
                   help="with --job: each drive's recovery password from the job "
                   "(listBitLockerKeys), matched by the drive's volume id")
    p.add_argument("--job", metavar="NAME", help="the export job (with --publish-settings)")
    p.add_argument("--service", metavar="URL",
                   help="the service (default: the URL in the publish settings)")
    p.add_argument("--resource-group", metavar="NAME", help="the job's resource group")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    p.add_argument("--session-id", metavar="ID",
                   help="the copy session to unpack, on drives that hold several")
    p.add_argument("--log-dir", metavar="DIR",
                   help=f"where the copy logs go (default TARGET/{unpack.STATE_DIR})")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    p.set_defaults(func=run)


def _job_keys(args: argparse.Namespace) -> dict[str, str]:
    """driveId (the volume id) -> recovery password, from the job (listBitLockerKeys)."""
    if not args.job:
        raise BadInput("--publish-settings needs --job NAME: the job whose drives these are")
    client = ServiceClient.from_file(args.publish_settings, url=args.service,
                                     resource_group=args.resource_group, ca_file=args.ca_file)
    return {k["driveId"]: k["bitLockerKey"] for k in client.keys(args.job)}


async def run(args: argparse.Namespace) -> Outcome:
    target = Path(args.target)
    log_dir = Path(args.log_dir) if args.log_dir else target / unpack.STATE_DIR
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {log_dir}: {exc.strerror}; pass another --target or "
                       "--log-dir") from None
    store = unpack.UnpackTarget(target)
    store.check()
    journals = (journal.session_journals(args.journal_dir, args.session_id)
                if args.journal_dir else [])
    if args.journal_dir and not journals:
        raise BadInput(f"no journals in {args.journal_dir}; check --journal-dir")
    secret = None if journals else _options.unlock_secret(args)
    keys = _job_keys(args) if args.publish_settings else None
    try:
        opened = unpack.open_drives(args.drive, secret, journals, keys, args.session_id)
        try:
            stats = progress.Stats(
                files_total=sum(len(p.files) for _, p in opened),
                bytes_total=sum(e.raw_len for _, p in opened for e in p.extents))
            renderer = progress.make_renderer(args.json)
            renderer.start("unpack", drives=[str(od.drive.path) for od, _ in opened],
                           target=str(target), files=stats.files_total,
                           bytes=stats.bytes_total)
            bad, unvouched = await progress.with_progress(
                renderer, stats, lambda: import_cmd._import_all(
                    opened, store, log_dir, None, renderer, stats))
        finally:
            for od, _ in opened:
                od.close()
    finally:
        for j in journals:
            j.close()
    import_cmd._finish(renderer, stats, args.json, len(opened))
    if bad:
        raise IntegrityError(f"{bad} blob(s) corrupt or missing on the drives (named in the "
                             f"copy logs in {log_dir}); the rest is in {target}.  Fetch them "
                             "from the account, or ask the site for them again")
    if unvouched:
        raise Incomplete(f"{', '.join(unvouched)}: unpacked what the drive holds, every "
                         "extent checked, but it cannot vouch that nothing is missing")
    print(f"unpacked into {target}", file=sys.stderr)
    return Outcome()
