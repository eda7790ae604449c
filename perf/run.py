"""``python -m perf``: MB/s and peak RSS of prep, verify and import against C baselines.

One run, one dataset (``perf/dataset.py``), every contender measured ``--runs`` times,
round-robin so that drift hits all of them alike:

- baselines a Linux operator would use: ``dd`` to the target file system,
  ``tar | cat``, ``tar | zstd -1 -T0``, ``tar | zstd -3 -T0`` (each into an image file);
- ``prep`` (sequential spill and parallel fill onto 4 image drives on the same disk,
  ``--level 3``, ``--threads 1``), ``verify``, and ``import --to DIR`` (local account);
- four loop devices throttled like SATA disks (cgroup blkio / io.max):
  sequential spill vs parallel fill, against the drives' aggregate bandwidth;
- peak RSS of prep at each ``--rss-sizes`` size (it must not grow);
- backup against restic (Debian's 0.14) on the real-data tree: the initial backup and a
  second one with nothing changed (``perf/backup_bench.py``; ``--no-backup`` skips it);
- where prep's time goes: its own per-stage busy counters (``--json`` summary), and with
  ``--profile`` a Trio run-loop probe and a py-spy GIL profile.

MB/s is input bytes (the dataset's logical size: holes count, as tar reads them) per
wall-clock second of the whole command, from start to exit (interpreter start, drive
formatting and closing included).  Keyslots use a cheap KDF (``--pbkdf-memory 8192
--pbkdf-parallel 2``) so that key derivation, which is meant to be slow, does not
count as throughput.  By default the page cache is dropped (``sync; echo 3 >
/proc/sys/vm/drop_caches``) before every timed run: every contender reads the dataset
from disk (``--cache warm`` reads it into the cache before every run instead).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perf import azure_import, dataset, measure, realdata
from perf.measure import Sample, Series
from perf.throttle import NoThrottle, Throttle

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]
KDF = ["--pbkdf-memory", "8192", "--pbkdf-parallel", "2"]
RSS_LIMIT = 300 * MiB

# Row keys, in table order.
DD, CAT, Z1, Z3 = "dd write", "tar | cat", "tar | zstd -1 -T0", "tar | zstd -3 -T0"
SEQ, PAR, SEQ3 = "prep sequential", "prep parallel", "prep sequential --level 3"
VERIFY, IMPORT = "verify", "import --to DIR"
FLOOR = "write floor: zstd -dc | tar -x"  # the same tree unpacked into the same kind of ext4
T_SEQ, T_PAR = "prep sequential, throttled", "prep parallel, throttled"
BOUND = " (drive-bound control)"
REAL = "real: "  # prefix of the real-data tree's rows (perf/realdata.py)
AZ = "azurite: "  # prefix of the Azure rows (perf/azure_import.py: import vs upload_blob)
# Issue 18: ratio of medians against tar | zstd -1 -T0 on the same tree, same run.
TARGETS = ((SEQ, 0.90), (VERIFY, 2.5), (IMPORT, 2.0))


def threads_key(n: int) -> str:
    return f"prep sequential --threads {n}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Ctx:
    args: argparse.Namespace
    data: Path
    info: dict[str, Any]
    out: Path  # scratch for one run's outputs: emptied before every run
    env: dict[str, str]
    drive_size: int
    series: dict[str, Series] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return int(self.info["bytes"])

    def add(self, key: str) -> Series:
        return self.series.setdefault(key, Series(key, self.nbytes))


# ------------------------------------------------------------------------------- helpers


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def pipeline_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def prepare_cache(ctx: Ctx) -> None:
    """The same page-cache state before every timed run: cold (dropped) or warm (read)."""
    if ctx.args.cache == "cold":
        measure.drop_caches()
    else:
        subprocess.run(["sh", "-c", f"tar -cf - -C '{ctx.data.parent}' '{ctx.data.name}' "
                        "| cat > /dev/null"], check=True)
        os.sync()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def prep_summary(sample: Sample) -> dict[str, Any]:
    """The bits of prep's --json summary the report needs (no recovery passwords)."""
    events = json_lines(sample.stdout)
    summary = next((e for e in reversed(events) if e.get("type") == "summary"), None)
    if summary is None:
        raise measure.CommandFailed("prep printed no summary event")
    drives = [{"path": d["path"], "state": d["state"], "used": d["used"],
               "capacity": d["capacity"]} for d in summary.get("drives", [])]
    # Steady state: log bytes written per second from the first progress event that shows
    # data written to the summary (drive formatting before the first byte excluded).
    ticks = [(e["t"], e["bytes_written"]) for e in events
             if e.get("type") in ("progress", "summary") and e.get("bytes_written")]
    steady = None
    if len(ticks) >= 2 and ticks[-1][0] > ticks[0][0]:
        steady = round((ticks[-1][1] - ticks[0][1]) / (ticks[-1][0] - ticks[0][0]) / 1e6, 1)
    return {"elapsed_s": summary["elapsed_s"], "busy_s": summary.get("busy_s", {}),
            "steady_write_mbps": steady,
            "bytes_written": summary.get("bytes_written"),
            "bytes_stored": summary.get("bytes_stored"),
            "zero_bytes": summary.get("zero_bytes"), "drives": drives,
            "cpu_s": round(sample.cpu_s, 2)}


