"""Review 3 of restore's special files (beneath._entry): a fifo is made under its
temporary name (mknodat) and then given its owner, mode and times by that name.
Whoever can write in its directory (the swap tests' stand-in for a filesystem that
ignores modes) can put, between the mknod and the chown, a hard link to a file outside
--target in place of the temporary name: before, root's restore gave that outside file
the fifo's owner and mode.  Now the node is opened (O_PATH|O_NOFOLLOW) and must be the
one made (its type, TARGET's owner, one link) before anything is set through that fd;
else it is a warning naming the entry, and the rest restores."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.test_review2_restore import backed_up
from tests.test_review3_restore_tempfile import nobodys_file, restore_latest


def test_a_fifo_replaced_by_a_hard_link_after_its_mknod_is_not_set(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test restores as root (chown): run it as root"
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o600)
    os.chown(src / "pipe", 1000, 1000)
    os.chmod(src / "pipe", 0o4777)
    (src / "small").write_text("small\n")
    backed_up(tmp_path, src)
    victim = nobodys_file(tmp_path, b"the attacker's own\n", 0o700)
    before = victim.stat()
    target = tmp_path / "target"

    real_mknod = os.mknod
    fired: list[bool] = []

    def mknod(path, mode=0o600, device=0, *, dir_fd=None):  # type: ignore[no-untyped-def]
        real_mknod(path, mode, device, dir_fd=dir_fd)
        if stat.S_ISFIFO(mode) and not fired:
            fired.append(True)
            os.unlink(path, dir_fd=dir_fd)
            os.link(victim, path, dst_dir_fd=dir_fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mknod", mknod)
        warnings = restore_latest(tmp_path, target)
    assert fired == [True]
    after = victim.stat()
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns) == (
        before.st_uid, before.st_gid, before.st_mode, before.st_mtime_ns)
    assert warnings == ["pipe: fifo not restored: it was replaced while the restore ran; "
                        "nothing was set through it"]
    assert sorted(os.listdir(target)) == ["small"]
