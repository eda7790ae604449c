"""Tests for pipeline.prep.scan: what is listed, in order, what is skipped, what is refused."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.drive.format import FileEntry
from pipeline.errors import EXIT_BAD_INPUT, BadInput
from pipeline.prep import scan as scan_mod
from pipeline.prep.scan import SourceFile, scan, totals


def _write(p: Path, data: bytes, mode: int = 0o644) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "staging"
    _write(root / "b.txt", b"bee")
    _write(root / "a.txt", b"a" * 1000, 0o600)
    _write(root / "dir a" / "ü.txt", "ünïcødé".encode())
    _write(root / "dir a" / "empty", b"")
    _write(root / "dir a" / "deeper" / "x y z", b"xyz" * 10, 0o755)
    _write(root / "Z upper", b"Z")
    _write(root / "日本語" / "ファイル.bin", bytes(range(256)))
    _write(root / "odd 'name' #%&+=.txt", b"quotes, '#%&+=' are allowed")
    (root / "empty dir" / "nested empty").mkdir(parents=True)
    _write(root / "a", b"file a sorts before a.txt and a/")  # name "a" vs dir "a.d"
    _write(root / "a.d" / "inner", b"i")
    return root


EXPECTED = [
    ("Z upper", 1),
    ("a", 32),
    ("a.d/inner", 1),
    ("a.txt", 1000),
    ("b.txt", 3),
    ("dir a/deeper/x y z", 30),
    ("dir a/empty", 0),
    ("dir a/ü.txt", len("ünïcødé".encode())),
    ("odd 'name' #%&+=.txt", 27),
    ("日本語/ファイル.bin", 256),
]


def test_nested_tree_order_sizes_modes(tree: Path) -> None:
    files = list(scan(tree))
    assert [(f.path, f.size) for f in files] == EXPECTED
    by = {f.path: f for f in files}
    assert by["a.txt"].mode == 0o600
    assert by["dir a/deeper/x y z"].mode == 0o755
    st_ = os.lstat(tree / "dir a" / "ü.txt")
    assert by["dir a/ü.txt"] == SourceFile("dir a/ü.txt", st_.st_size, st_.st_mtime_ns, 0o644)
    for f in files:  # every path is a valid on-drive FileEntry path
        FileEntry(0, f.path, f.path, f.size, f.mtime_ns, f.mode)


def test_order_is_by_name_bytes_at_each_level(tmp_path: Path) -> None:
    # Bytewise: uppercase < "_" < lowercase < non-ASCII; "a" < "a b" < "a-" < "a.x" < "aa".
    names = ["é", "a", "B", "_", "aa", "a b", "a-", "a.x", "\u00e0", "\U0001f642"]
    for n in names:
        _write(tmp_path / n, b"")
    got = [f.path for f in scan(tmp_path)]
    assert got == sorted(names, key=lambda n: n.encode())
    assert got == [f.path for f in scan(tmp_path)]  # deterministic


def test_depth_first_descends_in_name_order(tmp_path: Path) -> None:
    for p in ["m/2", "m/1/z", "m/1/a", "a", "z", "m0"]:
        _write(tmp_path / p, b"")
    assert [f.path for f in scan(tmp_path)] == ["a", "m/1/a", "m/1/z", "m/2", "m0", "z"]


def test_empty_root_and_empty_dirs_yield_nothing(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    assert list(scan(tmp_path)) == []
    assert totals(tmp_path) == (0, 0)


def test_symlinks_and_special_files_skipped_and_reported(tree: Path) -> None:
    os.symlink("a.txt", tree / "link to file")
    os.symlink("dir a", tree / "link to dir")
    os.symlink("nowhere", tree / "dir a" / "dangling")
    os.mkfifo(tree / "dir a" / "fifo")
    os.mknod(tree / "sock", stat.S_IFSOCK | 0o600)
    if os.geteuid() == 0:  # creating a device node needs root (CI runs as root)
        os.mknod(tree / "null dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    skipped: list[tuple[str, str]] = []
    files = list(scan(tree, on_skip=lambda p, r: skipped.append((p, r))))
    assert [(f.path, f.size) for f in files] == EXPECTED  # nothing followed, nothing added
    want = [
        ("dir a/dangling", "symbolic link (not followed)"),
        ("dir a/fifo", "fifo"),
        ("link to dir", "symbolic link (not followed)"),
        ("link to file", "symbolic link (not followed)"),
        ("sock", "socket"),
    ]
    if os.geteuid() == 0:
        want.insert(4, ("null dev", "character device"))
    assert skipped == want
    assert list(scan(tree)) == files  # on_skip is optional


def test_real_unix_socket_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # AF_UNIX paths are limited to 108 bytes: bind a short one
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("s")
        skipped: list[tuple[str, str]] = []
        assert list(scan(tmp_path, lambda p, r: skipped.append((p, r)))) == []
    assert skipped == [("s", "socket")]


def test_totals_match_scan(tree: Path) -> None:
    os.symlink("a.txt", tree / "link")
    files = list(scan(tree))
    assert totals(tree) == (len(files), sum(f.size for f in files))
    assert totals(tree) == (len(EXPECTED), sum(s for _, s in EXPECTED))
    seen: list[str] = []
    totals(tree, lambda p, r: seen.append(p))
    assert seen == ["link"]


def _special_tree(tree: Path, tmp_path: Path) -> Path:
    """``tree`` with what the walk must not count, and reached through a symlinked root."""
    os.symlink("a.txt", tree / "link")
    os.symlink(tmp_path / "elsewhere", tree / "dir link")  # never followed
    _write(tmp_path / "elsewhere" / "big", bytes(5000))
    os.mkfifo(tree / "fifo")
    os.link(tree / "b.txt", tree / "hard link")  # a second path to the same file: counted
    link = tmp_path / "root link"
    os.symlink(tree, link)
    return link


async def _count(root: Path) -> tuple[int, int]:
    from pipeline.commands.prep import count_totals
    from pipeline.progress import Stats

    stats = Stats()
    await count_totals(type("Cfg", (), {"srcdir": root})(), stats)  # type: ignore[arg-type]
    return stats.files_total, stats.bytes_total


@pytest.mark.parametrize("find", ["gnu find", "no find", "find fails"])
async def test_prep_counts_what_scan_lists(tree: Path, tmp_path: Path, find: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """prep's count (GNU find where there is one, else the walk in Python) is the scan's."""
    import shutil

    from pipeline.commands import prep

    root = _special_tree(tree, tmp_path)
    if find == "gnu find":
        assert shutil.which("find"), "CI runs on Debian: GNU find must be there"
    elif find == "no find":
        monkeypatch.setattr(prep.shutil, "which", lambda name: None)
    else:
        monkeypatch.setattr(prep.shutil, "which", lambda name: "/bin/false")
    files = list(scan(root))
    assert await _count(root) == (len(files), sum(f.size for f in files))
    assert len(files) == len(EXPECTED) + 1


def test_non_utf8_file_name_is_skipped_not_fatal(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, b"sub"))
    with open(os.path.join(root, b"sub", b"bad\xff name.txt"), "wb") as f:
        f.write(b"x")
    _write(tmp_path / "a ok", b"")
    _write(tmp_path / "sub" / "z ok", b"")
    skipped: list[tuple[str, str]] = []
    got = [f.path for f in scan(tmp_path, lambda p, r: skipped.append((p, r)))]
    assert got == ["a ok", "sub/z ok"]  # the walk goes on past it
    [(path, reason)] = skipped
    assert os.fsencode(path) == b"sub/bad\xff name.txt"  # surrogate-escaped: the bytes back
    assert "not valid UTF-8" in reason and reason.endswith("rename it")


def test_non_utf8_directory_is_skipped_once(tmp_path: Path) -> None:
    bad = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")
    os.makedirs(os.path.join(bad, b"deeper"))
    for name in (b"one", b"two", b"deeper/three"):
        with open(os.path.join(bad, name), "wb") as f:
            f.write(b"x")
    skipped: list[tuple[str, str]] = []
    assert list(scan(tmp_path, lambda p, r: skipped.append((p, r)))) == []
    [(path, reason)] = skipped
    assert os.fsencode(path) == b"d\xe9j\xe0/"
    assert "not valid UTF-8" in reason and "nothing under it is copied" in reason


@pytest.mark.parametrize(("name", "why"), [
    ("a\nb", "control character '\\n'"),
    ("tab\there", "control character '\\t'"),
    ("back\\slash", "contains '\\'"),
    ("ends with dot.", "ends with '.'"),
    ("c1 \x85 char", "control character '\\x85'"),
])
def test_names_import_would_refuse_are_skipped(tmp_path: Path, name: str, why: str) -> None:
    _write(tmp_path / name, b"x")
    _write(tmp_path / "fine", b"y")
    skipped: list[tuple[str, str]] = []
    assert [f.path for f in scan(tmp_path, lambda p, r: skipped.append((p, r)))] == ["fine"]
    assert skipped == [(name, skipped[0][1])] and why in skipped[0][1], skipped


def test_blob_name_too_long_with_the_vdir_is_skipped(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 250) / ("e" * 250) / ("f" * 250)
    _write(deep / ("g" * 200), b"x")  # 953 characters: fits alone ...
    skipped: list[tuple[str, str]] = []
    assert len([f for f in scan(tmp_path)]) == 1
    vdir = "v" * 100 + "/"  # ... but not under a 101-character virtual directory
    assert list(scan(tmp_path, lambda p, r: skipped.append((p, r)), vdir)) == []
    [(path, reason)] = skipped
    assert path.endswith("g" * 200) and "1054 characters long" in reason
    skipped.clear()  # a directory no name under it could fit is named once, not per file
    vdir = "v" * 300 + "/"
    assert list(scan(tmp_path, lambda p, r: skipped.append((p, r)), vdir)) == []
    assert [p for p, _ in skipped] == ["d" * 250 + "/" + "e" * 250 + "/" + "f" * 250 + "/"]


def test_non_utf8_symlink_is_only_skipped(tmp_path: Path) -> None:
    os.symlink(b"target", os.path.join(os.fsencode(tmp_path), b"l\xff"))
    skipped: list[tuple[str, str]] = []
    assert list(scan(tmp_path, lambda p, r: skipped.append((p, r)))) == []
    assert skipped == [("l\\xff", "symbolic link (not followed)")]


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist; check the path") as ei:
        scan(tmp_path / "nope")  # raised at the call, before iteration
    assert "nope" in str(ei.value)


def test_root_not_a_directory(tmp_path: Path) -> None:
    _write(tmp_path / "f", b"")
    with pytest.raises(BadInput, match="not a directory"):
        scan(tmp_path / "f")


def test_root_may_be_a_symlink_to_a_directory(tree: Path, tmp_path: Path) -> None:
    os.symlink(tree, tmp_path / "via link")
    assert [f.path for f in scan(tmp_path / "via link")] == [p for p, _ in EXPECTED]


def _deny(monkeypatch: pytest.MonkeyPatch, fn: str, target: Path) -> None:
    """Make os.<fn> raise PermissionError for ``target`` (chmod does not stop root)."""
    real = getattr(os, fn)
    bad = os.fsencode(target)

    def fake(p, *a, **kw):  # type: ignore[no-untyped-def]
        if os.fsencode(p) == bad:
            raise PermissionError(13, "Permission denied", p)
        return real(p, *a, **kw)

    monkeypatch.setattr(scan_mod.os, fn, fake)


def test_unreadable_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, "scandir", tmp_path)
    with pytest.raises(BadInput, match="permission denied; grant read access") as ei:
        scan(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_unreadable_subdirectory_names_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, "scandir", tree / "dir a" / "deeper")
    with pytest.raises(BadInput) as ei:
        list(scan(tree))
    msg = str(ei.value)
    assert "dir a/deeper" in msg and "cannot list directory: permission denied" in msg


def _fail_lstat(monkeypatch: pytest.MonkeyPatch, target: Path, code: int) -> None:
    """Make the scan's lstat of ``target`` fail with errno ``code``."""
    bad = os.fsencode(target)
    real = os.lstat

    def fake(p, *a, **kw):  # type: ignore[no-untyped-def]
        if os.fsencode(p) == bad:
            raise OSError(code, os.strerror(code), p)
        return real(p, *a, **kw)

    monkeypatch.setattr(scan_mod.os, "lstat", fake)


