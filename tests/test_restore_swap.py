"""Restore as root against an attacker who swaps directories while it runs (TOCTOU).

The attacker is `nobody`, who can write the directory above --target (or, standing in
for a filesystem that ignores modes, the test puts the swap inside --target itself).
Each swap puts a symlink to a directory outside (think /etc) where restore is laying
out a directory.  Restore writes relative to directory fds (backup/beneath.py), so
nothing outside may ever be created or changed: the outside directory's checksums are
the same after, and no entry of root's appears there or in the attacker's directory.
What a swap costs: a directory replaced inside --target is one warning naming it, the
rest restores (exit 1); --target itself moved away is restored in full where it went,
and the warning says where.

Deterministic where it can be: the swap is made at the moment restore has made
``dir`` and not yet opened it (os.mkdir wrapped in-process: a fault point's SIGSTOP
sent from a worker thread does not stop that thread at once).  One test races a real
loop of rename exchanges against a CLI restore of 2,000 files; its assertions hold
however the race falls.  Run on HEAD 81bd0ef's restore (path by path), all four wrote
into the outside directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from pipeline import cli, progress
from pipeline.backup import beneath
from pipeline.backup import restore as restore_mod
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import MARKER, run_restore
from pipeline.errors import EXIT_OK, EXIT_WARNING, BadInput
from tests.backup_helpers import nobody_may_enter
from tests.conftest import ROOT
from tests.test_backup_repo import PASS
from tests.test_review2_restore import backed_up

NOBODY = 65534

LIBC = ctypes.CDLL(None, use_errno=True)


def as_nobody(fn: Callable[[], object]) -> int:
    """Fork; the child becomes nobody (uid, gid, no groups) and runs ``fn``; returns the
    child's pid (``wait`` it)."""
    pid = os.fork()
    if pid == 0:                                 # the child: nothing returns from here
        code = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait(pid: int) -> None:
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): ``a`` and ``b`` swap places (both there throughout)."""
    if LIBC.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2", str(a))


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A directory nobody may enter (pytest's tmp is root's alone)."""
    with nobody_may_enter("pipeline-restore-swap-", "restore as root, nobody attacking") as d:
        yield d


def tree(top: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ``top``: (mode, uid, size, sha256 or link target), by path."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            what = os.readlink(p) if p.is_symlink() else (
                hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            out[p.relative_to(top).as_posix()] = (st.st_mode, st.st_uid, st.st_size, what)
    return out


def outside(tmp: Path) -> Path:
    """A root-owned directory restore must never write (it plays /etc)."""
    out = tmp / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "passwd").write_text("root:x:0:0\n")
    (out / "sub" / "keep").write_bytes(os.urandom(5000))
    return out


def source(tmp: Path, dirs: int, files: int) -> Path:
    """a.txt, dir/ (DIRS subdirectories of FILES small files, a large file, a symlink, a
    fifo, a hard link), then z/ with a file and another hard link of dir/big: what comes
    after ``dir`` must restore too."""
    src = tmp / "src"
    (src / "dir").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    for d in range(dirs):
        sub = src / "dir" / f"sub{d:02}"
        sub.mkdir()
        for i in range(files):
            (sub / f"f{i:04}").write_bytes(f"{d}/{i}\n".encode() * (i % 7 + 1))
    (src / "dir" / "big").write_bytes(os.urandom(3 << 20))
    (src / "dir" / "link").symlink_to("big")
    os.mkfifo(src / "dir" / "fifo")
    os.link(src / "dir" / "big", src / "dir" / "hard")
    (src / "z").mkdir()
    (src / "z" / "last").write_text("last\n")
    os.link(src / "dir" / "big", src / "z" / "hard")
    return src


def attacker_parent(tmp: Path, out: Path) -> tuple[Path, Path]:
    """The directory above --target, nobody's, and nobody's own directory there holding
    ``dir -> OUT``."""
    parent = tmp / "parent"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)
    evil = parent / "evil"

    def plant() -> None:
        evil.mkdir()
        (evil / "dir").symlink_to(out)

    wait(as_nobody(plant))
    return parent, evil


def rooted(top: Path) -> list[str]:
    """Entries under ``top`` that belong to root (the attacker's are nobody's)."""
    return sorted(k for k, v in tree(top).items() if v[1] == 0)


