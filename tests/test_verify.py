"""verify as a pipeline (issue 22): read -> check x N (cpu threads) -> report.

1. For every damage the hostile harness makes (``test_hostile_damage.EXPECT``: each
   region x flip / zero / truncate) and for damage in every segment at once, the
   report is exactly the one the sequential walk of the log made before the pipeline:
   the same files named with the same first reason (in the same order), the same
   drive-level problems and warnings, the same counts, or the same error.  The windows
   are one segment each and finish in a shuffled order, so that the report cannot lean
   on the order the checkers happen to finish in.
2. A Ctrl-C in the middle of a verify ends it with 130, and when the command returns
   no thread is still reading or checking, and the drive is closed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import cli, errors, journal
from pipeline.drive import codec, format
from pipeline.receive import check, verify
from pipeline.receive import reader as driveread
from pipeline.receive.verify import DriveReport, verify_drive

from . import hostile as h
from . import test_hostile_damage as hd
from .test_hostile_damage import session  # noqa: F401 - the module's fixture, shared

EVERY_SEGMENT = ("every-segment", "flip")  # a byte of each DATA segment's payload


def sequential_verify(jrn: journal.Journal, path: str) -> DriveReport:
    """The report as verify made it before its pipeline: one thread, one walk of the log
    in order, each extent checked as it comes (the code as it was, less its print)."""
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
        report.warnings.extend(od.volume.warnings)
        sb = od.superblock
        if (sb.volume_uuid, sb.session_id, sb.drive_seq) != (
                info.uuid, jrn.session.session_id, info.seq):
            raise errors.BadInput(f"{path} is not drive {info.seq} of session "
                                  f"{jrn.session.session_id}; pass the right --drive")
        if info.state in ("closed", "full"):
            try:
                _, index = driveread.read_index(od)
                on_drive = {(e.file_id, e.offset): e for e in index.extents}
                if on_drive != expected or {f.file_id for f in index.files} != live:
                    report.problems.append("the closing index does not match the journal")
            except errors.IntegrityError as exc:
                report.problems.append(f"closing index unreadable: {exc}")
        else:
            report.problems.append(f"drive is {info.state}: not closed, it has no index yet; "
                                   "finish prep (--resume) before shipping it")
        seen: set[tuple[int, int]] = set()
        for batch in driveread.batches(jrn.segments()):
            for raw in driveread.read_batch(od, batch):
                got = driveread.decode(raw)
                if got.segment is None:
                    for ext in by_segment.get(got.seq, []):
                        damage(ext.file_id, str(got.error))
                        seen.add((ext.file_id, ext.offset))
                    continue
                for ext in got.segment.extents:
                    key = (ext.file_id, ext.offset)
                    want = expected.get(key)
                    if want is None:
                        continue
                    seen.add(key)
                    if ext != want:
                        damage(ext.file_id, f"extent at {ext.offset} differs from the journal")
                        continue
                    try:
                        stored = (b"" if ext.codec is format.Codec.ZERO
                                  else got.segment.stored(ext))
                        codec.unpack(ext.codec, stored, ext.raw_len, ext.xxh3)
                    except format.CorruptRecord as exc:
                        damage(ext.file_id, f"extent at {ext.offset}: {exc}")
                        continue
                    report.extents += 1
                    report.raw_bytes += ext.raw_len
        for key in sorted(expected.keys() - seen):
            damage(key[0], f"extent at {key[1]} is missing from the drive")
    report.files = len(live)
    return report


def outcome(fn: Callable[[], DriveReport]) -> dict[str, Any]:
    """A report as a dict (damaged as an ordered list), or the error the user is told."""
    try:
        r = fn()
    except BaseException as exc:  # noqa: BLE001 - compared, not swallowed
        worst = errors.worst(exc)
        return {"raised": type(worst).__name__, "message": str(worst)}
    return {**asdict(r), "damaged": list(r.damaged.items())}


def damage_image(s: hd.Session, img: Path, region_name: str, damage: str) -> None:
    h.copy_image(s.drive.path, img)
    if (region_name, damage) == EVERY_SEGMENT:
        at = []
        for _, off, length in s.drive.segments:
            stored = [e for e in s.drive.extents if e.codec is not format.Codec.ZERO
                      and off <= e.location < off + length]
            if stored:
                e = max(stored, key=lambda x: x.stored_len)
                at.append(h.DATA_OFFSET + e.location + e.stored_len // 2)
        h.flip(img, at)
        return
    region = hd.regions(s)[region_name]
    if damage == "flip":
        h.flip(img, region.flips)
    elif damage == "zero":
        for p in region.zeros:
            h.zero(img, p)
    else:
        assert region.cut is not None
        h.truncate(img, region.cut)


def shuffled(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """One segment a window, and the windows' checks finishing in a shuffled order."""
    monkeypatch.setattr(driveread, "READ_CHUNK", 1)
    rng = random.Random(seed)
    lock = threading.Lock()
    real = check.check_window

    def slow(window: check.Window, expected: check.Expected) -> check.Checked:
        with lock:
            pause = rng.random() * 0.02
        time.sleep(pause)
        return real(window, expected)

    monkeypatch.setattr(check, "check_window", slow)


