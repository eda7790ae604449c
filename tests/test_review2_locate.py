"""Review 2: ``--from`` given a connection string or a SAS URL without ``--container``
(a slip at 3 a.m.): the line says to give --container and names the account by its
endpoint; the account key or SAS signature never reaches the terminal or a log."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import EXIT_BAD_INPUT
from tests.conftest import run_cli

KEY = "U0VDUkVUS0VZU0VDUkVUS0VZ"


@pytest.mark.parametrize("source", [
    f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
    "EndpointSuffix=core.windows.net",
    f"https://acct.blob.core.windows.net/?sv=2022-11-02&ss=b&sig={KEY}",
])
@pytest.mark.parametrize("command", ["snapshots", "check", "prune"])
def test_an_account_without_container_is_named_without_its_secret(
        tmp_path: Path, source: str, command: str) -> None:
    """Before: '--from DefaultEndpointsProtocol=...;AccountKey=<the key>... holds no
    backup repository', the key or the SAS signature printed whole."""
    (tmp_path / "pass").write_text("x\n")
    proc = run_cli(command, "--from", source, "--passphrase-file", str(tmp_path / "pass"),
                   env={"PIPELINE_CONFIG_DIR": str(tmp_path / "config")},
                   check_code=EXIT_BAD_INPUT)
    assert KEY not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines() == [
        f"pipeline {command}: --from https://acct.blob.core.windows.net is a storage account; "
        "give --container C (the container holding the repository)"]
