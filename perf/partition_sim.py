"""The cluster partitioner at scale, simulated: a streamed synthetic file list through
``pipeline.cluster.shard.partition`` (the client's cut) and through the shard test a
worker's planner makes for every file it walks (``ShardPlanner``: ``walk_key`` +
``in_shard``; a guard since the worker's walk is bounded to its range, timed here per file
over the whole stream), with time and peak memory measured, not assumed.

::

    python -m perf.partition_sim --files 100000000 --workers 100      # the paper plan's size
    python -m perf.partition_sim --files 2000000 --workers 100        # ~1 minute here

The list is generated, never held: paths ``dNNNNN/dNNN/fNNNNNNN.bin`` in walk order
(1,000 files a directory), sizes drawn from a seeded log-uniform law (1 KiB to 4 GiB)
scaled so that the files average ``--mean`` bytes (1 PB / 100 M = 10 MB by default).
Capacities: every worker the same drives (``--drive-tb`` x ``--drives``).  The walk's own
cost (lstat on the staging share) is not simulated: docs/SCALE.md adds it from measured
figures.  Peak memory is ``ru_maxrss`` (the process's whole peak, the interpreter
included) and tracemalloc's peak of what the partition itself allocated.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import TypeVar

from pipeline.cluster.shard import in_shard, partition, walk_key

TB = 10**12
T = TypeVar("T")


def files(n: int, mean: float, seed: int = 1) -> Iterator[tuple[str, int]]:
    """``n`` (path, size) pairs in walk order; sizes average about ``mean`` bytes."""
    rng = random.Random(seed)
    lo, hi = math.log(1024), math.log(4 << 30)
    # log-uniform mean: (e^hi - e^lo) / (hi - lo); scaled to the asked mean
    scale = mean / ((math.exp(hi) - math.exp(lo)) / (hi - lo))
    for i in range(n):
        size = int(math.exp(rng.uniform(lo, hi)) * scale)
        yield f"d{i // 1_000_000:05d}/d{i // 1000 % 1000:03d}/f{i:010d}.bin", size


def total_of(n: int, mean: float) -> int:
    """The first pass (the count), over the same stream."""
    return sum(size for _, size in files(n, mean))


def _timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, cpu seconds): the CPU figure holds on a shared machine."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run(n: int, workers: int, mean: float, drive_tb: float, drives: int) -> dict:
    caps = [int(drive_tb * TB) * drives] * workers
    total, count_wall, count_cpu = _timed(lambda: total_of(n, mean))
    shards, cut_wall, cut_cpu = _timed(lambda: partition(files(n, mean), total, caps))
    # what the partition holds, measured on a smaller stream (tracemalloc slows it ~10x)
    small = min(n, 200_000)
    tracemalloc.start()
    partition(files(small, mean), total_of(small, mean), caps)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the per-file cost of a worker's range test (its walk is bounded to its range; the
    # test is timed over the whole stream for a per-file figure)
    mid = shards[len(shards) // 2]
    keys = (None if mid.lo is None else walk_key(mid.lo),
            None if mid.hi is None else walk_key(mid.hi))
    kept, test_wall, test_cpu = _timed(
        lambda: sum(1 for path, _ in files(n, mean) if in_shard(walk_key(path), *keys)))
    sizes = [s.bytes for s in shards]
    per = 1e6 / n
    return {
        "files": n, "workers": workers, "bytes": total,
        "count_pass_cpu_s": round(count_cpu, 2), "count_pass_wall_s": round(count_wall, 2),
        "cut_pass_cpu_s": round(cut_cpu, 2), "cut_pass_wall_s": round(cut_wall, 2),
        "cut_cpu_us_per_file": round(cut_cpu * per, 3),
        "cut_beyond_generation_us_per_file": round((cut_cpu - count_cpu) * per, 3),
        "shard_test_cpu_s": round(test_cpu, 2),
        "shard_test_beyond_generation_us_per_file": round((test_cpu - count_cpu) * per, 3),
        "kept_by_one_worker": kept, "its_shard_files": mid.files,
        "partition_traced_peak_kib": traced_peak // 1024,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "shard_tb_min_max": [round(min(sizes) / TB, 4), round(max(sizes) / TB, 4)],
        "imbalance_pct": round(100 * (max(sizes) - min(sizes)) / (total / workers), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000_000, help="files in the synthetic list")
    p.add_argument("--workers", type=int, default=100, help="copy hosts (shards)")
    p.add_argument("--mean", type=float, default=1e7,
                   help="mean file size in bytes (default 10 MB: 1 PB in 100 M files)")
    p.add_argument("--drive-tb", type=float, default=20.0, help="each drive's capacity, TB")
    p.add_argument("--drives", type=int, default=8, help="drives per worker")
    args = p.parse_args()
    print(json.dumps(run(args.files, args.workers, args.mean, args.drive_tb,
                         args.drives), indent=1))


if __name__ == "__main__":
    main()
