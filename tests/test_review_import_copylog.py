"""Review of the cluster copy log kept on the worker and fetched in parts (f468fa8,
c5a3f1a): ``read_log_part``/``drop_log`` run whatever path the client sends, on a
machine whose tempdir anyone may write, so only a copy log ``import_one`` kept is read
or removed: no ``..``, no symlinked directory, no symlinked log.  A worker lost in the
middle of a fetch leaves no partial log in --log-dir, and the drive's line names the
account's copy."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from distributed.comm.core import CommClosedError

from pipeline.cluster import receive, receive_remote

REFUSED = "is no copy log kept for the client"


@pytest.fixture
def kept() -> Iterator[Path]:
    """A kept copy log, as ``import_one`` keeps it (its directory in the tempdir)."""
    d = Path(tempfile.mkdtemp(prefix=receive_remote.LOG_PREFIX))
    log = d / "copylog-rv-drive01.jsonl"
    log.write_bytes(b'{"kind": "blob"}\n' * 40)
    yield log
    receive_remote.drop_log(str(log))
    assert not d.exists()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A directory outside the tempdir, holding a file named as a copy log."""
    d = tmp_path / "private"
    d.mkdir()
    (d / "copylog-rv-drive01.jsonl").write_bytes(b"SECRET\n")
    return d


def _refused(path: str) -> None:
    for fn, args in ((receive_remote.read_log_part, (path, 0, 100)),
                     (receive_remote.drop_log, (path,))):
        with pytest.raises(ValueError, match=REFUSED):
            fn(*args)


def test_a_kept_log_is_read_in_parts(kept: Path) -> None:
    whole = kept.read_bytes()
    parts = [receive_remote.read_log_part(str(kept), off, 100)
             for off in range(0, len(whole) + 100, 100)]
    assert b"".join(parts) == whole and parts[-1] == b""


def test_dot_dot_paths_are_refused(kept: Path, secret: Path) -> None:
    tmp = Path(tempfile.gettempdir())
    for path in (f"{kept.parent}/../{kept.parent.name}/{kept.name}",
                 f"{tmp}/{receive_remote.LOG_PREFIX}x/../../{secret}/{kept.name}",
                 f"{kept.parent}/{kept.name}/../{kept.name}",
                 f"{kept.parent.name}/{kept.name}"):          # relative
        _refused(path)
    assert kept.exists()


def test_a_symlinked_directory_in_the_tempdir_is_refused(secret: Path) -> None:
    link = Path(tempfile.mkdtemp(prefix=receive_remote.LOG_PREFIX))
    link.rmdir()
    os.symlink(secret, link)           # what any user of the worker machine could make
    try:
        _refused(str(link / "copylog-rv-drive01.jsonl"))
    finally:
        link.unlink()
    assert (secret / "copylog-rv-drive01.jsonl").read_bytes() == b"SECRET\n"


def test_a_symlinked_log_in_a_kept_directory_is_refused(kept: Path, secret: Path) -> None:
    link = kept.parent / "copylog-rv-drive02.jsonl"
    os.symlink(secret / "copylog-rv-drive01.jsonl", link)
    _refused(str(link))
    assert link.is_symlink() and (secret / "copylog-rv-drive01.jsonl").exists()


class _DiesAfter:
    """Dask's ``Client.run`` on one worker that answers ``parts`` reads, then is gone."""

    def __init__(self, address: str, parts: int) -> None:
        self.address, self.left = address, parts
        self.calls: list[str] = []

    def run(self, fn: Any, *args: Any, workers: list[str]) -> dict[str, Any]:
        assert workers == [self.address]
        self.calls.append(fn.__name__)
        if self.left == 0:
            raise CommClosedError("in <TCP (closed) Scheduler Broadcast>: Stream is closed")
        self.left -= 1
        return {self.address: fn(*args)}


def test_a_worker_gone_mid_fetch_leaves_no_partial_log(
        kept: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(receive, "PART", 64)
    client = _DiesAfter("tcp://w1", parts=3)
    logs = tmp_path / "logs"
    logs.mkdir()
    drive = {"session_id": "rv", "seq": 1, "log_file": str(kept)}
    results = {"w1": {"code": 0, "drives": [drive]}}
    receive.fetch_logs(SimpleNamespace(client=client), {"w1": {"address": "tcp://w1"}},
                       results, logs)
    assert client.calls == ["read_log_part"] * 4           # 3 parts, then gone
    assert list(logs.iterdir()) == []                      # the 192 bytes copied: removed
    assert (drive["worker"], drive["copy_log"]) == ("w1", "")
    assert capsys.readouterr().err.splitlines() == [
        f"pipeline import: the copy log of drive 1 could not be copied from worker w1 into "
        f"{logs / 'copylog-rv-drive01.jsonl'} (in <TCP (closed) Scheduler Broadcast>: Stream "
        "is closed); the account holds it: waimportexport/rv/copylog-drive-01.jsonl"]
