"""A worker's copy log (`import --cluster`, ``cluster.receive_remote.import_one``): stored in
the account a part at a time from its file (``copylog.store_copy``), the file kept for the
client to fetch in parts into its --log-dir (issue 18; tests/test_cluster_copylog.py)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from pipeline import progress
from pipeline.cluster import receive_remote
from pipeline.receive import importer
from pipeline.storage.base import CELL
from pipeline.storage.local import LocalStorage

LINES = 40_000


def test_a_large_copy_log_goes_to_the_account_in_parts_and_to_the_result_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def import_drive(od: Any, plan: Any, store: Any, log: importer.CopyLog, *_: Any,
                           **__: Any) -> importer.DriveResult:
        for i in range(LINES):  # what an import of 40,000 small files logs
            log.blob("ok", f"vdir/d{i % 97:02d}/file {i:07d}.txt", "", i)
        return importer.DriveResult(1, "rr-1")

    monkeypatch.setattr(importer, "import_drive", import_drive)
    (tmp_path / "acct").mkdir()
    store = LocalStorage(tmp_path / "acct")
    store.check()
    store.ensure_container(importer.STATE_CONTAINER)
    put: list[str] = []
    real_put = store.put
    monkeypatch.setattr(store, "put", lambda c, b, data: (put.append(b), real_put(c, b, data)))
    sb = SimpleNamespace(session_id="rr-1", drive_seq=1)
    plan = SimpleNamespace(superblock=sb, extents=[], damage=[], incomplete="", container="c",
                           source="journal", files={})
    od = SimpleNamespace(drive=SimpleNamespace(path="/dev/fake"))

    tracemalloc.start()
    try:
        got = trio.run(receive_remote.import_one, od, plan, store, progress.Stats())
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = Path(got["log_file"]).read_text(encoding="utf-8")  # kept for the client to fetch
    receive_remote.drop_log(got["log_file"])
    assert len(text) > 4 * CELL and text.isascii()
    lines = text.splitlines()
    assert len(lines) == LINES + 2 and '"type": "totals"' in lines[-1]
    stored = store.get(importer.STATE_CONTAINER,
                       importer.state_name("rr-1", "copylog-drive-01.jsonl"))
    assert stored == text.encode()  # the account's copy, byte for byte
    assert put == []  # stored a part at a time, never put whole
    assert got["totals"]["ok"] == LINES
    # No copy of the log (the import keeps no lines, the result no text): one CELL part of
    # the account's copy, 2.0 MiB for this 4.6 MiB log (was 4.6 MiB beyond the result's
    # text, 46.0 for 46.0 at 400,000 lines); flat in lines: test_cluster_copylog.
    assert peak - kept < 0.5 * len(text), (peak - kept, len(text))
