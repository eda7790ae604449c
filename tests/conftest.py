"""Shared test helpers.  A test that needs a tool or root fails loudly when it is
missing: CI installs everything (.ci/run) and runs as root, so a skip there
would hide a missing feature."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.volume import luks2

ROOT = Path(__file__).resolve().parent.parent

# The secret files tests write (passphrases, recovery passwords, publish settings) are
# private, as an operator's should be: a file others can read gets a warning line
# (errors.Caution) that tests of exact stderr would trip on.  The test of that warning
# chmods its file; the modes we set ourselves are set whatever the umask.
os.umask(0o077)

# Backup's tree cache ($XDG_CACHE_HOME/pipeline/backup): the tests' own, never the user's.
os.environ["XDG_CACHE_HOME"] = str(Path(os.environ.get("TMPDIR", "/tmp"))
                                   / f"pipeline-test-cache-{os.getpid()}")

# Cheap keyslot KDFs for tests; the defaults (256 MiB argon2id) cost ~1 s per unlock.
FAST_ARGON = luks2.KdfParams(type="argon2id", time=4, memory=8192, cpus=2)
FAST_PBKDF2 = luks2.KdfParams(type="pbkdf2", iterations=1000)
FAST_KDF_ARGS = ["--pbkdf-memory", "8192", "--pbkdf-time", "4", "--pbkdf-parallel", "2"]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (this test must not skip)")
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (loop devices); CI runs as root")


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None,
            check_code: int | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` as a user would; never a traceback for bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
        input=input, cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=600,
    )
    if check_code is not None:
        assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode != 70:
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def fast_argon() -> luks2.KdfParams:
    return FAST_ARGON
