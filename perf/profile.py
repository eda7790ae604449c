"""``--profile``: where a default ``prep`` run spends its wall time, beyond busy counters.

Two extra runs of ``prep sequential`` on the same dataset (cold or warm as the rest):

1. under :mod:`perf.probe`: how long the Trio thread sat idle in epoll versus ran
   tasks, and how many task steps the run took (per file, per MiB);
2. under ``py-spy record --gil`` (``pip install py-spy``; skipped with a hint when it is
   missing): samples only the thread that holds the GIL, so the sample count over
   (rate x wall) is the share of the run in which any Python ran at all, and the
   leaf functions say which Python.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perf import measure

if TYPE_CHECKING:
    from perf.run import Ctx

RATE = 100  # py-spy samples per second


def _frame(f: str) -> str:
    m = re.match(r"(.*?) \((.*?):\d+\)$", f)
    if not m:
        return f
    where = m.group(2).split("site-packages/")[-1]
    return f"{m.group(1)} ({where})"


def pyspy_summary(raw: Path, wall: float) -> dict[str, Any]:
    """Aggregate py-spy's raw (collapsed) output: GIL share per thread, top functions."""
    threads: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "trio thread" if "MainThread" in frames[0] else "worker threads"
        threads[thread] += n
        total += n
        body = [_frame(f) for f in frames[1:]] or ["(native)"]
        leaf[f"[{thread}] {body[-1]}"] += n
        seen = set()
        for f in body:  # inclusive time of pipeline's own functions
            if "(pipeline/" in f and f not in seen:
                seen.add(f)
                ours[f] += n
    possible = RATE * wall
    return {"samples": total, "rate_hz": RATE, "wall_s": round(wall, 3),
            "gil_held_pct": round(100 * total / possible, 1),
            "by_thread_pct": {k: round(100 * v / possible, 1) for k, v in threads.items()},
            "top_leaf_pct": {k: round(100 * v / possible, 1) for k, v in leaf.most_common(12)},
            "top_pipeline_inclusive_pct": {k: round(100 * v / possible, 1)
                                           for k, v in ours.most_common(12)}}


def run(ctx: Ctx) -> dict[str, Any]:
    from perf.run import REPO, SEQ, fresh, images, prep_argv, prepare_cache

    out: dict[str, Any] = {"text": {}}
    nfiles, mib = int(ctx.info["files"]), ctx.nbytes / (1 << 20)

    fresh(ctx.out)
    argv = prep_argv(ctx, images(ctx))
    probe_argv = [argv[0], "-m", "perf.probe", *argv[3:]]
    prepare_cache(ctx)
    sample = measure.run(probe_argv, cwd=REPO, env=ctx.env, check=False)
    line = next((x for x in sample.stderr.splitlines() if x.startswith("perf.probe: ")), None)
    if sample.rc == 0 and line:
        probe = json.loads(line.removeprefix("perf.probe: "))
        probe["steps_per_file"] = round(probe["steps"] / nfiles, 1)
        probe["steps_per_mib"] = round(probe["steps"] / mib, 1)
        out["trio_probe"] = probe
        wall = probe["wall_s"]
        out["text"]["Trio run loop during prep sequential (perf.probe)"] = (
            f"  wall {wall:.2f} s: idle in epoll {probe['io_wait_s']:.2f} s "
            f"({100 * probe['io_wait_s'] / wall:.0f}%), running tasks {probe['task_s']:.2f} s "
            f"({100 * probe['task_s'] / wall:.0f}%), the rest in the scheduler and start-up\n"
            f"  {probe['steps']} task steps ({probe['steps_per_file']} per file, "
            f"{probe['steps_per_mib']} per MiB), {probe['io_waits']} loop wake-ups\n"
            "  by task: " + ", ".join(f"{k} {v:.2f} s" for k, v in probe["by_task"].items()))
    else:
        out["text"]["Trio probe"] = f"  failed (exit {sample.rc})"

    pyspy = shutil.which("py-spy")
    if pyspy is None:
        out["text"]["py-spy"] = ("  not installed: pip install py-spy, then rerun with "
                                 "--profile")
        return out
    fresh(ctx.out)
    raw = ctx.args.workdir / "py-spy.txt"
    prepare_cache(ctx)
    sample = measure.run([pyspy, "record", "--gil", "--threads", "-r", str(RATE), "-f", "raw",
                          "-o", str(raw), "--", *argv], cwd=REPO,
                         env=ctx.env, check=False)
    fresh(ctx.out)
    if sample.rc != 0 or not raw.exists():
        out["text"]["py-spy"] = f"  py-spy record failed (exit {sample.rc})"
        return out
    summ = pyspy_summary(raw, sample.wall_s)
    out["py_spy"] = summ
    lines = [f"  {SEQ} under py-spy: {sample.wall_s:.2f} s wall; some thread held the GIL "
             f"{summ['gil_held_pct']}% of it ("
             + ", ".join(f"{k} {v}%" for k, v in summ["by_thread_pct"].items()) + ")",
             "  top leaf functions while holding the GIL (% of wall):"]
    lines += [f"    {v:5.1f}%  {k}" for k, v in summ["top_leaf_pct"].items()]
    lines.append("  pipeline functions, inclusive (% of wall, GIL held):")
    lines += [f"    {v:5.1f}%  {k}" for k, v in summ["top_pipeline_inclusive_pct"].items()]
    out["text"]["py-spy --gil"] = "\n".join(lines)
    return out