def prep_argv(ctx: Ctx, drives: list[str], *extra: str, image: bool = True) -> list[str]:
    args = ["prep", "--srcdir", str(ctx.data), "--dstdir", "perf/run/",
            "--journal-dir", str(ctx.out / "journals"), "--session-id", "perf-run",
            *[a for d in drives for a in ("--drive", d)], *KDF, "--json", *extra]
    if image:
        args += ["--drive-size", str(ctx.drive_size)]
    return pipeline_cmd(*args)


def timed(ctx: Ctx, key: str, argv: list[str], *, cgroup: Path | None = None,
          after: Callable[[Sample], dict[str, Any]] | None = None) -> Sample:
    prepare_cache(ctx)
    sample = measure.run(argv, cwd=REPO, env=ctx.env, cgroup=cgroup)
    series = ctx.add(key)
    series.samples.append(sample)
    extra = after(sample) if after else {}
    series.extra.append(extra)
    rate = ctx.nbytes / sample.wall_s / 1e6
    log(f"  {key:34s} {sample.wall_s:7.2f} s {rate:8.1f} MB/s  "
        f"peak RSS {sample.peak_rss / MiB:6.1f} MiB  cpu {sample.cpu_s:6.1f} s")
    return sample


# ------------------------------------------------------------------------------- contenders


