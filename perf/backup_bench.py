"""Backup throughput: offline seed, online incremental after a ~1% change, restore.

``python -m perf.backup_bench [--size 1G] [--work DIR] [--json]`` runs the commands as an
operator does (``python -m pipeline ...`` in a subprocess, measured by ``perf.measure``),
on a fresh ``perf.dataset`` tree, beside ``tar | zstd -1 -T0`` on the same tree in the same
run (ratios hold better than absolutes).  Between the seed and the online backup the
repository is copied into a local storage account as page blobs (what prep + import do)
and the tree is changed by about 1%: one 4 KiB write per 100 MiB of disk images (at least
two) at random places, three new files of 0.1% each, one file deleted, one renamed.
The online backup's ``bytes_sent`` is what went to the storage layer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

from perf import dataset, measure

MiB = 1 << 20
CONTAINER = "backups"
SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _pipeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def _import(repo: Path, account: Path) -> None:
    """Each repository file as a page blob of the same bytes at the container's root."""
    from pipeline.storage import BlobType, open_storage
    from pipeline.storage.base import CELL

    store = open_storage(str(account))
    store.ensure_container(CONTAINER)
    for p in sorted(repo.rglob("*")):
        if p.is_file():
            data, name = p.read_bytes(), p.relative_to(repo).as_posix()
            for off in range(0, len(data), CELL):
                store.write_part(CONTAINER, name, BlobType.PAGE, len(data), off,
                                 data[off:off + CELL])
            store.commit(CONTAINER, name, BlobType.PAGE, len(data), [])


def _change(src: Path, size: int, seed: int = 99) -> int:
    r = random.Random(seed)
    images = sorted((p for p in src.rglob("*") if p.is_file() and p.stat().st_size >= 64 * MiB),
                    key=lambda p: p.as_posix())
    total = sum(p.stat().st_size for p in images)
    writes = max(2, total // (100 * MiB))
    for _ in range(writes):
        p = r.choice(images)
        with open(p, "r+b") as f:
            f.seek(r.randrange(p.stat().st_size // 4096) * 4096)
            f.write(r.randbytes(4096))
    for i in range(3):
        (src / f"bench-new-{i}.bin").write_bytes(r.randbytes(size // 1000))
    small = sorted(p for p in src.rglob("*") if p.is_file() and p.stat().st_size < MiB)
    small[len(small) // 3].unlink()
    small[len(small) // 2].rename(src / "bench-renamed")
    return writes


def _summary(sample: measure.Sample) -> dict[str, object]:
    lines = [json.loads(x) for x in sample.stdout.splitlines() if x.startswith("{")]
    return next(x for x in lines if x.get("type") == "summary")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.backup_bench",
                                description=__doc__.split("\n")[0])
    p.add_argument("--size", type=dataset.parse_size, default=dataset.GiB)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/pipeline-perf/backup"))
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    src, staging, account = work / "data", work / "staging", work / "account"
    staging.mkdir()
    account.mkdir()
    dataset.ensure(src, args.size, 1, log=lambda m: print(m, file=sys.stderr))
    size = dataset.tree_stats(src)["bytes"]
    (work / "pass").write_text("benchmark passphrase\n")
    env = {**os.environ, "PIPELINE_CONFIG_DIR": str(work / "config")}
    common = ["--passphrase-file", str(work / "pass"), "--json"]

    tar = measure.run(["sh", "-c", f"tar -C {src} -cf - . | zstd -1 -T0 -q -o {work}/t.zst"])
    seed = measure.run(_pipeline(
        "backup", "--offline", "--source", str(src), "--staging", str(staging), "--job-name",
        "bench", "--subscription", SUB, "--account", "benchacct", "--container", CONTAINER,
        *common), env=env)
    _import(staging / "repo", account)
    writes = _change(src, size)
    online = measure.run(_pipeline("backup", "--source", str(src), "--to", str(account),
                                   *common), env=env)
    restore = measure.run(_pipeline("restore", "--from", str(account), "--container",
                                    CONTAINER, "--target", str(work / "restored"), *common))
    sent = int(_summary(online)["bytes_sent"])  # type: ignore[call-overload]
    rows = {
        "tar | zstd -1 -T0": tar, "backup --offline": seed,
        "backup (online, ~1% changed)": online, "restore": restore,
    }
    figures = {name: {"mb_per_s": round(size / s.wall_s / 1e6, 1), "wall_s": round(s.wall_s, 2),
                      "cpu_s": round(s.cpu_s, 2), "peak_rss_mib": round(s.peak_rss / MiB, 1)}
               for name, s in rows.items()}
    result = {"bytes": size, "writes_4k": writes, "online_bytes_sent": sent,
              "online_sent_ratio": round(sent / size, 5), "figures": figures}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"source {dataset.human(size)}; online backup sent {dataset.human(sent)} "
          f"({sent / size:.2%} of the source) after {writes} 4 KiB writes, 3 new files, "
          "1 deleted, 1 renamed")
    print(f"{'':<30} {'MB/s':>8} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10}")
    for name, f in figures.items():
        print(f"{name:<30} {f['mb_per_s']:>8} {f['wall_s']:>8} {f['cpu_s']:>8} "
              f"{f['peak_rss_mib']:>7} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
