"""Throughput of pipeline.volume.xts against plain cryptography, on 16 MiB of 4096-byte sectors.

Run ``python perf/xts_bench.py`` from the repository root.  It prints MB/s (10**6 bytes/s)
for: our ``encrypt``/``decrypt``; the naive loop that builds one cryptography XTS context
per sector; one cryptography XTS call over the whole run (an upper bound: a single tweak,
so not dm-crypt's layout); and the same with 2 threads, to see whether the GIL is
released.  Nothing is asserted about time: figures depend on the machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.volume import xts  # noqa: E402

RUN = 16 << 20
SECTOR = 4096
IV_STEP = SECTOR // 512  # plain64 counts 512-byte sectors
FIRST_IV = (1 << 20) * IV_STEP


def naive(key: bytes, data: bytes, iv: int) -> bytes:
    """One cryptography XTS context per sector: the obvious way, and slow."""
    out = []
    for k in range(len(data) // SECTOR):
        tweak = ((iv + k * IV_STEP) % (1 << 64)).to_bytes(16, "little")
        ctx = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out.append(ctx.update(data[k * SECTOR : (k + 1) * SECTOR]) + ctx.finalize())
    return b"".join(out)


def single_call(key: bytes, data: bytes, iv: int) -> bytes:
    """One XTS context for the whole run (wrong layout for a disk; an upper bound)."""
    ctx = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, "little"))).encryptor()
    return ctx.update(data) + ctx.finalize()


def ours(key: bytes, data: bytes, iv: int) -> bytes:
    return xts.encrypt(key, data, iv, SECTOR)


def ours_decrypt(key: bytes, data: bytes, iv: int) -> bytes:
    return xts.decrypt(key, data, iv, SECTOR)


def rate(fn: Callable[[], object], nbytes: int, repeats: int) -> tuple[float, float]:
    """(best, median) MB/s over ``repeats`` timed runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return nbytes / min(times) / 1e6, nbytes / statistics.median(times) / 1e6


def threaded(
    pool: ThreadPoolExecutor,
    fn: Callable[[bytes, bytes, int], bytes],
    key: bytes,
    runs: list[bytes],
) -> Callable[[], None]:
    """All ``runs`` through the pool's workers, each result dropped as soon as it is made."""

    def go() -> None:
        for _ in pool.map(lambda run: len(fn(key, run, FIRST_IV)), runs):
            pass

    return go


def main() -> None:
    key = os.urandom(64)
    data = os.urandom(RUN)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"16 MiB of {SECTOR}-byte sectors, AES-256-XTS (64-byte key); {cpus} CPUs usable")
    same = ours(key, data, FIRST_IV) == naive(key, data, FIRST_IV)
    print(f"pipeline.volume.xts output identical to the per-sector loop: {same}")

    rows = [
        ("pipeline.volume.xts.encrypt", lambda: ours(key, data, FIRST_IV), 15),
        ("pipeline.volume.xts.decrypt", lambda: ours_decrypt(key, data, FIRST_IV), 15),
        ("naive loop, one XTS context per sector", lambda: naive(key, data, FIRST_IV), 3),
        ("one cryptography XTS call (upper bound)", lambda: single_call(key, data, 0), 15),
    ]
    for name, fn, repeats in rows:
        best, median = rate(fn, RUN, repeats)
        print(f"  {name:42s} best {best:7.0f} MB/s   median {median:7.0f} MB/s")

    print("aggregate over 8 runs of 16 MiB, 1 vs 2 threads:")
    runs = [os.urandom(RUN) for _ in range(2)] * 4
    for name, fn in [("pipeline.volume.xts.encrypt", ours),
                     ("one cryptography XTS call", single_call)]:
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                best, median = rate(threaded(pool, fn, key, runs), RUN * len(runs), 5)
            print(
                f"  {name:28s} {threads} thread{'s' if threads > 1 else ' '}"
                f"   best {best:7.0f} MB/s   median {median:7.0f} MB/s"
            )


if __name__ == "__main__":
    main()
