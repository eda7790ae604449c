"""prep --cluster on throttled drives: one worker against two, drive-bound.

::

    python -m perf.cluster_throughput --mbps 10 --size-mb 480     # as root; ~2.5 minutes

Four loop devices, writes throttled to ``--mbps`` each (``perf/throttle.py``: a block-I/O
cgroup, checked with dd before any figure is believed).  A `dask scheduler`, then
``pipeline worker`` processes started inside the cgroup: first one worker owning devices
0 and 1, then two workers owning 0-1 and 2-3.  Each run preps the same incompressible
staging tree (``--size-mb`` in 5 MB files) with ``prep --cluster`` (sequential fill: one
drive written at a time per worker, so one worker is bound by one drive's limit).  MB/s is
the tree's size over the wall time of the whole client command (connect, the two planning
walks, the tasks, the summary); the workers' own busy time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.throttle import Throttle

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
KDF = ["--pbkdf-memory", "8192", "--pbkdf-time", "4", "--pbkdf-parallel", "2"]


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes]) -> str:
    for _ in range(600):
        body = log.read_text(errors="replace")
        if text in body:
            return body
        if proc.poll() is not None:
            raise RuntimeError(body)
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} in {log}")


def _spawn(argv: list[str], log: Path, cgroup: Path | None = None) -> subprocess.Popen[bytes]:
    if cgroup is not None:  # in the throttled cgroup from its first write on
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def one_run(work: Path, src: Path, thr: Throttle, groups: list[list[str]], logs: Path
            ) -> dict:
    """prep --cluster with one worker per device group; its wall time and summary."""
    tag = f"w{len(groups)}"
    jdir = work / f"journals-{tag}"
    sched_log = logs / f"scheduler-{tag}.log"
    procs = [_spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                     "127.0.0.1", "--port", "0", "--no-dashboard"], sched_log)]
    try:
        body = _wait_for(sched_log, "Scheduler at:", procs[0])
        address = body.split("Scheduler at:")[1].split()[0]
        for i, devices in enumerate(groups):
            log = logs / f"{tag}-worker{i}.log"
            argv = [sys.executable, "-m", "pipeline", "worker", "--scheduler", address,
                    "--name", f"w{i}", "--threads", "1"]
            for d in devices:
                argv += ["--drive", d]
            procs.append(_spawn(argv, log, thr.cgroup))
            _wait_for(log, "Registered to:", procs[-1])
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pipeline", "prep", "--cluster", address,
                              "--source", str(src), "--dstdir", "perf/cluster/",
                              "--journal-dir", str(jdir), "--session-id", f"perf-{tag}",
                              "--yes", "--json", *KDF], capture_output=True, text=True,
                             env=ENV, cwd=ROOT)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        summary = next(json.loads(x) for x in out.stdout.splitlines() if '"summary"' in x)
        return {"workers": len(groups), "wall_s": round(wall, 2),
                "worker_elapsed_s": {n: w["elapsed_s"] for n, w in summary["workers"].items()},
                "bytes": summary["bytes_total"], "bytes_written": summary["bytes_written"]}
    finally:
        _stop(procs[1:])
        _stop(procs[:1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbps", type=float, default=10.0, help="write limit of each drive, MB/s")
    p.add_argument("--size-mb", type=int, default=480, help="staging tree size, MB")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/pipeline-perf-cluster"))
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        src = work / "staging"
        src.mkdir()
        for i in range(a.size_mb // 5):
            (src / f"d{i % 4}").mkdir(exist_ok=True)
            (src / f"d{i % 4}" / f"f{i:04d}.bin").write_bytes(os.urandom(5_000_000))
        # room for the whole tree on one worker's two drives, plus the LUKS2 header
        size = ((a.size_mb * 10**6 // 2 + (48 << 20)) >> 20) << 20
        with Throttle(work / "loops", 4, size, int(a.mbps * 1e6)) as thr:
            check = thr.check()
            print(f"throttle ({thr.kind}): dd+fdatasync {check['dd_fdatasync_in_cgroup_mbps']} "
                  f"MB/s in the cgroup, limit {a.mbps:g}: "
                  f"{'bites' if check['bites'] else 'DOES NOT BITE'}", file=sys.stderr)
            d = thr.devices
            logs = a.workdir / "logs"  # kept: the runs' scheduler and worker logs
            logs.mkdir(exist_ok=True)
            runs = [one_run(work, src, thr, [d[0:2]], logs),
                    one_run(work, src, thr, [d[0:2], d[2:4]], logs)]
    for r in runs:
        r["mbps"] = round(r["bytes"] / r["wall_s"] / 1e6, 1)
    result = {"limit_mbps_each": a.mbps, "throttle_bites": check["bites"], "runs": runs,
              "two_over_one": round(runs[1]["mbps"] / runs[0]["mbps"], 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
