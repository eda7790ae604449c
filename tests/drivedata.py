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
    words = [b"alpha", b"beta", b"gamma", b"delta", b"seeding", b"drive", b"backup"]
    for i in range(small_files):
        d = root / "small" / f"d{i % 50:02d}" / f"e{i % 7}"
        if i < 350:
            d.mkdir(parents=True, exist_ok=True)
        n = rng.randrange(1, 60)
        body = b" ".join(rng.choice(words) for _ in range(n)) + f" #{i}\n".encode()
        (d / f"file {i:05d}.txt").write_bytes(body)


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
