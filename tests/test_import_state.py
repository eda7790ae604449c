"""The import's state in the plan's scratch database: the plan read back as given, check_plan's
rules on it, and OnDrive's files made live a page at a time, written back, and never back
without their cells."""

from __future__ import annotations

import random

import pytest
import trio

from pipeline.drive import format
from pipeline.receive import commit, plan

SB = format.Superblock(1, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "st-1", "", "cont/v/",
                       format.BlobType.BLOCK, 0, 1 << 30)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def blob(self, status: str, blob: str, reason: str = "", size: int = 0, **_: object) -> None:
        self.lines.append((status, blob, reason))


class _Store:
    def list(self, container: str, prefix: str = "") -> list[str]:
        return []


def _plan(n: int) -> plan.DrivePlan:
    files = [format.FileEntry(i, f"f{i}", f"v/f{i}", 100, 0, 0o644) for i in range(1, n + 1)]
    exts = [format.Extent(i, 0, 100, format.Codec.RAW, 100, bytes(16), format.SECTOR * (i + 1))
            for i in range(1, n + 1)]
    p = plan.DrivePlan(SB, files, exts, "journal")
    plan.check_plan(p)
    return p


def test_plan_rows_come_back_as_given_and_check_plan_rejects_as_before() -> None:
    big = (1 << 64) - 1  # a u64 SQLite cannot hold as is
    files = {1: format.FileEntry(1, "a", "v/a", 10, 0, 0o644),
             2: format.FileEntry(2, "b", "v/b", 10, 0, 0o644),
             3: format.FileEntry(3, "c", "v/a", 10, 0, 0o644),  # the same blob as file 1
             big: format.FileEntry(big, "d", "v/d", 10, -1, 0o644)}  # mtime_ns is signed
    exts = [format.Extent(2, format.CELL, 10, format.Codec.RAW, 10, bytes(16), 8192),
            format.Extent(big, 0, 10, format.Codec.RAW, 10, b"\1" * 16, 4096),
            format.Extent(99, 0, 10, format.Codec.RAW, 10, bytes(16), 12288)]  # unlisted
    p = plan.DrivePlan(SB, files, exts, "index")
    assert dict(p.files.items()) == files and len(p.files) == 4 and big in p.files
    assert list(p.extents) == exts
    plan.check_plan(p)
    assert set(p.rejected) == {1, 2, 3}
    assert "lists this blob 2 times (file ids [1, 3])" in p.rejected[1][1]
    assert "off the" in p.rejected[2][1]
    assert [e.file_id for e in p.extents] == [2, big]  # the unlisted file's extent dropped
    scan = plan.DrivePlan(SB, files, [], "log scan")
    plan.check_plan(scan)  # a walk of the log: the older copy is superseded, not rejected
    assert list(scan.superseded) == [1] and 1 not in scan.files and 3 in scan.files


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_on_drive_pages_in_written_back_and_never_back_without_cells(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Lookups out of order (two workers' windows), sweeps between them, as the uploaders do
    (a part recorded, then the file committed once whole) and the damage report: every
    file's cells, damage and commit reach the database, and no more than a few pages are
    live at a time."""
    monkeypatch.setattr(commit, "PREFETCH", 8)
    monkeypatch.setattr(commit, "SWEEP", 16)
    n = 500
    p = _plan(n)
    on = trio.run(commit.what_to_write, p, _Store(), _Log(), trio.CapacityLimiter(1))
    rng = random.Random(seed)
    most = 0
    pending: list[format.Extent] = []
    for e in on.stored():
        pending.append(e)
        if len(pending) >= 24 or rng.random() < 0.1:
            rng.shuffle(pending)
            for x in pending:
                _deliver(on, x)
            pending.clear()
        most = max(most, len(on._live))
    for x in pending:
        _deliver(on, x)
    on.settle()
    assert not on._live and not on._pages and not on._page_of
    got = {f["file_id"]: (f["cells"], f["bad"]) for f in on.marker_files()}
    assert got == {i: ([], [0]) if i % 7 == 0 else ([0], []) for i in range(1, n + 1)}
    assert {fd.entry.file_id for fd in on.rows() if fd.committed} == {
        i for i in range(1, n + 1) if i % 7}
    assert {fd.entry.file_id: fd.bad for fd in on.rows() if fd.bad} == {
        i: {0: ("corrupt", "x")} for i in range(7, n + 1, 7)}
    assert most <= 4 * commit.SWEEP  # pages in flight, not the drive's files


def _deliver(on: commit.OnDrive, e: format.Extent) -> None:
    """What an uploader (or the damage report, every 7th file) does with an extent."""
    fd = on[e.file_id]
    if e.file_id % 7 == 0:
        fd.bad[e.offset] = ("corrupt", "x")
        return
    fd.cells.add(e.offset)
    if commit.whole_here(fd):
        fd.committed = True
