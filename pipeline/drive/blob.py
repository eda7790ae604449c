"""What a drive and a storage account agree on about a blob: its type and the grid its
parts lie on.  Its own module, so that the storage layer has them without the drive format
(``format`` re-exports both): importing ``format`` was 7 ms of the start of every command
that opens a storage account, an hourly no-change backup among them."""

from __future__ import annotations

import enum

__all__ = ["CELL", "BlobType"]

CELL = 1 << 20
"""The extent grid: extent k of a file covers ``[k*CELL, min((k+1)*CELL, size))``.  Resume
skips committed cells and import aligns page blobs on it, so it never depends on the data.
A storage's ``write_part`` offsets keep the same grid."""


class BlobType(enum.IntEnum):
    """Azure blob type the importer creates (``/BlobType``)."""

    BLOCK = 1
    PAGE = 2