def test_unstatable_file_names_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_lstat(monkeypatch, tree / "b.txt", errno.EACCES)
    with pytest.raises(BadInput, match=r"b\.txt'?: cannot stat: permission denied"):
        list(scan(tree))


def test_entry_vanishing_during_scan_is_skipped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_lstat(monkeypatch, tree / "b.txt", errno.ENOENT)
    skipped: list[tuple[str, str]] = []
    files = [f.path for f in scan(tree, lambda p, r: skipped.append((p, r)))]
    assert "b.txt" not in files and len(files) == len(EXPECTED) - 1
    assert skipped == [("b.txt", "vanished during scan")]


def test_large_directory_spans_lstat_batches(tmp_path: Path) -> None:
    names = [f"f{i:04d}" for i in range(2 * scan_mod._STAT_BATCH + 3)]
    for i, n in enumerate(names):
        (tmp_path / n).write_bytes(b"x" * i)
    files = list(scan(tmp_path))
    assert [(f.path, f.size) for f in files] == [(n, i) for i, n in enumerate(names)]


def test_walk_holds_only_the_current_path(tmp_path: Path) -> None:
    # A deep chain: the generator works one directory at a time (no recursion limit either).
    p = tmp_path
    for i in range(253):  # + the leaf: Azure's 254 path segments
        p = p / chr(ord("a") + i % 26)
    p.mkdir(parents=True)
    _write(p / "leaf", b"!")
    (f,) = scan(tmp_path)
    assert f.path.endswith("/s/leaf") and f.path.count("/") == 253
    (p / "d253").mkdir()  # one deeper: no blob name could hold it, and it is named once
    _write(p / "d253" / "leaf", b"!")
    skipped: list[tuple[str, str]] = []
    assert [g.path for g in scan(tmp_path, lambda q, r: skipped.append((q, r)))] == [f.path]
    assert [(q.count("/"), "more than 254 path segments" in r) for q, r in skipped] == [(254, True)]