@contextlib.contextmanager
def after_mkdir_of(name: bytes, attack: Callable[[], None]) -> Iterator[None]:
    """``attack()`` right after restore's mkdir of a directory named ``name``."""
    real_mkdir = os.mkdir
    fired: list[bool] = []

    def mkdir(path, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        real_mkdir(path, mode, dir_fd=dir_fd)
        if os.path.basename(os.fsencode(path)) == name and not fired:
            fired.append(True)
            attack()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", mkdir)
        yield
    assert fired == [True]


def after_mkdir_of_dir(attack: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
    """``attack()`` right after restore's mkdir of ``dir``, before it opens it: os.mkdir
    wrapped (HEAD's os.makedirs calls it too)."""
    return after_mkdir_of(b"dir", attack)


def restore_in_process(tmp: Path, target: Path, attack: Callable[[], None]) -> list[str]:
    """Restore the latest snapshot into ``target`` here, ``attack`` after the mkdir of
    ``dir``; returns the warnings."""
    repo = Repository.open(DirBackend(tmp / "repo"), PASS, str(tmp / "pass"))
    repo.load_index()
    warnings: list[str] = []
    try:
        with after_mkdir_of_dir(attack):
            trio.run(run_restore, repo, find_snapshot(repo.snapshots(), None), target,
                     progress.Stats(), 2, warnings.append)
    finally:
        repo.close()
    return warnings


def test_target_swapped_from_its_parent_after_mkdir_writes_nothing_outside(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nobody can write --target's parent.  Right after restore made TARGET/dir, nobody
    renames TARGET away and puts in its place a directory of theirs holding
    ``dir -> OUT``.  Before: root's restore went on by path: OUT/sub00/... written.
    Now: every write is relative to TARGET's fd: the whole snapshot lands in the
    directory where nobody moved it, OUT and nobody's directory are untouched, and one
    warning says where the restore went."""
    src, out, before = arranged(tmp, 3, 20)
    parent, evil = attacker_parent(tmp, out)
    target, moved = parent / "target", parent / "moved"

    def attack() -> None:
        def swap() -> None:
            target.rename(moved)
            evil.rename(target)
        wait(as_nobody(swap))

    warnings = restore_in_process(tmp, target, attack)
    assert tree(out) == before
    assert rooted(target) == [] and sorted(tree(target)) == ["dir"]
    assert sorted(os.listdir(parent)) == ["moved", "target"]
    assert tree(moved) == tree(src)
    assert warnings == [
        f"--target {target} was moved or replaced while the restore ran (whoever can "
        f"write {parent} can do that): nothing was written through what is there now; "
        f"the directory restored into is at {moved}"]


def arranged(tmp: Path, dirs: int, files: int) -> tuple[Path, Path, dict[str, object]]:
    """A source of ``dirs`` x ``files`` backed up into tmp/repo, and OUT (standing for
    /etc) with what it holds before the restore: (source, OUT, OUT's tree)."""
    src = source(tmp, dirs, files)
    backed_up(tmp, src)
    out = outside(tmp)
    return src, out, tree(out)


def dir_to_symlink(made: Path, out: Path) -> None:
    """The attack: the directory restore just made, replaced by a symlink to ``out``."""
    os.rmdir(made)
    os.symlink(out, made)


def test_a_directory_replaced_by_a_symlink_inside_the_target_is_one_warning(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after restore made TARGET/dir, it is replaced by ``dir -> OUT`` (what
    someone who could write inside --target would do; the test does it as root).
    Before: dir's whole subtree was written into OUT.  Now: ``dir`` is one warning
    naming it, nothing is written through it, and a.txt, z/ and the rest restore."""
    src, out, before = arranged(tmp, 3, 20)
    target = tmp / "target"

    attack = functools.partial(dir_to_symlink, target / "dir", out)
    warnings = restore_in_process(tmp, target, attack)
    assert tree(out) == before
    assert warnings == [
        "dir: not restored: it was replaced while the restore ran (a symlink); nothing was "
        "written through it (nor anything in it)",
        "z/hard: not restored: a hard link of dir/big, which was not restored (see above)"]
    restored = tree(target)
    assert restored.pop("dir")[3] == str(out)
    assert restored == {k: v for k, v in tree(src).items()
                        if not k.startswith("dir") and k != "z/hard"}


def popen(tmp: Path, target: Path, crash_at: str) -> subprocess.Popen[bytes]:
    """``pipeline restore`` as root, stopped (SIGSTOP) at fault point ``crash_at``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "restore", "--from", str(tmp / "repo"),
         "--passphrase-file", str(tmp / "pass"), "--target", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp / "config"),
             "PIPELINE_CRASH_AT": crash_at})


def stopped_or_exit(proc: subprocess.Popen[bytes]) -> int | None:
    """Until ``proc`` stops itself at its fault point: None; its exit code if it exited
    first (HEAD's restore has no such point)."""
    _pid, status = os.waitpid(proc.pid, os.WUNTRACED)
    return None if os.WIFSTOPPED(status) else os.waitstatus_to_exitcode(status)


def resume(proc: subprocess.Popen[bytes], code: int | None) -> tuple[int, list[str]]:
    """``proc`` continued (unless it exited already): its exit code and stderr lines."""
    assert proc.stderr is not None and proc.stdout is not None
    if code is None:
        os.kill(proc.pid, signal.SIGCONT)
        code = os.waitstatus_to_exitcode(os.waitpid(proc.pid, 0)[1])
    err = proc.stderr.read().decode().splitlines()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = code
    return code, err


def test_cli_a_directory_swapped_between_mkdir_and_open_is_exit_1_not_a_traceback(
        tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """The command (cli.main, as ``pipeline restore`` runs it) with ``dir`` swapped for
    ``dir -> OUT`` between its mkdir and its open: one warning line naming it, exit 1,
    OUT untouched, the rest restored."""
    src, out, before = arranged(tmp, 2, 10)
    target = tmp / "target"

    attack = functools.partial(dir_to_symlink, target / "dir", out)
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp / "config"))
    with after_mkdir_of_dir(attack):
        code = cli.main(["restore", "--from", str(tmp / "repo"), "--passphrase-file",
                         str(tmp / "pass"), "--target", str(target)])
    err = capsys.readouterr().err.splitlines()
    assert code == EXIT_WARNING, err
    assert err[:2] == [
        "warning: dir: not restored: it was replaced while the restore ran (a symlink); "
        "nothing was written through it (nor anything in it)",
        "warning: z/hard: not restored: a hard link of dir/big, which was not restored "
        "(see above)"]
    assert err[2].startswith("restored 7 B in 2 files") and len(err) == 4, err
    assert tree(out) == before
    assert sorted(tree(target)) == ["a.txt", "dir", "z", "z/last"]


def test_racing_swaps_of_the_target_write_nothing_outside(tmp: Path) -> None:
    """nobody exchanges --target with their directory (``dir -> OUT`` in it) in a loop of
    renameat2(RENAME_EXCHANGE) for as long as root's CLI restore of 2,000 files in 20
    directories writes.  Before: files landed in OUT (or the restore died midway).  Now:
    OUT and nobody's directory are untouched, and the restore is complete and exact,
    exit 0 (the restore is held at ``restore_finished`` until the racer stopped, with
    --target back in its place)."""
    src, out, before = arranged(tmp, 20, 100)
    parent, evil = attacker_parent(tmp, out)
    target, stop = parent / "target", tmp / "stop"
    proc = popen(tmp, target, "restore_finished:1:STOP")
    ready_r, ready_w = os.pipe()
    count_r, count_w = os.pipe()

    def race() -> None:          # nobody: exchange pairs until STOP (TARGET back then)
        os.write(ready_w, b"r")
        pairs = 0
        while not stop.exists():
            exchange(target, evil)
            exchange(target, evil)
            pairs += 1
        os.write(count_w, str(pairs).encode())

    racer, exited = None, None
    try:
        while not (target / MARKER).exists():    # claimed: only then is there one to swap
            assert proc.poll() is None, proc.communicate()
            os.sched_yield()
        racer = as_nobody(race)
        assert os.read(ready_r, 1) == b"r"
        exited = stopped_or_exit(proc)
    finally:
        stop.touch()
        if racer is not None:
            wait(racer)
        code, err = resume(proc, exited)
    os.close(count_w)
    print(f"racer: {os.read(count_r, 100).decode()} pairs of exchanges")  # luck: not asserted
    assert tree(out) == before
    assert rooted(evil) == [] and sorted(tree(evil)) == ["dir"]
    assert (exited, code) == (None, EXIT_OK), err
    assert [x for x in err if "warning" in x or "Error" in x] == [], err
    assert tree(target) == tree(src)


def test_a_directory_fd_evicted_is_reopened_only_as_the_inode_restore_made(
        tmp: Path) -> None:
    """Dirs keeps KEEP fds beyond those in use; one evicted is opened again from its
    nearest open ancestor and must be the directory it made, not one renamed into its
    place (a symlink there: also refused)."""
    root = os.open(tmp, beneath.OPEN_DIR)
    dirs = beneath.Dirs(root)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(beneath, "KEEP", 0)
            for rel in (b"a", b"a/b", b"a/c"):
                dirs.make(rel)
                dirs.unpin(rel)
            os.mkdir(tmp / "other")
            (tmp / "a" / "b").rename(tmp / "b.moved")
            (tmp / "other").rename(tmp / "a" / "b")
            (tmp / "a" / "c").rename(tmp / "c.moved")
            (tmp / "a" / "c").symlink_to(tmp / "c.moved")
            with pytest.raises(beneath.Replaced) as b:
                dirs.pin(b"a/b")
            with pytest.raises(beneath.Replaced) as c:
                dirs.pin(b"a/c")
            fd = dirs.pin(b"a")
            assert os.fstat(fd).st_ino == (tmp / "a").stat().st_ino
            dirs.unpin(b"a")
    finally:
        dirs.close()
        os.close(root)
    assert (b.value.rel, b.value.why) == (b"a/b", "another directory than the one restore made")
    assert (c.value.rel, c.value.why) == (b"a/c", "a symlink")


def test_a_tree_of_more_directories_than_fds_kept_restores_exactly(tmp: Path) -> None:
    """KEEP at 2: nearly every directory is evicted and opened again (fetch, finish);
    the restore is the same, byte for byte, owner, mode and all."""
    src = source(tmp, 30, 3)
    backed_up(tmp, src)
    target = tmp / "target"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(beneath, "KEEP", 2)
        repo = Repository.open(DirBackend(tmp / "repo"), PASS, str(tmp / "pass"))
        repo.load_index()
        warnings: list[str] = []
        try:
            trio.run(run_restore, repo, find_snapshot(repo.snapshots(), None), target,
                     progress.Stats(), 2, warnings.append)
        finally:
            repo.close()
    assert warnings == []
    assert tree(target) == tree(src)
    assert [os.stat(p).st_mtime_ns for p in (target / "dir", target / "z")] == [
        os.stat(p).st_mtime_ns for p in (src / "dir", src / "z")]


@pytest.mark.parametrize("planted", [False, True])
def test_a_target_swapped_right_after_restore_made_it(tmp: Path, planted: bool) -> None:
    """nobody can write --target's parent.  Right after restore's mkdir of a new
    --target, nobody puts a directory of theirs (0777) in its place.  Empty: restore
    takes it as root's, 0700 while it writes (nobody can no longer write in it), and the
    snapshot restores exactly, owned by root.  With something of nobody's in it (``dir ->
    OUT``): refused as not empty, one line, and nothing is written through it."""
    src, out, before = arranged(tmp, 2, 5)
    parent, _evil = attacker_parent(tmp, out)
    target, moved = parent / "target", parent / "moved"
    modes: list[tuple[int, int]] = []

    def attack() -> None:
        def swap() -> None:
            target.rename(moved)
            target.mkdir()
            target.chmod(0o777)
            if planted:
                (target / "dir").symlink_to(out)
        wait(as_nobody(swap))

    repo = Repository.open(DirBackend(tmp / "repo"), PASS, str(tmp / "pass"))
    repo.load_index()
    warnings: list[str] = []
    real_own = restore_mod._own

    def own(*args):  # type: ignore[no-untyped-def]
        real_own(*args)
        st = os.stat(target)
        modes.append((st.st_uid, st.st_mode & 0o777))  # as the restore goes on writing

    try:
        with after_mkdir_of(b"target", attack), pytest.MonkeyPatch.context() as mp:
            mp.setattr(restore_mod, "_own", own)
            if planted:
                with pytest.raises(BadInput, match="is not empty"):
                    trio.run(run_restore, repo, find_snapshot(repo.snapshots(), None),
                             target, progress.Stats(), 2, warnings.append)
            else:
                trio.run(run_restore, repo, find_snapshot(repo.snapshots(), None), target,
                         progress.Stats(), 2, warnings.append)
    finally:
        repo.close()
    assert tree(out) == before
    assert modes == [(0, 0o700)]            # root's, and closed to nobody, before a write
    if planted:
        assert sorted(tree(target)) == ["dir"] and (target / "dir").is_symlink()
        return
    assert warnings == []
    restored = tree(target)
    assert restored == tree(src)
    assert os.stat(target).st_uid == 0
