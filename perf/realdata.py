"""A staging tree of real files already on this machine: what users have, not what we wrote.

``python -m perf.realdata DIR --size 2G`` builds (or reuses) it; ``python -m perf --real``
measures on it beside the synthetic tree (``perf/dataset.py``).  Three parts, each
copied from the machine itself:

- ``stdlib/``: a Python standard library (``sysconfig``'s stdlib, without
  site-packages): some 8,000 small source files, bytecode and a few shared objects;
- ``libs/``: shared libraries and other files from the system's library directory
  (``/usr/lib/x86_64-linux-gnu`` or ``/usr/lib``), in path order, up to their share:
  machine code and data that zstd -1 shrinks about 2-3x;
- ``images/fs.img``: an ext4 file system image made with ``mkfs.ext4 -d`` from
  ``/usr/share`` (documentation, locales, icons; whatever fits in half the image):
  sparse, mostly holes, as disk images are.

Shares: the stdlib whole (capped at 30 % of ``--size``), the image 40 %, libraries the
rest.  The same machine gives the same tree; another machine gives its own, so the
figures compare within a run (ratios against ``tar | zstd`` on the same tree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from perf.dataset import cached_tree, human, parse_size

VERSION = 1
MiB = 1 << 20
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
IMAGE_SOURCES = ("/usr/share", "/usr/include")


def _files(top: Path, skip: set[Path] | None = None) -> Iterator[Path]:
    """Regular files under ``top`` (no links), in sorted path order."""
    for dirpath, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not skip or Path(dirpath, d) not in skip)
        for name in sorted(names):
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                yield p


def _copy_upto(src: Path, dst: Path, budget: int, skip: set[Path] | None = None) -> int:
    """Copy files from ``src`` into ``dst`` (same relative paths) until ``budget`` bytes."""
    used = 0
    for p in _files(src, skip):
        size = p.stat().st_size
        if used + size > budget:
            continue
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(p, target)
        except OSError:
            continue
        used += size
    return used


def _image(img: Path, size: int, scratch: Path) -> None:
    """A sparse ext4 image of ``size`` bytes holding what of IMAGE_SOURCES fits in half."""
    content = scratch / "content"
    content.mkdir()
    budget = size // 2
    for src in IMAGE_SOURCES:
        if Path(src).is_dir() and budget > 0:
            budget -= _copy_upto(Path(src), content / Path(src).name, budget)
    img.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(img),
                    f"{size // 1024}k"], check=True, capture_output=True)


def _build(root: Path, size: int) -> dict[str, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {stdlib / "site-packages", stdlib / "dist-packages"}
    used = _copy_upto(stdlib, root / "stdlib", int(size * 0.30), skip)
    image = int(size * 0.40) // MiB * MiB
    libs = next((Path(d) for d in LIB_DIRS if Path(d).is_dir()), None)
    if libs is not None:
        used += _copy_upto(libs, root / "libs", size - used - image)
    with tempfile.TemporaryDirectory(dir=root.parent) as scratch:
        _image(root / "images" / "fs.img", max(image, 64 * MiB), Path(scratch))
    return {"stdlib_files": sum(1 for _ in _files(root / "stdlib"))}


def ensure(root: Path, size: int, log: Callable[[str], None] = print) -> dict[str, object]:
    """The tree at ``root`` for ``size``, built unless a matching one is there."""

    def build(tmp: Path) -> dict[str, object]:
        tmp.mkdir(parents=True)
        return _build(tmp, size)

    return cached_tree(Path(root), {"version": VERSION, "size": size, "kind": "real"}, build,
                       f"copying a {human(size)} real-data tree (stdlib, libraries, an ext4 "
                       "image)", log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.realdata",
                                description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--size", type=parse_size, default=2 << 30, help="about this much (2G)")
    args = p.parse_args(argv)
    json.dump(ensure(args.dir, args.size), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
