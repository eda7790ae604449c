"""Tests for the sync part of pipeline.prep.read: holes, the grid, files changing under us."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.drive import format
from pipeline.errors import EXIT_BAD_INPUT, BadInput
from pipeline.prep import read
from pipeline.prep.read import (
    FileChanged,
    data_ranges,
    plan_extents,
    read_extents,
)

M = 1 << 20
assert format.CELL == read.EXTENT_SIZE == M


@given(size=st.integers(0, 10 * M), start_cell=st.integers(0, 12))
def test_grid_helpers_agree_with_the_read_plan(size: int, start_cell: int) -> None:
    """format.grid/grid_cells, used by resume and import, name the cells reading makes."""
    cells = [off for off, _, _ in plan_extents(size, [(0, size)])]
    assert format.grid_cells(size) == len(cells)
    assert list(format.grid(size)) == cells
    start = start_cell * M
    assert list(format.grid(size, start)) == [c for c in cells if c >= start]


def _make(path: Path, size: int, writes: dict[int, bytes]) -> os.stat_result:
    """A sparse file: ``size`` bytes, data only where ``writes`` puts it."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes.items():
            f.seek(off)
            f.write(data)
    return os.stat(path)


def _read_all(path: Path, **kw: Any) -> list[tuple[int, int, bytes | None]]:
    st = os.stat(path)
    return list(read_extents(path, st.st_size, st.st_mtime_ns, **kw))


def _count_preads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        calls.append((off, n))
        return real(fd, n, off)

    monkeypatch.setattr(read.os, "pread", pread)
    return calls


# --------------------------------------------------------------------------- sparse files

SPARSE_SIZE = 20 * M
SPARSE_WRITES = {0: b"head" * 100, 5 * M + M // 2: b"middle", SPARSE_SIZE - 100: b"t" * 100}
DATA_CELLS = {0, 5 * M, 19 * M}


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    p = tmp_path / "sparse file"
    _make(p, SPARSE_SIZE, SPARSE_WRITES)
    return p


def _fs_reports_holes(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return data_ranges(fd, os.fstat(fd).st_size) != [(0, os.fstat(fd).st_size)]
    finally:
        os.close(fd)


def test_data_ranges_find_the_data(sparse: Path) -> None:
    fd = os.open(sparse, os.O_RDONLY)
    try:
        ranges = data_ranges(fd, SPARSE_SIZE)
    finally:
        os.close(fd)
    # Sorted, disjoint, inside the file, and covering every byte written.
    assert ranges == sorted(ranges)
    assert all(0 <= s < e <= SPARSE_SIZE for s, e in ranges)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for off, data in SPARSE_WRITES.items():
        assert any(s <= off and off + len(data) <= e for s, e in ranges), (off, ranges)
    if ranges != [(0, SPARSE_SIZE)]:  # this FS reports holes (ext4, xfs, btrfs, tmpfs do)
        assert sum(e - s for s, e in ranges) <= 3 * M  # the 17 MiB of holes are not "data"


def test_sparse_file_hole_cells(sparse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(sparse, os.O_RDONLY)
    try:
        plan = plan_extents(SPARSE_SIZE, data_ranges(fd, SPARSE_SIZE))
    finally:
        os.close(fd)
    assert [(o, n) for o, n, _ in plan] == [(k * M, M) for k in range(20)]
    assert all(has for o, _, has in plan if o in DATA_CELLS)
    holes = _fs_reports_holes(sparse)
    if holes:
        assert {o for o, _, has in plan if has} == DATA_CELLS

    preads = _count_preads(monkeypatch)
    got = _read_all(sparse)
    assert [(o, n) for o, n, _ in got] == [(k * M, M) for k in range(20)]
    content = sparse.read_bytes()
    for off, n, data in got:  # either way, every hole cell comes out as None
        if off in DATA_CELLS:
            assert data == content[off : off + n]
        else:
            assert data is None
    if holes:  # and hole cells are not even read
        assert sorted(o for o, _ in preads) == sorted(DATA_CELLS)


def test_trailing_hole_and_all_hole(tmp_path: Path) -> None:
    p = tmp_path / "f"
    _make(p, 3 * M + 5, {10: b"x"})
    got = _read_all(p)
    assert [(o, n, d is None) for o, n, d in got] == [
        (0, M, False), (M, M, True), (2 * M, M, True), (3 * M, 5, True)
    ]
    _make(p, 2 * M, {})
    fd = os.open(p, os.O_RDONLY)
    try:
        if _fs_reports_holes(p):
            assert data_ranges(fd, 2 * M) == []  # SEEK_DATA says ENXIO right away
    finally:
        os.close(fd)
    assert _read_all(p) == [(0, M, None), (M, M, None)]


def test_no_seek_hole_support_means_one_range(
    sparse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for code in (errno.EINVAL, errno.EOPNOTSUPP):
        def lseek(fd: int, pos: int, how: int, code: int = code) -> int:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(read.os, "lseek", lseek)
        fd = os.open(sparse, os.O_RDONLY)
        try:
            assert data_ranges(fd, SPARSE_SIZE) == [(0, SPARSE_SIZE)]
        finally:
            os.close(fd)
        got = _read_all(sparse)  # zero detection still finds the empty cells
        assert {o for o, _, d in got if d is not None} == DATA_CELLS


def test_data_ranges_clipped_to_given_size(tmp_path: Path) -> None:
    p = tmp_path / "f"
    _make(p, 2 * M, {0: b"a" * (2 * M)})
    fd = os.open(p, os.O_RDONLY)
    try:
        assert data_ranges(fd, M + 3) == [(0, M + 3)]
        assert data_ranges(fd, 0) == []
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the grid


@st.composite
def sizes_and_ranges(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], int]:
    extent = draw(st.sampled_from([1, 3, 4096, 1000, M]))
    size = draw(st.integers(0, 40 * extent + 7))
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=12, unique=True)))
    ranges = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]
    return size, ranges, extent


