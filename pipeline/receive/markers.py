"""The importer's own state in the storage account: one marker per imported drive.

Each imported drive leaves ``STATE_CONTAINER/SESSION/drive-NN.json`` listing the grid
cells it delivered for each file (first ``parts``, then ``done``).  The markers of a
session together say which blobs are complete, and which copy of a file is the newest.
They are read back as hostile input: a damaged one is named, never trusted.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from pipeline.errors import IntegrityError
from pipeline.storage.base import Storage

# The importer's own state (per-drive markers, copy logs) lives in a container of its own,
# as Azure's diagnosticsPath does (default ``waimportexport``): never among the customer's
# blobs, where a blob on a drive could be named like a marker and forge one.
STATE_CONTAINER = "waimportexport"


def state_name(session_id: str, leaf: str) -> str:
    """A blob of the importer's state for a session, in STATE_CONTAINER."""
    return f"{session_id}/{leaf}"


def marker_name(session_id: str, seq: int) -> str:
    return state_name(session_id, f"drive-{seq:02d}.json")


async def read_markers(store: Storage, session_id: str, net: trio.CapacityLimiter,
                       skip: str = "") -> list[dict[str, Any]]:
    """Every imported drive's marker of the session (this drive's too, once written),
    but ``skip``: the importing drive's own, which it holds in memory already (parsing
    it back cost a second per 15,000 files)."""
    prefix = state_name(session_id, "drive-")
    found = await trio.to_thread.run_sync(store.list, STATE_CONTAINER, prefix, limiter=net)
    markers = []
    for name in found:
        if name.endswith(".json") and name != skip:
            raw = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, name, limiter=net)
            if raw:
                markers.append(parse_marker(name, raw))
    return markers


def parse_marker(name: str, raw: bytes) -> dict[str, Any]:
    """A marker read back from the account: checked before anything trusts it."""
    try:
        m = json.loads(raw)
        ok = (isinstance(m, dict) and isinstance(m.get("seq"), int)
              and m.get("state") in ("parts", "done") and isinstance(m.get("files"), list)
              and all(isinstance(f, dict) and isinstance(f.get("file_id"), int)
                      and isinstance(f.get("blob"), str)
                      and all(isinstance(f.get(k), list) and all(type(c) is int for c in f[k])
                              for k in ("cells", "zero"))
                      for f in m["files"]))
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"storage: import marker {STATE_CONTAINER}/{name} is damaged; "
                             "delete it and import that drive again")
    return m


def newest_versions(markers: list[dict[str, Any]]) -> dict[str, int]:
    """Blob -> the newest file id any imported drive delivered for it."""
    newest: dict[str, int] = {}
    for m in markers:
        for f in m["files"]:
            newest[f["blob"]] = max(newest.get(f["blob"], 0), f["file_id"])
    return newest
