"""What the importer needs from a storage account; its name rules are ``pipeline.names``.

A blob is assembled from parts on a 1 MiB grid (``CELL``), possibly over several
runs days apart, and becomes visible only when committed.  Every method is
blocking and thread-safe: the importer calls them from Trio worker threads,
several at once.  Backends: ``local.LocalStorage`` (a directory, the default)
and ``azure.AzureStorage`` (azure-storage-blob).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.drive.blob import CELL, BlobType  # CELL: the grid of write_part offsets
from pipeline.errors import EXIT_STORAGE, IntegrityError, PipelineError
from pipeline.names import (  # the rules live in names.py; re-exported for the backends
    MAX_BLOCK_BLOB,
    MAX_PAGE_BLOB,
    PAGE_SIZE,
    InvalidName,
    check_blob_name,
    check_container_name,
)

__all__ = [
    "CELL",
    "PAGE",
    "BlobInfo",
    "BlobType",
    "InvalidName",
    "PartsMissing",
    "Storage",
    "StorageUnavailable",
    "cells_of",
    "BlobTooLarge",
    "GET_LIMIT",
    "check_blob_name",
    "check_container_name",
    "check_part",
    "md5_of",
]

PAGE = PAGE_SIZE        # Azure page blob unit
MAX_BLOB_SIZE = {BlobType.BLOCK: MAX_BLOCK_BLOB, BlobType.PAGE: MAX_PAGE_BLOB}  # Azure's
AZURE_FIX = "check the connection string / SAS and that the account is reachable"


class StorageUnavailable(PipelineError):
    """storage {} is unavailable ({}); {}, then run the same command again"""

    exit_code = EXIT_STORAGE

    def __init__(self, name: str, reason: str, fix: str = AZURE_FIX) -> None:
        super().__init__(name, reason, fix)


GET_LIMIT = 1 << 30     # the most ``get`` reads whole (a backup pack is 16 MiB; a blob list less)


class BlobTooLarge(IntegrityError):
    """storage {}: {} is {} bytes, more than a whole read takes ({}); it is not what belongs there: remove or replace it"""  # noqa: E501 - the message template is one line

    def __init__(self, name: str, where: str, size: int, limit: int) -> None:
        super().__init__(name, where, size, limit)
        self.where, self.size = where, size


class PartsMissing(IntegrityError):
    """storage {}: {} cannot be committed, parts at offsets {} were never stored or are gone (Azure drops uncommitted parts after 7 days); import the drives holding them again (pipeline import --again)"""  # noqa: E501 - the message template is one line

    def __init__(self, name: str, where: str, offsets: Sequence[int]) -> None:
        shown = ", ".join(str(o) for o in offsets[:5]) + (" ..." if len(offsets) > 5 else "")
        super().__init__(name, where, shown)
        self.offsets = builtins.list(offsets)


def cells_of(size: int) -> range:
    """Grid offsets of a blob of ``size`` bytes."""
    return range(0, size, CELL)


def check_part(blob_type: BlobType, size: int, offset: int, data: bytes) -> None:
    """A misaligned part is the caller's bug, not the user's: ValueError (exit 70)."""
    if size < 0 or offset < 0 or offset % CELL or len(data) > CELL or offset + len(data) > size:
        raise ValueError(f"part at {offset} of {len(data)} bytes does not fit the {CELL}-byte "
                         f"grid of a {size}-byte blob")
    if blob_type is BlobType.PAGE and (size % PAGE or len(data) % PAGE):
        raise ValueError(f"page blob part at {offset} of {len(data)} bytes, blob size {size}: "
                         f"not multiples of {PAGE}")


class Storage(Protocol):
    """A storage account as the importer sees it; see the module docstring."""

    name: str  # for messages; never holds a SAS token or an account key

    def check(self) -> None:
        """Raise StorageUnavailable (or BadInput) unless reachable and authorised."""

    def ensure_container(self, container: str) -> None:
        """Create the container if it does not exist."""

    def write_part(self, container: str, blob: str, blob_type: BlobType, size: int, offset: int,
                   data: bytes, *, copy: str | None = None) -> None:
        """Store ``data`` at ``offset`` of a blob being assembled; idempotent, durable.
        ``copy`` names this copy of the blob's bytes (the importer: its session and file),
        the same for all its parts and its commit."""

    def commit(self, container: str, blob: str, blob_type: BlobType, size: int,
               zero_offsets: Sequence[int], *, copy: str | None = None) -> None:
        """Make the blob visible with ``size`` bytes; cells not written are in zero_offsets.
        A part the blob already holds from its committed version stands in for one not
        written again only if that version is the same ``copy`` (Azure: a block blob's
        staged parts expire after 7 days; an older copy's bytes must not fill them)."""

    def sync(self) -> None:
        """Make every write_part and commit so far durable (Azure's are already)."""

    def discard(self, container: str, blob: str) -> None:
        """Forget a partial blob; a committed one stays."""

    def size(self, container: str, blob: str) -> int | None:
        """Committed size, None if absent or still partial."""

    def read(self, container: str, blob: str, offset: int, length: int) -> bytes:
        """A range of a committed blob (short at its end)."""

    def put(self, container: str, blob: str, data: bytes) -> None:
        """Replace a small whole block blob atomically (markers, logs)."""

    def delete(self, container: str, blob: str) -> None:
        """Remove a committed blob (a backup's prune, forget, released lock); absent
        already is fine.  The importer never deletes."""

    def get(self, container: str, blob: str, limit: int = GET_LIMIT) -> bytes | None:
        """A whole committed blob, None if absent; BlobTooLarge past ``limit`` bytes, before
        reading it (whoever can write to the account chooses what a name holds)."""

    def list(self, container: str, prefix: str = "") -> builtins.list[str]:
        """Committed blob names starting with ``prefix``, sorted."""

    def set_attributes(self, container: str, blob: str, blob_type: BlobType,
                       metadata: Sequence[tuple[str, str]],
                       properties: Sequence[tuple[str, str]]) -> None:
        """Give a committed blob its metadata and properties (``drive.attrs``' rules), all
        at once, replacing earlier ones; Content-MD5 is computed from the blob when
        ``properties`` has none."""

    def get_attributes(self, container: str, blob: str) -> BlobInfo | None:
        """A committed blob's type, metadata and properties; None if absent."""


@dataclass(frozen=True)
class BlobInfo:
    """What ``get_attributes`` says of a blob: what import, repair and unpack read back."""

    blob_type: BlobType
    metadata: dict[str, str]
    properties: dict[str, str]  # the settable ones (``drive.attrs.PROPERTIES``) it has


def md5_of(read: Callable[[int, int], bytes], size: int) -> str:
    """Content-MD5 (base64) of a blob read in 4 MiB ranges by ``read(offset, length)``."""
    digest = hashlib.md5(usedforsecurity=False)
    for offset in range(0, size, 4 << 20):
        digest.update(read(offset, min(4 << 20, size - offset)))
    return base64.b64encode(digest.digest()).decode()
