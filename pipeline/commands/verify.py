"""`pipeline verify`: read every drive back and check every extent against its journal."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from pipeline import journal, progress
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
    p.add_argument("--json", action="store_true",
                   help="JSON Lines events on stdout: start, progress, summary (with "
                   "`reports`, one a drive), exit")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="verify on the Dask cluster at this scheduler: each drive by the "
                   "`pipeline worker` it is attached to")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    try:
        targets = _match_drives(journals, args.drive)
        stats = progress.Stats()
        for j, _ in targets:
            files, raw = j.live_totals()
            stats.files_total += files
            stats.bytes_total += raw
        renderer = progress.make_renderer(args.json)
        renderer.start("verify", drives=[path for _, path in targets],
                       files=stats.files_total, bytes=stats.bytes_total)
        reports = await progress.with_progress(renderer, stats, lambda: (
            _verify_all(targets, stats) if not getattr(args, "cluster", None)
            else _on_cluster(args.cluster, journals, renderer, stats)))
    finally:
        for j in journals:
            j.close()
    reports.sort(key=lambda r: r.seq)
    renderer.update(stats, force=True)
    if args.json:
        renderer.event("summary", **stats.statistics(), reports=[_as_json(r) for r in reports])
    renderer.close()
    for r in reports:
        for warning in r.warnings:  # a damaged header copy, read past
            print(f"pipeline verify: warning: {r.path}: {warning}", file=sys.stderr)
    if not args.json:
        _print_reports(reports, stats)
    bad = [r for r in reports if not r.ok]
    if bad:
        names = sorted({n for r in bad for n in r.damaged})
        where = ", ".join(f"{r.seq} ({r.path})" for r in bad)
        error = IntegrityError(f"{len(names)} damaged file(s) on drive(s) {where}: "
                               f"{', '.join(names[:5])}" if names else
                               f"drive(s) {where} damaged, every file intact: "
                               f"{bad[0].problems[0]}")
        if args.json:
            renderer.event("exit", code=error.exit_code, message=str(error))
        raise error
    message = f"verified {len(reports)} drive(s): every extent matches its journal"
    if args.json:
        renderer.event("exit", code=0, message=message)
    else:
        print(message, file=sys.stderr)
    return Outcome()


async def _on_cluster(address: str, journals: list[journal.Journal],
                      renderer: progress.Renderer, stats: progress.Stats) -> list[DriveReport]:
    from pipeline.cluster import receive  # needs the cluster extra: loaded only here

    return await receive.verify_all(address, journals, renderer, stats)


async def _verify_all(targets: list[tuple[journal.Journal, str]], stats: progress.Stats
                      ) -> list[DriveReport]:
    """Every drive at once; their checkers share the cpu limiter."""
    reports: list[DriveReport] = []
    cpu = trio.CapacityLimiter(os.cpu_count() or 2)

    def checked(n: int) -> None:
        stats.bytes_read += n

    async def one(j: journal.Journal, path: str) -> None:
        report = await verify_drive(j, path, cpu, progress=checked)
        stats.files_done += report.files
        reports.append(report)

    stats.current_drive = ", ".join(path for _, path in targets)
    async with trio.open_nursery() as nursery:
        for j, path in targets:
            nursery.start_soon(one, j, path)
    return reports


def _as_json(r: DriveReport) -> dict[str, object]:
    return {"seq": r.seq, "path": r.path, "ok": r.ok, "files": r.files, "extents": r.extents,
            "raw_bytes": r.raw_bytes, "damaged": r.damaged, "problems": r.problems,
            "warnings": r.warnings}


def _print_reports(reports: list[DriveReport], stats: progress.Stats) -> None:
    for r in reports:
        state = "ok" if r.ok else "DAMAGED"
        print(f"drive {r.seq} ({r.path}): {state}: {r.files} files, {r.extents} extents, "
              f"{r.raw_bytes} bytes checked")
        for p in r.problems:
            print(f"  problem: {p}")
        for name, reason in sorted(r.damaged.items()):
            print(f"  damaged: {name}: {reason}")
    print(f"checked {progress.format_size(stats.bytes_read)} in {stats.files_done} files, "
          f"{progress.format_duration(stats.elapsed())} wall, "
          f"{progress.format_rate(stats.rate())}", file=sys.stderr)


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
