"""Crash safety: SIGKILL prep at many points, resume each time, end byte-identical.

Points come from pipeline.faults (between pwrite and fdatasync, between the
fdatasync and the journal commit, while formatting, while closing...) and from
plain timed kills.  After every kill the committed part of each drive must be
exactly as it was: resume continues after the journal's watermark and never
rewrites committed data.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline import faults, journal
from pipeline.volume import luks2

from .conftest import FAST_KDF_ARGS, ROOT
from .drivedata import make_tree, read_tree, restore

KILLS = 24


def committed_digests(jdir: Path) -> dict[str, tuple[int, str]]:
    """Per drive: its committed watermark and a hash of every byte up to it."""
    out: dict[str, tuple[int, str]] = {}
    if not jdir.exists():  # killed before the session began
        return out
    for j in journal.session_journals(jdir):
        info = j.drive
        if info.state != "formatting":
            end = luks2.DATA_OFFSET + info.log_offset
            with open(info.path, "rb") as f:
                out[info.path] = (info.log_offset, hashlib.sha256(f.read(end)).hexdigest())
        j.close()
    return out


def check_session(jdir: Path, files: dict[str, bytes], env: dict[str, str]) -> None:
    verify = subprocess.run([sys.executable, "-m", "pipeline", "verify", "--journal-dir",
                             str(jdir)], env=env, capture_output=True, timeout=300)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    pairs = []
    for j in journal.session_journals(jdir):
        pairs.append((j.drive.path, j.recovery_password))
        j.close()
    assert restore(pairs) == files


def test_sigkill_at_many_points_then_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=3000, random_mb=14, sparse_mb=24)
    files = read_tree(src)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(20261126)
    killed_points: list[str] = []
    sessions = 0
    while len(killed_points) < KILLS:
        # One session: kill it again and again, resuming each time, until a run ends by
        # itself before reaching its crash point; then check it and start another.
        sessions += 1
        jdir = tmp_path / f"j{sessions}"
        base = [sys.executable, "-m", "pipeline", "prep", "--srcdir", str(src), "--dstdir",
                "crash/test/", "--journal-dir", str(jdir), "--session-id", f"crash-{sessions}",
                "--drive-size", "32M", "--json", *FAST_KDF_ARGS]
        for n in (1, 2):
            base += ["--drive", str(tmp_path / f"s{sessions}d{n}.img")]
        started = False
        after: dict[str, tuple[int, str]] = {}
        while True:
            # Nothing has run since the last run's `after` was taken: the same bytes, and
            # the same digests (no need to hash both drives again).
            before = after if started else {}
            cmd = base + (["--resume"] if started else [])
            if len(killed_points) % 4 == 3:  # a plain kill at a random instant
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                time.sleep(rng.uniform(0.3, 1.5))
                proc.send_signal(signal.SIGKILL)
                out, err = proc.communicate()
                code, what = proc.returncode, "timed"
            else:
                point = rng.choice(faults.POINTS)
                n = rng.randint(1, 6) if point == "after_pwrite" else 1
                run = subprocess.run(cmd, env={**env, "PIPELINE_CRASH_AT": f"{point}:{n}"},
                                     capture_output=True, timeout=300)
                code, out, err, what = run.returncode, run.stdout, run.stderr, f"{point}:{n}"
            started = started or (jdir.exists() and any(jdir.glob("*.journal")))
            after = committed_digests(jdir)
            for path, (mark, digest) in before.items():
                # The journal only moves forward, and committed bytes never change.
                assert after[path][0] >= mark
                if after[path][0] == mark:  # `after` hashed the same bytes, now
                    got = after[path][1]
                else:
                    with open(path, "rb") as f:
                        got = hashlib.sha256(f.read(luks2.DATA_OFFSET + mark)).hexdigest()
                assert got == digest, f"committed data of {path} changed ({what})"
            if code == 0:
                summary = next(json.loads(x) for x in out.splitlines() if b'"summary"' in x)
                if before:  # a resume: it skipped what was committed, read only the rest
                    assert summary["bytes_read"] + summary["skipped_bytes"] <= (
                        summary["bytes_total"])
                break
            assert code == -signal.SIGKILL, err.decode()
            killed_points.append(what)
            if len(killed_points) >= KILLS:
                started = started or (jdir.exists() and any(jdir.glob("*.journal")))
                final = base + (["--resume"] if started else [])  # killed before it began?
                proc2 = subprocess.run(final, env=env, capture_output=True, timeout=300)
                assert proc2.returncode == 0, proc2.stderr.decode()
                break
        check_session(jdir, files, env)
    print(f"{sessions} sessions, kills: {killed_points}")
    assert len({p.split(":")[0] for p in killed_points}) >= 5, killed_points