def run_baselines(ctx: Ctx) -> None:
    img = ctx.out / "image"
    src = f"tar -cf - -C '{ctx.data.parent}' '{ctx.data.name}'"
    fresh(ctx.out)
    count = -(-ctx.nbytes // MiB)
    timed(ctx, DD, ["dd", "if=/dev/zero", f"of={img}", "bs=1M", f"count={count}",
                    "conv=fdatasync", "status=none"])
    for key, sink in ((CAT, "cat"), (Z1, "zstd -1 -T0 -q"), (Z3, "zstd -3 -T0 -q")):
        fresh(ctx.out)
        timed(ctx, key, ["bash", "-o", "pipefail", "-c", f"{src} | {sink} > '{img}'"],
              after=lambda s, img=img: {"image_bytes": img.stat().st_size})
    fresh(ctx.out)


def images(ctx: Ctx, n: int = 4) -> list[str]:
    return [str(ctx.out / f"drive{i}.img") for i in range(1, n + 1)]


def run_prep_family(ctx: Ctx) -> None:
    cores = os.cpu_count() or 2
    # prep sequential (the defaults), then verify and import of what it wrote.
    fresh(ctx.out)
    s = timed(ctx, SEQ, prep_argv(ctx, images(ctx)), after=prep_summary)
    used = [d["path"] for d in prep_summary(s)["drives"]]
    timed(ctx, VERIFY, pipeline_cmd("verify", "--journal-dir", str(ctx.out / "journals"),
                                    "--json"))
    run_import(ctx, IMPORT, used)
    run_floor(ctx, FLOOR)
    fresh(ctx.out)
    timed(ctx, PAR, prep_argv(ctx, images(ctx), "--fill", "parallel"), after=prep_summary)
    fresh(ctx.out)
    timed(ctx, SEQ3, prep_argv(ctx, images(ctx), "--level", "3"), after=prep_summary)
    for n in sorted({1, 2, cores}):
        if n == cores:
            continue  # the default run above is this one
        fresh(ctx.out)
        timed(ctx, threads_key(n), prep_argv(ctx, images(ctx), "--threads", str(n)),
              after=prep_summary)
    fresh(ctx.out)


def run_import(ctx: Ctx, key: str, drives: list[str]) -> None:
    """import --to DIR into a fresh ext4 file system (``measure.account_fs``)."""
    mnt, logs = ctx.out / "account", ctx.out / "copylogs"
    measure.account_fs(mnt, ctx.args.workdir / "account.img")
    acct = mnt / "acct"
    acct.mkdir()
    logs.mkdir(exist_ok=True)
    try:
        timed(ctx, key, pipeline_cmd("import", *[a for d in drives for a in ("--drive", d)],
                                     "--journal-dir", str(ctx.out / "journals"), "--to",
                                     str(acct), "--log-dir", str(logs), "--json"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        (ctx.args.workdir / "account.img").unlink(missing_ok=True)


def run_floor(ctx: Ctx, key: str) -> None:
    """The write floor (``measure.floor_argv``) into a fresh ext4 like import's; its archive
    made untimed, once per tree."""
    archive = measure.floor_archive(ctx.data, ctx.args.workdir / f"floor-{ctx.data.name}.tar.zst")
    mnt = ctx.out / "account"
    measure.account_fs(mnt, ctx.args.workdir / "account.img")
    try:
        timed(ctx, key, measure.floor_argv(archive, mnt))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        (ctx.args.workdir / "account.img").unlink(missing_ok=True)


def run_real(ctx: Ctx) -> None:
    """One round on the real-data tree: tar | zstd -1, prep (defaults), verify, import."""
    fresh(ctx.out)
    src = f"tar -cf - -C '{ctx.data.parent}' '{ctx.data.name}'"
    img = ctx.out / "image"
    timed(ctx, REAL + Z1, ["bash", "-o", "pipefail", "-c", f"{src} | zstd -1 -T0 -q > '{img}'"])
    fresh(ctx.out)
    s = timed(ctx, REAL + SEQ, prep_argv(ctx, images(ctx)), after=prep_summary)
    used = [d["path"] for d in prep_summary(s)["drives"]]
    timed(ctx, REAL + VERIFY, pipeline_cmd("verify", "--journal-dir", str(ctx.out / "journals"),
                                           "--json"))
    run_import(ctx, REAL + IMPORT, used)
    run_floor(ctx, REAL + FLOOR)
    fresh(ctx.out)


def run_throttled(ctx: Ctx, mbps: float, runs: int, suffix: str = "") -> dict[str, Any]:
    """Sequential spill vs parallel fill onto ``--drives`` loop devices at ``mbps`` each."""
    a = ctx.args
    seq, par = T_SEQ + suffix, T_PAR + suffix
    result: dict[str, Any] = {"drives": a.drives, "limit_mbps_each": mbps,
                              "aggregate_mbps": mbps * a.drives, "drive_size": ctx.drive_size,
                              "dataset_bytes": ctx.nbytes, "keys": [seq, par]}
    try:
        with Throttle(a.workdir / "loops", a.drives, ctx.drive_size, int(mbps * 1e6)) as thr:
            result["cgroup"] = f"{thr.kind} ({thr.cgroup})"
            check = thr.check()
            result["check"] = check
            log(f"  throttle check ({thr.kind}): dd direct {check['dd_direct_in_cgroup_mbps']}"
                f" MB/s, dd + fdatasync {check['dd_fdatasync_in_cgroup_mbps']} MB/s in the "
                f"cgroup; {check['dd_fdatasync_outside_mbps']} MB/s outside; limit "
                f"{mbps:g} MB/s: {'bites' if check['bites'] else 'DOES NOT BITE'}")
            for _ in range(runs):
                for key, extra in ((seq, ()), (par, ("--fill", "parallel"))):
                    fresh(ctx.out)
                    before = thr.charged()
                    s = timed(ctx, key, prep_argv(ctx, thr.devices, "--yes", *extra,
                                                  image=False),
                              cgroup=thr.cgroup, after=prep_summary)
                    after = thr.charged()
                    summ = ctx.series[key].extra[-1]
                    summ["charged_bytes"] = sum(after.get(d, 0) - before.get(d, 0)
                                                for d in thr.devices)
                    summ["stored_mbps"] = round(summ["bytes_written"] / s.wall_s / 1e6, 1)
    except NoThrottle as exc:
        result["error"] = str(exc)
        log(f"  throttled scenario skipped: {exc}")
    fresh(ctx.out)
    for key in (seq, par):
        s = ctx.series.get(key)
        if s and s.samples:
            result[key] = {
                "mbps": round(s.mbps, 1),
                "stored_mbps": round(statistics.median(e["stored_mbps"] for e in s.extra), 1),
                "steady_write_mbps": statistics.median(e["steady_write_mbps"] or 0.0
                                                       for e in s.extra),
                "drives_used": statistics.median(len(e["drives"]) for e in s.extra),
                "charged_bytes": sum(e["charged_bytes"] for e in s.extra),
                "bytes_written": sum(e["bytes_written"] for e in s.extra)}
    if seq in result and par in result:
        result["parallel_over_sequential"] = round(result[par]["mbps"] / result[seq]["mbps"], 3)
        if result[seq]["steady_write_mbps"]:
            result["steady_parallel_over_sequential"] = round(
                result[par]["steady_write_mbps"] / result[seq]["steady_write_mbps"], 3)
    return result


def run_drive_bound(ctx: Ctx) -> dict[str, Any]:
    """Control: drives slow enough that they, not prep, are the limit."""
    a = ctx.args
    root = a.workdir / f"data-{a.bound_size // MiB}M-s{a.seed}"
    info = dataset.ensure(root, a.bound_size, a.seed, log=log)
    sub = Ctx(a, root, info, ctx.out, ctx.env, drive_size=drive_size_for(int(info["bytes"])))
    res = run_throttled(sub, a.bound_mbps, 1, BOUND)
    ctx.series.update(sub.series)
    return res


def run_rss_sizes(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for size in ctx.args.rss_sizes:
        if size == ctx.args.size and SEQ in ctx.series:
            s = ctx.series[SEQ]
            out.append({"size": size, "bytes": ctx.nbytes, "files": ctx.info["files"],
                        "peak_rss": s.peak_rss, "mbps": round(s.mbps, 1), "runs": len(s.samples)})
            continue
        root = ctx.args.workdir / f"data-{size // MiB}M-s{ctx.args.seed}"
        info = dataset.ensure(root, size, ctx.args.seed, log=log)
        sub = Ctx(ctx.args, root, info, ctx.out, ctx.env,
                  drive_size=drive_size_for(int(info["bytes"])))
        fresh(sub.out)
        sample = timed(sub, f"{SEQ} ({dataset.human(size)})", prep_argv(sub, images(sub)),
                       after=prep_summary)
        fresh(sub.out)
        out.append({"size": size, "bytes": info["bytes"], "files": info["files"],
                    "peak_rss": sample.peak_rss,
                    "mbps": round(int(info["bytes"]) / sample.wall_s / 1e6, 1), "runs": 1})
        ctx.series[f"rss {size}"] = sub.series[f"{SEQ} ({dataset.human(size)})"]
    return out


def drive_size_for(nbytes: int) -> int:
    """Four drives that hold the data even if nothing compresses; sequential spills."""
    return (nbytes // 4 + 64 * MiB + MiB - 1) // MiB * MiB


# ------------------------------------------------------------------------------- analysis


def stage_profile(series: Series) -> dict[str, Any]:
    """Median per-stage busy seconds of prep's own counters, as a share of its elapsed_s."""
    runs = [e for e in series.extra if e.get("busy_s")]
    if not runs:
        return {}
    stages = sorted({k for e in runs for k in e["busy_s"]})
    elapsed = statistics.median(e["elapsed_s"] for e in runs)
    busy = {k: statistics.median(e["busy_s"].get(k, 0.0) for e in runs) for k in stages}
    cpu = statistics.median(e["cpu_s"] for e in runs)
    wall = statistics.median(s.wall_s for s in series.samples)
    return {"elapsed_s": elapsed, "wall_s": round(wall, 3), "cpu_s": cpu,
            "cpu_share_of_cores": round(cpu / wall / (os.cpu_count() or 1), 3),
            "busy_s": busy, "busy_pct": {k: round(100 * v / elapsed, 1) for k, v in busy.items()},
            "note": "busy_s is prep's own counter per stage (wall time inside the stage's "
                    "calls, threads add up); stages without a counter (reading staging, "
                    "the Trio thread's own work) are not in it"}


def ratio(ctx: Ctx, key: str, base: str) -> float | None:
    a, b = ctx.series.get(key), ctx.series.get(base)
    if not a or not b or not a.samples or not b.samples:
        return None
    return a.mbps / b.mbps


def baseline_of(key: str) -> str:
    if key.startswith(AZ):
        return AZ + azure_import.UPLOAD
    if key.startswith(REAL):
        return REAL + Z1
    return Z3 if "--level 3" in key or key == Z3 else Z1


def receiving_table(ctx: Ctx) -> list[dict[str, Any]]:
    """Every ratio issue 18 sets, for each tree measured: value, target, pass."""
    out = []
    for tree, prefix in (("synthetic", ""), ("real", REAL)):
        for key, target in TARGETS:
            r = ratio(ctx, prefix + key, prefix + Z1)
            if r is None:
                continue
            s = ctx.series[prefix + key]
            row = {"tree": tree, "command": key, "mbps": round(s.mbps, 1),
                   "ratio": round(r, 3), "target": target, "ok": r >= target,
                   "peak_rss_mib": round(s.peak_rss / MiB, 1)}
            f = ratio(ctx, prefix + key, prefix + FLOOR) if key == IMPORT else None
            if f is not None:
                row["vs_floor"] = round(f, 3)  # import / the write floor: what is ours
            out.append(row)
    r = ratio(ctx, AZ + azure_import.IMPORT, AZ + azure_import.UPLOAD)
    if r is not None:
        s = ctx.series[AZ + azure_import.IMPORT]
        out.append({"tree": "azurite", "command": "import vs upload_blob", "mbps": round(s.mbps, 1),
                    "ratio": round(r, 3), "target": 1.0, "ok": r >= 1.0,
                    "peak_rss_mib": round(s.peak_rss / MiB, 1)})
    return out


def format_receiving(rows: list[dict[str, Any]]) -> str:
    lines = [f"  {'tree':10s} {'command':18s} {'MB/s':>8s} {'ratio':>7s} {'target':>7s}  "
             f"{'peak RSS':>9s}"]
    for r in rows:
        floor = f"  (import / write floor {r['vs_floor']:.2f}x)" if "vs_floor" in r else ""
        lines.append(f"  {r['tree']:10s} {r['command']:18s} {r['mbps']:8.1f} "
                     f"{r['ratio']:6.2f}x {r['target']:6.2f}x  {r['peak_rss_mib']:6.1f} MiB  "
                     f"{'PASS' if r['ok'] else 'FAIL'}{floor}")
    return "\n".join(lines)


def criteria(ctx: Ctx, throttled: list[dict[str, Any]], rss: list[dict[str, Any]],
             elapsed: float) -> list[dict[str, Any]]:
    out = []
    out.append({"n": 1, "what": f"python -m perf completes in under 10 minutes "
                f"(--size {dataset.human(ctx.args.size)})",
                "value": round(elapsed, 1), "unit": "s", "ok": elapsed < 600})
    r = ratio(ctx, SEQ, Z1)
    out.append({"n": 2, "what": "prep (level 1, defaults) / tar | zstd -1 -T0 >= 0.8",
                "value": None if r is None else round(r, 3), "unit": "x",
                "ok": r is not None and r >= 0.8})
    out.append(criterion_3(ctx, throttled))
    peaks = [x["peak_rss"] for x in rss] or ([ctx.series[SEQ].peak_rss] if SEQ in ctx.series
                                             else [])
    grow = len(rss) > 1 and rss[-1]["peak_rss"] > rss[0]["peak_rss"] * 1.10
    out.append({"n": 4, "what": "prep peak RSS < 300 MiB and not growing with the data size",
                "value": [round(p / MiB, 1) for p in peaks], "unit": "MiB",
                "sizes": [dataset.human(x["size"]) for x in rss],
                "ok": bool(peaks) and max(peaks) < RSS_LIMIT and not grow,
                "note": "" if len(rss) > 1 else "one size only: growth not measured "
                "(use --rss-sizes 1G,4G)"})
    return out


def offered_mbps(ctx: Ctx) -> float | None:
    """MB/s of log that unthrottled parallel fill writes: what prep can offer drives here."""
    par = ctx.series.get(PAR)
    if not par or not par.samples:
        return None
    return statistics.median(e["bytes_written"] / s.wall_s / 1e6
                             for e, s in zip(par.extra, par.samples, strict=True))


def criterion_3(ctx: Ctx, throttled: list[dict[str, Any]]) -> dict[str, Any]:
    """Judged where the drives are the limit: the fill mode decides only there.

    At 150 MB/s a drive takes more than prep offers on a small machine (2 cores: some
    70 MB/s of log), so every fill mode runs at prep's speed and the ratio measures the
    CPU, not the fill; then the drive-bound run is the one that answers the question.
    """
    done = [t for t in throttled if "parallel_over_sequential" in t]
    sata = next((t for t in done if BOUND not in t["keys"][0]), None)
    bound = next((t for t in done if BOUND in t["keys"][0]), None)
    offered = offered_mbps(ctx)
    judged, why = sata, ""
    if sata and bound and offered is not None and offered < sata["aggregate_mbps"]:
        judged = bound
        why = (f"judged on the drive-bound run: at {sata['limit_mbps_each']:g} MB/s per drive "
               f"prep offers {offered:.0f} MB/s of log here, less than the drives' "
               f"{sata['aggregate_mbps']:g} MB/s, and measured "
               f"{sata['parallel_over_sequential']:.2f}x")
    elif not judged:
        judged = bound
    if not judged:
        return {"n": 3, "what": "parallel / sequential on throttled drives >= 3", "value": None,
                "unit": "x", "ok": False, "note": "not measured"}
    bites = judged["check"]["bites"]
    r3 = judged["parallel_over_sequential"]
    notes = [why] if why else []
    notes.append(f"{judged.get('steady_parallel_over_sequential', 0):.2f}x once writing")
    if not bites:
        notes.append("throttle not verified; figure not meaningful")
    return {"n": 3, "what": f"parallel / sequential on {judged['drives']} drives throttled to "
            f"{judged['limit_mbps_each']:g} MB/s >= 3", "value": round(r3, 3), "unit": "x",
            "ok": bool(r3 >= 3 and bites), "note": "; ".join(notes)}


# ------------------------------------------------------------------------------- output


def table_rows(ctx: Ctx) -> list[dict[str, Any]]:
    rows = []
    order = [DD, CAT, Z1, Z3, SEQ, PAR, SEQ3,
             *sorted(k for k in ctx.series if k.startswith("prep sequential --threads")),
             VERIFY, IMPORT, FLOOR, T_SEQ, T_PAR, REAL + Z1, REAL + SEQ, REAL + VERIFY,
             REAL + IMPORT, REAL + FLOOR, AZ + azure_import.IMPORT, AZ + azure_import.UPLOAD]
    for key in order:
        s = ctx.series.get(key)
        if not s or not s.samples:
            continue
        base = baseline_of(key)
        r = ratio(ctx, key, base)
        rows.append({"name": key, "mbps": round(s.mbps, 1), "min": round(s.mbps_min, 1),
                     "max": round(s.mbps_max, 1), "runs": len(s.samples),
                     "ratio": None if r is None else round(r, 3), "vs": base,
                     "peak_rss_mib": round(s.peak_rss / MiB, 1)})
    return rows


def print_report(ctx: Ctx, rows: list[dict[str, Any]], throttled: list[dict[str, Any]],
                 rss: list[dict[str, Any]], profile: dict[str, Any],
                 crit: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    a = ctx.args
    lines = []
    p = lines.append
    p(f"dataset: {dataset.human(ctx.nbytes)} logical ({ctx.info['files']} files, "
      f"{dataset.human(int(ctx.info['allocated']))} allocated), seed {a.seed}; "
      f"{os.cpu_count()} CPUs; page cache {a.cache}"
      f"{' (dropped before every run)' if a.cache == 'cold' else ' (read before every run)'}; "
      f"median of {a.runs} runs")
    p("prep: 4 image drives on the same disk, keyslot KDF --pbkdf-memory 8192 "
      "--pbkdf-parallel 2 (cheap on purpose)")
    p("")
    p(f"{'contender':36s} {'MB/s':>8s} {'min-max':>15s} {'ratio':>7s} {'vs':18s} "
      f"{'peak RSS':>9s}")
    for r in rows:
        ratio_s = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        p(f"{r['name']:36s} {r['mbps']:8.1f} {r['min']:7.1f}-{r['max']:<7.1f} {ratio_s:>7s} "
          f"{r['vs']:18s} {r['peak_rss_mib']:6.1f} MiB")
    p("MB/s = dataset logical bytes / wall seconds of the whole command; ratio = this row's "
      "MB/s over the tar | zstd -T0 row of the same level")
    for t in throttled:
        p("")
        if "error" in t:
            p(f"throttled drives: not measured: {t['error']}")
            continue
        c = t["check"]
        p(f"throttled drives{' (drive-bound control)' if BOUND in t['keys'][0] else ''}: "
          f"{t['drives']} loop devices, {t['limit_mbps_each']:g} MB/s write each "
          f"({t['cgroup']}); aggregate {t['aggregate_mbps']:g} MB/s; dataset "
          f"{dataset.human(t['dataset_bytes'])}")
        p(f"  check on one device: dd oflag=direct {c['dd_direct_in_cgroup_mbps']} MB/s, "
          f"dd conv=fdatasync {c['dd_fdatasync_in_cgroup_mbps']} MB/s (in the cgroup), "
          f"{c['dd_fdatasync_outside_mbps']} MB/s outside it: "
          f"{'the limit bites' if c['bites'] else 'THE LIMIT DOES NOT BITE'}")
        for key in t["keys"]:
            r = t.get(key)
            if not r:
                continue
            p(f"  {key}: {r['mbps']:.1f} MB/s input, {r['stored_mbps']:.1f} MB/s of log to "
              f"the drives = {r['stored_mbps'] / t['aggregate_mbps']:.2f} of the aggregate "
              f"({r['steady_write_mbps']:.1f} MB/s once the first byte is written), "
              f"{r['drives_used']:g} drives used; the cgroup was charged "
              f"{r['charged_bytes'] / 1e6:.0f} MB for {r['bytes_written'] / 1e6:.0f} MB of "
              "log (the rest: LUKS headers)")
        if "parallel_over_sequential" in t:
            p(f"  parallel / sequential: {t['parallel_over_sequential']:.2f}x end to end, "
              f"{t.get('steady_parallel_over_sequential', 0):.2f}x in log MB/s once writing")
        offered = offered_mbps(ctx)
        if BOUND not in t["keys"][0] and offered is not None:
            p(f"  unthrottled, {PAR} writes {offered:.0f} MB/s of log: that is what the drives "
              f"are offered, against {t['limit_mbps_each']:g} MB/s for one drive")
    if rss:
        p("")
        p("prep peak RSS by data size: " + ", ".join(
            f"{dataset.human(x['size'])}: {x['peak_rss'] / MiB:.1f} MiB ({x['mbps']} MB/s, "
            f"{x['files']} files)" for x in rss))
    if profile:
        p("")
        p(f"where prep's time goes ({SEQ}, median): wall {profile['wall_s']:.2f} s, prep "
          f"elapsed_s {profile['elapsed_s']:.2f} s, CPU {profile['cpu_s']:.1f} s = "
          f"{100 * profile['cpu_share_of_cores']:.0f}% of {os.cpu_count()} cores")
        for k, v in sorted(profile["busy_s"].items(), key=lambda kv: -kv[1]):
            p(f"  {k:10s} {v:7.2f} s busy  {profile['busy_pct'][k]:5.1f}% of elapsed")
        p(f"  ({profile['note']})")
    for key, text in extra.items():
        p("")
        p(f"{key}:")
        p(text)
    p("")
    p("criteria (issue 5):")
    for c in crit:
        v = c["value"]
        vs = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        note = f"  [{c['note']}]" if c.get("note") else ""
        p(f"  {c['n']}. {'PASS' if c['ok'] else 'FAIL'}  {c['what']}: {vs} {c['unit']}{note}")
    text = "\n".join(lines)
    print(text)
    return text


def markdown(ctx: Ctx, rows: list[dict[str, Any]], crit: list[dict[str, Any]]) -> str:
    out = ["| contender | MB/s (median) | min–max | ratio | vs | peak RSS |",
           "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        ratio_s = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        name, vs = (x.replace("|", "\\|") for x in (r["name"], r["vs"]))
        out.append(f"| {name} | {r['mbps']:.0f} | {r['min']:.0f}–{r['max']:.0f} | {ratio_s} | "
                   f"{vs} | {r['peak_rss_mib']:.0f} MiB |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0],
                                epilog="Run as root from the repository root (drop_caches, "
                                "loop devices, cgroups).")
    p.add_argument("--size", type=dataset.parse_size, default=dataset.GiB,
                   help="dataset size (default 1G)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per contender (median)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/pipeline-perf"),
                   help="datasets and scratch outputs (default /var/tmp/pipeline-perf)")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold",
                   help="page cache before each run: cold = dropped (default), warm = read")
    p.add_argument("--rss-sizes", type=lambda s: [dataset.parse_size(x) for x in s.split(",")],
                   default=None, metavar="SIZES",
                   help="sizes whose prep peak RSS is compared, e.g. 1G,4G (default: --size)")
    p.add_argument("--drives", type=int, default=4, help="throttled loop devices (default 4)")
    p.add_argument("--drive-mbps", type=float, default=150.0,
                   help="write limit per throttled drive, MB/s (default 150, a SATA disk)")
    p.add_argument("--no-throttle", action="store_true", help="skip the throttled scenario")
    p.add_argument("--bound-mbps", type=float, default=10.0,
                   help="control run: drives this slow (MB/s each) are slower than prep, so "
                   "the fill mode decides (default 10; 0 skips it)")
    p.add_argument("--bound-size", type=dataset.parse_size, default=None,
                   help="dataset of the control run (default: --size; start-up and the "
                   "LUKS2 header writes, 16 MiB a drive, weigh less on more data)")
    p.add_argument("--real-size", type=dataset.parse_size, default=2 << 30, metavar="SIZE",
                   help="also measure tar | zstd, prep, verify and import on a tree of this "
                   "machine's own files (perf/realdata.py; default 2G)")
    p.add_argument("--no-real", action="store_true", help="skip the real-data tree")
    p.add_argument("--azure-size", type=dataset.parse_size, default=128 << 20, metavar="SIZE",
                   help="import into Azurite against upload_blob(max_concurrency=8) on a "
                   "synthetic tree this large (perf/azure_import.py; default 128M, 0 skips)")
    p.add_argument("--no-backup", action="store_true",
                   help="skip backup against restic on the real-data tree (perf/backup_bench.py)")
    p.add_argument("--filecounts", default="10000,100000",
                   type=lambda v: [int(x) for x in v.split(",") if x.strip() and int(x)],
                   help="peak RSS of prep, verify, import by file count (perf.filecount) for "
                   "the chart; 0 skips it (default 10000,100000)")
    p.add_argument("--profile", action="store_true",
                   help="also run prep once under the Trio probe and once under py-spy")
    p.add_argument("--results", type=Path, default=REPO / "perf" / "results",
                   help="where latest.json, latest.md and perf.png go")
    args = p.parse_args(argv)
    if args.rss_sizes is None:
        args.rss_sizes = [args.size]
    if args.bound_size is None:
        args.bound_size = args.size
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def machine() -> dict[str, Any]:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "missing"

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "zstd": first_line(["zstd", "--version"]),
            "tar": first_line(["tar", "--version"]),
            "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    missing = [t for t in ("tar", "zstd", "dd", "losetup") if shutil.which(t) is None]
    if missing:
        log(f"perf: missing {', '.join(missing)}: apt-get install -y tar zstd coreutils mount")
        return 2
    if args.cache == "cold" and not measure.can_drop_caches():
        log("perf: --cache cold needs root (writes /proc/sys/vm/drop_caches); run as root "
            "or pass --cache warm")
        return 2
    t0 = time.monotonic()
    # As an installed package has (pip compiles a wheel's modules): with PYTHONDONTWRITEBYTECODE
    # set, an edited checkout would otherwise compile its changed modules in every timed run.
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "pipeline", quiet=1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = args.workdir / f"data-{args.size // MiB}M-s{args.seed}"
    info = dataset.ensure(root, args.size, args.seed, log=log)
    ctx = Ctx(args, root, info, args.workdir / "out", python_env(),
              drive_size=drive_size_for(int(info["bytes"])))
    log(f"dataset {root}: {info['files']} files, {dataset.human(int(info['bytes']))}; "
        f"{args.runs} runs per contender, cache {args.cache}")
    real = None
    if not args.no_real:
        rroot = args.workdir / f"real-{args.real_size // MiB}M"
        rinfo = realdata.ensure(rroot, args.real_size, log=log)
        real = Ctx(args, rroot, rinfo, ctx.out, ctx.env,
                   drive_size=drive_size_for(int(rinfo["bytes"])), series=ctx.series)
        log(f"real-data tree {rroot}: {rinfo['files']} files, "
            f"{dataset.human(int(rinfo['bytes']))}")
    try:
        for i in range(args.runs):
            log(f"round {i + 1}/{args.runs}")
            run_baselines(ctx)
            run_prep_family(ctx)
            if real is not None:
                run_real(real)
        azure: dict[str, Any] | None = None
        if args.azure_size:
            aroot = args.workdir / f"data-{args.azure_size // MiB}M-s{args.seed}"
            ainfo = dataset.ensure(aroot, args.azure_size, args.seed, log=log)
            log(f"Azurite: import against upload_blob on {aroot} ({ainfo['files']} files)")
            azure = azure_import.measure_azure(aroot, args.workdir / "azure", args.runs, 8,
                                               ctx.env, log, into=ctx.series, prefix=AZ)
        throttled: list[dict[str, Any]] = []
        if not args.no_throttle:
            log(f"throttled drives: {args.drives} x {args.drive_mbps:g} MB/s")
            throttled.append(run_throttled(ctx, args.drive_mbps, 1))
            if args.bound_mbps > 0:
                log(f"drive-bound control: {args.drives} x {args.bound_mbps:g} MB/s, "
                    f"{dataset.human(args.bound_size)} dataset")
                throttled.append(run_drive_bound(ctx))
        log("peak RSS by size")
        rss = run_rss_sizes(ctx)
        extra: dict[str, Any] = {}
        prof: dict[str, Any] = {}
        if args.profile:
            from perf import profile

            log("profile")
            prof = profile.run(ctx)
            extra = prof.get("text", {})
        from perf import filecount

        log(f"peak RSS by file count: {args.filecounts}")
        by_count = [filecount.one(n, args.workdir) for n in args.filecounts]
        backup: dict[str, Any] | None = None
        if real is not None and not args.no_backup:
            from perf import backup_bench

            log("backup against restic on the real-data tree")
            backup = backup_bench.versus_restic(real.data, args.workdir / "backup", args.runs,
                                                args.cache, log)
            extra["backup against restic (issue 23)"] = backup_bench.format_versus(backup)
    finally:
        shutil.rmtree(ctx.out, ignore_errors=True)
    elapsed = time.monotonic() - t0
    rows = table_rows(ctx)
    stages = stage_profile(ctx.series[SEQ]) if SEQ in ctx.series else {}
    crit = criteria(ctx, throttled, rss, elapsed)
    receiving = receiving_table(ctx)
    extra["every ratio issue 18 sets (median of runs, against tar | zstd -1 -T0 on the same "
          "tree, same run)"] = format_receiving(receiving)
    print()
    report = print_report(ctx, rows, throttled, rss, stages, crit, extra)
    print(f"\ntotal {elapsed:.0f} s")
    args.results.mkdir(parents=True, exist_ok=True)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
           "argv": sys.argv[1:], "elapsed_s": round(elapsed, 1),
           "settings": {"size": args.size, "runs": args.runs, "seed": args.seed,
                        "cache": args.cache, "kdf": KDF, "image_drives": 4,
                        "drive_size": ctx.drive_size},
           "dataset": info, "table": rows, "throttled": throttled, "rss_by_size": rss,
           "filecount": by_count, "stage_profile": stages,
           "profile": {k: v for k, v in prof.items() if k != "text"},
           "criteria": crit, "receiving": receiving,
           "real_dataset": real.info if real is not None else None, "backup_vs_restic": backup,
           "azure": azure,
           "series": {k: s.to_json() for k, s in ctx.series.items()},
           "report": report}
    (args.results / "latest.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.results / "latest.md").write_text(markdown(ctx, rows, crit))
    log(f"wrote {args.results / 'latest.json'} and latest.md")
    from perf import chart

    png = chart.draw(doc, args.results / "perf.png")
    if png:
        log(f"wrote {png}")
    missed = [f"{r['tree']} {r['command']} {r['ratio']:.2f}x < {r['target']}x"
              for r in receiving if not r["ok"]]
    if backup is not None:
        from perf import backup_bench

        missed += backup_bench.missed(backup)
    if missed or len(receiving) < len(TARGETS) * (1 if real is None else 2):
        log("perf: criteria missed: " + ("; ".join(missed) or "not every ratio measured"))
        return 1
    return 0
