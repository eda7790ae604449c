"""``python -m perf.filecount --counts 10000,100000``: peak RSS against the number of files.

For each count, a tree of that many small files (64 B to 2 KiB, 100 to a folder; built
once under ``--workdir``) goes through ``prep`` (one image drive), ``verify`` and
``import --to DIR`` (a fresh ext4, ``measure.account_fs``); each command's peak RSS
(largest process and process tree, ``perf.measure``) and wall time are printed, and
``--json`` writes them.  Memory is flat in file count when a row's RSS does not grow
with its count.
"""

from __future__ import annotations

import argparse
import compileall
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from perf import measure
from perf.run import KDF, REPO, pipeline_cmd, python_env

MiB = 1 << 20


def tree(root: Path, count: int) -> Path:
    """``count`` small files under ``root`` (reused when its marker says it is whole)."""
    done = root.with_name(root.name + ".done")
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(count)
    words = [rng.randbytes(8).hex() for _ in range(500)]
    for i in range(count):
        folder = root / f"d{i // 10000:03d}" / f"e{(i // 100) % 100:02d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        n = rng.randrange(64, 2048)
        text = " ".join(rng.choices(words, k=n // 16 + 1)).encode()[:n]
        (folder / f"f{i:07d}.txt").write_bytes(text)
    done.touch()
    return root


def one(count: int, workdir: Path, steps: list[str] | None = None,
        keep: bool = False, code: Path = REPO) -> dict[str, object]:
    """Run ``steps`` (default all three) on ``count`` files with the package in ``code``.
    ``keep``: the prepped drive and journal stay in ``fc-keep-COUNT`` and a run without
    prep reuses them (repeat verify and import rounds on one drive)."""
    data = tree(workdir / f"files-{count}", count)
    out = workdir / (f"fc-keep-{count}" if keep else "fc-out")
    account_img = out.with_name(out.name + "-account.img")
    wanted = steps or ["prep", "verify", "import"]
    if "prep" in wanted or not keep:
        shutil.rmtree(out, ignore_errors=True)
        (out / "j").mkdir(parents=True)
    elif not (out / "d1.img").exists():
        raise SystemExit(f"no kept drive in {out}: run --keep with prep first")
    env = python_env()
    if code != REPO:
        env["PYTHONPATH"] = str(code)
    row: dict[str, object] = {"files": count, "code": str(code)}
    size = (count * 6144 + 128 * MiB) // MiB * MiB
    steps = {
        "prep": pipeline_cmd("prep", "--source", str(data), "--dstdir", "perf/fc/",
                             "--journal-dir", str(out / "j"), "--session-id", "filecount",
                             "--drive", str(out / "d1.img"), "--drive-size", str(size), *KDF,
                             "--json"),
        "verify": pipeline_cmd("verify", "--journal-dir", str(out / "j"), "--json"),
        "import": pipeline_cmd("import", "--drive", str(out / "d1.img"), "--journal-dir",
                               str(out / "j"), "--to", str(out / "acct" / "a"), "--log-dir",
                               str(out / "logs"), "--json"),
    }
    try:
        for name, argv in steps.items():
            if name not in wanted:
                continue
            if name == "import":
                shutil.rmtree(out / "logs", ignore_errors=True)
                # ext4 makes an inode per 16 KiB: room for every file and its partial copy
                measure.account_fs(out / "acct", account_img,
                                   f"{max(8, -(-count * 32 // (1 << 20)))}G")
                (out / "acct" / "a").mkdir()
                (out / "logs").mkdir()
            s = measure.run(argv, cwd=code, env=env)
            row[name] = {"wall_s": round(s.wall_s, 2), "cpu_s": round(s.cpu_s, 2),
                         "maxrss_mib": round(s.maxrss / MiB, 1),
                         "tree_rss_mib": round(s.tree_rss / MiB, 1)}
            print(f"{count:>9d} files  {name:7s} {s.wall_s:7.2f} s  CPU {s.cpu_s:7.2f} s  "
                  f"largest process {s.maxrss / MiB:6.1f} MiB  tree {s.tree_rss / MiB:6.1f} MiB"
                  + ("" if code == REPO else f"  ({code})"), file=sys.stderr)
    finally:
        subprocess.run(["umount", str(out / "acct")], capture_output=True)
        account_img.unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.filecount",
                                description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="10000,100000",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/pipeline-perf"))
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--steps", default=None, type=lambda s: s.split(","),
                   help="some of prep,verify,import (default: all three)")
    p.add_argument("--keep", action="store_true",
                   help="keep each count's drive and journal (fc-keep-COUNT under --workdir); "
                        "--steps without prep reuses them")
    p.add_argument("--rounds", type=int, default=1, help="run the steps this many times")
    p.add_argument("--base", type=Path, default=None,
                   help="another copy of the package (e.g. git archive of a base commit): "
                        "each round runs it, then this tree (interleaved A/B, same load)")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    codes = [REPO] if args.base is None else [args.base.resolve(), REPO]
    for code in codes:  # with PYTHONDONTWRITEBYTECODE set, a copy without __pycache__
        compileall.compile_dir(code / "pipeline", quiet=1)  # compiles it in every run
    rows = [one(n, args.workdir, args.steps, args.keep, code)
            for _ in range(args.rounds) for n in args.counts for code in codes]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
