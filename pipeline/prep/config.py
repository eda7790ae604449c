"""prep's settings, and how its --memory budget becomes channel depth.

Every channel is bounded, so memory is arithmetic: ``depth`` raw extents of up
to 1 MiB, ``depth / 4`` bundles of up to ~4 MiB, one call's worth in each
reader and packer, and per writing drive (all of them in parallel fill, one in
sequential) ``WRITER_MEMORY``, its segments' bytes and their records' objects;
``--memory`` sets ``depth`` from what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import credentials
from pipeline.drive import format
from pipeline.prep.datasetio import Source
from pipeline.prep.write import (
    COMMIT_RECORDS,
    RECORD_OBJECTS,
    SEGMENT_PAYLOAD,
    SEGMENT_RECORDS,
)
from pipeline.volume import luks2

__all__ = ["PrepConfig"]

MiB = 1 << 20
HELPERS_MEMORY = 48 * MiB  # the feeder process (~26 MiB) and the counting walk (~15 MiB)
# A writing drive holds up to: its open segment, the one being laid out (payload and
# segment), the sealed one, the one being encrypted (plain and cipher) and the one written;
# and as objects, the records of the four segments before the write and those written but
# not yet committed (tiny files are all records: ~5 bytes of objects a byte, ``write``).
WRITER_MEMORY = (6 * (SEGMENT_PAYLOAD + format.CELL)
                 + RECORD_OBJECTS * (4 * SEGMENT_RECORDS + COMMIT_RECORDS))
MAX_DEPTH = 40  # raw extents in flight; deeper bought no speed, only memory


@dataclass
class PrepConfig:
    """What a prep run was asked to do, and the memory arithmetic that follows from it."""

    srcdir: Path
    dstdir: str
    jdir: Path
    session_id: str
    drives: list[str]
    drive_size: int | None = None
    yes: bool = False
    blob_type: format.BlobType = format.BlobType.BLOCK
    level: int = 1
    fill: str = "sequential"
    operator_secret: credentials.Secret | None = None
    kdf: luks2.KdfParams = field(default_factory=luks2.KdfParams)
    cpu_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    readers: int = 2
    memory: int = 256 * MiB
    # A dataset.csv's checked rows (then srcdir is "/" and dstdir the first row's container):
    # drives written as format version 2, each file with its own blob and attributes.
    dataset: list[Source] | None = None
    # AlreadyEncrypted drives (driveset.csv): resolved path -> the volume's existing key.
    # Their LUKS2 volume is opened with it and kept; the key becomes the journal's password.
    existing_keys: dict[str, str] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        """Channel depth from the --memory budget (each slot holds up to 1 MiB)."""
        writing = max(1, len(self.drives)) if self.fill == "parallel" else 1
        budget = (self.memory - writing * WRITER_MEMORY - 64 * MiB  # interpreter etc.
                  - HELPERS_MEMORY)
        slots = budget // format.CELL - self.cpu_threads - self.readers
        return max(2, min(MAX_DEPTH, slots // 2))
