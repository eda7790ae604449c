"""A file the walk saw as regular but swapped for a FIFO before it is read: skipped with a
warning, never an open that waits for a writer forever (the backup would hang)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pipeline.backup import encoding as fmt
from pipeline.backup.walk import FileReader


def test_a_fifo_swapped_in_after_the_walk_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "was-a-file")
    reader = FileReader(fmt.ChunkerParams(256 << 10, 1 << 20, 4 << 20), 1, lambda b: b"i" * 32)
    node = fmt.Node("file", "was-a-file", 0o644, 0, 10, 0, 0)
    warnings: list[str] = []
    got: list[bool] = []
    # The thread only guards against the hang this test is about; no timing is checked.
    t = threading.Thread(target=lambda: got.append(reader.read(
        tmp_path / "was-a-file", node, lambda *a: None, warnings.append)), daemon=True)
    t.start()
    t.join(60)
    assert got == [False]
    assert warnings == ["was-a-file: no longer a regular file; skipped"]
