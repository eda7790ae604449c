"""Review 2: a snapshot file's name holds its time in clear (names sort without the
key).  Anyone who can write to the storage, without the key, can copy an old snapshot
under a newer name: 'the latest' must not then restore old data as if it were new."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK
from tests.conftest import FAST_ARGON
from tests.test_backup_repo import PASS, backup
from tests.test_review2_hostile_tree import cli


def test_an_old_snapshot_copied_under_a_newer_name_is_not_the_latest(tmp_path: Path) -> None:
    """Before: `restore` (the latest) restored the old snapshot's files, exit 0, and
    `check` found nothing.  Now restore refuses it in one line (exit 4) and check names
    the file; the real latest still restores by its id."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("old\n")
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src, False)
    (src / "data.txt").write_text("new\n")
    trio.run(backup, repo, src, False)
    old, new = repo.snapshots()
    repo.close()
    copy = f"{fmt.SNAPSHOTS}20991231T000000000000Z-{old.hex}"
    shutil.copy(tmp_path / "repo" / old.name, tmp_path / "repo" / copy)

    target = tmp_path / "t1"
    proc = cli(tmp_path, "restore", "--target", str(target))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert proc.stderr.splitlines() == [
        f"pipeline restore: backup repository: snapshot {old.hex[:16]}: its name says "
        f"2099-12-31T00:00:00+00:00 but it was taken at {old.time.isoformat()} (an older "
        f"snapshot copied under a newer name: remove {copy}); nothing restored: give "
        "--snapshot ID of the one you want (`pipeline snapshots`)"]
    assert not target.exists()

    proc = cli(tmp_path, "check")
    assert proc.returncode == EXIT_INTEGRITY
    assert (f"pipeline check: snapshot {old.hex[:16]}: its name says 2099-12-31T00:00:00+00:00 "
            f"but it was taken at {old.time.isoformat()} (an older snapshot copied under a "
            f"newer name: remove {copy})") in proc.stderr.splitlines()

    target = tmp_path / "t2"
    assert cli(tmp_path, "restore", "--target", str(target), "--snapshot",
               new.hex[:12]).returncode == EXIT_OK
    assert (target / "data.txt").read_text() == "new\n"
