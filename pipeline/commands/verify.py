"""`pipeline verify`: read every drive back and check every extent against its journal."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pipeline import journal
from pipeline.drive import codec, format
from pipeline.errors import EXIT_INTEGRITY, BadInput, IntegrityError, Outcome
from pipeline.receive import reader as driveread
from pipeline.volume import drives

EXITS = (EXIT_INTEGRITY,)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="read the drives back and check every extent",
        description="Read every drive back, decrypt, decompress and check every extent "
        "(xxh3-128) against the journal.  Damaged files are reported by name; "
        "exit code 4 when anything is damaged.")
    p.add_argument("--journal-dir", required=True, metavar="JDIR")
    p.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="drive to verify (default: every drive of the journals, at the path "
                   "recorded there)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


@dataclass
class DriveReport:
    seq: int
    path: str
    files: int = 0
    extents: int = 0
    raw_bytes: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # path -> first reason
    problems: list[str] = field(default_factory=list)  # drive-level findings

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def verify_drive(jrn: journal.Journal, path: str) -> DriveReport:
    """Check one drive; everything found goes into the report (nothing raised for damage)."""
    info = jrn.drive
    report = DriveReport(info.seq, path)
    names = {f.file_id: f.path for f in jrn.files(include_superseded=True)}
    live = {f.file_id for f in jrn.files()}
    expected: dict[tuple[int, int], format.Extent] = {}
    by_segment: dict[int, list[format.Extent]] = {}
    for ext, seg in jrn.extents_with_segment():
        if ext.file_id in live:
            expected[(ext.file_id, ext.offset)] = ext
            by_segment.setdefault(seg, []).append(ext)

    def damage(file_id: int, reason: str) -> None:
        report.damaged.setdefault(names.get(file_id, f"file #{file_id}"), reason)

    with driveread.unlock_drive(path, jrn.recovery_password.encode(), expected_uuid=info.uuid,
                              recorded=driveread.recorded_superblock(jrn)) as od:
        if od.superblock_damage:
            report.problems.append(od.superblock_damage)
        if od.truncated_at is not None:
            report.problems.append(f"the drive ends {od.truncated_at} bytes into its "
                                   f"{od.superblock.data_area_size}-byte data area "
                                   "(a truncated image?)")
        for warning in od.volume.warnings:  # a damaged header copy, read past
            print(f"pipeline verify: warning: {path}: {warning}", file=sys.stderr)
        sb = od.superblock
        if (sb.volume_uuid, sb.session_id, sb.drive_seq) != (
                info.uuid, jrn.session.session_id, info.seq):
            raise BadInput(f"{path} is not drive {info.seq} of session "
                           f"{jrn.session.session_id}; pass the right --drive")
        if info.state in ("closed", "full"):
            try:
                _, index = driveread.read_index(od)
                on_drive = {(e.file_id, e.offset): e for e in index.extents}
                if on_drive != expected or {f.file_id for f in index.files} != live:
                    report.problems.append("the closing index does not match the journal")
            except IntegrityError as exc:
                report.problems.append(f"closing index unreadable: {exc}")
        else:
            report.problems.append(f"drive is {info.state}: not closed, it has no index yet; "
                                   "finish prep (--resume) before shipping it")
        seen: set[tuple[int, int]] = set()
        for seq, seg, error in driveread.read_segments(od, jrn.segments()):
            if seg is None:
                for ext in by_segment.get(seq, []):
                    damage(ext.file_id, str(error))
                    seen.add((ext.file_id, ext.offset))
                continue
            for ext in seg.extents:
                key = (ext.file_id, ext.offset)
                want = expected.get(key)
                if want is None:
                    continue  # a superseded file's stale extent
                seen.add(key)
                if ext != want:
                    damage(ext.file_id, f"extent at {ext.offset} differs from the journal")
                    continue
                try:
                    stored = b"" if ext.codec is format.Codec.ZERO else seg.stored(ext)
                    codec.unpack(ext.codec, stored, ext.raw_len, ext.xxh3)
                except format.CorruptRecord as exc:
                    damage(ext.file_id, f"extent at {ext.offset}: {exc}")
                    continue
                report.extents += 1
                report.raw_bytes += ext.raw_len
        for key in expected.keys() - seen:
            damage(key[0], f"extent at {key[1]} is missing from the drive")
    report.files = len(live)
    return report


async def run(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    targets = _match_drives(journals, args.drive)

    reports: list[DriveReport] = []

    async def one(j: journal.Journal, path: str) -> None:
        reports.append(await trio.to_thread.run_sync(verify_drive, j, path))

    async with trio.open_nursery() as nursery:  # every drive at once, each in its thread
        for j, path in targets:
            nursery.start_soon(one, j, path)
    reports.sort(key=lambda r: r.seq)
    for j in journals:
        j.close()
    if args.json:
        print(json.dumps([{"seq": r.seq, "path": r.path, "ok": r.ok, "files": r.files,
                           "extents": r.extents, "raw_bytes": r.raw_bytes,
                           "damaged": r.damaged, "problems": r.problems} for r in reports],
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
