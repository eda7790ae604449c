"""The importer's own state in the storage account: one marker per imported drive.

Each imported drive leaves a head, ``STATE_CONTAINER/SESSION/drive-NN.json`` (its state:
first ``parts``, then ``done``, and how many chunks), and its files in chunks of
CHUNK_FILES, ``SESSION/files-NN-KKKKK.json``: each a JSON list of the files with the grid
cells the drive delivered.  Chunks, so that no import holds the JSON of every file (a
single marker was ~120 B a file, written and read whole); the chunks are written before
the head that counts them, and rewritten alike by an import run again.  A marker of an
earlier version lists its files in the head itself (``files``): still read.  The
markers of a session together say which blobs are complete, and which copy of a file
is the newest.  They are read back as hostile input: a damaged one is named, never
trusted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import trio

from pipeline.errors import IntegrityError
from pipeline.storage.base import Storage

CHUNK_FILES = 10_000  # files a marker chunk lists (~1.2 MB of JSON)

# The importer's own state (per-drive markers, copy logs) lives in a container of its own,
# as Azure's diagnosticsPath does (default ``waimportexport``): never among the customer's
# blobs, where a blob on a drive could be named like a marker and forge one.
STATE_CONTAINER = "waimportexport"


def state_name(session_id: str, leaf: str) -> str:
    """A blob of the importer's state for a session, in STATE_CONTAINER."""
    return f"{session_id}/{leaf}"


def marker_name(session_id: str, seq: int) -> str:
    return state_name(session_id, f"drive-{seq:02d}.json")


def chunk_name(session_id: str, seq: int, k: int) -> str:
    """A marker's ``k``-th chunk of files (not under ``drive-``: not listed as a head)."""
    return state_name(session_id, f"files-{seq:02d}-{k:05d}.json")


def head(session_id: str, seq: int, state: str, chunks: int) -> bytes:
    return json.dumps({"session_id": session_id, "seq": seq, "state": state,
                       "chunks": chunks}).encode()


def chunks_json(files: Iterable[dict[str, Any] | str]) -> Iterator[bytes]:
    """The marker's chunks, CHUNK_FILES files each, encoded a file at a time (a str is
    a file's entry encoded already: ``OnDrive.marker_json``)."""
    part: list[str] = []
    for f in files:
        part.append(f if isinstance(f, str) else json.dumps(f))
        if len(part) >= CHUNK_FILES:
            yield ("[" + ", ".join(part) + "]").encode()
            part.clear()
    if part:
        yield ("[" + ", ".join(part) + "]").encode()


async def put_marker(store: Storage, session_id: str, seq: int, state: str,
                     files: Iterable[dict[str, Any] | str] | None, net: trio.CapacityLimiter,
                     chunks: int = 0) -> int:
    """Write the drive's chunks (``files``; None: written already, ``chunks`` of them),
    synced, then its head; returns the chunk count."""
    if files is not None:
        chunks = 0
        for raw in chunks_json(files):
            await trio.to_thread.run_sync(store.put, STATE_CONTAINER,
                                          chunk_name(session_id, seq, chunks), raw, limiter=net)
            chunks += 1
        await trio.to_thread.run_sync(store.sync, limiter=net)  # the chunks before the head
    await trio.to_thread.run_sync(store.put, STATE_CONTAINER, marker_name(session_id, seq),
                                  head(session_id, seq, state, chunks), limiter=net)
    return chunks


async def each_marker_chunk(store: Storage, session_id: str, net: trio.CapacityLimiter,
                            skip: str = "") -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Async iterator of (seq, files): every imported drive's marker of the session but
    ``skip``, a chunk at a time, each checked before it is handed out."""
    prefix = state_name(session_id, "drive-")
    found = await trio.to_thread.run_sync(store.list, STATE_CONTAINER, prefix, limiter=net)
    for name in found:
        if not name.endswith(".json") or name == skip:
            continue
        raw = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, name, limiter=net)
        if not raw:
            continue
        m = parse_marker(name, raw)
        if "files" in m:
            yield m["seq"], m["files"]
            continue
        for k in range(m["chunks"]):
            cname = chunk_name(session_id, m["seq"], k)
            raw = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, cname, limiter=net)
            yield m["seq"], parse_files(cname, raw, name)


async def read_markers(store: Storage, session_id: str, net: trio.CapacityLimiter,
                       skip: str = "") -> list[dict[str, Any]]:
    """Every imported drive's marker of the session but ``skip``, each with all its files
    (``files``): for repair, which wants them all; the import reads them a chunk at a time
    (``each_marker_chunk``)."""
    markers: dict[int, dict[str, Any]] = {}
    async for seq, files in each_marker_chunk(store, session_id, net, skip):
        markers.setdefault(seq, {"seq": seq, "files": []})["files"].extend(files)
    return list(markers.values())


_U64 = 1 << 64


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(type(c) is int and 0 <= c < _U64 for c in v)


def parse_marker(name: str, raw: bytes | None) -> dict[str, Any]:
    """A marker's head read back from the account (or a whole marker of an earlier
    version, its files inline): checked before anything trusts it."""
    try:
        m = json.loads(raw) if raw is not None else None
        ok = (isinstance(m, dict) and type(m.get("seq")) is int
              and m.get("state") in ("parts", "done")
              and (_files_ok(m.get("files")) if "files" in m else
                   type(m.get("chunks")) is int and 0 <= m["chunks"] < _U64))
    except (ValueError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise _damaged(name)
    return m  # type: ignore[return-value]


def parse_files(name: str, raw: bytes | None, head_name: str) -> list[dict[str, Any]]:
    """A marker's chunk of files read back: checked (a missing one is damage too)."""
    try:
        files = json.loads(raw) if raw is not None else None
        ok = _files_ok(files)
    except (ValueError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise IntegrityError(f"storage: import marker {STATE_CONTAINER}/{head_name} is "
                             f"damaged (its chunk {name}); delete it and import that drive "
                             "again")
    return files  # type: ignore[return-value]


def _files_ok(files: Any) -> bool:
    return isinstance(files, list) and all(
        isinstance(f, dict) and type(f.get("file_id")) is int and 0 <= f["file_id"] < _U64
        and isinstance(f.get("blob"), str) and _ints(f.get("cells")) and _ints(f.get("zero"))
        for f in files)


def _damaged(name: str) -> IntegrityError:
    return IntegrityError(f"storage: import marker {STATE_CONTAINER}/{name} is damaged; "
                          "delete it and import that drive again")


def newest_versions(markers: list[dict[str, Any]]) -> dict[str, int]:
    """Blob -> the newest file id any imported drive delivered for it."""
    newest: dict[str, int] = {}
    for m in markers:
        for f in m["files"]:
            newest[f["blob"]] = max(newest.get(f["blob"], 0), f["file_id"])
    return newest
