"""Review 3 of restore's writes (beneath.AtFiles.put): a file of several chunks is made
whole-size by the skeleton (O_EXCL) and then opened again by name for each chunk.
Whoever can write in its directory (the swap tests' stand-in for a filesystem that
ignores modes) can put, between two chunks, a hard link to a file outside --target in
place of the temporary name: before, root's restore wrote the rest of the file into
that outside file and then gave it the snapshot's owner and mode (setuid root here).
Now a temporary file opened again must be the one restore made (a regular file of
TARGET's owner, one link): else it is a warning naming the entry, nothing is written
through it, and the rest restores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from pipeline import progress
from pipeline.backup import beneath
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import run_restore
from tests.test_backup_repo import PASS
from tests.test_review2_restore import backed_up


def restore_latest(tmp_path: Path, target: Path) -> list[str]:
    """tmp_path/repo's latest snapshot restored into ``target`` here, one fetch thread;
    its warnings."""
    warnings: list[str] = []
    repo = Repository.open(DirBackend(tmp_path / "repo"), PASS, str(tmp_path / "pass"))
    repo.load_index()
    try:
        trio.run(run_restore, repo, find_snapshot(repo.snapshots(), None), target,
                 progress.Stats(), 1, warnings.append)
    finally:
        repo.close()
    return warnings


def nobodys_file(tmp_path: Path, data: bytes, mode: int) -> Path:
    """tmp_path/outside/victim: a file of nobody's outside --target, the attack's aim."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(data)
    os.chown(victim, 65534, 65534)
    victim.chmod(mode)
    return victim


def test_a_temporary_file_replaced_by_a_hard_link_between_chunks_is_not_written(
        tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test restores as root (chown, setuid): run it as root"
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(6 << 20))       # several chunks
    (src / "big").chmod(0o4755)
    (src / "small").write_text("small\n")
    backed_up(tmp_path, src)
    victim = nobodys_file(tmp_path, b"the attacker's own program\n", 0o755)
    before = (hashlib.sha256(victim.read_bytes()).hexdigest(), victim.stat().st_mode,
              victim.stat().st_uid)
    target = tmp_path / "target"

    real_put = beneath.AtFiles.put
    calls: list[bytes] = []

    def put(self: beneath.AtFiles, f: beneath.RestoreFile, raw: bytes, off: int) -> int:
        if f.final.endswith(b"/big"):
            calls.append(f.tmp)
            if len(calls) == 2:                  # between its first and second chunk
                os.unlink(f.tmp)
                os.link(victim, f.tmp)
        return real_put(self, f, raw, off)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(beneath.AtFiles, "put", put)
        warnings = restore_latest(tmp_path, target)
    assert len(calls) > 2
    after = (hashlib.sha256(victim.read_bytes()).hexdigest(), victim.stat().st_mode,
             victim.stat().st_uid)
    assert after == before
    assert warnings == ["big: not restored: its temporary file was replaced while the "
                        "restore ran; nothing was written through it"]
    assert not (target / "big").exists()
    assert (target / "small").read_text() == "small\n"
    assert sorted(os.listdir(target)) == ["small"]
