"""Review 2 of restore's target: nothing is written outside --target through a symlink
someone placed there, and what the target's filesystem cannot hold (a name too long,
a path past PATH_MAX, a file larger than it allows) is a warning naming the entry while
every other file is restored (exit 1), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.backup.restore import MARKER
from pipeline.errors import EXIT_BAD_INPUT, EXIT_WARNING
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS, backup
from tests.test_review2_hostile_tree import PAYLOAD, craft, d, f


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", "restore", *args, "--from",
                           str(tmp / "repo"), "--passphrase-file", str(tmp / "pass")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp / "config")})


def new_repo(tmp: Path) -> Repository:
    (tmp / "pass").write_bytes(PASS + b"\n")
    return Repository.init(DirBackend(tmp / "repo"), PASS, FAST_ARGON)


def backed_up(tmp: Path, src: Path) -> str:
    repo = new_repo(tmp)
    trio.run(backup, repo, src, False)
    ref = repo.snapshots()[-1].hex
    repo.close()
    return ref


def listing(top: Path) -> list[str]:
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*"))


def test_an_unfinished_target_with_a_symlink_placed_in_it_is_refused(tmp_path: Path) -> None:
    """Whoever can write in --target marks it unfinished (the marker names the
    snapshot: its id is in the storage listing) and puts a symlink where the snapshot
    has a directory.  Before: the same restore 'resumed' and wrote the directory's files
    where the symlink pointed (exit 0; outside: b, b/y, x).  Now: one line naming the
    entry, exit 2, nothing written outside."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "x").write_text("x\n")
    (src / "a" / "b" / "y").write_bytes(os.urandom(100_000))
    ref = backed_up(tmp_path, src)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / MARKER).write_text(json.dumps({"snapshot": ref}) + "\n")
    (target / "a").symlink_to(outside)
    proc = cli(tmp_path, "--target", str(target))
    assert listing(outside) == []
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.splitlines() == [
        f"pipeline restore: --target {target}: 'a' is a symlink, not the directory an "
        "unfinished restore made; something else wrote there: give a new --target"]


def test_a_target_another_user_owns_is_refused(tmp_path: Path) -> None:
    """An empty --target owned by someone else (run as root: nobody's): its owner could
    put a symlink in it while the restore runs.  Refused before anything is written;
    a target of the restoring user's is made 0700 until the end (then the snapshot's
    mode)."""
    assert os.geteuid() == 0, "this test needs root (a directory of another user's)"
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x\n")
    os.chmod(src, 0o750)
    backed_up(tmp_path, src)
    target = tmp_path / "target"
    target.mkdir()
    os.chown(target, 65534, 65534)
    proc = cli(tmp_path, "--target", str(target))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.splitlines() == [
        f"pipeline restore: --target {target} belongs to uid 65534, not to this user: its "
        "owner could redirect the restore through a symlink; give a new path or a directory "
        "of yours"]
    assert listing(target) == []
    os.chown(target, 0, 0)
    os.chmod(target, 0o777)
    assert cli(tmp_path, "--target", str(target)).returncode == 0
    assert (target / "x").read_text() == "x\n" and target.stat().st_mode & 0o777 == 0o750


def test_a_path_too_long_for_this_target_is_a_warning_and_the_rest_restores(
        tmp_path: Path) -> None:
    """A real backup of a deep tree (paths up to PATH_MAX) restored under a longer
    --target: past PATH_MAX there.  Before: a traceback (ENAMETOOLONG), exit 70.  Now the
    deep directory is one warning (a shorter --target may hold it), top.txt restored."""
    src = tmp_path / "s"
    src.mkdir()
    deep = src
    while len(str(deep)) + len("/" + "d" * 200 + "/deep.txt") < 4096:   # PATH_MAX here,
        deep = deep / ("d" * 200)       # whatever the temporary directory's length (xdist's
        deep.mkdir()                    # is longer)
    (deep / "deep.txt").write_text("deep\n")
    (src / "top.txt").write_text("top\n")
    backed_up(tmp_path, src)
    target = tmp_path / ("T" * 250) / "t"
    target.parent.mkdir()
    proc = cli(tmp_path, "--target", str(target))
    assert proc.returncode == EXIT_WARNING, proc.stderr
    warning = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
    assert len(warning) == 1 and warning[0].startswith(f"warning: {'d' * 200}/{'d' * 99}")
    assert ": not restored: its path under --target would be " in warning[0]
    assert warning[0].endswith("a shorter --target may hold it (nor anything in it)")
    assert sorted(os.listdir(target)) == ["d" * 200, "top.txt"]
    assert (target / "top.txt").read_text() == "top\n"
    assert not [p for p in target.rglob("*") if p.name == "deep.txt"]


def test_what_the_filesystem_cannot_hold_is_a_warning_each(tmp_path: Path) -> None:
    """A name of 300 bytes (a source on a filesystem that allows it) and a file of 2**62
    bytes (holes, then one chunk: larger than ext4/tmpfs hold): before, a traceback
    (ENAMETOOLONG at the rename, EFBIG at the skeleton's ftruncate), exit 70.  Now one
    warning each, the other file restored."""
    repo = new_repo(tmp_path)
    big = 2 ** 62
    huge = {"type": "file", "path": "huge", "mode": 0o644, "mtime_ns": 0, "size": big,
            "ctime_ns": 0, "inode": 2, "content": [[None, big - len(PAYLOAD)],
                                                   [repo.crypto.chunk_id(PAYLOAD).hex(),
                                                    len(PAYLOAD)]]}
    craft(repo, [d("."), huge, f(repo, "n" * 300, PAYLOAD), f(repo, "ok", PAYLOAD)], [PAYLOAD])
    repo.close()
    target = tmp_path / "target"
    proc = cli(tmp_path, "--target", str(target))
    assert proc.returncode == EXIT_WARNING, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith("warning: ")] == [
        f"warning: huge: not restored: {big} bytes, more than one file on --target's "
        "filesystem can hold",
        f"warning: {'n' * 300}: not restored: its name is 300 bytes, more than 255, the most "
        "--target's filesystem allows"]
    assert sorted(os.listdir(target)) == ["ok"]
    assert (target / "ok").read_bytes() == PAYLOAD
    assert fmt.ROOT == "."


def test_a_file_named_as_restores_marker_is_a_warning_not_lost_silently(tmp_path: Path) -> None:
    """A source that once was an unfinished restore's target, backed up with its marker.
    Before: that file was restored over the marker, then removed with it at the end:
    exit 0, the file gone without a word.  Now a warning naming it (exit 1)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / MARKER).write_text('{"snapshot": "old"}\n')
    (src / "x").write_text("x\n")
    backed_up(tmp_path, src)
    target = tmp_path / "target"
    proc = cli(tmp_path, "--target", str(target))
    assert proc.returncode == EXIT_WARNING, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith("warning: ")] == [
        f"warning: {MARKER}: not restored: restore keeps this name for its own marker (an "
        "unfinished restore's, backed up)"]
    assert sorted(os.listdir(target)) == ["x"]
