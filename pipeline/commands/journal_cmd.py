"""`pipeline journal export`: the session's drives as the import job's `driveList`."""

from __future__ import annotations

import argparse
import json

from pipeline import journal
from pipeline.errors import Outcome

EXITS = ()  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("journal", help="work with prep's journals",
                       description="Work with prep's per-drive journals.")
    jsub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    e = jsub.add_parser(
        "export", help="print the drives as an import job's driveList (JSON)",
        description="Print, as JSON, the `driveList` array of an import job in the "
        "Microsoft.ImportExport API's shape: one entry per closed drive with its id (the "
        "volume UUID), recovery password (bitLockerKey), manifest (the drive's closing "
        "index) and hashes.  It holds the recovery passwords: treat the output as secret.")
    e.add_argument("--journal-dir", required=True, metavar="JDIR",
                   help="the session's journal directory (from prep)")
    e.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    try:
        print(json.dumps(journal.drive_list(journals), indent=2))
    finally:
        for j in journals:
            j.close()
    return Outcome()
