"""``--threads``: one rule for every command that takes it (prep, export, worker, backup,
restore): the number of cores by default, 1 to MAX_THREADS as given.  Before: five copies of
the option, ``--threads 0`` silently meant the default, and nothing bounded it (restore
--threads 100000 started a thread each; worker and export had no check at all)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands._options import MAX_THREADS, threads_from_args
from pipeline.errors import EXIT_BAD_INPUT, BadInput
from tests.conftest import ROOT

COMMANDS = (["prep"], ["export"], ["worker"], ["backup"], ["restore"])


def test_the_rule() -> None:
    assert threads_from_args(argparse.Namespace(threads=None)) == (os.cpu_count() or 2)
    assert threads_from_args(argparse.Namespace(threads=1)) == 1
    assert threads_from_args(argparse.Namespace(threads=MAX_THREADS)) == MAX_THREADS
    for bad in (0, -1, MAX_THREADS + 1, 100_000):
        with pytest.raises(BadInput, match=rf"^--threads {bad}: give 1 to {MAX_THREADS}$"):
            threads_from_args(argparse.Namespace(threads=bad))


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_documents_the_same_bounds(command: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "pipeline", *command, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "COLUMNS": "300"}).stdout
    assert f"(default: the number of cores; 1 to {MAX_THREADS})" in out, out


@pytest.mark.parametrize("threads", ["0", "100000"])
def test_restore_refuses_in_one_line(tmp_path: Path, threads: str) -> None:
    (tmp_path / "pass").write_text("x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "restore", "--from", str(tmp_path / "repo"),
         "--target", str(tmp_path / "out"), "--passphrase-file", str(tmp_path / "pass"),
         "--threads", threads], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.splitlines() == [
        f"pipeline restore: --threads {threads}: give 1 to {MAX_THREADS}"]
    assert not (tmp_path / "out").exists()
