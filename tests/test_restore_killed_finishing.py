"""A restore killed while it sets its directories' owners, modes and times (the last step):
the same command run again finishes it, exactly.  Before: the marker was removed before
that step, so the run again said "--target ... is not empty" and the tree stayed with
half its directories 0700 and root's; kept longer, ``check_resumed`` would have refused
the directories already of their snapshot owners.  Now the marker records the phase
("finishing") and such a resume accepts them (TARGET, 0700 and the restoring user's
until the very end, let nobody else in), while a symlink or a file where a directory
should be is refused as before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.backup.restore import MARKER
from pipeline.errors import EXIT_BAD_INPUT
from tests.backup_helpers import nobody_may_enter
from tests.conftest import FAST_ARGON, ROOT, require_tool
from tests.test_backup_metadata import NOBODY, as_nobody, backup, describe_meta
from tests.test_backup_repo import PASS

OTHER = 1000                      # the snapshot's owner of most entries (not root)
T0 = 1_600_000_000_123_456_789


def restore(home: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeline restore`` of the snapshot in HOME/repo into HOME/out, as root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_CONFIG_DIR": str(home / "config")}
    env.pop("PIPELINE_CRASH_AT", None)
    if crash_at is not None:
        env["PIPELINE_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "pipeline", "restore", "--from",
                           str(home / "repo"), "--passphrase-file", str(home / "pass"),
                           "--target", str(home / "out")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def backed_up(home: Path, src: Path) -> str:
    """``src`` backed up into a new repository HOME/repo (passphrase in HOME/pass)."""
    (home / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(home / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    ref = repo.snapshots()[-1].hex
    repo.close()
    return ref


def times(src: Path) -> None:
    """A distinct mtime on every entry, deepest first, ``src`` itself last."""
    for i, p in enumerate(sorted(src.rglob("*"), key=lambda q: (-len(q.parts), str(q)))):
        os.utime(p, ns=(T0 + i * 1_000_003, T0 + i * 1_000_003), follow_symlinks=False)
    os.utime(src, ns=(T0 - 7, T0 - 7))


def marker(out: Path) -> dict[str, str]:
    return json.loads((out / MARKER).read_text())


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh directory (0755: the user test's nobody may enter it)."""
    with nobody_may_enter("pipeline-restore-finishing-", "owners of another uid") as d:
        yield d


def other_owners_tree(src: Path) -> None:
    """Directories of uid 1000 (and one of root's) with distinct modes (0555, setgid, a
    default ACL over a file without one, 0711) and times; files of both owners, a large
    one, a hard link, a symlink and a fifo.  Deepest first the directories are a/b/c,
    a/b, d/e, then a, d: a kill after the third leaves a/b/c, a/b and d/e set."""
    for d in ("a/b/c", "d/e"):
        (src / d).mkdir(parents=True)
    files = {"top.txt": (b"top\n", 0o640, OTHER), "a/x.txt": (b"x\n" * 999, 0o644, OTHER),
             "a/b/y.txt": (b"y\n", 0o444, 0), "a/b/c/plain.txt": (b"plain\n", 0o640, OTHER),
             "a/b/c/big.bin": (os.urandom(3 << 20), 0o600, OTHER),
             "d/e/f.txt": (b"f\n", 0o600, OTHER)}
    for rel, (data, mode, uid) in files.items():
        (src / rel).write_bytes(data)
        os.chown(src / rel, uid, uid)
        os.chmod(src / rel, mode)
    os.link(src / "top.txt", src / "a" / "hard")
    os.symlink("x.txt", src / "a" / "link")
    os.chown(src / "a" / "link", OTHER, OTHER, follow_symlinks=False)
    os.mkfifo(src / "d" / "fifo", 0o640)
    require_tool("setfacl")
    subprocess.run(["setfacl", "-d", "-m", f"u:{OTHER}:rwx,g::r-x,o::---", "a/b/c"],
                   cwd=src, check=True)
    for name in ("plain.txt", "big.bin"):     # written before the default ACL: none
        assert "system.posix_acl_access" not in os.listxattr(src / "a/b/c" / name)
    for rel, mode, uid in (("a/b/c", 0o2770, OTHER), ("a/b", 0o555, OTHER),
                           ("d/e", 0o700, OTHER), ("a", 0o751, OTHER), ("d", 0o711, 0),
                           (".", 0o750, OTHER)):
        os.chown(src / rel, uid, uid)
        os.chmod(src / rel, mode)             # after chown, which may clear setgid
    times(src)


