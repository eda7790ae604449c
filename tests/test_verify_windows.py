"""Verify's windows capped by the journal's extent count (issue 18), not only by bytes.

A window of tiny files held ~50,000 rows at 16 MiB; now at most ``WINDOW_EXTENTS`` (or
one segment).  Whatever the cap, the report is the one-thread walk's, damage or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from pipeline import journal
from pipeline.receive import check, verify
from pipeline.receive import reader as driveread
from pipeline.receive.verify import verify_drive

from . import test_hostile_damage as hd
from .test_hostile_damage import session  # noqa: F401 - the module's fixture, shared
from .test_verify import DAMAGE_CASES, damage_image, outcome, sequential_verify


@pytest.mark.parametrize("cap", [1, 5, 40])
@pytest.mark.parametrize(("region", "damage"), [("none", "none"), *DAMAGE_CASES[::3]],
                         ids=lambda v: str(v))
def test_capped_windows_report_as_the_sequential_walk(
        session: hd.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        region: str, damage: str, cap: int) -> None:
    img = tmp_path / "d1.img"
    if region == "none":
        shutil.copyfile(session.drive.path, img)
    else:
        damage_image(session, img, region, damage)
    jdir = tmp_path / "j"
    shutil.copytree(session.jdir, jdir)
    journals = journal.session_journals(jdir)
    jrn = next(j for j in journals if j.drive.seq == session.drive.seq)
    windows: list[tuple[int, int]] = []  # (segments, rows) of each window checked
    real = check.check_window

    def counted(window: check.Window, expected: check.Expected) -> check.Checked:
        read = window.segments if window.sealed is None else window.sealed.batch
        windows.append((len(read), len(expected.extents)))
        return real(window, expected)

    try:
        before = outcome(lambda: sequential_verify(jrn, str(img)))
        monkeypatch.setattr(verify, "WINDOW_EXTENTS", cap)
        monkeypatch.setattr(check, "check_window", counted)
        after = outcome(lambda: trio.run(verify_drive, jrn, str(img),
                                         trio.CapacityLimiter(4), 3))
        rows = sum(1 for _ in jrn.live_extent_rows())
    finally:
        for j in journals:
            j.close()
    assert after == before
    if region == "none":
        assert after["damaged"] == [] and after["problems"] == []
        assert sum(n for _, n in windows) == rows  # every row in exactly one window
        assert sum(s for s, _ in windows) == len(session.drive.segments)
    assert all(n <= cap or s == 1 for s, n in windows), windows
    assert bool(windows) == ("raised" not in after)  # a drive that unlocks is read
    if cap == 40 and windows:  # some windows hold several segments: the cap, not one a window
        assert any(s > 1 for s, _ in windows), windows


def test_the_default_cap_keeps_a_window_of_tiny_files_small() -> None:
    assert verify.WINDOW_EXTENTS <= 8192 and driveread.READ_CHUNK == 16 << 20