@given(sizes_and_ranges())
def test_plan_tiles_the_file_on_the_grid(case: tuple[int, list[tuple[int, int]], int]) -> None:
    size, ranges, extent = case
    plan = plan_extents(size, ranges, extent)
    pos = 0
    for off, length, has_data in plan:
        assert off == pos and off % extent == 0  # contiguous, on the grid
        assert 0 < length <= extent
        assert length == extent or off + length == size  # only the last cell is short
        meets = any(s < off + length and off < e for s, e in ranges if s < e)
        assert has_data == meets
        pos += length
    assert pos == size
    assert len(plan) == -(-size // extent)


@given(sizes_and_ranges(), st.randoms())
def test_plan_ignores_range_order_and_overlap(case, rnd) -> None:  # type: ignore[no-untyped-def]
    size, ranges, extent = case
    messy = ranges + [(s, min(e + extent, size)) for s, e in ranges] + [(size, size + 9)]
    rnd.shuffle(messy)
    assert [h for *_, h in plan_extents(size, messy, extent)] == [
        h for *_, h in plan_extents(size, [(s, min(e + extent, size)) for s, e in ranges], extent)
    ]


def test_plan_examples() -> None:
    assert plan_extents(0, []) == []
    assert plan_extents(5, [(0, 5)]) == [(0, 5, True)]
    assert plan_extents(2 * M + 1, [(M, M + 1)]) == [
        (0, M, False), (M, M, True), (2 * M, 1, False)
    ]
    assert plan_extents(10, [(3, 4)], 3) == [(0, 3, False), (3, 3, True), (6, 3, False),
                                             (9, 1, False)]


# --------------------------------------------------------------------------- reading


def test_zero_filled_cells_read_as_none(tmp_path: Path) -> None:
    p = tmp_path / "zeros"
    body = b"A" * M + bytes(M) + b"B" * 10 + bytes(M - 10) + bytes(100)
    p.write_bytes(body)  # real zeros, not holes: zero detection, not SEEK_HOLE, finds them
    got = _read_all(p)
    assert got == [(0, M, b"A" * M), (M, M, None), (2 * M, M, body[2 * M : 3 * M]),
                   (3 * M, 100, None)]


def test_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    body = os.urandom(3 * M + 17)
    p.write_bytes(body)
    preads = _count_preads(monkeypatch)
    got = _read_all(p, skip={0, 2 * M})
    assert got == [(M, M, body[M : 2 * M]), (3 * M, 17, body[3 * M :])]
    assert sorted(o for o, _ in preads) == [M, 3 * M]  # skipped cells are not read
    assert _read_all(p, skip=range(0, 4 * M, M)) == []


def test_small_extent_size(tmp_path: Path) -> None:
    p = tmp_path / "f"
    body = bytes(range(256)) * 40
    p.write_bytes(body)
    got = _read_all(p, extent_size=4096)
    assert b"".join(d or b"" for _, _, d in got) == body
    assert [o for o, _, _ in got] == [0, 4096, 8192]


def test_zero_length_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    preads = _count_preads(monkeypatch)
    assert _read_all(p) == []
    assert preads == []
    st = os.stat(p)
    p.write_bytes(b"now it has data")
    with pytest.raises(FileChanged):
        list(read_extents(p, st.st_size, st.st_mtime_ns))


def test_file_grows_while_read(tmp_path: Path) -> None:
    p = tmp_path / "growing file"
    p.write_bytes(os.urandom(3 * M))
    st = os.stat(p)
    it = read_extents(p, st.st_size, st.st_mtime_ns)
    next(it)
    with open(p, "ab") as f:
        f.write(b"more")
    with pytest.raises(FileChanged) as ei:
        list(it)
    msg = str(ei.value)
    assert repr(str(p)) in msg and "--resume" in msg and "\n" not in msg
    assert ei.value.exit_code == EXIT_BAD_INPUT and isinstance(ei.value, BadInput)


def test_file_shrinks_while_read(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(os.urandom(3 * M))
    st = os.stat(p)
    it = read_extents(p, st.st_size, st.st_mtime_ns)
    next(it)
    os.truncate(p, M + 10)
    with pytest.raises(FileChanged, match="shrank"):
        list(it)


def test_file_rewritten_in_place_while_read(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(os.urandom(3 * M))
    st = os.stat(p)
    it = read_extents(p, st.st_size, st.st_mtime_ns)
    next(it)
    with open(p, "r+b") as f:  # same size; only the mtime tells
        f.write(b"x")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    with pytest.raises(FileChanged, match="modification time"):
        list(it)


def test_file_changed_since_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    st = os.stat(p)
    preads = _count_preads(monkeypatch)
    with pytest.raises(FileChanged, match="size 2 became 3"):
        list(read_extents(p, 2, st.st_mtime_ns))
    with pytest.raises(FileChanged, match="modification time"):
        list(read_extents(p, 3, st.st_mtime_ns - 1))
    assert preads == []  # checked on open, before reading anything
    p.unlink()
    with pytest.raises(FileChanged, match="disappeared"):
        list(read_extents(p, 3, st.st_mtime_ns))


def test_file_replaced_by_symlink_or_fifo(tmp_path: Path) -> None:
    p = tmp_path / "f"
    (tmp_path / "other").write_bytes(b"abc")
    os.symlink("other", p)
    with pytest.raises(FileChanged, match="symbolic link"):
        list(read_extents(p, 3, 0))
    p.unlink()
    os.mkfifo(p)  # must not block on open
    with pytest.raises(FileChanged, match="no longer a regular file"):
        list(read_extents(p, 3, 0))


def test_noatime_refused_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"data")
    real = os.open
    flags_seen: list[int] = []

    def fake_open(path, flags, *a):  # type: ignore[no-untyped-def]
        flags_seen.append(flags)
        if flags & os.O_NOATIME:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real(path, flags, *a)

    monkeypatch.setattr(read.os, "open", fake_open)
    assert _read_all(p) == [(0, 4, b"data")]
    assert [bool(f & os.O_NOATIME) for f in flags_seen] == [True, False]


def test_unreadable_file_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "secret"
    p.write_bytes(b"data")

    def fake_open(path, flags, *a):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(read.os, "open", fake_open)
    with pytest.raises(BadInput, match="secret'?: cannot read: permission denied") as ei:
        _read_all(p)
    assert not isinstance(ei.value, FileChanged)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptor_closed_on_early_exit_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(os.urandom(3 * M))
    st = os.stat(p)
    before = _open_fds()
    it = read_extents(p, st.st_size, st.st_mtime_ns)
    next(it)
    assert _open_fds() == before + 1
    it.close()
    assert _open_fds() == before
    with pytest.raises(FileChanged):
        list(read_extents(p, st.st_size + 1, st.st_mtime_ns))
    assert _open_fds() == before
