"""The receiving side's compact records: the plan's extents as columns, verify's packed
rows, extract's windows made as the extents are read, the copy log read back."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.drive import format
from pipeline.receive import check, extract
from pipeline.receive.copylog import CopyLog, read_bytes, read_lines
from pipeline.receive.plan import Extents

extents = st.lists(st.builds(
    lambda fid, cell, raw, loc, digest: format.Extent(
        fid, cell * format.CELL, raw, format.Codec.RAW, raw, digest,
        format.SECTOR + loc * format.SECTOR),
    st.integers(0, 2**63), st.integers(0, 1000), st.integers(1, format.CELL),
    st.integers(0, 10**6), st.binary(min_size=16, max_size=16)), max_size=40)


@given(extents)
def test_extents_columns_give_back_every_extent(exts: list[format.Extent]) -> None:
    table = Extents(exts)
    assert len(table) == len(exts)
    assert list(table) == exts
    assert table[1:3] == exts[1:3]
    if exts:
        assert table[-1] == exts[-1]
    assert list(table.by_location()) == sorted(exts, key=lambda e: e.location)


@given(extents)
def test_windows_made_as_read_are_the_windows(exts: list[format.Extent]) -> None:
    in_order = sorted(exts, key=lambda e: e.location)
    assert list(extract.iter_windows(iter(in_order))) == extract.windows(exts)


def test_packed_rows_differ_when_any_field_does() -> None:
    row = (1, 0, 10, 1, 8, bytes(16), 4096)
    assert check.packed(row) == check.packed(tuple(row))
    for i, other in enumerate((2, format.CELL, 11, 2, 9, b"\1" * 16, 8192)):
        assert check.packed(row[:i] + (other,) + row[i + 1:]) != check.packed(row)
    assert check.packed((2**64, 0, 0, 0, 0, bytes(16), 0)) == b""  # no u64 holds it


def test_copy_log_keeps_counts_not_lines(tmp_path: Path) -> None:
    path = tmp_path / "copylog.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        log = CopyLog(stream, "/dev/x")
        log.blob("ok", "a", size=3)
        log.blob("corrupt", "b", "bad")
        log.close("done")
    assert log.path == path and not hasattr(log, "lines")
    lines = list(read_lines(path))
    assert [json.loads(x).get("status") for x in lines] == ["ok", "corrupt", None]
    assert json.loads(lines[-1])["ok"] == 1 and log.totals["corrupt"] == 1
    assert read_bytes(path) == path.read_bytes()
    assert read_bytes(path, limit=10) is None
    assert CopyLog(io.StringIO(), "/dev/x").path is None
