"""``walk.WalkAhead``: the online backup's walk started in a thread before the repository
is opened (issue 23: a cold walk's disk waits overlap the opening).  What it hands over
must be exactly what ``walk`` yields on the calling thread: the same entries in the same
order, each warning at its place and through the consumer's ``warn``, an error raised in
the consumer; and its thread must end (joined) however the consumer stops."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from pipeline.backup import archive, walk
from pipeline.backup.repo import hostname
from pipeline.progress import Stats
from tests.backup_helpers import backed_up_tree


def _tree(root: Path, dirs: int = 5, files: int = 7) -> Path:
    """Directories of files, xattrs on some, and sockets (each one a warning) among them."""
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x" * f)
        os.setxattr(sub / "f1", "user.k", b"v%d" % d)
    return root


def _log(nodes: object, log: list[tuple[str, object]]) -> list[tuple[str, object]]:
    for node in nodes:  # type: ignore[attr-defined]
        log.append(("node", node))
    return log


@pytest.mark.parametrize("batch", [1, 3, 256])
def test_walk_ahead_hands_over_what_walk_yields(tmp_path: Path, batch: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "src")
    socks = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        for i, s in enumerate(socks):
            s.bind(str(root / f"d{i * 2}" / "sock"))
        monkeypatch.setattr(walk.WalkAhead, "BATCH", batch)
        monkeypatch.setattr(walk.WalkAhead, "DEPTH", 1)
        serial: list[tuple[str, object]] = []
        _log(walk.walk(root, lambda m: serial.append(("warn", m))), serial)
        ahead: list[tuple[str, object]] = []
        w = walk.WalkAhead(root)
        _log(w.nodes(lambda m: ahead.append(("warn", m))), ahead)
    finally:
        for s in socks:
            s.close()
    assert [x for x in serial if x[0] == "warn"] == [
        ("warn", f"d{i}/sock: socket, not backed up") for i in (0, 2, 4)]
    assert ahead == serial and len(serial) == 1 + 5 + 5 * 7 + 3
    assert not w._thread.is_alive()


def test_walk_ahead_raises_the_walks_error_in_the_consumer(tmp_path: Path) -> None:
    w = walk.WalkAhead(tmp_path / "gone")
    with pytest.raises(walk.BadInput, match="vanished before it was read"):  # one line, exit 2
        list(w.nodes(lambda m: None))
    assert not w._thread.is_alive()


def test_walk_ahead_stops_when_the_consumer_does(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that stops early (the generator closed), or a run that fails before
    consuming (``close``): the thread, blocked on its full queue, ends and is joined."""
    root = _tree(tmp_path / "src", dirs=4, files=20)
    monkeypatch.setattr(walk.WalkAhead, "BATCH", 1)
    monkeypatch.setattr(walk.WalkAhead, "DEPTH", 1)
    w = walk.WalkAhead(root)
    nodes = w.nodes(lambda m: None)
    assert [next(nodes).path for _ in range(3)] == [".", "d0", "d0/f0"]
    nodes.close()
    assert not w._thread.is_alive()
    w = walk.WalkAhead(root)
    w.close()
    assert not w._thread.is_alive()
    w.close()                                     # again: nothing left to do


def test_begin_with_the_walk_ahead_takes_the_parents_tree(tmp_path: Path) -> None:
    src, repo = backed_up_tree(tmp_path)
    src = src.resolve()
    parent_ref = archive.find_parent(repo, str(src), hostname())
    assert parent_ref is not None
    parent = repo.manifest(parent_ref)
    warnings: list[str] = []
    begun = archive.begin(repo, src, Stats(), warnings.append, parent_ref,
                          ahead=walk.WalkAhead(src))
    assert begun.done and warnings == [] and tuple(begun.tree.ids) == parent.tree
    assert (begun.tree.files, begun.tree.dirs, begun.tree.bytes) == (
        parent.files, parent.dirs, parent.bytes)


def test_the_walk_handed_over_mid_tree_keeps_order_and_warnings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread has walked ahead (its queue full, warnings among what waits) when the
    consumer starts: the consumer drains that, then walks the rest itself; entries and
    warnings (sockets before and after the hand-over) come as ``walk`` yields them, the
    later warnings straight through the consumer's ``warn``, and the thread ends."""
    root = _tree(tmp_path / "src", dirs=6, files=5)
    socks = [socket.socket(socket.AF_UNIX) for _ in range(6)]
    try:
        for i, s in enumerate(socks):
            s.bind(str(root / f"d{i}" / "sock"))
        monkeypatch.setattr(walk.WalkAhead, "BATCH", 4)
        monkeypatch.setattr(walk.WalkAhead, "DEPTH", 2)
        serial: list[tuple[str, object]] = []
        _log(walk.walk(root, lambda m: serial.append(("warn", m))), serial)
        w = walk.WalkAhead(root)
        for _ in range(6000):                      # hang guard only: until it waits
            if w._queue.full():
                break
            time.sleep(0.01)
        assert w._queue.full() and w._rest is None   # walked ahead, not handed over yet
        ahead: list[tuple[str, object]] = []
        _log(w.nodes(lambda m: ahead.append(("warn", m))), ahead)
    finally:
        for s in socks:
            s.close()
    assert len([x for x in serial if x[0] == "warn"]) == 6
    assert ahead == serial and w._rest is not None    # the rest was walked inline
    assert not w._thread.is_alive()
