"""Test helpers: build a staging tree, and read files back from drives independently
of the importer (drive + recovery password -> file bytes), to check round trips."""

from __future__ import annotations

import os
import random
from pathlib import Path

from pipeline.drive import codec, format
from pipeline.receive import reader as driveread


def make_tree(root: Path, *, small_files: int = 20_000, seed: int = 1,
              random_mb: int = 12, sparse_mb: int = 64) -> None:
    """Sparse VHD-like images, text, incompressible data, many small files, odd names."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    vhd = root / "images" / "disk 0.vhd"
    vhd.parent.mkdir(parents=True)
    with open(vhd, "wb") as f:  # holes, data blocks, and a written (non-sparse) zero run
        f.truncate(sparse_mb << 20)
        for mb in (0, 3, 17, sparse_mb - 1):
            f.seek(mb << 20)
            f.write(rng.randbytes(300_000))
        f.seek(40 << 20)
        f.write(bytes(5 << 20))
        f.seek((sparse_mb << 20) - 512)
        f.write(b"footer" * 85 + b"!!")
    (root / "logs").mkdir()
    with open(root / "logs" / "sys log.txt", "w") as f:
        for i in range(60_000):
            f.write(f"2026-11-26 00:{i % 60:02d}:{i % 60:02d} host svc[{i}]: event {i * 7919}\n")
    (root / "blobs").mkdir()
    (root / "blobs" / "random.bin").write_bytes(rng.randbytes(random_mb << 20))
    (root / "blobs" / "odd size.bin").write_bytes(rng.randbytes((1 << 20) + 12345))
    (root / "empty").mkdir()
    (root / "empty" / "zero bytes").write_bytes(b"")
    (root / "empty" / "also-empty").write_bytes(b"")
    (root / "naïve café — ünïcode.txt").write_text("ça marche, 東京\n" * 100)
    _small_files(root / "small", rng, small_files)


def _small_files(small: Path, rng: random.Random, count: int) -> None:
    """``count`` files of random words under small/dNN/eN/.  Written with os.open on byte
    paths, not pathlib: the same bytes, names, modes and random draws, at a third of the
    CPU (the default 20,000 files: 1.4-2.7 s -> 0.9-1.1 s here)."""
    words = [b"alpha", b"beta", b"gamma", b"delta", b"seeding", b"drive", b"backup"]
    base = os.fsencode(small)
    randrange, choice = rng.randrange, rng.choice
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # as write_bytes opens
    for i in range(count):
        d = b"%s/d%02d/e%d" % (base, i % 50, i % 7)
        if i < 350:
            os.makedirs(d, exist_ok=True)
        n = randrange(1, 60)
        body = b" ".join([choice(words) for _ in range(n)]) + b" #%d\n" % i
        fd = os.open(b"%s/file %05d.txt" % (d, i), flags, 0o666)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def restore(drives: list[tuple[str, str]]) -> dict[str, bytes]:
    """Decode every file from (drive path, recovery password) pairs via their indexes."""
    entries: dict[str, format.FileEntry] = {}
    extents: dict[int, list[tuple[format.Extent, bytes]]] = {}
    for path, password in drives:
        with driveread.unlock_drive(path, password.encode()) as od:
            _, index = driveread.read_index(od)
            for f in index.files:
                if f.path not in entries or entries[f.path].file_id < f.file_id:
                    entries[f.path] = f
            for e in index.extents:
                if e.codec is format.Codec.ZERO:
                    stored = b""
                else:
                    start = e.location - e.location % format.SECTOR
                    end = format.align_up(e.location + e.stored_len)
                    plain = od.cipher.read(od.drive, start, end - start)
                    stored = plain[e.location - start:e.location - start + e.stored_len]
                extents.setdefault(e.file_id, []).append(
                    (e, codec.unpack(e.codec, stored, e.raw_len, e.xxh3)))
    out = {}
    for path, f in entries.items():
        buf = bytearray(f.size)
        covered = 0
        for e, raw in extents.get(f.file_id, []):
            buf[e.offset:e.offset + e.raw_len] = raw
            covered += e.raw_len
        assert covered == f.size, f"{path}: {covered} of {f.size} bytes on the drives"
        out[path] = bytes(buf)
    return out
