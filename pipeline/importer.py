"""Drive -> storage account: unlock, check every extent's xxh3, decompress, write blobs.

::

    read + decrypt 16 MiB windows (thread) -> extents -> unpack + check (cpu threads)
        -> write_part (storage threads, bounded) -> per-drive marker -> commit complete blobs

Files can span drives, and drives arrive in any order, in separate runs.  The
storage account itself keeps the state: each imported drive leaves a marker
blob ``.pipeline-import/SESSION/drive-NN.json`` listing the grid cells it
delivered for each file.  A blob is committed (made visible, complete) when
the markers of the imported drives cover all its cells, so a file completes
when its last drive is imported.  Partial blobs are never visible as complete.

A marker is first written as ``parts`` (data delivered), then ``done`` once
its commits are through: re-importing a ``done`` drive changes nothing and
says so; a ``parts`` drive (a crash mid-import) is simply imported again.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trio

from pipeline import codec, driveread, format, journal, names
from pipeline.errors import BadInput, IntegrityError, NoSpace, Refused, is_no_space
from pipeline.stages.read import EXTENT_SIZE
from pipeline.storage import base as storage_base
from pipeline.storage.base import Storage

MARKER_PREFIX = ".pipeline-import/"
WINDOW = 16 << 20  # bytes read and decrypted per worker-thread call
UPLOAD_BATCH = 64  # extents written per storage thread call ...
UPLOAD_BYTES = 4 << 20  # ... up to about this many bytes
COMMIT_BATCH = 256  # blobs committed per storage thread call


def marker_name(session_id: str, seq: int) -> str:
    return f"{MARKER_PREFIX}{session_id}/drive-{seq:02d}.json"


def cells_of(size: int) -> list[int]:
    return list(range(0, size, EXTENT_SIZE))


# --------------------------------------------------------------------------
# Copy log: JSON Lines, flushed per line, so it survives a failure part-way


class CopyLog:
    """One JSON object per blob (ok / corrupt / missing / skipped + reason), then totals."""

    def __init__(self, stream: IO[str], drive: str) -> None:
        self.stream, self.drive = stream, drive
        self.totals = {"ok": 0, "corrupt": 0, "missing": 0, "skipped": 0, "bytes": 0}
        self.lines: list[str] = []

    def write(self, obj: dict[str, Any]) -> None:
        line = json.dumps({"t": round(time.time(), 3), **obj}, ensure_ascii=False)
        self.lines.append(line)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except OSError as exc:  # a full log directory is the user's to fix, named, not a bug
            if is_no_space(exc):
                name = getattr(self.stream, "name", "the copy log")
                raise NoSpace(name, f"copy log {name}") from None
            raise

    def blob(self, status: str, blob: str, reason: str = "", size: int = 0, **extra: Any) -> None:
        self.totals[status] += 1
        if status == "ok":
            self.totals["bytes"] += size
        self.write({"type": "blob", "status": status, "blob": blob, "size": size,
                    "reason": reason, **extra})

    def close(self, result: str, message: str = "") -> None:
        self.write({"type": "totals", "drive": self.drive, "result": result,
                    "message": message, **self.totals})


@contextlib.contextmanager
def open_copy_log(path: Path) -> Iterator[IO[str]]:
    """The copy log at ``path``, open for writing; a full filesystem is NoSpace naming it.

    A line that did not fit stays in the file object's buffer and fails again when it
    is closed: on the way out with an error already, that second failure is dropped,
    so it does not hide what stopped the import.
    """
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(path, f"copy log {path}") from None
        raise
    try:
        yield stream
    except BaseException:
        with contextlib.suppress(OSError):
            stream.close()
        raise
    try:
        stream.close()
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpace(path, f"copy log {path}") from None
        raise


# --------------------------------------------------------------------------
# What is on the drive


@dataclass
class DrivePlan:
    """The records of one drive, from its journal or its closing index."""

    superblock: format.Superblock
    files: dict[int, format.FileEntry]
    extents: list[format.Extent]
    source: str  # "journal" or "index"

    @property
    def container(self) -> str:
        return self.superblock.dstdir.split("/", 1)[0]


def plan_drive(od: driveread.OpenedDrive, jrn: journal.Journal | None) -> DrivePlan:
    sb = od.superblock
    storage_base.check_container_name(sb.dstdir.split("/", 1)[0])
    if jrn is not None:
        info = jrn.drive
        if (sb.session_id, sb.drive_seq, sb.volume_uuid) != (
                jrn.session.session_id, info.seq, info.uuid):
            raise Refused(f"{od.drive.path} is drive {sb.drive_seq} of session {sb.session_id}, "
                          f"not drive {info.seq} of {jrn.session.session_id}; pass the journal "
                          "directory of its own session")
        files = {f.file_id: f for f in jrn.files()}
        return DrivePlan(sb, files, list(jrn.extents()), "journal")
    try:
        _, index = driveread.read_index(od)
    except format.CorruptRecord:
        # No closing index (prep crashed before closing the drive): walk the log.
        files, extents = driveread.scan_log(od)
        if not files:
            raise IntegrityError(f"{od.drive.path}: neither a closing index nor any segment "
                                 "could be read; import it with its journal (--journal-dir)"
                                 ) from None
        return DrivePlan(sb, files, extents, "log scan")
    return DrivePlan(sb, {f.file_id: f for f in index.files}, list(index.extents), "index")


def check_names(plan: DrivePlan) -> None:
    """Every container and blob name valid before anything is written: the rules prep
    applied when it skipped the names it could not copy (``pipeline.names``)."""
    names.check_container_name(plan.container)
    for f in plan.files.values():
        names.check_blob_name(f.blob)
        if plan.superblock.blob_type is format.BlobType.PAGE and f.size % 512:
            raise BadInput(f"{f.path}: {f.size} bytes cannot be a page blob (not a multiple "
                           "of 512)")


# --------------------------------------------------------------------------
# Reading extents in large windows


def windows(extents: Iterable[format.Extent]) -> list[list[format.Extent]]:
    """Group stored extents (by location) into reads of at most WINDOW bytes."""
    out: list[list[format.Extent]] = []
    start = end = 0
    for ext in sorted(extents, key=lambda e: e.location):
        lo = ext.location - ext.location % format.SECTOR
        hi = format.align_up(ext.location + ext.stored_len)
        if out and hi - start <= WINDOW and lo >= start:
            out[-1].append(ext)
            end = max(end, hi)
        else:
            out.append([ext])
            start, end = lo, hi
    return out


def read_window(od: driveread.OpenedDrive, exts: list[format.Extent]
                ) -> list[tuple[format.Extent, bytes | tuple[str, str]]]:
    """Read, decrypt, decompress and check a window of extents (runs in a thread).

    Each extent comes back as its raw bytes, or ("corrupt" | "missing", why).
    """
    lo = exts[0].location - exts[0].location % format.SECTOR
    hi = max(format.align_up(e.location + e.stored_len) for e in exts)
    try:
        plain = memoryview(od.cipher.read(od.drive, lo, hi - lo))
    except (OSError, BadInput) as exc:
        return [(e, ("missing", f"unreadable on the drive: {exc}")) for e in exts]
    out: list[tuple[format.Extent, bytes | tuple[str, str]]] = []
    for e in exts:
        stored = plain[e.location - lo:e.location - lo + e.stored_len]
        try:
            out.append((e, codec.unpack(e.codec, stored, e.raw_len, e.xxh3)))
        except format.CorruptRecord as exc:
            out.append((e, ("corrupt", str(exc))))
    return out


# --------------------------------------------------------------------------
# Importing one drive


@dataclass
class FileOnDrive:
    entry: format.FileEntry
    cells: set[int] = field(default_factory=set)
    zero: set[int] = field(default_factory=set)
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # offset -> (status, why)


@dataclass
class DriveResult:
    seq: int
    session_id: str
    already: bool = False
    totals: dict[str, int] = field(default_factory=dict)


async def import_drive(od: driveread.OpenedDrive, plan: DrivePlan, store: Storage,
                       log: CopyLog, cpu: trio.CapacityLimiter, net: trio.CapacityLimiter,
                       progress: Callable[[int], None] = lambda n: None) -> DriveResult:
    sb, container = plan.superblock, plan.container
    result = DriveResult(sb.drive_seq, sb.session_id)
    marker = marker_name(sb.session_id, sb.drive_seq)
    await trio.to_thread.run_sync(store.ensure_container, container, limiter=net)
    existing = await trio.to_thread.run_sync(store.get, container, marker, limiter=net)
    if existing is not None and json.loads(existing).get("state") == "done":
        for f in plan.files.values():
            log.blob("skipped", f.blob, "drive already imported; nothing changed", f.size)
        result.already = True
        return result

    on_drive = {fid: FileOnDrive(f) for fid, f in plan.files.items()}
    for e in plan.extents:
        if e.file_id in on_drive and e.codec is format.Codec.ZERO:
            on_drive[e.file_id].zero.update(range(e.offset, e.offset + e.raw_len, EXTENT_SIZE))
    stored = [e for e in plan.extents if e.codec is not format.Codec.ZERO
              and e.file_id in on_drive]
    btype = sb.blob_type

    def write_parts(batch: list[tuple[format.Extent, bytes]]) -> None:
        for e, raw in batch:
            f = on_drive[e.file_id].entry
            store.write_part(container, f.blob, btype, f.size, e.offset, raw)

    async def upload(batch: list[tuple[format.Extent, bytes]]) -> None:
        await trio.to_thread.run_sync(write_parts, batch, limiter=net)
        for e, raw in batch:
            on_drive[e.file_id].cells.add(e.offset)
            progress(len(raw))

    async with trio.open_nursery() as nursery:
        # Batches of extents, not one a message: small files cost thread hand-offs, not bytes.
        send, recv = trio.open_memory_channel[list[tuple[format.Extent, bytes]]](4)

        async def reader() -> None:
            async with send:
                for win in windows(stored):
                    batch: list[tuple[format.Extent, bytes]] = []
                    size = 0
                    for e, got in await trio.to_thread.run_sync(read_window, od, win,
                                                                limiter=cpu):
                        if isinstance(got, tuple):
                            on_drive[e.file_id].bad[e.offset] = got
                            continue
                        batch.append((e, got))
                        size += len(got)
                        if len(batch) >= UPLOAD_BATCH or size >= UPLOAD_BYTES:
                            await send.send(batch)
                            batch, size = [], 0
                    if batch:
                        await send.send(batch)

        async def uploader(rx: trio.MemoryReceiveChannel[list[tuple[format.Extent, bytes]]]
                           ) -> None:
            async with rx:
                async for batch in rx:
                    await upload(batch)

        nursery.start_soon(reader)
        async with recv:
            for _ in range(4):
                nursery.start_soon(uploader, recv.clone())

    # Zero cells count as delivered; corrupt ones do not.
    record = {"session_id": sb.session_id, "seq": sb.drive_seq, "state": "parts",
              "files": [{"file_id": fd.entry.file_id, "path": fd.entry.path,
                         "blob": fd.entry.blob, "size": fd.entry.size,
                         "cells": sorted(fd.cells), "zero": sorted(fd.zero),
                         "bad": sorted(fd.bad)} for fd in on_drive.values()]}
    await trio.to_thread.run_sync(store.sync, limiter=net)  # parts durable before the marker
    await trio.to_thread.run_sync(store.put, container, marker,
                                  json.dumps(record).encode(), limiter=net)
    await _commit_ready(store, container, sb, on_drive, log, net)
    await trio.to_thread.run_sync(store.sync, limiter=net)  # commits durable before "done"
    record["state"] = "done"
    await trio.to_thread.run_sync(store.put, container, marker,
                                  json.dumps(record).encode(), limiter=net)
    return result


async def _commit_ready(store: Storage, container: str, sb: format.Superblock,
                        on_drive: dict[int, FileOnDrive], log: CopyLog,
                        net: trio.CapacityLimiter) -> None:
    """Commit each file of this drive whose cells every imported drive now covers."""
    prefix = f"{MARKER_PREFIX}{sb.session_id}/"
    names = await trio.to_thread.run_sync(store.list, container, prefix, limiter=net)
    markers = []
    for name in names:
        if name.endswith(".json"):
            raw = await trio.to_thread.run_sync(store.get, container, name, limiter=net)
            if raw:
                markers.append(json.loads(raw))
    cells: dict[int, set[int]] = {}
    zero: dict[int, set[int]] = {}
    where: dict[int, set[int]] = {}
    newest: dict[str, int] = {}
    for m in markers:
        for f in m["files"]:
            cells.setdefault(f["file_id"], set()).update(f["cells"])
            zero.setdefault(f["file_id"], set()).update(f["zero"])
            where.setdefault(f["file_id"], set()).add(m["seq"])
            newest[f["blob"]] = max(newest.get(f["blob"], 0), f["file_id"])
    btype = sb.blob_type
    ready: list[format.FileEntry] = []

    def commit_all(entries: list[format.FileEntry]) -> None:
        for f in entries:
            store.commit(container, f.blob, btype, f.size, sorted(zero.get(f.file_id, set())))

    async def flush() -> None:
        await trio.to_thread.run_sync(commit_all, ready, limiter=net)
        for f in ready:
            log.blob("ok", f.blob, "", f.size, file_id=f.file_id)
        ready.clear()

    for fd in on_drive.values():
        f = fd.entry
        if newest.get(f.blob, 0) > f.file_id:
            log.blob("skipped", f.blob, "superseded by a newer copy of the file", f.size)
            continue
        if fd.bad:
            first = min(fd.bad)
            status, why = fd.bad[first]
            log.blob(status, f.blob, f"extent at {first}: {why}", f.size,
                     bad_extents=len(fd.bad))
            continue
        have = cells.get(f.file_id, set()) | zero.get(f.file_id, set())
        missing = [c for c in cells_of(f.size) if c not in have]
        if missing:
            log.blob("skipped", f.blob, f"continues on another drive ({len(missing)} of "
                     f"{len(cells_of(f.size))} extents); completes when that drive is "
                     "imported", f.size, drives=sorted(where.get(f.file_id, ())))
            continue
        ready.append(f)
        if len(ready) >= COMMIT_BATCH:
            await flush()
    await flush()


def log_path(log_dir: Path, session_id: str, seq: int) -> Path:
    return log_dir / f"copylog-{session_id}-drive{seq:02d}.jsonl"
