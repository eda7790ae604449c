"""``--to`` -> a storage backend: which one a target string names.

Its own module so that the backends import ``base`` and nothing imports them
back: ``base`` <- ``local``/``azure`` <- ``target``.  The Azure SDK loads only
when an Azure target is opened.
"""

from __future__ import annotations

import os
import re

from pipeline.errors import BadInput
from pipeline.storage.base import Storage

_CONN_KEYS = re.compile(r"(?i)(?:^|;)\s*(?:AccountName|BlobEndpoint|UseDevelopmentStorage)\s*=")
_SCHEME = re.compile(r"(?i)^([a-z][a-z0-9+.-]*)://")


def open_storage(target: str | None) -> Storage:
    """Pick the backend from a ``--to`` value (or the environment when None)."""
    if target is None:
        target = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        if target is None:
            raise BadInput("give --to PATH or an Azure connection string / account URL "
                           "(or set AZURE_STORAGE_CONNECTION_STRING)")
    target = target.strip()
    if not target:
        raise BadInput("--to is empty; give a directory or an Azure connection string / "
                       "account URL")
    scheme = _SCHEME.match(target)
    if _CONN_KEYS.search(target) or (scheme and scheme.group(1).lower() in ("http", "https")):
        from pipeline.storage.azure import AzureStorage  # the SDK loads only when needed

        return AzureStorage(target)
    from pipeline.storage.local import LocalStorage

    if scheme:
        if scheme.group(1).lower() != "file":
            raise BadInput(f"--to {scheme.group(0)}...: unsupported storage; give a directory, "
                           "file://PATH or an Azure connection string / account URL")
        target = target[scheme.end():]
        if not target:
            raise BadInput("--to file:// names no directory; give file:///PATH")
    return LocalStorage(target)
