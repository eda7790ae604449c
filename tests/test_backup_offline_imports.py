"""What `backup --offline` imports before its first byte is read: the import service's
certificate modules only with --publish-settings (an initial backup without them is the
field's common case; their import was ~20 ms of its start-up, cryptography's
serialization and the job catalog)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FAST_KDF_ARGS
from tests.test_backup_imports import _modules
from tests.test_backup_repo import PASS

SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_no_publish_settings_no_certificate_modules(tmp_path: Path) -> None:
    src, staging = tmp_path / "src", tmp_path / "staging"
    src.mkdir()
    staging.mkdir()
    (src / "a").write_bytes(b"a" * 5000)
    with open(src / "sparse", "wb") as f:      # holes: the estimate and the reader look
        f.truncate(10 << 20)
        f.write(b"x")
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    mods, events = _modules(
        tmp_path, "backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
        str(staging), "--job-name", "seed-1", "--subscription", SUB, "--account", "acct1",
        "--container", "backups", "--passphrase-file", str(tmp_path / "pass"), "--json")
    assert events[-1]["type"] == "exit" and events[-1]["code"] == 0
    assert "pipeline.jobs.rules" in mods                # the job name's rule: always
    assert not {"pipeline.jobs.auth", "pipeline.jobs.catalog", "pipeline.jobs.client",
                "cryptography.hazmat.primitives.serialization.pkcs12"} & mods
    # holes and zeros come from pipeline.sparse, not from prep's reader or the drive codec
    # (the drive format, prep's journal and sqlite3: 17 ms before the estimate's walk)
    assert "pipeline.sparse" in mods
    assert not {"pipeline.prep.read", "pipeline.drive.format", "pipeline.drive.codec",
                "sqlite3"} & mods
