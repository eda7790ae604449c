"""``python -m perf.prep_ab TREE --base DIR``: prep against a base copy and ``tar | zstd -1 -T0``.

Interleaved cold rounds (page cache dropped before every run, as ``python -m perf``
does; as root): each round runs ``tar | zstd -1 -T0``, then the base copy of the
package (``git archive BASE pipeline | tar -x -C DIR``, with the built extension
copied in) and this tree, their order flipped every other round, each ``prep`` as
``python -m perf`` runs it (four image drives, the cheap KDF).  Prints each run's wall,
CPU, peak RSS, the load average before it and prep's per-stage busy seconds, then the
medians and ratios.  Both packages are byte-compiled first: with PYTHONDONTWRITEBYTECODE
set, a copy without ``__pycache__`` compiles every module in every run (~0.5 s of CPU).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from perf import measure
from perf.run import KDF, REPO, drive_size_for

MiB = 1 << 20
TAR = "tar | zstd -1 -T0"


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _prep_argv(data: Path, out: Path, drive_size: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "prep", "--srcdir", str(data), "--dstdir",
            "perf/run/", "--journal-dir", str(out / "j"), "--session-id", "perf-run",
            *[a for i in range(1, 5) for a in ("--drive", str(out / f"drive{i}.img"))],
            *KDF, "--json", "--drive-size", str(drive_size)]


def _busy(stdout: str) -> dict[str, float]:
    for line in stdout.splitlines():
        if line.startswith("{") and '"summary"' in line:
            return {k: round(v, 1) for k, v in json.loads(line).get("busy_s", {}).items()}
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.prep_ab",
                                description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--base", type=Path, required=True, help="a copy of the package to compare")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/var/tmp/pipeline-perf/prep-ab"))
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    args = p.parse_args(argv)
    if not measure.can_drop_caches():
        print("perf.prep_ab: cold runs need root (/proc/sys/vm/drop_caches)", file=sys.stderr)
        return 2
    data = args.data.resolve()
    nbytes = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    drive_size = drive_size_for(nbytes)
    codes = {"base": args.base.resolve(), "this": REPO}
    for code in codes.values():
        compileall.compile_dir(code / "pipeline", quiet=1)
    runs: dict[str, list[dict[str, object]]] = {TAR: [], "base": [], "this": []}
    try:
        for r in range(args.rounds):
            order = ["base", "this"] if r % 2 == 0 else ["this", "base"]
            for name in [TAR, *order]:
                shutil.rmtree(args.out, ignore_errors=True)
                (args.out / "j").mkdir(parents=True)
                measure.drop_caches()
                load = _load()
                if name == TAR:
                    s = measure.run(["bash", "-o", "pipefail", "-c",
                                     f"tar -cf - -C '{data.parent}' '{data.name}' | "
                                     f"zstd -1 -T0 -q > '{args.out / 'tar.zst'}'"])
                    busy: dict[str, float] = {}
                else:
                    env = dict(os.environ, PYTHONPATH=str(codes[name]))
                    s = measure.run(_prep_argv(data, args.out, drive_size), cwd=codes[name],
                                    env=env)
                    busy = _busy(s.stdout)
                runs[name].append({"round": r + 1, "wall_s": round(s.wall_s, 2),
                                   "cpu_s": round(s.cpu_s, 2),
                                   "peak_rss_mib": round(s.peak_rss / MiB, 1), "load": load,
                                   "busy_s": busy})
                print(f"round {r + 1} {name:18s} {s.wall_s:6.2f} s  CPU {s.cpu_s:6.2f} s  "
                      f"peak RSS {s.peak_rss / MiB:6.1f} MiB  load {load}  {busy or ''}",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(args.out, ignore_errors=True)
    tar = statistics.median(float(x["wall_s"]) for x in runs[TAR])  # type: ignore[arg-type]
    for name, rows in runs.items():
        wall = statistics.median(float(x["wall_s"]) for x in rows)  # type: ignore[arg-type]
        cpu = statistics.median(float(x["cpu_s"]) for x in rows)  # type: ignore[arg-type]
        print(f"{name:18s} median {wall:6.2f} s  ratio to {TAR} {tar / wall:5.2f}x  "
              f"CPU {cpu:6.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"data": str(data), "bytes": nbytes,
                                         "base": str(codes["base"]), "runs": runs},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
