"""The key file's argon2id cost: calibrated at ``init`` (about 0.5 s, as restic's scrypt),
never below RFC 9106's second recommended option (t=3, 64 MiB), recorded in the key file;
a repository made with another cost (the old fixed default, a cheap one) still opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.backup import crypto
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_BAD_INPUT, EXIT_OK
from pipeline.volume import luks2
from tests.conftest import run_cli
from tests.test_backup_repo import PASS, make_tree

# The fixed default before calibration (cryptsetup's): repositories seeded with it exist.
OLD_DEFAULT = luks2.KdfParams(type="argon2id", time=4, memory=262144, cpus=4)


def kdf(time: int, memory: int) -> luks2.KdfParams:
    return luks2.KdfParams(type="argon2id", time=time, memory=memory, cpus=4)


@pytest.mark.parametrize(("floor_s", "expected"), [
    (10.0, kdf(3, 65536)),      # a slow machine: the floor, not less
    (0.5, kdf(3, 65536)),       # the floor takes the target: the floor
    (0.3, kdf(5, 65536)),       # 1.67x the floor's budget: passes (memory x2 would pass it)
    (0.148, kdf(5, 131072)),    # this machine: 3.38x: memory doubled, then passes
    (0.1, kdf(3, 262144)),      # 5x: memory up to its bound of 256 MiB
    (0.01, kdf(16, 262144)),    # 50x: passes, capped
])
def test_calibration_never_below_rfc9106(floor_s: float, expected: luks2.KdfParams) -> None:
    timed: list[luks2.KdfParams] = []

    def clock(params: luks2.KdfParams) -> float:
        timed.append(params)
        return floor_s

    assert crypto.calibrate_kdf(0.5, clock) == expected
    assert timed == [crypto.MIN_KDF] == [kdf(3, 65536)]


def test_calibrated_key_file_records_its_cost(tmp_path: Path) -> None:
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, lock=None)
    (key,) = (tmp_path / "repo" / "keys").iterdir()
    recorded = json.loads(key.read_bytes().rstrip(b"\0"))["kdf"]
    assert recorded["type"] == "argon2id" and recorded["cpus"] == 4
    assert recorded["memory"] in (65536, 131072, 262144)
    assert 3 <= recorded["time"] <= crypto.KDF_MAX_TIME
    opened = Repository.open(DirBackend(tmp_path / "repo"), PASS, "pass", lock=None)
    assert opened.crypto.keys == repo.crypto.keys


def test_repository_of_the_old_default_cost_opens(tmp_path: Path) -> None:
    """What a seed written before calibration holds: 256 MiB x 4 passes, read from its
    key file (not from today's default)."""
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, OLD_DEFAULT, lock=None)
    (key,) = (tmp_path / "repo" / "keys").iterdir()
    recorded = json.loads(key.read_bytes().rstrip(b"\0"))["kdf"]
    assert {k: recorded[k] for k in ("type", "time", "memory", "cpus")} == {
        "type": "argon2id", "time": 4, "memory": 262144, "cpus": 4}
    opened = Repository.open(DirBackend(tmp_path / "repo"), PASS, "pass", lock=None)
    assert opened.crypto.keys == repo.crypto.keys


def _offline(tmp_path: Path, *kdf_args: str, code: int = EXIT_OK) -> str:
    src, staging = tmp_path / "src", tmp_path / "staging"
    src.mkdir()
    staging.mkdir()
    make_tree(src)
    (tmp_path / "pass").write_text("a long backup passphrase\n")
    proc = run_cli("backup", "--offline", "--source", str(src), "--staging", str(staging),
                   "--job-name", "seed-kdf", "--subscription",
                   "0f8fad5b-d9cb-469f-a165-70867728950e", "--account", "kdfacct",
                   "--container", "backups", "--passphrase-file", str(tmp_path / "pass"),
                   *kdf_args, check_code=code,
                   env={"PIPELINE_CONFIG_DIR": str(tmp_path / "config")})
    if code != EXIT_OK:
        return proc.stderr.strip()
    (key,) = (staging / "repo" / "keys").iterdir()
    return json.dumps({k: v for k, v in json.loads(key.read_bytes().rstrip(b"\0"))["kdf"]
                       .items() if k != "salt"}, sort_keys=True)


def test_offline_backup_calibrates_when_no_cost_is_given(tmp_path: Path) -> None:
    got = json.loads(_offline(tmp_path))
    assert got["type"] == "argon2id" and got["cpus"] == 4
    assert got["memory"] >= 65536 and got["time"] >= 3


def test_offline_backup_records_a_given_cost(tmp_path: Path) -> None:
    assert _offline(tmp_path, "--pbkdf-memory", "8192") == json.dumps(
        {"cpus": 4, "memory": 8192, "time": 3, "type": "argon2id"}, sort_keys=True)


def test_offline_backup_refuses_a_bad_cost(tmp_path: Path) -> None:
    line = _offline(tmp_path, "--pbkdf-time", "0", code=EXIT_BAD_INPUT)
    assert line == ("pipeline backup: key file KDF settings: argon2 needs time >= 1, 1..16 "
                    "cpus, memory >= 8 KiB per cpu")
