"""Review 2 of the backup commands' inputs, as a careless user gives them: each bad
``--passphrase-file`` is one line naming the file and the fix (exit 2), never a
traceback, never a hang or a read without end."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_BAD_INPUT, EXIT_OK
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS


def _limited() -> None:
    """At most 2 GiB of address space: a read without end fails here, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _run(tmp_path: Path, passfile: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """``pipeline snapshots`` of a new repository (cheap KDF) with ``passfile``."""
    if not (tmp_path / "repo").exists():
        Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON).close()
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "snapshots", "--from", str(tmp_path / "repo"),
         "--passphrase-file", passfile], capture_output=True, text=True, cwd=ROOT,
        timeout=120, preexec_fn=_limited,
        env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp_path / "config")},
        **kw)  # type: ignore[call-overload]


def test_a_passphrase_file_without_end_is_refused_in_one_line(tmp_path: Path) -> None:
    """/dev/zero given as the passphrase file (a slip of the shell's completion): the
    read stops past the key-file bound, one line (before: read until MemoryError, a
    traceback and exit 70; without a limit the kernel's OOM killer)."""
    proc = _run(tmp_path, "/dev/zero")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if "warning:" not in x]
    assert lines == ["pipeline snapshots: passphrase file /dev/zero is larger than 8388608 "
                     "bytes; is it the right file?"]


def test_a_passphrase_given_through_a_pipe_still_works(tmp_path: Path) -> None:
    """``--passphrase-file <(pass show backup)``: a pipe has no size; it is read to its
    end and opens the repository."""
    r, w = os.pipe()
    os.write(w, PASS + b"\n")
    os.close(w)
    try:
        proc = _run(tmp_path, f"/dev/fd/{r}", pass_fds=(r,))
    finally:
        os.close(r)
    assert proc.returncode == EXIT_OK, proc.stderr
