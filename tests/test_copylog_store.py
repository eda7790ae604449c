"""The copy log's copy in the account (issue 18): stored a part at a time, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.receive import copylog, importer
from pipeline.storage import open_storage
from pipeline.storage.base import CELL

from .azurite import azurite  # noqa: F401 - the session's Azurite, for the fixture below


@pytest.fixture(params=["local", "azurite"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        (tmp_path / "account").mkdir()
        return str(tmp_path / "account")
    return str(request.getfixturevalue("azurite"))


def write_log(path: Path, lines: int) -> bytes:
    """A copy log of ``lines`` blob lines (names of several scripts) and its totals."""
    with copylog.open_copy_log(path) as stream:
        log = copylog.CopyLog(stream, "drive 1")
        for i in range(lines):
            log.blob("ok" if i % 7 else "skipped", f"vdir/ファイル-{i:07d}/é{'x' * (i % 50)}",
                     "" if i % 7 else "continues on another drive", size=i)
        log.close("done")
    return path.read_bytes()


def test_a_copy_log_of_many_lines_is_stored_exactly(tmp_path: Path, store_target: str) -> None:
    store = open_storage(store_target)
    store.ensure_container(importer.STATE_CONTAINER)
    name = importer.state_name("s1", "copylog-drive-01.jsonl")
    path = tmp_path / "copylog.jsonl"
    want = write_log(path, 40_000)
    assert len(want) > 3 * CELL and len(want) % CELL  # several parts, the last one short
    lines = want.decode().splitlines()
    assert len(lines) == 40_001 and json.loads(lines[-1])["type"] == "totals"
    copylog.store_copy(store, importer.STATE_CONTAINER, name, path)
    assert store.get(importer.STATE_CONTAINER, name) == want
    # A later import's shorter log replaces it whole: nothing of the longer one is left.
    shorter = write_log(path, 3)
    copylog.store_copy(store, importer.STATE_CONTAINER, name, path)
    assert store.get(importer.STATE_CONTAINER, name) == shorter
    # A log of exactly one part's size.
    path.write_bytes(b"y" * (CELL - 1) + b"\n")
    copylog.store_copy(store, importer.STATE_CONTAINER, name, path)
    assert store.get(importer.STATE_CONTAINER, name) == b"y" * (CELL - 1) + b"\n"
