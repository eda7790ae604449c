"""A second copy session on a drive, killed (SIGKILL) at each crash point: session 1 still
imports unchanged and verifies (with its journal, and without: the chain from the
trailer); nothing before session 2's first offset changed but sector 0's version; a
third session is refused while session 2 is not closed; session 2 resumes and imports
byte for byte.  Also: a drive without room for another session is refused (exit 5),
untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.volume import luks2

from .conftest import ROOT, run_cli
from .test_multisession import (
    check_account,
    continue_args,
    data_area,
    first_session,
    import_session,
    tree,
)

# Session 2's crash points, in the order it reaches them (pipeline/faults.py's names; the
# two of beginning a later session are reached only there: pool.DrivePool._continue).
POINTS = ["after_superblock_v3", "after_session_segment", "after_journal_create",
          "after_reopen", "after_pwrite:1", "after_pwrite:2", "after_sync", "after_commit",
          "after_index", "after_trailer"]


def killed(tmp: Path, args: list[str], point: str) -> None:
    name, _, n = point.partition(":")
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "PIPELINE_CRASH_AT": f"{name}:{n or 1}"})
    assert proc.returncode == -signal.SIGKILL, (point, proc.stderr.decode())


def session_1_reads(tmp: Path, one: dict[str, bytes], key: str, tag: str) -> None:
    """Session 1 imports unchanged (with its journal, and without one) and verifies."""
    import_session(tmp, "ses1", tmp / f"acct1-{tag}", "--journal-dir", str(tmp / "j"),
                   "--session-id", "ses1")
    check_account(tmp / f"acct1-{tag}", "cont1", "v1", one)
    pw = tmp / "pw"
    pw.write_text(key)
    import_session(tmp, "ses1", tmp / f"acct1n-{tag}", "--recovery-password-file", str(pw),
                   "--session-id", "ses1")
    check_account(tmp / f"acct1n-{tag}", "cont1", "v1", one)
    run_cli("verify", "--journal-dir", str(tmp / "j"), "--session-id", "ses1", check_code=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    """Session 1 prepared once for every kill point: (pristine copy, work dir, files, key).
    Its journal names the drive by its path, so each case restores the pristine copy into
    the same work dir (the journal's paths hold) rather than preparing again."""
    work, pristine = tmp_path_factory.mktemp("ses1"), tmp_path_factory.mktemp("pristine")
    one, key = first_session(work)
    subprocess.run(["cp", "-a", "--reflink=auto", "--sparse=always", f"{work}/.", str(pristine)],
                   check=True, timeout=60)
    return pristine, work, one, key


@pytest.fixture
def session_1(prepared: tuple[Path, Path, dict, str]) -> tuple[Path, dict, str]:
    """The work dir holding session 1 exactly as prep left it, nothing of a previous case."""
    pristine, work, one, key = prepared
    shutil.rmtree(work)
    subprocess.run(["cp", "-a", "--reflink=auto", "--sparse=always", str(pristine), str(work)],
                   check=True, timeout=60)
    return work, one, key


@pytest.mark.parametrize("point", POINTS)
def test_session_2_killed_then_resumed(session_1: tuple[Path, dict, str], point: str) -> None:
    tmp_path, one, key = session_1  # session 1 as first_session(tmp_path) leaves it
    image = tmp_path / "d1.img"
    (j1,) = journal.session_journals(tmp_path / "j", "ses1")
    first = j1.drive.index_offset + j1.drive.index_length
    j1.close()
    before = image.read_bytes()
    two = tree(tmp_path / "src2", "two")
    (tmp_path / "src2" / "two" / "more.bin").write_bytes(os.urandom(9 << 20))  # 2 commits
    two["two/more.bin"] = (tmp_path / "src2" / "two" / "more.bin").read_bytes()
    args = continue_args(tmp_path, key)
    killed(tmp_path, args, point)
    seg = luks2.DATA_OFFSET
    after = image.read_bytes()
    assert after[:seg] == before[:seg]  # the LUKS2 header region: never
    assert after[seg + fmt.SECTOR:seg + first] == before[seg + fmt.SECTOR:seg + first]
    session_1_reads(tmp_path, one, key, "killed")
    if point not in ("after_superblock_v3", "after_index", "after_trailer"):  # begun, open
        (tmp_path / "src3").mkdir()
        proc = run_cli(*continue_args(tmp_path, key, session="ses3", src="src3",
                                      dstdir="cont3/"), check_code=5)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"pipeline prep: {image}: its newest session ses2 is not closed; finish it "
            "(pipeline prep --resume --session-id ses2) before another session continues "
            "the drive")
    if journal.session_journals(tmp_path / "j", "ses2"):
        run_cli("prep", "--resume", "--journal-dir", str(tmp_path / "j"), "--session-id",
                "ses2", check_code=0)
    else:  # killed before its journal existed: the same command again begins it again
        assert point in ("after_superblock_v3", "after_session_segment")
        run_cli(*args, check_code=0)
    final = image.read_bytes()
    assert final[:seg] == before[:seg]
    assert final[seg + fmt.SECTOR:seg + first] == before[seg + fmt.SECTOR:seg + first]
    _, area = data_area(image, key)
    sb = fmt.decode_superblock(area)
    assert (sb.version, sb.first_version, sb.session_id) == (3, 1, "ses1")
    session_1_reads(tmp_path, one, key, "resumed")
    import_session(tmp_path, "ses2", tmp_path / "acct2", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses2")
    check_account(tmp_path / "acct2", "cont2", "v2", two)
    run_cli("verify", "--journal-dir", str(tmp_path / "j"), "--session-id", "ses2",
            check_code=0)
    (j2,) = journal.session_journals(tmp_path / "j", "ses2")
    assert j2.drive.first_offset == first and j2.drive.state == "closed"
    j2.close()


def test_a_drive_without_room_is_refused_untouched(tmp_path: Path) -> None:
    """Session 1 filled the drive: a second session is refused (exit 5), nothing written."""
    src = tmp_path / "src1"
    (src / "one").mkdir(parents=True)
    (src / "one" / "fill.bin").write_bytes(os.urandom(15 << 20))
    run_cli("prep", "--source", str(src), "--dstdir", "cont1/v1/", "--drive",
            str(tmp_path / "d1.img"), "--drive-size", "32M", "--journal-dir",
            str(tmp_path / "j"), "--session-id", "ses1", "--pbkdf-memory", "8192",
            "--pbkdf-time", "4", "--pbkdf-parallel", "2", check_code=0)
    (j1,) = journal.session_journals(tmp_path / "j", "ses1")
    key = j1.recovery_password
    j1.close()
    before = hashlib.sha256((tmp_path / "d1.img").read_bytes()).hexdigest()
    tree(tmp_path / "src2", "two")
    proc = run_cli(*continue_args(tmp_path, key), check_code=5)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pipeline prep: {tmp_path / 'd1.img'}: its sessions (ses1) leave ")
    assert last.endswith(" free, no room for another session; use another drive")
    assert hashlib.sha256((tmp_path / "d1.img").read_bytes()).hexdigest() == before
    assert journal.session_journals(tmp_path / "j", "ses2") == []