DAMAGE_CASES = [*hd.EXPECT, EVERY_SEGMENT]


@pytest.mark.parametrize(("region", "damage"), DAMAGE_CASES,
                         ids=[f"{r}-{d}" for r, d in DAMAGE_CASES])
def test_a_worker_reports_damage_as_the_sequential_walk_did(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        region: str, damage: str) -> None:
    img = tmp_path / "d1.img"
    damage_image(session, img, region, damage)
    jdir = tmp_path / "j"
    shutil.copytree(session.jdir, jdir)
    journals = journal.session_journals(jdir)
    jrn = next(j for j in journals if j.drive.seq == session.drive.seq)
    try:
        before = outcome(lambda: sequential_verify(jrn, str(img)))
        shuffled(monkeypatch, seed=len(region) * 31 + len(damage))
        after = outcome(lambda: trio.run(verify_drive, jrn, str(img),
                                         trio.CapacityLimiter(4), 3))
    finally:
        for j in journals:
            j.close()
    assert after == before
    code = hd.EXPECT.get((region, damage), {"verify": (4, hd.VICTIMS)})["verify"][0]
    if code == 0:  # the spec's verdict, so that the comparison is not of two empty reports
        assert after.get("damaged") == [] and after.get("problems") == [], after
    else:
        assert after.get("raised") or after["damaged"] or after["problems"], after
    if (region, damage) == EVERY_SEGMENT:
        assert len(after["damaged"]) >= len(session.drive.segments) // 2, after


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_mid_verify_leaves_no_thread_working(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "d1.img"
    h.copy_image(session.drive.path, img)
    jdir = tmp_path / "j"
    shutil.copytree(session.jdir, jdir)
    monkeypatch.setattr(driveread, "READ_CHUNK", 1)  # many windows: some still to come
    lock = threading.Lock()
    busy = {"read": 0, "check": 0, "checked": 0}
    real_read, real_check = verify._window, check.check_window

    def read(*args: Any) -> check.Window:
        with lock:
            busy["read"] += 1
        try:
            return real_read(*args)
        finally:
            with lock:
                busy["read"] -= 1

    def work(window: check.Window, expected: check.Expected) -> check.Checked:
        with lock:
            busy["check"] += 1
            first = busy["checked"] == 0
            busy["checked"] += 1
        try:
            if first:  # the user presses Ctrl-C while this window is being checked
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the other checkers are mid-window too
            return real_check(window, expected)
        finally:
            with lock:
                busy["check"] -= 1

    monkeypatch.setattr(verify, "_window", read)
    monkeypatch.setattr(check, "check_window", work)
    code = cli.main(["verify", "--journal-dir", str(jdir), "--drive", str(img)])
    err = capsys.readouterr().err
    assert code == errors.EXIT_INTERRUPTED, err
    assert "pipeline verify: interrupted" in err
    assert busy["checked"] < len(session.drive.segments), "the verify ran to its end"
    assert (busy["read"], busy["check"]) == (0, 0), busy
    working = [t.name for t in threading.enumerate()
               if t.name.split(" from ")[0] in ("_window", "check_window", "read", "work")]
    assert working == []
    fds = Path("/proc/self/fd")
    held = [p for p in fds.iterdir() if os.path.realpath(p) == str(img.resolve())]
    assert held == [], "the drive is still open"


# --------------------------------------------------------------------------- the index


def test_the_closing_index_is_held_to_the_sha256_prep_recorded(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """verify compares the drive's closing index with the sha256 prep recorded when it wrote
    it (the transaction that closed the drive): the journal's rows are not encoded again
    (~0.2 s at 20,000 files).  Once a file is superseded (the index stale), the rows are
    encoded again and the drive's index, which still lists the file, is named."""
    img = tmp_path / "d1.img"
    h.copy_image(session.drive.path, img)
    jdir = tmp_path / "j"
    shutil.copytree(session.jdir, jdir)
    encoded: list[int] = []
    real = journal.Journal.index_digest
    monkeypatch.setattr(journal.Journal, "index_digest",
                        lambda self, seq, offset: (encoded.append(seq), real(self, seq, offset))[1])
    journals = journal.session_journals(jdir)
    jrn = next(j for j in journals if j.drive.seq == session.drive.seq)
    try:
        assert jrn.drive.index_sha256 and not jrn.drive.index_stale
        report = trio.run(verify_drive, jrn, str(img), trio.CapacityLimiter(2), 2)
        assert (report.problems, report.damaged, encoded) == ([], {}, [])
        jrn.supersede([min(f.file_id for f in jrn.files())])
        assert jrn.drive.index_stale
        report = trio.run(verify_drive, jrn, str(img), trio.CapacityLimiter(2), 2)
        assert report.problems == ["the closing index does not match the journal"]
        assert encoded == [jrn.drive.log_seq]
    finally:
        for j in journals:
            j.close()
