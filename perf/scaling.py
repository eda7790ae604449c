"""``python -m perf.scaling``: prep's MB/s and peak RSS against ``--threads``, on this machine.

The main harness (``python -m perf``) compares prep with C baselines on a
2-core machine; this asks the other question, how prep scales with cores, on
whatever machine it runs on.  It needs neither root nor loop devices (image
drives in a scratch folder), so it runs on borrowed machines too; with root it
drops the page cache before every run, otherwise the cache is warm and the
result says so.

    python -m perf.scaling --size 1G --threads 1,2,4,8,16 --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from perf import dataset, measure

MiB = 1 << 20
KDF = ["--pbkdf-memory", "8192", "--pbkdf-parallel", "2"]


def prep_argv(data: Path, out: Path, threads: int, fill: str, drive_size: int) -> list[str]:
    argv = [sys.executable, "-m", "pipeline", "prep", "--srcdir", str(data),
            "--dstdir", "perf/run/", "--journal-dir", str(out / "journals"),
            "--session-id", "perf-scaling", *KDF, "--json", "--drive-size", str(drive_size),
            "--threads", str(threads), "--fill", fill]
    for k in range(1, 5):
        argv += ["--drive", str(out / f"drive{k}.img")]
    return argv


def busy(stdout: str) -> dict[str, float]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and '"summary"' in line:
            return dict(json.loads(line).get("busy_s", {}))
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=dataset.parse_size, default=dataset.GiB)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", default="", help="comma-separated (default: 1, 2, 4, ... cores)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/pipeline-perf"))
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    threads = ([int(t) for t in args.threads.split(",")] if args.threads else
               sorted({1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores}))
    data = args.workdir / f"data-{args.size // MiB}M-s{args.seed}"
    info = dataset.ensure(data, args.size, args.seed, log=lambda m: print(m, file=sys.stderr))
    cold = measure.can_drop_caches()
    drive_size = max(64 * MiB, (int(info["bytes"]) // 3 + MiB) // MiB * MiB)
    out = args.workdir / "scaling-out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    rows: list[dict[str, Any]] = []
    for t in threads:
        for fill in ("sequential",) if t != threads[-1] else ("sequential", "parallel"):
            samples = []
            for _ in range(args.runs):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if cold:
                    measure.drop_caches()
                samples.append(measure.run(prep_argv(data, out, t, fill, drive_size),
                                           cwd=Path.cwd(), env=env))
            walls = [s.wall_s for s in samples]
            row = {"threads": t, "fill": fill, "mbps": round(info["bytes"] / statistics.median(
                walls) / 1e6, 1), "wall_s": [round(w, 2) for w in walls],
                "peak_rss_mib": round(max(s.peak_rss for s in samples) / MiB, 1),
                "cpu_s": round(statistics.median(s.cpu_s for s in samples), 1),
                "busy_s": busy(samples[-1].stdout)}
            rows.append(row)
            print(f"  --threads {t:2d} {fill:10s} {row['mbps']:7.1f} MB/s  "
                  f"peak RSS {row['peak_rss_mib']:6.1f} MiB  cpu {row['cpu_s']:5.1f} s",
                  file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    doc = {"cores": cores, "python": sys.version.split()[0], "cache": "cold" if cold else "warm",
           "dataset": info, "runs": rows}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
