"""A full local filesystem under `backup --offline` (staging) and `restore` (target): one
line naming the filesystem, exit 9, nothing marked complete that is not, and the same
command run again after space is freed completes.  Real tmpfs mounts, no mocked ENOSPC."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import trio

from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.backup.restore import MARKER, TEMP_NAME
from pipeline.errors import EXIT_NO_SPACE, EXIT_OK
from tests import jobservice
from tests.conftest import FAST_ARGON, FAST_KDF_ARGS, run_cli
from tests.diskfull import grow, small_tmpfs
from tests.test_backup_repo import CONTAINER, PASS, backup, describe

MiB = 1 << 20
SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def passfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "config"))
    p = tmp_path / "pass"
    p.write_bytes(PASS + b"\n")
    return p


def test_restore_into_a_full_filesystem_then_again(tmp_path: Path, passfile: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(5)
    for i in range(12):
        (src / f"f{i:02}.bin").write_bytes(r.randbytes(1 * MiB))
    (src / "big.bin").write_bytes(r.randbytes(5 * MiB))
    (src / "sub").mkdir()
    os.symlink("../f00.bin", src / "sub" / "link")
    before = describe(src)
    repo_dir = tmp_path / "repo"
    trio.run(backup, Repository.init(DirBackend(repo_dir), PASS, FAST_ARGON), src)

    with small_tmpfs(tmp_path / "small", "8m") as mnt:   # the target is the mount point
        cmd = ["restore", "--from", str(repo_dir), "--target", str(mnt), "--passphrase-file",
               str(passfile)]
        proc = run_cli(*cmd, check_code=EXIT_NO_SPACE)
        line = one_line(proc)
        assert line.startswith(f"pipeline restore: no space left on the filesystem mounted at "
                               f"{mnt}"), line
        assert "run the same command again" in line
        # every file under its final name is whole; no temporary file left; marked unfinished
        assert (mnt / MARKER).is_file()
        now = describe(mnt)
        assert not [n for n in now if TEMP_NAME.match(os.fsencode(Path(n).name))]
        whole = [n for n in now if n not in (".", MARKER, "sub")]
        assert all(now[n] == before[n] for n in whole), whole
        assert len(whole) < len(before) - 1

        grow(mnt, "64m")                                 # space freed
        run_cli(*cmd, check_code=EXIT_OK)
        assert describe(mnt) == before


def test_offline_backup_fills_its_staging_then_again(tmp_path: Path, passfile: Path) -> None:
    # The space check before writing samples every other MiB of a 34 MiB file: zeros there,
    # random data in between, so it lets 17 MiB of incompressible data at an 8 MiB staging.
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(9)
    with open(src / "tricky.bin", "wb") as f:
        for i in range(34):
            f.write(bytes(MiB) if i % 2 == 0 else r.randbytes(MiB))
    before = describe(src)
    settings = tmp_path / "sub.publishsettings"
    with (jobservice.ServiceProcess(tmp_path / "svc") as svc,
          small_tmpfs(tmp_path / "staging", "8m") as staging):
        jobservice.subscription_settings(svc, settings, SUB)
        cmd = ["backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
               str(staging), "--job-name", "seed-1", "--subscription", SUB, "--account",
               "backupacct", "--container", CONTAINER, "--publish-settings",
               str(settings), "--passphrase-file", str(passfile)]
        proc = run_cli(*cmd, check_code=EXIT_NO_SPACE)
        line = one_line(proc)
        assert line.startswith(f"pipeline backup: no space left on the filesystem mounted at "
                               f"{staging}"), line
        assert "run the same command again" in line
        # nothing says complete: no record, no snapshot, no settings entry
        assert not (staging / "pipeline-offline.json").exists()
        assert not list((staging / "repo" / "snapshots").glob("*"))
        assert not (tmp_path / "config" / "offline.json").exists()

        grow(staging, "96m")
        proc = run_cli(*cmd, check_code=EXIT_OK)
        assert json.loads((staging / "pipeline-offline.json").read_text())["job_name"] == \
            "seed-1"
        out = tmp_path / "out"
        run_cli("restore", "--from", str(staging), "--target", str(out), "--passphrase-file",
                str(passfile), check_code=EXIT_OK)
        assert describe(out) == before
