"""What of import's ``--to`` crosses Dask's wire: the storage account's address, never its key.

Dask's comms are plain TCP unless the operator configured TLS, and the scheduler holds
every task's arguments; an Azure connection string (AccountKey) or SAS URL is a secret.
So the client sends only the account's endpoint URL (a local directory as it is), and each
worker brings its own credential for that account - ``pipeline worker --storage-key-file
FILE`` or ``AZURE_STORAGE_CONNECTION_STRING`` in its environment - as Dask deployments give
their workers cloud credentials.  The worker checks the credential is for that account.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from pipeline import credentials
from pipeline.errors import BadInput
from pipeline.storage import open_storage
from pipeline.storage.base import Storage
from pipeline.storage.local import LocalStorage

ENV = "AZURE_STORAGE_CONNECTION_STRING"
MAX_CREDENTIAL = 64 * 1024  # a connection string or SAS URL is well under 4 KiB


def _is_url(target: str) -> bool:
    return target.lower().startswith(("http://", "https://"))


def _account(url: str) -> str:
    """An account URL without its query (a SAS) and trailing slash: what the task carries."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme.lower(), p.netloc.lower(), p.path.rstrip("/"),
                                    "", ""))


def public_target(spec: str) -> tuple[str, Storage | None]:
    """The client's ``--to``: (what the tasks carry, the storage opened here to check it
    first, or None for a bare account URL: the client holds no key, the workers check)."""
    spec = spec.strip()
    if _is_url(spec) and not urllib.parse.urlsplit(spec).query:  # no SAS: nothing to check
        return _account(spec), None
    store = open_storage(spec)
    if isinstance(store, LocalStorage):
        return spec, store  # a directory every worker mounts: no secret in it
    return _account(store.name), store


def read_credential(path: str | os.PathLike[str] | None) -> str | None:
    """A worker's storage credential: the file's first line, else the environment's; None
    when neither is given.  Opened once here, so a malformed one stops the worker at start."""
    if path is None:
        text = os.environ.get(ENV, "").strip()
    else:
        p = Path(path)
        try:
            if p.stat().st_size > MAX_CREDENTIAL:
                raise BadInput(f"--storage-key-file {p} is larger than {MAX_CREDENTIAL} bytes; "
                               "give the file holding the connection string or SAS URL")
            credentials.warn_if_exposed(p, "storage key file")
            text = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise BadInput(f"--storage-key-file {p}: {why}; give the file holding the "
                           "storage account's connection string or SAS URL") from None
        if not text:
            raise BadInput(f"--storage-key-file {p} is empty; put the storage account's "
                           "connection string or SAS URL in it")
    if not text:
        return None
    if isinstance(open_storage(text), LocalStorage):  # malformed: BadInput now, not later
        raise BadInput("the worker's storage credential names no storage account: give the "
                       "account's connection string (with AccountKey) or a SAS URL")
    return text


def open_on_worker(target: str, credential: str | None, worker: str) -> Storage:
    """The storage a task's ``target`` names, with this worker's own ``credential``."""
    if not _is_url(target):
        return open_storage(target)
    if credential is None:
        raise BadInput(f"worker {worker} has no credential for {target}: start it with "
                       f"--storage-key-file FILE (the account's connection string or SAS URL) "
                       f"or {ENV} in its environment")
    store = open_storage(credential)
    if _account(store.name) != target:
        raise BadInput(f"worker {worker}'s storage credential is for {_account(store.name)}, "
                       f"not {target}; give it the credential of the account imported into")
    return store
