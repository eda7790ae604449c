"""The README's first command, ``scripts/demo``, as a newcomer runs it (here without its
install step, which ``scripts/test`` has just done): prep of a generated tree onto three
image drives, verify, drive info; the recovery passwords not printed to a pipe.  Before
this test nothing ran it, and it still spelled the options' old names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_the_demo_runs_as_the_readme_says(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", "scripts/demo", "--no-install", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "verified 3 drive(s): every extent matches its journal" in said
    assert "recovery passwords: not printed (stdout is not a terminal)" in said
    assert sorted(p.name for p in out.glob("drive*.img")) == [
        "drive1.img", "drive2.img", "drive3.img"]
    assert "--srcdir" not in (ROOT / "scripts" / "demo").read_text()   # one name a concept


def test_the_demo_empties_only_its_own_output(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    proc = subprocess.run(["bash", "scripts/demo", "--no-install", str(precious)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"scripts/demo: {precious} is not empty and not a demo's output; give a new directory"]
    assert (precious / "keep.txt").read_text() == "mine"
