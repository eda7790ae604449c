"""``python -m perf.quick DATA``: the receiving side's ratios in a minute, for tuning.

Preps ``DATA`` once onto one image drive, then runs ``--runs`` rounds of
``tar | zstd -1 -T0``, ``verify``, ``import --to DIR`` and the write floor
(``zstd -dc | tar -x`` of the same tree into the same kind of fresh ext4,
``measure.floor_argv``), interleaved so that the machine's load hits all alike, and
prints the medians, the ratios the issue sets (verify >= 2.5x, import >= 2.0x) and
import against the floor.  Page cache warm (the data is read before each round) or,
with ``--cache cold``, dropped before each run (as ``python -m perf`` does; root); the
load average is printed with every round, since other work on the machine moves the
figures.  ``--base DIR`` (a worktree of another commit, e.g. ``git worktree add DIR
HEAD~1``, its compiled modules copied in) adds ``import (base)``, that tree's import, in
the same rounds: an interleaved A/B.  ``--profile`` runs verify and import once
more each under ``py-spy record --gil`` and prints where the GIL was held.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from perf import measure
from perf.profile import RATE, pyspy_summary
from perf.run import KDF, REPO, pipeline_cmd, python_env

MiB = 1 << 20


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def prep(data: Path, out: Path, nbytes: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "j").mkdir(parents=True)
    size = (nbytes + 64 * MiB) // MiB * MiB
    measure.run(pipeline_cmd("prep", "--source", str(data), "--dstdir", "perf/run/",
                             "--journal-dir", str(out / "j"), "--session-id", "quick",
                             "--drive", str(out / "d1.img"), "--drive-size", str(size),
                             *KDF, "--json"), cwd=REPO, env=python_env())


FLOOR = "write floor"
BASE = "import (base)"


def commands(data: Path, out: Path) -> dict[str, list[str]]:
    acct, logs = out / "account" / "acct", out / "logs"
    return {
        "tar | zstd -1 -T0": ["bash", "-o", "pipefail", "-c",
                              f"tar -cf - -C '{data.parent}' '{data.name}' | zstd -1 -T0 -q "
                              f"> '{out / 'tar.zst'}'"],
        "verify": pipeline_cmd("verify", "--journal-dir", str(out / "j"), "--json"),
        "import --to DIR": pipeline_cmd("import", "--drive", str(out / "d1.img"),
                                        "--journal-dir", str(out / "j"), "--to", str(acct),
                                        "--log-dir", str(logs), "--json"),
        FLOOR: measure.floor_argv(out / "floor.tar.zst", out / "account"),
    }


def reset(out: Path) -> None:
    """Empty outputs; the account on a fresh file system (see ``account_fs``)."""
    measure.account_fs(out / "account", out / "account.img")
    shutil.rmtree(out / "logs", ignore_errors=True)
    (out / "logs").mkdir()
    (out / "account" / "acct").mkdir()
    (out / "tar.zst").unlink(missing_ok=True)


def warm(data: Path) -> None:
    subprocess.run(["sh", "-c", f"tar -cf - -C '{data.parent}' '{data.name}' | cat >/dev/null"],
                   check=True)


def settle(data: Path, cache: str) -> None:
    """The page cache before a timed run: the data read (warm) or dropped (cold)."""
    if cache == "cold":
        measure.drop_caches()
    else:
        warm(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.quick", description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=Path("/var/tmp/pipeline-perf/quick"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="keep the drive of an earlier run")
    p.add_argument("--only", default="",
                   help="comma-separated subset of verify,import,write (the floor)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cache", choices=("warm", "cold"), default="warm",
                   help="page cache before each run: warm = the data read, cold = dropped")
    p.add_argument("--base", type=Path, default=None,
                   help="another checkout whose import runs in the same rounds (A/B)")
    args = p.parse_args(argv)
    data = args.data.resolve()
    nbytes = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    if not (args.reuse and (args.out / "d1.img").exists()):
        prep(data, args.out, nbytes)
    measure.floor_archive(data, args.out / "floor.tar.zst")  # untimed, once
    cmds = commands(data, args.out)
    if args.base is not None:
        cmds[BASE] = cmds["import --to DIR"]
    if args.only:
        keep = {"tar | zstd -1 -T0"} | {k for k in cmds if k.split()[0] in args.only.split(",")}
        cmds = {k: v for k, v in cmds.items() if k in keep}
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    cpus: dict[str, list[float]] = {k: [] for k in cmds}
    env = python_env()
    for i in range(args.runs):
        for key, argv_ in cmds.items():
            reset(args.out)
            settle(data, args.cache)
            before = load()
            if key == BASE:  # the other checkout's code, from its own directory
                s = measure.run(argv_, cwd=args.base, env={**env, "PYTHONPATH": str(args.base)})
            else:
                s = measure.run(argv_, cwd=REPO, env=env)
            walls[key].append(s.wall_s)
            cpus[key].append(s.cpu_s)
            print(f"round {i + 1} {key:20s} {s.wall_s:6.2f} s {nbytes / s.wall_s / 1e6:7.1f} "
                  f"MB/s cpu {s.cpu_s:5.2f} s rss {s.peak_rss / MiB:6.1f} MiB load {before}",
                  file=sys.stderr)
    base = statistics.median(walls["tar | zstd -1 -T0"])
    for key, w in walls.items():
        m = statistics.median(w)
        print(f"{key:20s} median {m:6.2f} s {nbytes / m / 1e6:7.1f} MB/s  ratio {base / m:5.2f}x"
              f"  cpu {statistics.median(cpus[key]):5.2f} s")
    if walls.get(FLOOR) and walls.get("import --to DIR"):
        f = statistics.median(walls[FLOOR]) / statistics.median(walls["import --to DIR"])
        print(f"import / write floor {f:5.2f}x (MB/s of import over MB/s of the floor)")
        per = [fl / im for fl, im in zip(walls[FLOOR], walls["import --to DIR"], strict=True)]
        print("  per round: " + " ".join(f"{x:.2f}" for x in per))
    if walls.get(BASE) and walls.get("import --to DIR"):
        faster = sum(b > n for b, n in zip(walls[BASE], walls["import --to DIR"], strict=True))
        print(f"import against base: faster in {faster} of {len(walls[BASE])} rounds; "
              f"median {statistics.median(walls[BASE]):.2f} -> "
              f"{statistics.median(walls['import --to DIR']):.2f} s, cpu "
              f"{statistics.median(cpus[BASE]):.2f} -> "
              f"{statistics.median(cpus['import --to DIR']):.2f} s")
    if args.profile:
        for key in cmds:
            if key.startswith("tar") or key in (FLOOR, BASE):
                continue
            reset(args.out)
            settle(data, args.cache)
            raw = args.out / "pyspy.txt"
            t = time.perf_counter()
            measure.run(["py-spy", "record", "--gil", "--threads", "-r", str(RATE), "-f", "raw",
                         "-o", str(raw), "--", *cmds[key]], cwd=REPO, env=env)
            summ = pyspy_summary(raw, time.perf_counter() - t)
            print(f"\n{key} under py-spy --gil: GIL held {summ['gil_held_pct']}% of wall "
                  f"{summ['wall_s']} s; {summ['by_thread_pct']}")
            for k, v in summ["top_leaf_pct"].items():
                print(f"  {v:5.1f}%  {k}")
            print("  pipeline, inclusive:")
            for k, v in summ["top_pipeline_inclusive_pct"].items():
                print(f"  {v:5.1f}%  {k}")
    subprocess.run(["umount", str(args.out / "account")], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
