"""A deterministic staging tree of a given total size, mixed like a real seeding job.

``python -m perf.dataset DIR --size 1G [--seed 1]`` writes (or reuses) the tree; the
harness calls :func:`ensure`.  The same size and seed give the same bytes, names and
mtimes on any machine (``random.Random`` only: its streams are stable across Python
versions), so ``tar`` output and figures compare across runs.

Share of the logical size (sum of file sizes; holes count, as they do for ``tar``):

- ``images/``: 40 %, VHD-like disk images of up to 256 MiB.  Runs (64 KiB to 16 MiB) of
  sparse holes (30 %), written zero runs (15 %), file-system-like compressible binary
  (35 %) and already compressed data (20 %); a 4 KiB header and a 512-byte
  ``conectix`` footer like a fixed VHD.
- ``logs/``: 15 %, syslog / nginx access / JSON application logs: timestamps that move
  on, hosts, pids, addresses, request ids, latencies; about 5-10x with zstd -1, not the
  1000x of a repeated line.
- ``docs/``: 3 %, prose from a Zipf-weighted vocabulary, and a CSV export.
- ``media/``: 27 %, incompressible files (1-64 MiB) named like photos, videos and
  archives.
- ``small/``: 30,000 files per GiB (at least 2,000), 100 B to 64 KiB (median ~1.5 KiB),
  in nested project folders, 20-ish per folder: source-like text, small binaries,
  random blobs.
- ``db/``: the rest, one page-structured compressible file.

Ideas borrowed from tests/drivedata.py (sparse images with a written zero run and a
footer, odd names); nothing is imported from tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
VERSION = 1  # bump when the generator's output changes: cached trees are rebuilt
MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z, for every file (reproducible tar output)

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``4096`` (bytes); binary units."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS and not s[-1:].isdigit() else ""
    number = s[: len(s) - len(unit)]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1G or 512M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return int(value)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# --------------------------------------------------------------------------- content makers


class Content:
    """Byte generators on one seeded ``random.Random``; each returns exactly ``n`` bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.vocab = rng.randbytes(256 << 10)  # the "code and structures" binaries repeat
        words = [_word(rng) for _ in range(6000)]
        self.words = words
        self.word_weights = _zipf_cum(len(words))
        self.hosts = [f"{_word(rng)}-{rng.randrange(1, 40):02d}" for _ in range(12)]
        self.users = [_word(rng) for _ in range(300)]
        self.paths = ["/" + "/".join(_word(rng) for _ in range(rng.randrange(1, 5)))
                      for _ in range(2000)]
        self.agents = [f"Mozilla/5.0 ({_word(rng)}; {_word(rng)} {rng.randrange(6, 15)}.0) "
                       f"{_word(rng).title()}/{rng.randrange(60, 130)}.0" for _ in range(40)]
        self.messages = [" ".join(rng.choices(words[:800], k=rng.randrange(3, 12)))
                         for _ in range(400)]

    def random(self, n: int) -> bytes:
        """Already compressed data: zstd cannot shrink it."""
        return self.rng.randbytes(n)

    def binary(self, n: int) -> bytes:
        """File-system-like binary: slices of a shared vocabulary plus fresh noise (~2.5x)."""
        rng, vocab = self.rng, self.vocab
        out: list[bytes] = []
        have = 0
        top = len(vocab) - 256
        while have < n:
            length = rng.randrange(4, 200)
            if rng.random() < 0.3:
                out.append(rng.randbytes(length))
            else:
                a = rng.randrange(top)
                out.append(vocab[a:a + length])
            have += length
        return b"".join(out)[:n]

    def pages(self, n: int) -> bytes:
        """Database pages: a header, sorted keys, text fields, free space as zeros."""
        rng = self.rng
        out = bytearray()
        page_no = 0
        while len(out) < n:
            page = bytearray(f"PAGE{page_no:08d}".encode() + rng.randbytes(4))
            key = rng.randrange(1 << 30)
            while len(page) < 4096 - 200:
                key += rng.randrange(1, 500)
                row = (f"{key:012d}|{rng.choice(self.users)}|{rng.choice(self.paths)}|"
                       f"{rng.randrange(10**6)}|{rng.random():.6f}\x00").encode()
                page += row
                if rng.random() < 0.05:
                    break
            page += bytes(4096 - len(page) if len(page) < 4096 else 0)
            out += page[:4096]
            page_no += 1
        return bytes(out[:n])

    def prose(self, n: int) -> bytes:
        rng = self.rng
        out: list[str] = []
        have = 0
        while have < n:
            words = rng.choices(self.words, cum_weights=self.word_weights,
                                k=rng.randrange(6, 30))
            line = " ".join(words).capitalize() + ".\n"
            if rng.random() < 0.1:
                line += "\n"
            out.append(line)
            have += len(line)
        return "".join(out).encode()[:n]

    def source(self, n: int) -> bytes:
        """Source-code-like text: indented lines, identifiers, numbers, comments."""
        rng = self.rng
        out: list[str] = []
        have = 0
        kw = ["def", "return", "if", "for", "while", "class", "import", "const", "let", "var"]
        while have < n:
            depth = rng.randrange(0, 4)
            ws = rng.choices(self.words[:1500], k=rng.randrange(1, 6))
            kind = rng.random()
            if kind < 0.15:
                line = f"# {' '.join(ws)}"
            elif kind < 0.5:
                line = f"{rng.choice(kw)} {'_'.join(ws)}({ws[0]}, {rng.randrange(1000)}):"
            else:
                rhs = ".".join(ws[1:]) or ws[0]
                line = f"{ws[0]} = {rhs}[{rng.randrange(64)}] + {rng.random():.3f}"
            line = "    " * depth + line + "\n"
            out.append(line)
            have += len(line)
        return "".join(out).encode()[:n]

    def log_lines(self, n: int, kind: str, t0: float) -> bytes:
        """``n`` bytes of log lines of one ``kind``, with timestamps from ``t0`` on."""
        rng = self.rng
        out: list[str] = []
        have = 0
        t = t0
        host = rng.choice(self.hosts)
        while have < n:
            t += rng.expovariate(40.0)
            stamp = time.strftime("%b %d %H:%M:%S", time.gmtime(t))
            if kind == "syslog":
                r = rng.random()
                pid = rng.randrange(300, 65000)
                if r < 0.3:
                    line = (f"{stamp} {host} sshd[{pid}]: Accepted publickey for "
                            f"{rng.choice(self.users)} from {_ip(rng)} port "
                            f"{rng.randrange(1024, 65535)} ssh2: RSA SHA256:"
                            f"{rng.randbytes(12).hex()}")
                elif r < 0.5:
                    line = (f"{stamp} {host} kernel: [{t - t0 + 12.5:.6f}] EXT4-fs (sd"
                            f"{'abcd'[rng.randrange(4)]}{rng.randrange(1, 5)}): "
                            f"{rng.choice(self.messages)}")
                elif r < 0.75:
                    line = (f"{stamp} {host} CRON[{pid}]: ({rng.choice(self.users)}) CMD "
                            f"({rng.choice(self.paths)} --{rng.choice(self.words[:300])})")
                else:
                    line = (f"{stamp} {host} systemd[1]: {rng.choice(self.messages)} "
                            f"{rng.choice(self.words[:2000])}.service")
            elif kind == "access":
                stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t))
                status = rng.choices((200, 304, 404, 500, 301), (80, 8, 7, 2, 3))[0]
                line = (f'{_ip(rng)} - - [{stamp}] "{rng.choice(("GET", "GET", "POST"))} '
                        f'{rng.choice(self.paths)}?id={rng.randrange(10**7)} HTTP/1.1" '
                        f'{status} {rng.randrange(200, 90000)} "-" "{rng.choice(self.agents)}"')
            else:  # json
                iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
                line = (f'{{"ts":"{iso}.{int(t * 1000) % 1000:03d}Z","level":"'
                        f'{rng.choices(("info", "debug", "warn", "error"), (70, 20, 8, 2))[0]}'
                        f'","svc":"{rng.choice(self.words[:40])}","req":"'
                        f'{rng.randbytes(8).hex()}","user":{rng.randrange(10**6)},'
                        f'"latency_ms":{rng.lognormvariate(3, 1):.2f},"msg":"'
                        f'{rng.choice(self.messages)}"}}')
            out.append(line + "\n")
            have += len(line) + 1
        return "".join(out).encode()[:n]


