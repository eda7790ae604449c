"""Review of ``walk.WalkAhead`` (d415b26, a122f35) and the read-ahead stage (44561ae)
against a source that changes under them: --source gone between its check and the
walk's thread (one line naming it, exit 2: was a FileNotFoundError, so a traceback and
"internal error"), a directory removed mid-walk (a warning, the walk goes on), the
queue bounded whatever the tree's size (an endless walk holds ``(DEPTH + 1) * BATCH``
entries at most, and ``close`` still ends it), and a file swapped for a FIFO, socket,
symlink, directory or device between the walk and the read-ahead or the read (left out with a
warning, never a hang)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.backup import encoding as fmt
from pipeline.backup import walk
from pipeline.backup.stages import readahead
from pipeline.backup.stages.messages import NodeBatch
from pipeline.errors import EXIT_BAD_INPUT, BadInput
from tests.conftest import run_cli


def test_a_source_gone_before_the_walk_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    checked = walk.check_source(src)
    src.rmdir()                                   # between the check and the walk's thread
    ahead = walk.WalkAhead(checked)
    with pytest.raises(BadInput) as got:
        list(ahead.nodes(lambda m: None))
    assert str(got.value) == (f"--source {checked}: vanished before it was read; check it "
                              "and run the backup again")
    assert got.value.exit_code == EXIT_BAD_INPUT
    assert not ahead._thread.is_alive()


def test_a_source_gone_after_its_stat_is_one_line_too(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    real = os.scandir

    def gone(path: bytes) -> object:
        if path == os.fsencode(src):
            src.rmdir()
        return real(path)

    monkeypatch.setattr(os, "scandir", gone)
    nodes = walk.walk(src, lambda m: None)
    assert next(nodes).path == fmt.ROOT
    with pytest.raises(BadInput, match="vanished before it was read"):
        next(nodes)


def test_a_directory_removed_mid_walk_is_a_warning(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for d in ("d1", "d2", "d3"):
        (src / d).mkdir(parents=True)
        (src / d / "f").write_bytes(b"x")
    real = walk._names

    def names(path: bytes, rel: str, warn: walk.Warn) -> list[bytes]:
        if rel == "d1":                           # d2 listed already, gone before its lstat
            shutil.rmtree(src / "d2")
        if rel == "d3":                           # gone after its lstat, before its listing
            shutil.rmtree(src / "d3")
        return real(path, rel, warn)

    monkeypatch.setattr(walk, "_names", names)
    warned: list[str] = []
    ahead = walk.WalkAhead(src)
    got = [n.path for n in ahead.nodes(warned.append)]
    assert got == [fmt.ROOT, "d1", "d1/f", "d3"]
    assert warned == ["d2: vanished during the backup; skipped",
                      "d3: vanished during the backup; skipped"]


def test_the_queue_is_bounded_whatever_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endless walk (a tree of any size): the thread stops at DEPTH batches queued and
    one in hand; once the consumer starts it hands the walk over (one entry more at most),
    the consumer goes on with it inline, and closing the consumer closes the walk."""
    made = 0
    closed = False

    st = os.stat(".")

    def endless(root: Path, warn: walk.Warn) -> Iterator[walk.Seen]:
        nonlocal made, closed
        try:
            while True:
                made += 1
                yield f"f{made}", b"", st
        finally:
            closed = True

    monkeypatch.setattr(walk, "scan", endless)
    bound = (walk.WalkAhead.DEPTH + 1) * walk.WalkAhead.BATCH
    ahead = walk.WalkAhead(Path("/nonexistent"))
    nodes = ahead.seen(lambda m: None)
    for _ in range(6000):                         # hang guard only
        if made >= bound and ahead._queue.full():
            break
        time.sleep(0.01)
    time.sleep(0.2)                               # room to overrun, were it unbounded
    assert made == bound and ahead._queue.qsize() == walk.WalkAhead.DEPTH
    assert next(nodes)[0] == "f1"                 # the consumer starts: the walk is its
    for _ in range(6000):
        if made > bound:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    assert made == bound + 1                      # handed over, once what waits is taken
    names = [next(nodes)[0] for _ in range(bound + 10)]     # drained, then walked inline
    assert names == [f"f{i}" for i in range(2, bound + 12)] and made == bound + 11
    assert not ahead._thread.is_alive()
    nodes.close()                                 # the consumer stops: so does the walk
    assert closed


def _swap(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "symlink":
        os.symlink("/dev/zero", path)
    elif kind == "chardev":                       # /dev/zero's numbers: root only
        assert os.geteuid() == 0, "this case needs root (mknod)"
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink", "directory", "chardev"])
def test_a_file_swapped_after_the_walk_is_skipped_by_readahead_and_reader(
        tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"data" * 100)
    nodes = list(walk.walk(src, lambda m: None))
    node = nodes[1]
    assert node.path == "a" and node.type == "file"
    _swap(src / "a", kind)
    batch = NodeBatch(0, [walk.Walked(node, False)])

    def both() -> tuple[int, bool, list[str]]:
        asked = readahead.ask(str(src), batch)
        warned: list[str] = []
        reader = walk.FileReader(fmt.ChunkerParams(min=256, avg=1024, max=4096), 0,
                                 lambda b: bytes(32))
        done = reader.read(src / "a", node, lambda *a: None, warned.append)
        return asked, done, warned

    out: list[tuple[int, bool, list[str]]] = []
    t = threading.Thread(target=lambda: out.append(both()), daemon=True)
    t.start()
    t.join(120)                                   # hang guard only
    assert not t.is_alive(), f"a {kind} swapped in hung the read"
    asked, done, warned = out[0]
    # nothing but a regular file is opened (openfile.open_regular: O_PATH, fstat, reopen)
    assert (asked, done) == (0, False)
    assert len(warned) == 1 and warned[0].startswith("a: ")
    assert warned[0] in ("a: no longer a regular file; skipped",
                         "a: cannot read (Too many levels of symbolic links); skipped",
                         "a: cannot read (No such device or address); skipped")


def test_the_cli_names_a_source_that_is_not_there(tmp_path: Path) -> None:
    proc = run_cli("backup", "--source", str(tmp_path / "nope"), "--to",
                   f"file://{tmp_path}/acct", "--passphrase-file", str(tmp_path / "p"),
                   check_code=None)
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline backup: --source {tmp_path / 'nope'} does not exist; give the directory "
        "to back up")
