"""`pipeline unpack` on import drives (issue 20: an operator reads back what was shipped): a
prep spread over two drives, unpacked last drive first with the operator passphrase and
then the journal, is the staging tree byte for byte at DIR/CONTAINER/VDIR/PATH; a file
spanning both drives appears only once both are in; a wrong password is refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pipeline.errors import EXIT_BAD_INPUT
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.drivedata import make_tree


def test_unpack_import_drives_in_reverse_order(tmp_path: Path) -> None:
    src, jdir = tmp_path / "src", tmp_path / "journals"
    make_tree(src, small_files=200, random_mb=30, sparse_mb=8)
    secret = tmp_path / "pass"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o600)
    images = [tmp_path / "a.img", tmp_path / "b.img"]
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seed/vdir/", "--journal-dir",
            str(jdir), "--session-id", "unpack-1", *FAST_KDF_ARGS, "--passphrase-file",
            str(secret), "--drive-size", "40M",
            *[a for img in images for a in ("--drive", str(img))], check_code=0)
    assert all(img.exists() for img in images)  # the tree spans both drives
    target = tmp_path / "out"
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    wrong.chmod(0o600)
    bad = run_cli("unpack", "--drive", str(images[1]), "--passphrase-file", str(wrong),
                  "--target", str(target), check_code=EXIT_BAD_INPUT)
    assert "passphrase" in bad.stderr and "Traceback" not in bad.stderr
    run_cli("unpack", "--drive", str(images[1]), "--passphrase-file", str(secret),
            "--target", str(target), check_code=0)
    staged = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()}
    unpacked = target / "seed" / "vdir"
    half = [name for name in staged if not (unpacked / name).exists()]
    assert half, "the second drive alone cannot hold every file"
    run_cli("unpack", "--drive", str(images[0]), "--journal-dir", str(jdir), "--target",
            str(target), check_code=0)
    for name, path in staged.items():
        assert (unpacked / name).read_bytes() == path.read_bytes(), name
    # the markers and copy logs are kept aside, where no container can be
    assert [n for n in os.listdir(target) if not n.startswith(".")] == ["seed"]
    assert list((target / ".pipeline-unpack").glob("copylog-unpack-1-drive*.jsonl"))


def test_kill_9_during_unpack_then_again(tmp_path: Path) -> None:
    src, jdir = tmp_path / "src", tmp_path / "journals"
    make_tree(src, small_files=300, random_mb=4, sparse_mb=4)
    image = tmp_path / "a.img"
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seed/vdir/", "--journal-dir",
            str(jdir), "--session-id", "unpack-2", *FAST_KDF_ARGS, "--drive-size", "40M",
            "--drive", str(image), check_code=0)
    target = tmp_path / "out"
    args = ("unpack", "--drive", str(image), "--journal-dir", str(jdir), "--target",
            str(target))
    died = run_cli(*args, env={"PIPELINE_CRASH_AT": "after_unpack_commit:40"})
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr)
    staged = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()}
    unpacked = target / "seed" / "vdir"
    done = [n for n in staged if (unpacked / n).exists()]
    assert 40 <= len(done) < len(staged)  # cut short mid-way
    run_cli(*args, check_code=0)  # the same command again
    for name, path in staged.items():
        assert (unpacked / name).read_bytes() == path.read_bytes(), name
