"""What 022e1f6's copy costs a local import, and what is left of it once narrowed.

022e1f6 made a local account's new partial of a blob committed with the same size start as
its copy (copy_file_range), so that a file spanning drives, committed, then its drive
imported again, keeps the other drive's cells.  Re-importing a session over an account
that holds same-size versions of its files (here: session B, session A's tree with every
file's bytes reversed) then copied every multi-part file's old blob before writing it.
Since the narrowing only a file that spans drives is copied (``write_own_part``).

Rounds interleave the two (``narrowed``; ``seed-all``: every part through ``write_part``,
as 022e1f6 left it), each into a fresh copy of the account holding session A; the import
of session B (one drive, in process: ``cluster.receive_remote.import_all``) is timed (wall
to a sync after it, and this process's CPU, the kernel's copying included), and the bytes
copied counted.  Ratios within one run; the machine's load moves absolutes.

    python3 -m perf.local_reseed [--files 12] [--mb 8] [--rounds 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from pipeline import journal
from pipeline.cluster import receive_remote
from pipeline.storage import local
from pipeline.storage.local import LocalStorage

FAST_KDF = ["--pbkdf-memory", "8192", "--pbkdf-time", "4", "--pbkdf-parallel", "2"]


def _tree(root: Path, files: int, mb: int) -> None:
    rng = random.Random(1)
    (root / "big").mkdir(parents=True)
    for i in range(files):
        (root / "big" / f"f{i:03d}.bin").write_bytes(rng.randbytes(mb << 20))
    (root / "small").mkdir()
    for i in range(50):
        (root / "small" / f"s{i:02d}.txt").write_text(f"small file {i}\n" * 20)


def _reversed(src: Path, to: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file():
            q = to / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes()[::-1])


def _prep(src: Path, jdir: Path, session: str, drive: Path, size: str) -> None:
    subprocess.run([sys.executable, "-m", "pipeline", "prep", "--srcdir", str(src), "--dstdir",
                    "reseed/v/", "--journal-dir", str(jdir), "--session-id", session,
                    "--drive-size", size, *FAST_KDF, "--drive", str(drive)], check=True,
                   capture_output=True)


def _import(jdir: Path, session: str, acct: Path) -> None:
    journals = journal.session_journals(jdir, session)
    ids = {j.drive.uuid: j.drive.path for j in journals}
    for j in journals:
        j.close()
    got = trio.run(receive_remote.import_all, str(jdir), session, list(ids), ids,
                   lambda: LocalStorage(acct), lambda _: None)
    assert got["code"] == 0, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="reseed-", dir=args.dir))
    try:
        a, b = base / "a", base / "b"
        _tree(a, args.files, args.mb)
        _reversed(a, b)
        size = f"{args.files * args.mb + 64}M"
        _prep(a, base / "ja", "reseed-a", base / "a.img", size)
        _prep(b, base / "jb", "reseed-b", base / "b.img", size)
        held = base / "held"
        held.mkdir()
        _import(base / "ja", "reseed-a", held)

        copied = [0]
        real_copy = local._copy

        def counted(src: int, dst: int, n: int) -> None:
            copied[0] += n
            real_copy(src, dst, n)

        local._copy = counted
        own = LocalStorage.write_own_part
        results: dict[str, list[tuple[float, float, int]]] = {"narrowed": [], "seed-all": []}
        for r in range(args.rounds):
            for variant in ("narrowed", "seed-all") if r % 2 == 0 else ("seed-all", "narrowed"):
                acct = base / f"acct-{r}-{variant}"
                shutil.copytree(held, acct)
                subprocess.run(["sync"], check=True)
                LocalStorage.write_own_part = own if variant == "narrowed" else (  # type: ignore[method-assign]
                    LocalStorage.write_part)
                copied[0] = 0
                t0, c0 = time.perf_counter(), os.times()
                _import(base / "jb", "reseed-b", acct)
                c1 = os.times()
                subprocess.run(["sync"], check=True)  # what the copies wrote, on disk too
                results[variant].append((time.perf_counter() - t0, c1.user + c1.system
                                         - c0.user - c0.system, copied[0]))
                shutil.rmtree(acct)
        LocalStorage.write_own_part = own  # type: ignore[method-assign]
        load = os.getloadavg()[0]
        out = {"files": args.files, "mb": args.mb, "load": round(load, 2),
               **{k: [(round(t, 2), round(c, 2), n) for t, c, n in v]
                  for k, v in results.items()}}
        if args.json:
            print(json.dumps(out))
        else:
            for k, v in results.items():
                print(f"{k:9s} " + "  ".join(f"{t:5.2f} s wall {c:5.2f} s CPU ({n >> 20} MiB "
                                             "copied)" for t, c, n in v))
            print(f"load {load:.2f}; {args.files} files x {args.mb} MiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