@pytest.mark.parametrize("after", [1, 3, 5])
def test_a_restore_killed_amid_its_directories_metadata_is_finished_by_the_same_command(
        home: Path, after: int) -> None:
    """As root, a tree whose directories are uid 1000's: kill -9 (fault point
    ``restore_dir_meta``) after the first, the third or the last of its five directories
    is set.  The marker is there and says "finishing", TARGET is still root's and 0700
    (after three: a/b is already 1000's and 0555, a still the restore's).  The same
    command again: exit 0, and every entry's type, mode, owner, mtime, xattrs (the
    default ACL too, and none inherited from it by the files written again), content and
    link count are the snapshot's."""
    src = home / "src"
    src.mkdir()
    other_owners_tree(src)
    ref = backed_up(home, src)
    out = home / "out"

    proc = restore(home, f"restore_dir_meta:{after}")
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert marker(out) == {"snapshot": ref, "phase": "finishing"}
    assert (os.stat(out).st_uid, os.stat(out).st_mode & 0o7777) == (0, 0o700)
    if after == 3:
        assert (os.stat(out / "a/b").st_uid, os.stat(out / "a/b").st_mode & 0o7777) == (
            OTHER, 0o555)
        assert (os.stat(out / "a").st_uid, os.stat(out / "a").st_mode & 0o7777) == (0, 0o700)

    proc = restore(home)
    assert proc.returncode == 0, proc.stderr
    warned = [x for x in proc.stderr.splitlines() if "warning" in x]
    assert [x for x in warned if "removed the stale lock" not in x] == [], proc.stderr
    assert describe_meta(out) == describe_meta(src)


def test_a_user_restore_killed_amid_its_directories_is_finished_too(home: Path) -> None:
    """As nobody (owners are not restored): directories already set 0000 and 0555 by the
    run killed are written in again (made 0700 first), then set again."""
    src = home / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "z.bin").write_bytes(os.urandom(2 << 20))
    (src / "a" / "b" / "y.txt").write_text("y\n")
    for rel, mode in (("a/b/c", 0o000), ("a/b", 0o555), ("a", 0o500), (".", 0o750)):
        os.chmod(src / rel, mode)
    times(src)
    backed_up(home, src)
    user = home / "user"                 # nobody's: the target's parent, the config dir
    for d in (user, user / "config"):
        d.mkdir()
    for p in [home / "repo", *(home / "repo").rglob("*"), home / "pass", user,
              user / "config"]:
        os.chown(p, NOBODY, NOBODY)
    out = user / "out"
    args = ["-m", "pipeline", "restore", "--from", str(home / "repo"), "--passphrase-file",
            str(home / "pass"), "--target", str(out)]
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setenv("PIPELINE_CONFIG_DIR", str(user / "config"))
        m.setenv("PIPELINE_CRASH_AT", "restore_dir_meta:2")
        proc = as_nobody(args, home / "python1")      # a scratch dir each: made there
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
        assert os.stat(out / "a/b/c").st_mode & 0o7777 == 0
        assert os.stat(out / "a/b").st_mode & 0o7777 == 0o555
        m.delenv("PIPELINE_CRASH_AT")
        proc = as_nobody(args, home / "python2")
    assert proc.returncode == 0, proc.stderr
    warned = [x for x in proc.stderr.splitlines() if "warning" in x]
    assert [x for x in warned if "lock" not in x] == [], proc.stderr    # the repo's lock: not ours
    want = describe_meta(src)
    got = describe_meta(out)
    assert set(got) == set(want)
    for rel, (mode, uid, gid, mtime, xattrs, extra, nlink) in got.items():
        assert (uid, gid) == (NOBODY, NOBODY), rel
        assert (mode, mtime, xattrs, extra, nlink) == (
            want[rel][0], *want[rel][3:]), rel


@pytest.mark.parametrize(("phase", "put", "what"), [
    ("finishing", "symlink", "a symlink"),
    ("finishing", "file", "not a directory"),
    (None, "symlink", "a symlink"),
    (None, "other", f"uid {OTHER}'s"),         # an older marker: no other owner accepted
    ("", "other", f"uid {OTHER}'s"),
])
def test_an_unfinished_target_with_something_else_where_a_directory_is_is_refused(
        home: Path, phase: str | None, put: str, what: str) -> None:
    """A marker naming the snapshot (finishing or not, or an older one with no phase) and
    a symlink (to a directory outside), a file or, unless finishing, a directory of
    another owner where the snapshot has directory ``a``: one line naming it, exit 2,
    nothing written (outside or in TARGET)."""
    src = home / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "y").write_bytes(os.urandom(100_000))
    ref = backed_up(home, src)
    outside = home / "outside"
    outside.mkdir()
    out = home / "out"
    out.mkdir(mode=0o700)
    text = json.dumps({"snapshot": ref} if phase is None else {"snapshot": ref,
                                                                 "phase": phase})
    (out / MARKER).write_text(text + "\n")
    if put == "symlink":
        (out / "a").symlink_to(outside)
    elif put == "file":
        (out / "a").write_text("not a directory\n")
    else:
        (out / "a").mkdir()
        os.chown(out / "a", OTHER, OTHER)
    before = describe_meta(out)
    proc = restore(home)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.splitlines() == [
        f"pipeline restore: --target {out}: 'a' is {what}, not the directory an "
        "unfinished restore made; something else wrote there: give a new --target"]
    assert list(outside.iterdir()) == []
    assert describe_meta(out) == before
