"""OnDrive.marker_json: each file's marker entry formatted directly, byte for byte what
json.dumps writes of marker_files' dict (names of any characters, cells, zero cells,
damage), and chunks_json takes it as is."""

from __future__ import annotations

import json

import trio

from pipeline.drive import format
from pipeline.receive import commit, markers, plan
from tests.test_import_state import SB, _Log, _Store

NAMES = ["plain", "é ü", 'q"uote', "日本", "\u2028x", "~!@#$%^&*()_{}[]:;'<>,?"]


def _on_drive() -> commit.OnDrive:
    """Files of every kind: one cell, several cells with a zero one, damaged."""
    files, exts = [], []
    loc = format.SECTOR
    for i, name in enumerate(NAMES * 3, start=1):
        size = 100 if i % 3 else 3 * format.CELL
        files.append(format.FileEntry(i, f"{name}{i}", f"v/{name}{i}", size, 0, 0o644))
        for k, off in enumerate(format.grid(size)):
            raw = min(format.CELL, size - off)
            codec = format.Codec.ZERO if k == 1 else format.Codec.RAW
            exts.append(format.Extent(i, off, raw, codec, 0 if k == 1 else raw, bytes(16),
                                      0 if k == 1 else loc))
            loc += format.align_up(raw) if k != 1 else 0
    p = plan.DrivePlan(SB, files, exts, "journal")
    plan.check_plan(p)
    on = trio.run(commit.what_to_write, p, _Store(), _Log(), trio.CapacityLimiter(1))
    for e in on.stored():
        fd = on[e.file_id]
        if e.file_id % 5 == 0:
            fd.bad[e.offset] = ("corrupt", "x")
        else:
            fd.cells.add(e.offset)
    on.settle()
    return on


def test_marker_json_is_json_dumps_of_marker_files() -> None:
    on = _on_drive()
    want = [json.dumps(f) for f in on.marker_files()]
    assert list(on.marker_json()) == want
    assert len(want) == 3 * len(NAMES)
    assert any(f["zero"] and f["cells"] for f in on.marker_files())
    assert any(f["bad"] for f in on.marker_files())
    assert b"".join(markers.chunks_json(on.marker_json())) == b"".join(
        markers.chunks_json(on.marker_files()))
