"""verify_drive(): read a drive back and check every extent against its journal.

Everything found goes into the report (nothing is raised for damage): the files
whose extents do not check, and the drive-level problems (a damaged superblock,
closing index or keyslot, a cut image), so that one run names all of it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from pipeline import journal
from pipeline.drive import codec, format
from pipeline.errors import BadInput, IntegrityError
from pipeline.receive import reader as driveread


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
