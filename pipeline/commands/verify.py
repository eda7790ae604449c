"""`pipeline verify`: read every drive back and check every extent against its journal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import trio

from pipeline import journal
from pipeline.errors import EXIT_INTEGRITY, BadInput, IntegrityError, Outcome
from pipeline.receive.verify import DriveReport, verify_drive
from pipeline.volume import drives

EXITS = (EXIT_INTEGRITY,)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="read the drives back and check every extent",
        description="Read every drive back, decrypt, decompress and check every extent "
        "(xxh3-128) against the journal.  Damaged files are reported by name; "
        "exit code 4 when anything is damaged.")
    p.add_argument("--journal-dir", required=True, metavar="JDIR",
                   help="the session's journal directory (from prep)")
    p.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="drive to verify (default: every drive of the journals, at the path "
                   "recorded there)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    targets = _match_drives(journals, args.drive)

    reports: list[DriveReport] = []
    cpu = trio.CapacityLimiter(os.cpu_count() or 2)  # the checkers of every drive share it

    async def one(j: journal.Journal, path: str) -> None:
        reports.append(await verify_drive(j, path, cpu))

    try:
        async with trio.open_nursery() as nursery:  # every drive at once
            for j, path in targets:
                nursery.start_soon(one, j, path)
    finally:
        for j in journals:
            j.close()
    reports.sort(key=lambda r: r.seq)
    for r in reports:
        for warning in r.warnings:  # a damaged header copy, read past
            print(f"pipeline verify: warning: {r.path}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"seq": r.seq, "path": r.path, "ok": r.ok, "files": r.files,
                           "extents": r.extents, "raw_bytes": r.raw_bytes,
                           "damaged": r.damaged, "problems": r.problems,
                           "warnings": r.warnings} for r in reports],
                         indent=2))
    else:
        for r in reports:
            state = "ok" if r.ok else "DAMAGED"
            print(f"drive {r.seq} ({r.path}): {state}: {r.files} files, {r.extents} extents, "
                  f"{r.raw_bytes} bytes checked")
            for p in r.problems:
                print(f"  problem: {p}")
            for name, reason in sorted(r.damaged.items()):
                print(f"  damaged: {name}: {reason}")
    bad = [r for r in reports if not r.ok]
    if bad:
        names = sorted({n for r in bad for n in r.damaged})
        where = ", ".join(f"{r.seq} ({r.path})" for r in bad)
        if names:
            raise IntegrityError(f"{len(names)} damaged file(s) on drive(s) {where}: "
                                 f"{', '.join(names[:5])}")
        raise IntegrityError(f"drive(s) {where} damaged, every file intact: "
                             f"{bad[0].problems[0]}")
    print(f"verified {len(reports)} drive(s): every extent matches its journal",
          file=sys.stderr)
    return Outcome()


def _match_drives(journals: list[journal.Journal], given: list[str]
                  ) -> list[tuple[journal.Journal, str]]:
    """Pair each journal with a drive path: as given (matched by volume uuid), or as recorded."""
    if not given:
        return [(j, j.drive.path) for j in journals]
    by_uuid = {j.drive.uuid: j for j in journals}
    out = []
    for path in given:
        with drives.open_drive(path) as d:
            uuid = drives.read_volume(d).uuid
        j = by_uuid.get(uuid)
        if j is None:
            raise BadInput(f"{path} (volume {uuid}) belongs to no journal in this session; "
                           "check --journal-dir")
        out.append((j, str(Path(path))))
    return out
