"""`pipeline keys`: show each drive's recovery password from the journals."""

from __future__ import annotations

import argparse
import json

from pipeline import journal
from pipeline.errors import BadInput, Outcome

EXITS = ()  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="print each drive's recovery password",
                       description="Print each drive's recovery password, from the journals. "
                       "Anyone holding a drive and its password reads the data: show them only "
                       "where nobody else can see.")
    p.add_argument("--journal-dir", required=True, metavar="JDIR",
                   help="prep's journal directory (or a folder above several: searched below)")
    p.add_argument("--session-id", metavar="ID", help="only this session")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Outcome:
    journals = journal.session_journals(args.journal_dir, args.session_id, below=True)
    if not journals:
        raise BadInput(f"no journals in {args.journal_dir}"
                       + (f" for session {args.session_id}" if args.session_id else ""))
    rows = []
    for j in journals:
        rows.append({"session_id": j.session.session_id, "seq": j.drive.seq,
                     "path": j.drive.path, "uuid": j.drive.uuid, "state": j.drive.state,
                     "recovery_password": j.recovery_password})
        j.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['session_id']}  drive {r['seq']}  {r['path']}  ({r['state']})\n"
                  f"    volume {r['uuid']}\n    recovery password: {r['recovery_password']}")
    return Outcome()