def test_tree_deeper_than_path_max_is_bad_input(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The name rules skip such a tree long before (1024 characters); the walk's own limit
    # still holds for a long root with a name of up to 1024 four-byte characters.
    monkeypatch.setattr(scan_mod.names, "dir_problem", lambda *a: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # build it relative to the cwd: absolute paths this long fail
        for _ in range(20):
            os.mkdir("x" * 250)
            os.chdir("x" * 250)
        Path("f").write_bytes(b"")
    with pytest.raises(BadInput, match="File name too long") as ei:
        list(scan(tmp_path))
    assert "\n" not in str(ei.value)


def test_directory_vanishing_during_scan_is_skipped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.scandir
    gone = os.fsencode(tree / "dir a")

    def fake(p, *a, **kw):  # type: ignore[no-untyped-def]
        if os.fsencode(p) == gone:
            raise FileNotFoundError(2, "No such file or directory", p)
        return real(p, *a, **kw)

    monkeypatch.setattr(scan_mod.os, "scandir", fake)
    skipped: list[tuple[str, str]] = []
    files = [f.path for f in scan(tree, lambda p, r: skipped.append((p, r)))]
    assert [p for p, _ in EXPECTED if not p.startswith("dir a/")] == files
    assert skipped == [("dir a", "vanished during scan")]


def test_main_prints_the_totals(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pipeline.prep.scan ROOT``: what prep's progress counts, in its own process."""
    assert scan_mod.main([str(tree)]) == 0
    assert capsys.readouterr().out.split() == [str(n) for n in totals(tree)]
    assert scan_mod.main([str(tree / "missing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert scan_mod.main([]) == 2


def test_count_runs_as_a_module(tree: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline.prep.scan", str(tree)], check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == [str(n) for n in totals(tree)]
