"""Where imported blobs go: a local directory or an Azure storage account.

``open_storage(--to)`` picks the backend; both implement ``base.Storage``.
The Azure SDK is imported only when an Azure target is opened.
"""

from pipeline.storage.base import (
    CELL,
    BlobType,
    InvalidName,
    PartsMissing,
    Storage,
    StorageUnavailable,
    check_blob_name,
    check_container_name,
)
from pipeline.storage.target import open_storage

__all__ = [
    "CELL",
    "BlobType",
    "InvalidName",
    "PartsMissing",
    "Storage",
    "StorageUnavailable",
    "check_blob_name",
    "check_container_name",
    "open_storage",
]