_LETTERS = "abcdefghijklmnopqrstuvwxyzeeaaiioonnrrsstt"  # roughly English letter frequencies


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(_LETTERS, k=rng.randrange(2, 11)))


def _zipf_cum(n: int) -> list[float]:
    cum, total = [], 0.0
    for k in range(1, n + 1):
        total += 1.0 / k
        cum.append(total)
    return cum


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


# --------------------------------------------------------------------------- the tree


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _write_chunks(path: Path, size: int, make: Callable[[int], bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(make(n))
            left -= n


def _vhd(path: Path, size: int, c: Content) -> None:
    """A fixed-VHD-like image: header, runs of holes / zeros / data, 512-byte footer."""
    rng = c.rng
    path.parent.mkdir(parents=True, exist_ok=True)
    unit = 64 << 10
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"vhdxfile" + c.binary(4096 - 8))
        pos = 4096
        end = size - 512
        while pos < end:
            run = min(end - pos, unit * rng.choice((1, 2, 4, 8, 16, 32, 64, 128, 256)))
            kind = rng.choices(("hole", "zeros", "binary", "random"), (30, 15, 35, 20))[0]
            if kind != "hole":
                f.seek(pos)
                left = run
                while left:
                    n = min(left, 4 * MiB)
                    f.write(bytes(n) if kind == "zeros"
                            else c.binary(n) if kind == "binary" else c.random(n))
                    left -= n
            pos += run
        f.seek(end)
        f.write(b"conectix" + c.binary(504))


def _small_tree(root: Path, count: int, c: Content) -> int:
    rng = c.rng
    made = 0
    total = 0
    projects = [f"{_word(rng)}-{i}" for i in range(max(4, count // 2000))]
    while made < count:
        project = rng.choice(projects)
        parts = [rng.choice(("src", "lib", "tests", "assets", "conf", "docs"))]
        parts += [_word(rng) for _ in range(rng.randrange(0, 4))]
        folder = root / project / Path(*parts)
        for _ in range(min(count - made, rng.randrange(5, 40))):
            size = max(100, min(64 << 10, int(rng.lognormvariate(7.3, 1.2))))
            r = rng.random()
            stem = f"{_word(rng)}_{made}"
            if r < 0.6:
                name = f"{stem}.{rng.choice(('py', 'c', 'js', 'cfg', 'md'))}"
                data = c.source(size)
            elif r < 0.85:
                name, data = f"{stem}.o", c.binary(size)
            else:
                name, data = f"{stem}.{rng.choice(('png', 'gz', 'bin'))}", c.random(size)
            if made % 997 == 0:
                name = f"naïve café {made} — ünïcode.txt"  # non-ASCII names exist in the wild
            _write(folder / name, data)
            made += 1
            total += size
    return total


def _build(root: Path, size: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    c = Content(rng)
    small_count = max(2000, round(30_000 * size / GiB))
    small_bytes = _small_tree(root / "small", small_count, c)
    budget = size - small_bytes
    if budget < 16 * MiB:
        raise SystemExit(f"--size {human(size)} is too small: the small files alone take "
                         f"{human(small_bytes)}; use at least 128M")

    def share(fraction: float) -> int:
        return int(size * fraction) // 4096 * 4096

    used = 0

    def files(total: int, lo: int, hi: int) -> Iterator[int]:
        nonlocal used
        while total > 0:
            n = min(total, rng.randrange(lo, hi + 1))
            if total - n < lo:
                n = total
            used += n
            total -= n
            yield n

    for i, n in enumerate(files(share(0.40), 64 * MiB, 256 * MiB)):
        _vhd(root / "images" / f"vm-{i:02d} disk.vhd", n, c)
    t0 = 1_764_547_200.0  # 2025-12-01
    for i, n in enumerate(files(share(0.15), 4 * MiB, 48 * MiB)):
        kind = ("syslog", "access", "json")[i % 3]
        name = {"syslog": "syslog", "access": "nginx/access.log", "json": "app/app.jsonl"}[kind]
        _write_chunks(root / "logs" / f"{name}.{i}", n,
                      lambda k, kind=kind, day=i: c.log_lines(k, kind, t0 + day * 86_400))
    for i, n in enumerate(files(share(0.03), 256 << 10, 8 * MiB)):
        maker = c.prose if i % 2 else c.pages
        _write_chunks(root / "docs" / f"{_word(rng)}-{i}.{'txt' if i % 2 else 'csv'}", n, maker)
    for i, n in enumerate(files(share(0.27), 1 * MiB, 64 * MiB)):
        ext = ("jpg", "mp4", "zst", "gz", "7z")[i % 5]
        _write_chunks(root / "media" / f"IMG_{i:05d}.{ext}", n, c.random)
    rest = size - small_bytes - used
    if rest > 0:
        _write_chunks(root / "db" / "catalog.db", rest, c.pages)
    n_files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME))
            n_files += 1
    return {"files": n_files, "small_files": small_count}


def tree_stats(root: Path) -> dict[str, int]:
    """Logical bytes (sum of sizes), allocated bytes, file count of a tree."""
    logical = allocated = count = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            logical += st.st_size
            allocated += st.st_blocks * 512
            count += 1
    return {"bytes": logical, "allocated": allocated, "files": count}


def ensure(root: Path, size: int, seed: int = 1, log: Callable[[str], None] = print
           ) -> dict[str, object]:
    """The tree at ``root`` for (size, seed), built unless a matching one is there."""
    return cached_tree(Path(root), {"version": VERSION, "size": size, "seed": seed},
                       lambda tmp: _build(tmp, size, seed),
                       f"generating a {human(size)} dataset (seed {seed})", log)


def cached_tree(root: Path, want: dict[str, object],
                build: Callable[[Path], dict[str, object]], what: str,
                log: Callable[[str], None] = print) -> dict[str, object]:
    """The tree at ``root`` whose manifest (beside it, not in it) matches ``want``; else
    ``build`` it in a sibling directory, renamed into place once whole, then the manifest."""
    manifest = root.with_name(root.name + ".manifest.json")
    if manifest.exists():
        try:
            have = json.loads(manifest.read_text())
        except ValueError:
            have = {}
        if {k: have.get(k) for k in want} == want:
            return have
    manifest.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"{what} in {root} ...")
    t = time.monotonic()
    extra = build(tmp)
    stats = tree_stats(tmp)
    info = {**want, **extra, **stats, "generated_s": round(time.monotonic() - t, 1)}
    tmp.rename(root)
    manifest.write_text(json.dumps(info))
    log(f"  {stats['files']} files, {human(stats['bytes'])} logical, "
        f"{human(stats['allocated'])} allocated, in {info['generated_s']} s")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.dataset", description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--size", type=parse_size, default=GiB, help="total logical size (default 1G)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    info = ensure(args.dir, args.size, args.seed)
    json.dump(info, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
