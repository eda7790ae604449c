"""``walk.as_before``: the no-change walk's test that an entry equals its parent's without
making a node of it.  It must answer exactly what ``matched`` asked before it, ``node ==
parent`` (the file's content taken from the parent where restic's rule keeps it): here
for every kind of entry it covers, against a parent changed in each field in turn."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pipeline.backup import encoding as fmt
from pipeline.backup import walk

CHUNK = b"\x11" * 32


def _tree(root: Path) -> Path:
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"some text\n")
    (root / "empty").write_bytes(b"")
    (root / "x.bin").write_bytes(b"x" * 5000)
    os.setxattr(root / "x.bin", "user.comment", b"a value")
    os.setxattr(root / "d", "user.dir", b"a directory's own")
    (root / "a").write_bytes(b"linked")
    os.link(root / "a", root / "b")                 # two links: not as_before's to answer
    os.symlink("d/f.txt", root / "ln")
    os.mkfifo(root / "fifo")
    os.chmod(root / "empty", 0o640)
    return root


def _variants(name: str, value: object) -> list[object]:
    """Other values of one field, each as a parent could hold it."""
    if name == "type":
        return [t for t in ("file", "dir", "symlink", "fifo", "chardev", "blockdev")
                if t != value]
    if name in ("uid", "gid"):
        return [None, 0 if value else 1, value + 1]              # type: ignore[operator]
    if name in ("path", "target", "user", "group"):
        return ["", "other"] if value else ["x"]
    if name == "content":
        return [[], [(CHUNK, 3)], [(None, 3)]]
    if name == "xattrs":
        return [[], [("user.comment", b"another")], [("user.z", b"")]]
    return [0, 1, 2, value + 1, value - 1]                       # type: ignore[operator]


def test_as_before_answers_node_equality_for_each_field(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    checked = set()
    for rel, full, st in walk.scan(src, lambda m: None):
        node = walk.make_node(rel, full, st, lambda m: None)
        assert node is not None
        if not (node.type == "dir" or (node.type == "file" and st.st_nlink == 1)):
            continue
        parent = dataclasses.replace(node, content=[(CHUNK, node.size)] if node.size else [])
        assert walk.as_before(parent, st, node.xattrs), rel
        for f in dataclasses.fields(fmt.Node):
            if f.name == "path":          # the same: ParentTree.find found it by its path
                continue
            for value in _variants(f.name, getattr(parent, f.name)):
                if value == getattr(parent, f.name):
                    continue
                old = dataclasses.replace(parent, **{f.name: value})
                made = dataclasses.replace(node)          # matched's rule, by nodes
                if made.type == "file" and walk.unchanged(made, old):
                    made.content = old.content
                assert walk.as_before(old, st, node.xattrs) == (made == old), (
                    rel, f.name, value)
                checked.add((rel, f.name))
        for xattrs in ([], [("user.other", b"1")]):       # the walk's xattrs, changed
            want = dataclasses.replace(node, xattrs=xattrs, content=parent.content) == parent
            assert walk.as_before(parent, st, xattrs) == want, (rel, xattrs)
    assert {rel for rel, _ in checked} == {".", "d", "d/f.txt", "empty", "x.bin"}
    assert len(checked) == 5 * (len(dataclasses.fields(fmt.Node)) - 1)


def test_matched_takes_the_parents_node_only_when_equal(tmp_path: Path) -> None:
    """A parent tree made by this walk: every dir and file of one link is the parent's
    node itself, with its line; after a chmod, a setfattr and a touch those entries are
    new nodes without a line (a new tree line), the others still the parent's."""
    src = _tree(tmp_path / "src")
    nodes = list(walk.walk(src, lambda m: None))
    for n in nodes:
        if n.type == "file":
            n.content = [(CHUNK, n.size)] if n.size else []
    lines = [n.encode() for n in nodes]
    cid = b"\x22" * 32
    parent = [[(n, line, (cid, i, len(nodes))) for i, (n, line) in enumerate(
        zip(nodes, lines, strict=True))]]
    by_path = {n.path: n for n in nodes}
    got = list(walk.matched(src, iter(parent), lambda m: None))
    assert [w.node.path for w in got] == [n.path for n in nodes]
    for w in got:
        assert w.line == lines[nodes.index(by_path[w.node.path])]
        taken = w.node is by_path[w.node.path]
        assert taken == (w.node.type == "dir" or w.node.path in ("d/f.txt", "empty", "x.bin"))
        assert w.reuse == (w.node.type == "file")
    os.chmod(src / "empty", 0o600)
    os.setxattr(src / "d", "user.dir", b"changed")
    os.setxattr(src / "x.bin", "user.comment", b"changed")
    os.utime(src / "d" / "f.txt", ns=(1, 2))
    got = {w.node.path: w for w in walk.matched(src, iter(parent), lambda m: None)}
    for path in ("d", "empty", "x.bin", "d/f.txt"):
        assert got[path].line is None and got[path].node is not by_path[path], path
        full = os.fsencode(src / path)
        made = walk.make_node(path, full, os.lstat(full), lambda m: None)
        assert made is not None
        if got[path].reuse:
            made.content = by_path[path].content
        assert got[path].node == made, path
    assert got["d"].node.xattrs == [("user.dir", b"changed")]
    assert got["x.bin"].node.xattrs == [("user.comment", b"changed")]
    assert got["empty"].node.mode == 0o600
    assert got["x.bin"].reuse and got["empty"].reuse           # metadata only: kept
    assert not got["d/f.txt"].reuse                            # mtime moved: read again
    for path in (".", "a", "b", "ln", "fifo"):                # untouched: the same lines
        assert got[path].line == lines[nodes.index(by_path[path])], path
    assert got["."].node is by_path["."]
