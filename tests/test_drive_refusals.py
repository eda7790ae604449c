"""Drive safety refusals, on real loop devices as root (CI runs as root).

Each refusal: one line on stderr naming the drive and the fix, exit code 5,
and nothing written to the drive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REFUSED

from .conftest import FAST_KDF_ARGS, require_root, require_tool, run_cli

MiB = 1 << 20


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout.strip()


@contextlib.contextmanager
def loop_device(tmp_path: Path, size: int, name: str = "disk.img",
                partitions: bool = False) -> Iterator[str]:
    require_root()
    require_tool("losetup")
    image = tmp_path / name
    with open(image, "wb") as f:
        f.truncate(size)
    if partitions:
        require_tool("sfdisk")
        subprocess.run(["sfdisk", "-q", str(image)], input="label: gpt\n,40M\n", text=True,
                       check=True, capture_output=True)
    dev = sh("losetup", "-f", "--show", str(image))
    try:
        if partitions:
            # This kernel's own partition scan may not run for loop devices; partx asks for it.
            subprocess.run(["partx", "-a", dev], capture_output=True)
            assert os.path.exists(dev + "p1"), "partition device did not appear"
        yield dev
    finally:
        subprocess.run(["sh", "-c", f"umount {dev}p1 {dev} 2>/dev/null; partx -d {dev} "
                        f"2>/dev/null; losetup -d {dev}"], capture_output=True)


def mkfs_and_mount(dev: str, where: Path, *, writable: bool = False) -> None:
    require_tool("mkfs.ext4")
    sh("mkfs.ext4", "-q", "-F", dev)
    where.mkdir(parents=True, exist_ok=True)
    # Read-only: a read-write ext4 writes to its own device after mounting (lazy inode-table
    # init, journal commits), which the "left untouched" digests would blame on us.
    sh("mount", "-o", "rw" if writable else "ro", dev, str(where))


def digest(dev: str) -> str:
    with open(dev, "rb") as f:
        return hashlib.sha256(f.read(32 * MiB)).hexdigest()


def format_cli(target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("drive", "format", target, "--session-id", "refusal-test", *FAST_KDF_ARGS,
                   *extra)


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str,
                   code: int = EXIT_REFUSED) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pipeline drive format: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "recovery password" not in proc.stdout


def test_refuses_a_mounted_device(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB) as dev:
        mkfs_and_mount(dev, tmp_path / "mnt")
        before = digest(dev)
        assert_refused(format_cli(dev, "--yes"), dev, "is mounted", str(tmp_path / "mnt"),
                       "unmount it or pass another --drive")
        assert digest(dev) == before


def test_refuses_a_device_holding_a_mounted_partition(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB, partitions=True) as dev:
        mkfs_and_mount(dev + "p1", tmp_path / "mnt")
        before = digest(dev)
        assert_refused(format_cli(dev, "--yes"), dev, f"is mounted ({dev}p1 on",
                       "unmount it")
        assert digest(dev) == before


def test_refuses_the_device_holding_the_staging_directory(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB, partitions=True) as dev:
        mnt = tmp_path / "staging-fs"
        mkfs_and_mount(dev + "p1", mnt, writable=True)
        staging = mnt / "data"
        staging.mkdir()
        assert_refused(format_cli(dev, "--yes", "--staging", str(staging)), dev,
                       f"holds the staging location {staging}",
                       "pass a drive that is not the source disk")


def test_refuses_an_image_inside_staging(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    target = staging / "drive.img"
    assert_refused(format_cli(str(target), "--drive-size", "64M", "--staging", str(staging)),
                   "is inside the staging location", "put image drives outside it")
    assert not target.exists()


def test_refuses_a_device_smaller_than_a_volume(tmp_path: Path) -> None:
    with loop_device(tmp_path, 20 * MiB) as dev:
        assert_refused(format_cli(dev, "--yes"), dev, "smaller than the minimum volume",
                       "use a larger drive")
    assert_refused(format_cli(str(tmp_path / "tiny.img"), "--drive-size", "8M"),
                   "smaller than the minimum volume", "give a larger --drive-size")
    assert not (tmp_path / "tiny.img").exists()


def test_refuses_to_overwrite_a_volume_without_confirmation(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB) as dev:
        first = format_cli(dev)
        assert first.returncode == EXIT_OK, first.stderr
        before = digest(dev)
        assert_refused(format_cli(dev), dev, "already holds a LUKS2 volume", "pass --yes")
        assert digest(dev) == before
        again = format_cli(dev, "--silentmode")  # the seed's name for --yes
        assert again.returncode == EXIT_OK, again.stderr
        assert digest(dev) != before


def test_refuses_a_device_with_a_file_system_without_confirmation(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB) as dev:
        require_tool("mkfs.ext4")
        sh("mkfs.ext4", "-q", "-F", dev)
        assert_refused(format_cli(dev), dev, "is not empty", "pass --yes")


def test_refuses_a_drive_another_process_holds(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB) as dev:
        holder = subprocess.Popen(
            [sys.executable, "-c", f"import os,sys; fd=os.open({dev!r}, os.O_RDWR|os.O_EXCL); "
             "print('held', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            assert_refused(format_cli(dev), dev, "in use by the system")
        finally:
            holder.communicate("")
    image = tmp_path / "held.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,os,sys; fd=os.open({str(image)!r}, os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert_refused(format_cli(str(image)), "held open by another pipeline process")
    finally:
        holder.communicate("")


def test_refuses_an_image_attached_to_a_loop_device(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB, name="attached.img") as dev:
        assert_refused(format_cli(str(tmp_path / "attached.img"), "--yes"),
                       f"is attached to {dev}", f"losetup -d {dev}")


def test_bad_inputs_are_exit_2(tmp_path: Path) -> None:
    proc = format_cli(str(tmp_path / "missing.img"))
    assert_refused(proc, "does not exist", "--drive-size", code=EXIT_BAD_INPUT)
    proc = format_cli(str(tmp_path / "x.img"), "--drive-size", "lots")
    assert_refused(proc, "size 'lots' is not understood", code=EXIT_BAD_INPUT)


def test_formats_a_blank_loop_device(tmp_path: Path) -> None:
    with loop_device(tmp_path, 64 * MiB) as dev:
        saved = tmp_path / "pw.txt"
        proc = format_cli(dev, "--save-recovery-password", str(saved))
        assert proc.returncode == EXIT_OK, proc.stderr
        info = run_cli("drive", "info", dev, "--recovery-password-file", str(saved),
                       check_code=0)
        assert "superblock    verified" in info.stdout
        assert "refusal-test" in info.stdout


def test_drive_info_on_a_blank_drive_is_a_wrong_path_not_damage(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(64 << 20)
    proc = run_cli("drive", "info", str(blank))
    assert proc.returncode == 2, proc.stderr  # bad input, not 4 (integrity)
    assert proc.stderr.strip() == (f"pipeline drive info: {blank} is blank (no volume on it); "
                                   "give a drive that prep or `pipeline drive format` prepared")
