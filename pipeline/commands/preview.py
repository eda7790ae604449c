"""`pipeline preview`: how many drives a staging directory needs, before any write.

Holes are found with SEEK_DATA/SEEK_HOLE (they cost nothing on a drive); the
compression ratio comes from a deterministic sample of extents spread over the
whole tree, packed exactly as prep packs them.  What prep would skip (names that
cannot be blob names, special files) is named and left out of the estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import names
from pipeline.commands import _options
from pipeline.drive import codec, format
from pipeline.errors import EXIT_OK, EXIT_WARNING, BadInput, Outcome
from pipeline.prep import datasetio, read, scan
from pipeline.volume import drives, luks2

PER_FILE_OVERHEAD = 2 * (format.EXTENT_RECORD_SIZE + 64)  # records in a segment and the index


EXITS = (EXIT_WARNING,)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview", help="estimate the drives a staging directory needs",
        description="Estimate how many drives of --drive-size the staging directory needs: "
        "holes are skipped, the compression ratio is sampled.  Writes nothing.")
    _options.add_aliased(p, "--source", ("--srcdir",), metavar="DIR",
                         help="the staging directory to size (or --dataset)")
    p.add_argument("--dataset", metavar="FILE",
                   help="a WAImportExport v2 dataset.csv to size instead: every row's files, "
                   "checked as prep checks them")
    p.add_argument("--drive-size", required=True, metavar="SIZE",
                   help="size of each drive (e.g. 4T, or 2G for image files)")
    p.add_argument("--level", type=int, default=1, metavar="N", help="zstd level (default 1)")
    p.add_argument("--sample", default="64M", metavar="SIZE",
                   help="how much data to compress for the ratio (default 64M)")
    p.add_argument("--dstdir", metavar="CONTAINER/VDIR/",
                   help="the dstdir prep will get: names too long under it are named too")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


@dataclass
class Estimate:
    files: int
    bytes: int
    data_bytes: int  # bytes outside holes
    sampled_bytes: int
    ratio: float  # stored / raw over the sample
    stored_bytes: int  # estimated bytes on drives, records included
    drive_size: int
    data_area_per_drive: int  # what prep reports as a drive's capacity
    usable_per_drive: int  # the data area less the trailer and headroom for the index
    drives: int
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason: prep skips them


def data_area(drive_size: int) -> int:
    """The encrypted data area of a drive: prep's capacity for it (DriveCipher's rule)."""
    area = drive_size - luks2.DATA_OFFSET
    return max(0, area - area % format.SECTOR)


def usable(drive_size: int) -> int:
    """Data area of one drive, less the trailer and one extent of headroom at the end."""
    return max(0, data_area(drive_size) - 2 * format.SECTOR - format.CELL - (1 << 20))


def estimate(srcdir: Path, drive_size: int, level: int, sample: int,
             vdir: str = "", dataset: list[datasetio.Source] | None = None) -> Estimate:
    """The estimate for ``srcdir`` (names under ``vdir``), or for a dataset's rows (their
    paths are then relative to ``/``, as on the drive)."""
    skipped: list[dict[str, str]] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append({"path": path, "reason": reason})

    if dataset is None:
        files = list(scan.scan(srcdir, on_skip, vdir))
    else:
        srcdir = Path("/")
        files = [f for f, _, _ in datasetio.walk(dataset, on_skip)]
    total = sum(f.size for f in files)
    cells: list[tuple[Path, int, int]] = []
    data_bytes = 0
    for f in files:
        path = srcdir / f.path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for off, length, has_data in read.plan_extents(f.size, read.data_ranges(fd, f.size)):
                if has_data:
                    data_bytes += length
                    cells.append((path, off, length))
        finally:
            os.close(fd)
    step = max(1, math.ceil(sum(c[2] for c in cells) / max(sample, 1)))
    raw = stored = 0
    for path, off, length in cells[::step]:
        with open(path, "rb") as fh:
            data = os.pread(fh.fileno(), length, off)
        if not data:
            continue
        raw += len(data)
        stored += len(codec.pack(data, level).stored)
    ratio = stored / raw if raw else 1.0
    need = int(data_bytes * ratio) + PER_FILE_OVERHEAD * len(files)
    per = usable(drive_size)
    if per <= 0:
        raise BadInput(f"--drive-size {drives.human(drive_size)} is smaller than the minimum "
                       f"volume of {drives.human(drives.MIN_DRIVE_SIZE)}")
    return Estimate(files=len(files), bytes=total, data_bytes=data_bytes, sampled_bytes=raw,
                    ratio=round(ratio, 4), stored_bytes=need, drive_size=drive_size,
                    data_area_per_drive=data_area(drive_size), usable_per_drive=per,
                    drives=max(1, math.ceil(need / per)), skipped=skipped)


def run(args: argparse.Namespace) -> Outcome:
    if not 1 <= args.level <= 22:
        raise BadInput(f"--level {args.level} is out of range; zstd levels are 1 to 22")
    if bool(args.source) == bool(args.dataset):
        raise BadInput("give the staging directory (--source) or a dataset.csv (--dataset)")
    dataset = None
    if args.dataset:
        dataset, _notes = datasetio.load_dataset(args.dataset)
    vdir = names.vdir_of(names.check_dstdir(args.dstdir)) if args.dstdir else ""
    est = estimate(Path(args.source or "/"), drives.parse_size(args.drive_size), args.level,
                   drives.parse_size(args.sample), vdir, dataset)
    done = Outcome(EXIT_WARNING if est.skipped else EXIT_OK)  # warnings: prep would skip these
    if args.json:
        print(json.dumps(asdict(est), indent=2))
        return done
    h = drives.human
    print(f"files           {est.files}")
    print(f"staging size    {h(est.bytes)} ({h(est.bytes - est.data_bytes)} in holes)")
    print(f"compression     {est.ratio:.2f} of the data (sampled {h(est.sampled_bytes)})")
    print(f"on drives       about {h(est.stored_bytes)}")
    print(f"drives needed   {est.drives} of {h(est.drive_size)} "
          f"({h(est.data_area_per_drive)} data area each, as prep shows it; counted with "
          f"{h(est.usable_per_drive)} for data, the rest kept for the index)")
    if est.skipped:
        print(f"skipped         {len(est.skipped)} (prep will not copy them)")
        for s in est.skipped:
            print(f"  {names.show(s['path'])}: {s['reason']}")
    return done
