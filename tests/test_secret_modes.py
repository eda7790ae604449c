"""Every file we write that holds or guards a secret is its owner's alone, whatever the
umask: the tests run this module under umask 022 (the usual one), not the suite's 077.

Journals (recovery passwords), publish settings (a subscription's private key), the
service's data directory (keys, catalog), a site token written with --out, the offline
backup's repository (keys, packs) and its records."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import jobservice
from .conftest import FAST_KDF_ARGS, run_cli
from .drivedata import make_tree


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def private(*files: Path) -> None:
    for f in files:
        f.chmod(0o600)


def test_prep_journals_and_their_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    run_cli("prep", "--source", str(src), "--dstdir", "seed-test/vdir/", "--journal-dir",
            str(jdir), "--session-id", "modes-1", "--drive", str(tmp_path / "d.img"),
            "--drive-size", "64M", *FAST_KDF_ARGS, check_code=0)
    assert mode(jdir) == 0o700
    journals = list(jdir.glob("*.journal"))
    assert journals and all(mode(j) == 0o600 for j in journals)
    assert mode(tmp_path / "d.img") == 0o600  # an image drive holds the volume and its keyslots


def test_service_data_publish_settings_and_site_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data):
        settings = tmp_path / "ops.publishsettings"
        run_cli("service", "subscription", "add", "ops", "--data", str(data), "--out",
                str(settings), check_code=0)
        token = tmp_path / "site.token"
        run_cli("service", "site-token", "--data", str(data), "--out", str(token),
                check_code=0)
    assert mode(settings) == 0o600 and mode(token) == 0o600
    assert mode(data) == 0o700
    for name in ("catalog.key", "site.key", "catalog.db"):
        assert mode(data / name) == 0o600, name


def test_offline_backup_repository_and_records(tmp_path: Path) -> None:
    src, staging, config = tmp_path / "src", tmp_path / "staging", tmp_path / "config"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=2)
    staging.mkdir()
    passphrase = tmp_path / "pass"
    passphrase.write_text("a long backup passphrase\n")
    private(passphrase)
    run_cli("backup", "--offline", "--source", str(src), "--staging", str(staging), "--job",
            "modes-seed", "--subscription", "0f8fad5b-d9cb-469f-a165-70867728950e",
            "--storage-account", "modesacct", "--container", "backups", "--passphrase-file",
            str(passphrase), *FAST_KDF_ARGS, check_code=0,
            env={"PIPELINE_CONFIG_DIR": str(config)})
    repo = staging / "repo"
    for p in [repo, *repo.rglob("*")]:
        assert mode(p) == (0o600 if p.is_file() else 0o700), p
    assert mode(staging / "pipeline-offline.json") == 0o600
    assert mode(config / "offline.json") == 0o600 and mode(config) == 0o700
