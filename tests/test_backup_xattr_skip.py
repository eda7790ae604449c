"""The no-change walk leaves unlisted the xattrs of a file whose ctime has not moved, where
the tree cache says this user's walk listed its parent entry's (``walk.matched``,
``TreeCache.listed``).  Held here with the real listxattr counted: a run whose parent
came from the repository, from another user's listing, or from a run that failed to list
one lists every entry; after a listed run only the directories are listed; a real xattr
change (setxattr, removexattr: both move the ctime) is listed and makes a new tree line;
a failure to list marks that run's entries for listing again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from pipeline import progress
from pipeline.backup import archive, cache, walk
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, hostname
from tests.conftest import FAST_ARGON
from tests.test_backup_repo import PASS, backup

FILES = 12


def _tree(src: Path) -> Path:
    (src / "d" / "e").mkdir(parents=True)
    for i in range(FILES):
        (src / ("d" if i % 2 else "d/e") / f"f{i:02d}").write_bytes(b"x" * i)
    os.setxattr(src / "d" / "f01", "user.kept", b"as it was")
    os.setxattr(src / "d" / "e", "user.dir", b"a directory's")
    return src.resolve()


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, Repository]:
    src = _tree(tmp_path / "src")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    return src, repo


def _cache(tmp_path: Path, repo: Repository) -> cache.TreeCache:
    tc = cache.for_repository(repo.config.repo_id, repo.crypto.keys.id_key,
                              tmp_path / "cache")
    assert tc is not None
    return tc


def _listed(monkeypatch: pytest.MonkeyPatch, fail: str = "") -> list[str]:
    """The paths os.listxattr is called for from now on (``fail``: that one's EIO)."""
    calls: list[str] = []
    real = os.listxattr

    def spy(path: bytes, *, follow_symlinks: bool = True) -> list[str]:
        name = os.fsdecode(path)
        calls.append(name)
        if fail and name.endswith(fail):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(walk.os, "listxattr", spy)
    return calls


def _run(repo: Repository, src: Path, tc: cache.TreeCache, warnings: list[str] | None = None
         ) -> archive.Begun:
    """One backup: begin (the inline walk), then the snapshot (inline, else the pipeline)."""
    warned: list[str] = [] if warnings is None else warnings
    stats = progress.Stats()
    parent = archive.find_parent(repo, str(src), hostname())
    begun = archive.begin(repo, src, stats, warned.append, parent, cache=tc)
    if begun.done:
        archive.finish_inline(repo, begun)
    else:
        trio.run(lambda: archive.run_backup(repo, src, stats, warned.append, begun=begun,
                                            cache=tc))
    if warnings is None:
        assert warned == []
    return begun


def _dirs(src: Path) -> set[str]:
    return {str(src), str(src / "d"), str(src / "d" / "e")}


def test_files_listed_once_then_only_when_their_ctime_moves(
        seeded: tuple[Path, Repository], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src, repo = seeded
    calls = _listed(monkeypatch)
    first = _run(repo, src, _cache(tmp_path, repo))     # parent from the repository
    assert len(calls) == FILES + 3 and first.done
    calls.clear()
    second = _run(repo, src, _cache(tmp_path, repo))    # from this user's listing
    assert set(calls) == _dirs(src) and len(calls) == 3
    assert second.done and second.tree.ids == first.tree.ids
    # setxattr and removexattr move the ctime: those two files are listed, new lines
    os.setxattr(src / "d" / "f03", "user.new", b"1")
    os.removexattr(src / "d" / "f01", "user.kept")
    calls.clear()
    third = _run(repo, src, _cache(tmp_path, repo))
    assert set(calls) == _dirs(src) | {str(src / "d" / "f03"), str(src / "d" / "f01")}
    assert third.done and third.tree.ids != second.tree.ids
    nodes = {n.path: n for n in repo.tree(repo.manifest(repo.snapshots()[-1]))}
    assert nodes["d/f03"].xattrs == [("user.new", b"1")] and nodes["d/f01"].xattrs == []
    assert nodes["d/e"].xattrs == [("user.dir", b"a directory's")]
    calls.clear()
    _run(repo, src, _cache(tmp_path, repo))            # and listed so again
    assert set(calls) == _dirs(src)


def test_another_users_listing_is_listed_again(
        seeded: tuple[Path, Repository], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry listed by another uid, or without CAP_SYS_ADMIN (trusted.* unseen), shows
    what that one could list: every file is listed again, then marked as ours."""
    src, repo = seeded
    _run(repo, src, _cache(tmp_path, repo))
    monkeypatch.setattr(cache, "lister", lambda: "4321:0:user.,security.,trusted.")
    calls = _listed(monkeypatch)
    _run(repo, src, _cache(tmp_path, repo))
    assert len(calls) == FILES + 3
    calls.clear()
    _run(repo, src, _cache(tmp_path, repo))
    assert set(calls) == _dirs(src)


def test_a_failure_to_list_marks_the_run_for_listing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks a run that failed to list an xattr writes are not marked listed: the
    next run lists their entries again (a chunk per line here, so exactly the one file's;
    the chunks are cut by line hashes otherwise)."""
    monkeypatch.setattr(fmt, "TREE_CUT_MASK", 0)
    src = _tree(tmp_path / "src")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    _run(repo, src, _cache(tmp_path, repo))             # every chunk listed
    real = os.listxattr
    os.utime(src / "d" / "f05")                         # its ctime moves: listed, fails
    calls = _listed(monkeypatch, fail="d/f05")
    warnings: list[str] = []
    _run(repo, src, _cache(tmp_path, repo), warnings)
    assert warnings == ["d/f05: cannot list extended attributes (Input/output error); "
                        "backed up without them"]
    assert set(calls) == _dirs(src) | {str(src / "d" / "f05")}
    monkeypatch.setattr(walk.os, "listxattr", real)
    calls = _listed(monkeypatch)
    _run(repo, src, _cache(tmp_path, repo))             # the failed run's line: again
    assert set(calls) == _dirs(src) | {str(src / "d" / "f05")}
    calls.clear()
    _run(repo, src, _cache(tmp_path, repo))             # now listed without a failure
    assert set(calls) == _dirs(src)
