"""``python -m perf.planmem --files 100000``: bytes a file of import's and verify's records.

Builds (once, under ``--workdir``) ``perf.filecount``'s tree of small files and prep's
drive of it, then measures with tracemalloc what stays allocated after import's plan
(``receive.plan.plan_drive``, from the journal as ``perf.filecount`` imports: its rows
are in a scratch SQLite database, so ~0 B a file) and after verify's plan (the journal's
segments and its index's digest; the rows are read a window at a time), divided by the
file count, with the largest allocation sites and each one's peak (the journal's index
built to be digested is the peak of verify's): where memory grows with file count, and
by how much, without running a whole import.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from perf.filecount import tree
from perf.run import KDF, REPO, pipeline_cmd, python_env

MiB = 1 << 20


def drive(files: int, workdir: Path) -> tuple[Path, Path]:
    """prep's drive and journal directory of ``files`` small files (reused when whole)."""
    out = workdir / f"planmem-{files}"
    img, jdir = out / "d1.img", out / "j"
    if (out / "done").exists():
        return img, jdir
    shutil.rmtree(out, ignore_errors=True)
    jdir.mkdir(parents=True)
    data = tree(workdir / f"files-{files}", files)
    size = (files * 6144 + 128 * MiB) // MiB * MiB
    subprocess.run(pipeline_cmd("prep", "--source", str(data), "--dstdir", "perf/fc/",
                                "--journal-dir", str(jdir), "--session-id", "planmem",
                                "--drive", str(img), "--drive-size", str(size), *KDF),
                   cwd=REPO, env=python_env(), check=True, capture_output=True)
    (out / "done").touch()
    return img, jdir


def traced(files: int, build: Any, top: int) -> dict[str, Any]:
    """What ``build()`` leaves allocated (its result kept alive), a file's share of it."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = build()
    gc.collect()
    after = tracemalloc.take_snapshot()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in stats)
    del kept
    return {"bytes_per_file": round(held / files), "held_mib": round(held / MiB, 1),
            "peak_mib": round(peak / MiB, 1),
            "top": [f"{s.size_diff / files:7.0f} B/file  {s.traceback[0].filename.split('/')[-1]}"
                    f":{s.traceback[0].lineno}" for s in stats[:top]]}


def main(argv: list[str] | None = None) -> int:
    from pipeline import credentials, journal
    from pipeline.receive import plan, verify
    from pipeline.receive import reader as driveread

    p = argparse.ArgumentParser(prog="python -m perf.planmem",
                                description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100000)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/pipeline-perf"))
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args(argv)
    img, jdir = drive(args.files, args.workdir)
    jrn = journal.session_journals(jdir)[0]
    key = credentials.Secret(jrn.recovery_password.encode(), "recovery password")
    od = driveread.unlock_drive(str(img), key.value, key.kind, expected_uuid=jrn.drive.uuid,
                                recorded=driveread.recorded_superblock(jrn))
    try:
        out = {"files": args.files,
               "import_plan": traced(args.files, lambda: plan.plan_drive(od, jrn), args.top),
               "verify_plan": traced(args.files, lambda: verify._plan(jrn), args.top)}
    finally:
        od.close()
    for name in ("import_plan", "verify_plan"):
        r = out[name]
        print(f"{name}: {r['bytes_per_file']} B a file held ({r['held_mib']} MiB), "
              f"peak {r['peak_mib']} MiB", file=sys.stderr)
        for line in r["top"]:
            print("   " + line, file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
