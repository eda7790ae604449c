"""`pipeline journal export`: the session's drives as the import job's `driveList`."""

from __future__ import annotations

import argparse
import json

from pipeline import journal
from pipeline.errors import BadInput, Outcome
from pipeline.jobs.rules import MAX_DRIVES

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
    e.add_argument("--part", type=int, metavar="N",
                   help=f"a job holds at most {MAX_DRIVES} drives: the N-th {MAX_DRIVES} of "
                   "a larger session's drives, in drive-number order (one job each)")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    try:
        part = session_part(journals, args.part, "export each job's drives")
        print(json.dumps(journal.drive_list(part), indent=2))
    finally:
        for j in journals:
            j.close()
    return Outcome()


def part_count(journals: list[journal.Journal]) -> int:
    """How many jobs the session's drives make, at most MAX_DRIVES each."""
    return max(1, -(-len(journals) // MAX_DRIVES))


def session_part(journals: list[journal.Journal], part: int | None,
                 step: str) -> list[journal.Journal]:
    """The drives of job ``part`` (1-based): a session of more than MAX_DRIVES drives (a
    cluster's, say) spans several jobs, MAX_DRIVES drives each in drive-number order.
    ``step`` says in the refusal what to do per part (`journal export`, `jobs create`)."""
    parts = part_count(journals)
    if part is None:
        if parts > 1:
            raise BadInput(f"the session has {len(journals)} drives and a job holds at most "
                           f"{MAX_DRIVES}: {step} with --part 1 to --part {parts}")
        return journals
    if not 1 <= part <= parts:
        raise BadInput(f"--part {part}: the session's {len(journals)} drives make "
                       f"{parts} part(s) of at most {MAX_DRIVES}")
    return journals[(part - 1) * MAX_DRIVES: part * MAX_DRIVES]
