"""Review 2: file names are their owners' choice.  Any bytes but '/' and NUL round trip
through backup and restore exactly; and a name holding a newline or an escape sequence
is printed escaped by check and restore (one line each), never raw to the terminal."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK
from tests.conftest import FAST_ARGON
from tests.test_backup_repo import PASS, backup
from tests.test_review2_hostile_tree import PAYLOAD, cli, craft, d, f

NAMES = [b"bad\xff\nname", b"\x01ctl", b"tab\tname", b"\\backslash", b'quote"',
         b"\xed\xa0\x80surrogate", b"-", b" lead", b"trail ", b"\x1b[31mred"]


def tree(root: bytes) -> dict[bytes, tuple[int, bytes | None, int]]:
    """Every entry by its name's bytes: mode, content or link target, link count."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = (os.readlink(p) if os.path.islink(p) else
                    open(p, "rb").read() if os.path.isfile(p) else None)  # noqa: SIM115
            out[os.path.relpath(p, root)] = (st.st_mode, body, st.st_nlink)
    return out


def test_any_name_round_trips_byte_for_byte(tmp_path: Path) -> None:
    """Held: names with a newline, invalid UTF-8, control bytes, an encoded surrogate;
    a directory of such a name, a hard link and a symlink (target bytes too)."""
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    for n in NAMES:
        with open(os.path.join(src, n), "wb") as fh:
            fh.write(n * 3)
    os.mkdir(os.path.join(src, b"dir\xfe\n"))
    with open(os.path.join(src, b"dir\xfe\n", b"in\xff"), "wb") as fh:
        fh.write(b"inside")
    os.link(os.path.join(src, NAMES[0]), os.path.join(src, b"hard\x80link"))
    os.symlink(b"target\xff\nweird", os.path.join(src, b"sym\xff"))
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, Path(os.fsdecode(src)), False)
    repo.close()
    target = tmp_path / "target"
    assert cli(tmp_path, "restore", "--target", str(target)).returncode == EXIT_OK
    assert tree(os.fsencode(target)) == tree(src)
    assert len(tree(src)) == len(NAMES) + 4


def test_a_name_with_a_newline_and_an_escape_is_one_escaped_line(tmp_path: Path) -> None:
    """A file named 'evil\\n\\x1b[31mFAKE: all good\\xff' whose chunk is in no index file.
    Before: check and restore printed the name raw: the newline split the line and the
    rest ('FAKE: all good', in red) stood as a line of its own."""
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    evil = "evil\n\x1b[31mFAKE: all good\udcff"
    shown = "evil\\n\\x1b[31mFAKE: all good\\xff"
    lost = {**f(repo, evil, PAYLOAD), "content": [["ab" * 32, len(PAYLOAD)]]}
    ref = craft(repo, [d("."), lost, f(repo, "ok", PAYLOAD)], [PAYLOAD])
    repo.close()
    proc = cli(tmp_path, "check")
    assert proc.returncode == EXIT_INTEGRITY
    assert "\x1b" not in proc.stderr
    assert proc.stderr.splitlines()[0] == (f"pipeline check: snapshot {ref.hex[:16]}: {shown}: "
                                           f"chunk {'ab' * 8} is in no index file")
    proc = cli(tmp_path, "restore", "--target", str(tmp_path / "target"))
    assert proc.returncode == EXIT_INTEGRITY
    assert "\x1b" not in proc.stderr
    assert proc.stderr.splitlines()[0].startswith(
        f"pipeline restore: {shown}: chunk 1 of 1 unreadable: ")
    assert len(proc.stderr.splitlines()) == 2
