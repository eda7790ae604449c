"""Review 3 of restore's directory fds (beneath.Dirs): under a low `ulimit -n` a deep or
wide tree restores exactly.  Before, Dirs kept KEEP (256) directory fds whatever the
limit: under `ulimit -n 256` a tree of 300 directories deep, or of 5,000 directories,
ended in EMFILE, a traceback and exit 70."""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

from pipeline.errors import EXIT_OK
from tests.conftest import ROOT
from tests.test_review2_restore import backed_up


def restore_limited(tmp: Path, target: Path, nofile: int, *extra: str
                    ) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "pipeline", "restore", "--target",
                           str(target), "--from", str(tmp / "repo"), "--passphrase-file",
                           str(tmp / "pass"), *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, preexec_fn=limit,
                          env={**os.environ, "PIPELINE_CONFIG_DIR": str(tmp / "config")})


def tree(top: Path) -> list[tuple[str, bytes | None]]:
    return sorted((p.relative_to(top).as_posix(), p.read_bytes() if p.is_file() else None)
                  for p in top.rglob("*"))


def restores_exactly_under_128_fds(tmp_path: Path, src: Path) -> None:
    """``src`` backed up, then restored by the CLI under ``ulimit -n 128``: exit 0, no
    traceback, the tree exact."""
    backed_up(tmp_path, src)
    target = tmp_path / "target"
    proc = restore_limited(tmp_path, target, 128)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(target) == tree(src)


def test_a_tree_300_directories_deep_restores_under_ulimit_n_128(tmp_path: Path) -> None:
    src = tmp_path / "src"
    d = src
    for i in range(300):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "f").write_text("deep\n")
    restores_exactly_under_128_fds(tmp_path, src)


def test_a_tree_of_600_directories_restores_under_ulimit_n_128(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(600):
        d = src / f"d{i // 30}" / f"e{i}"
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"%d\n" % i)
    restores_exactly_under_128_fds(tmp_path, src)


def test_256_fetch_threads_restore_exactly_under_ulimit_n_64(tmp_path: Path) -> None:
    """Each fetch thread writes files it holds open: --threads 256 with 64 fds to spend
    (40 directories of files from 1 byte to 300 KB) still restores every byte, exit 0."""
    src = tmp_path / "src"
    r = random.Random(3)
    for i in range(400):
        d = src / f"d{i % 40}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(r.randbytes(r.randrange(1, 300_000)))
    backed_up(tmp_path, src)
    target = tmp_path / "target"
    proc = restore_limited(tmp_path, target, 64, "--threads", "256")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(target) == tree(src)
