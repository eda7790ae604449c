"""Verify's read thread (issue 18): one pread a window, the next window asked of the
device first (``POSIX_FADV_WILLNEED``), decrypted by the checkers, not the reader.

Damage and a cut image are judged as before (``test_verify``'s matrix against the
one-thread walk); here, the exact reads, advice and plaintext of the new path.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import trio

from pipeline import journal
from pipeline.receive import check
from pipeline.receive import reader as driveread
from pipeline.receive.verify import verify_drive

from . import hostile as h
from . import test_hostile_damage as hd
from .test_hostile_damage import session  # noqa: F401 - the module's fixture, shared
from .test_verify import outcome, sequential_verify

CHUNK = 8 << 20  # the drive's 4 segments (5.2, 4.2, 4.2, 2.1 MB) make 3 windows of it


def _journal(s: hd.Session, tmp_path: Path) -> tuple[list[journal.Journal], journal.Journal]:
    jdir = tmp_path / "j"
    shutil.copytree(s.jdir, jdir)
    journals = journal.session_journals(jdir)
    return journals, next(j for j in journals if j.drive.seq == s.drive.seq)


def test_a_sealed_window_opens_to_what_read_batch_reads(
        session: hd.Session, tmp_path: Path) -> None:  # noqa: F811
    img = tmp_path / "d1.img"
    shutil.copyfile(session.drive.path, img)
    journals, jrn = _journal(session, tmp_path)
    try:
        with driveread.unlock_with_journal(str(img), jrn) as od:
            batches = list(driveread.batches(jrn.segments()))
            for batch in batches:
                start, end = batch[0][1], batch[-1][1] + batch[-1][2]
                sealed = check.Sealed(od.cipher, start,
                                      od.cipher.read_sealed(od.drive, start, end - start),
                                      tuple(batch))
                got = [(r.seq, r.offset, bytes(r.data or b""), r.error) for r in sealed.open()]
                want = [(r.seq, r.offset, bytes(r.data or b""), r.error)
                        for r in driveread.read_batch(od, batch)]
                assert got == want
                assert [g[0] for g in got] == [seq for seq, _, _ in batch]
    finally:
        for j in journals:
            j.close()


def test_each_window_asks_for_the_next_before_its_own_read(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    img = tmp_path / "d1.img"
    shutil.copyfile(session.drive.path, img)
    journals, jrn = _journal(session, tmp_path)
    monkeypatch.setattr(driveread, "READ_CHUNK", CHUNK)
    events: list[tuple[str, int, int]] = []  # (what, file offset, length), in order
    lock = threading.Lock()
    real_advise, real_pread = os.posix_fadvise, os.pread

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            with lock:
                events.append(("advise", offset, length))
        real_advise(fd, offset, length, advice)

    def pread(fd: int, size: int, offset: int) -> bytes:
        if size >= 1 << 20:  # a window's read, not a header's or a keyslot's
            with lock:
                events.append(("read", offset, size))
        return real_pread(fd, size, offset)

    try:
        segments = jrn.segments()
        windows = list(driveread.batches(segments))
        monkeypatch.setattr(os, "posix_fadvise", advise)
        monkeypatch.setattr(os, "pread", pread)
        got = outcome(lambda: trio.run(verify_drive, jrn, str(img), trio.CapacityLimiter(2), 2))
    finally:
        for j in journals:
            j.close()
    assert got["damaged"] == [] and got["problems"] == [], got
    assert [len(w) for w in windows] == [1, 1, 2]  # the drive is as CHUNK's comment says
    at, end = h.DATA_OFFSET, segments[-1][1] + segments[-1][2]
    want: list[tuple[str, int, int]] = []
    for i, w in enumerate(windows):
        if i + 1 < len(windows):
            lo = windows[i + 1][0][1]
            want.append(("advise", at + lo, min(lo + CHUNK, end) - lo))
        want.append(("read", at + w[0][1], w[-1][1] + w[-1][2] - w[0][1]))
    assert events == want


def test_a_window_whose_read_fails_is_read_again_one_segment_at_a_time(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The whole read fails (a bad sector in segment 1): the window is read one segment at
    a time, so only segment 1's files are damaged, named as the one-thread walk names them."""
    img = tmp_path / "d1.img"
    shutil.copyfile(session.drive.path, img)
    journals, jrn = _journal(session, tmp_path)
    bad = jrn.segments()[1]
    lo, hi = h.DATA_OFFSET + bad[1], h.DATA_OFFSET + bad[1] + bad[2]
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        if offset < hi and offset + size > lo and size >= 1 << 20:
            raise OSError(5, "Input/output error")
        return real_pread(fd, size, offset)

    try:
        with monkeypatch.context() as m:
            m.setattr(os, "pread", pread)
            before = outcome(lambda: sequential_verify(jrn, str(img)))
            windows: list[bool] = []  # sealed, per window checked
            real = check.check_window

            def seen(window: check.Window, expected: check.Expected) -> check.Checked:
                windows.append(window.sealed is not None)
                return real(window, expected)

            m.setattr(check, "check_window", seen)
            after = outcome(lambda: trio.run(verify_drive, jrn, str(img),
                                             trio.CapacityLimiter(2), 2))
    finally:
        for j in journals:
            j.close()
    assert after == before
    assert after["damaged"] and not after["problems"], after
    assert all("unreadable" in why for _, why in after["damaged"]), after
    assert windows == [False]  # the drive's one window, read again segment by segment
