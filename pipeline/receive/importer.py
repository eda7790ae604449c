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

from pipeline import journal, names
from pipeline.drive import codec, format
from pipeline.errors import BadInput, IntegrityError, NoSpace, Refused, is_no_space
from pipeline.receive import reader as driveread
from pipeline.storage import base as storage_base
from pipeline.storage.base import Storage

# The importer's own state (per-drive markers, copy logs) lives in a container of its own,
# as Azure's diagnosticsPath does (default ``waimportexport``): never among the customer's
# blobs, where a blob on a drive could be named like a marker and forge one.
STATE_CONTAINER = "waimportexport"
WINDOW = 16 << 20  # bytes read and decrypted per worker-thread call
UPLOAD_BATCH = 64  # extents written per storage thread call ...
UPLOAD_BYTES = 4 << 20  # ... up to about this many bytes
COMMIT_BATCH = 256  # blobs committed per storage thread call


def state_name(session_id: str, leaf: str) -> str:
    """A blob of the importer's state for a session, in STATE_CONTAINER."""
    return f"{session_id}/{leaf}"


def marker_name(session_id: str, seq: int) -> str:
    return state_name(session_id, f"drive-{seq:02d}.json")


def cells_of(size: int) -> list[int]:
    return list(format.grid(size))


# --------------------------------------------------------------------------
# Copy log: JSON Lines, flushed per line, so it survives a failure part-way


class CopyLog:
    """One JSON object per blob, then totals.  Statuses: ok; unvouched (written and every
    extent checked, but read from a drive that cannot vouch it is the newest copy: no
    intact closing index); corrupt; missing; skipped (with the reason)."""

    def __init__(self, stream: IO[str], drive: str) -> None:
        self.stream, self.drive = stream, drive
        self.totals = {"ok": 0, "unvouched": 0, "corrupt": 0, "missing": 0, "skipped": 0,
                       "bytes": 0}
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
        if status in ("ok", "unvouched"):
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
    """The records of one drive, from its journal or its closing index (or, failing both,
    a walk of its log), with what could not be vouched for."""

    superblock: format.Superblock
    files: dict[int, format.FileEntry]
    extents: list[format.Extent]
    source: str  # "journal", "index" or "log scan"
    # Files the drive lists but that must not be imported: file id -> (status, why).
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Older copies of a file rewritten on this drive (log scan): never imported.
    superseded: dict[int, format.FileEntry] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)  # named on the terminal and in the log
    incomplete: str = ""  # why the drive cannot vouch that it holds every file it should

    @property
    def container(self) -> str:
        return self.superblock.dstdir.split("/", 1)[0]


def plan_drive(od: driveread.UnlockedDrive, jrn: journal.Journal | None) -> DrivePlan:
    sb = od.superblock
    storage_base.check_container_name(sb.dstdir.split("/", 1)[0])
    if sb.dstdir.split("/", 1)[0] == STATE_CONTAINER:
        raise IntegrityError(f"{od.drive.path}: the superblock names container "
                             f"{STATE_CONTAINER}, which holds the importer's own state; "
                             "a drive prepared by pipeline never does")
    if jrn is not None:
        info = jrn.drive
        if (sb.session_id, sb.drive_seq, sb.volume_uuid) != (
                jrn.session.session_id, info.seq, info.uuid):
            raise Refused(f"{od.drive.path} is drive {sb.drive_seq} of session {sb.session_id}, "
                          f"not drive {info.seq} of {jrn.session.session_id}; pass the journal "
                          "directory of its own session")
        files = {f.file_id: f for f in jrn.files()}
        plan = DrivePlan(sb, files, list(jrn.extents()), "journal")
    else:
        try:
            _, index = driveread.read_index(od)
        except (IntegrityError, OSError) as exc:
            # No intact closing index (prep crashed before closing the drive, or damage):
            # walk the log, and say the drive cannot vouch for what is not on it.
            scan = driveread.scan_log(od)
            if not scan.files:
                raise IntegrityError(
                    f"{od.drive.path}: neither the closing index ({exc}) nor any segment "
                    f"could be read ({scan.end_reason}); import it with its journal "
                    "(--journal-dir)") from None
            plan = DrivePlan(sb, scan.files, scan.extents, "log scan", damage=scan.damage)
            plan.incomplete = (
                f"no intact closing index ({exc}); its records were recovered by walking "
                f"the log ({scan.segments} segment(s), ended by {scan.end_reason}), so files "
                "prep had not yet written, or recorded only past the damage, cannot be named")
        else:
            plan = DrivePlan(sb, {f.file_id: f for f in index.files}, list(index.extents),
                             "index")
    if od.superblock_damage:
        plan.damage.append(f"{od.superblock_damage}; the journal's record of it stands in")
    if od.truncated_at is not None:
        plan.damage.append(f"the drive ends {od.truncated_at} bytes into its "
                           f"{sb.data_area_size}-byte data area (a truncated image?); extents "
                           "past the cut are reported missing")
    check_plan(plan)
    return plan


def check_plan(plan: DrivePlan) -> None:
    """Apply the journal's rules to whatever the records came from, before any byte moves.

    - Every blob is the session's virtual directory + the file's path: a record
      naming anything else (another directory, the importer's own state) is damage.
    - One version of a blob: a file rewritten on this drive by ``prep --resume``
      (its staging copy changed) appears twice in the log, and only the newest
      file id stands, as in the journal; older copies are never written anywhere.
      A closing index or journal never lists a blob twice, so there it is damage.
    - Every extent lies on the file's 1 MiB grid, inside the file and the drive.
    """
    sb = plan.superblock
    vdir = sb.dstdir.partition("/")[2]
    limit = format.trailer_offset(sb.data_area_size)
    by_blob: dict[str, list[int]] = {}
    page = sb.blob_type is format.BlobType.PAGE
    for fid, f in plan.files.items():
        bad_name = names.blob_problem(f.blob)
        if f.blob != vdir + f.path:
            plan.rejected[fid] = ("corrupt", f"recorded as blob {names.show(f.blob)}, not "
                                  f"{names.show(vdir + f.path)} (the session's directory + "
                                  "its path)")
        elif bad_name is not None:  # a drive prepared before prep applied the name rules
            plan.rejected[fid] = ("missing", f"its name cannot be a blob name ({bad_name}); "
                                  "rename it in staging and send it again: pipeline repair")
        elif f.size > storage_base.MAX_BLOB_SIZE[sb.blob_type]:
            plan.rejected[fid] = ("corrupt", f"size {f.size} exceeds the largest "
                                  f"{sb.blob_type.name.lower()} blob Azure holds "
                                  f"({storage_base.MAX_BLOB_SIZE[sb.blob_type]} bytes)")
        elif page and f.size % 512:
            plan.rejected[fid] = ("missing", f"{f.size} bytes cannot be a page blob (not a "
                                  "multiple of 512)")
        by_blob.setdefault(f.blob, []).append(fid)
    for fids in by_blob.values():
        if len(fids) < 2:
            continue
        fids.sort()
        if plan.source == "log scan":
            for fid in fids[:-1]:
                plan.superseded[fid] = plan.files.pop(fid)
        else:
            for fid in fids:
                plan.rejected[fid] = ("corrupt", f"the drive's {plan.source} lists this blob "
                                      f"{len(fids)} times (file ids {fids}); importing neither")
    kept: list[format.Extent] = []
    for e in plan.extents:
        f = plan.files.get(e.file_id)
        if f is None:
            continue  # a superseded copy's, or an unlisted file's: nothing to write
        why = ""
        if e.offset % format.CELL or e.raw_len > format.CELL or e.offset + e.raw_len > f.size:
            why = (f"extent [{e.offset}, +{e.raw_len}) is off the {format.CELL}-byte grid or "
                   f"past the file's {f.size} bytes")
        elif e.codec is not format.Codec.ZERO and not (
                e.location >= format.SECTOR and e.location + e.stored_len <= limit):
            why = f"extent stored at [{e.location}, +{e.stored_len}) is outside the drive's log"
        if why and e.file_id not in plan.rejected:
            plan.rejected[e.file_id] = ("corrupt", why)
        kept.append(e)
    plan.extents = kept


def check_names(plan: DrivePlan) -> None:
    """Every container and blob name valid before anything is written: the rules prep
    applied when it skipped the names it could not copy (``pipeline.names``)."""
    names.check_container_name(plan.container)
    for fid, f in plan.files.items():
        if fid in plan.rejected:  # named in the copy log; the rest of the drive imports
            continue
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


def read_window(od: driveread.UnlockedDrive, exts: list[format.Extent]
                ) -> list[tuple[format.Extent, bytes | tuple[str, str]]]:
    """Read, decrypt, decompress and check a window of extents (runs in a thread).

    Each extent comes back as its raw bytes, or ("corrupt" | "missing", why).
    """
    lo = exts[0].location - exts[0].location % format.SECTOR
    hi = max(format.align_up(e.location + e.stored_len) for e in exts)
    try:
        plain = memoryview(od.cipher.read(od.drive, lo, hi - lo))
    except (OSError, BadInput, IntegrityError) as exc:
        if len(exts) > 1:  # a bad sector or a cut: read one by one, lose only what is hit
            return [got for e in exts for got in read_window(od, [e])]
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


async def import_drive(od: driveread.UnlockedDrive, plan: DrivePlan, store: Storage,
                       log: CopyLog, cpu: trio.CapacityLimiter, net: trio.CapacityLimiter,
                       progress: Callable[[int], None] = lambda n: None) -> DriveResult:
    sb, container = plan.superblock, plan.container
    result = DriveResult(sb.drive_seq, sb.session_id)
    marker = marker_name(sb.session_id, sb.drive_seq)
    await trio.to_thread.run_sync(store.ensure_container, container, limiter=net)
    await trio.to_thread.run_sync(store.ensure_container, STATE_CONTAINER, limiter=net)
    existing = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, marker, limiter=net)
    if existing is not None and _parse_marker(marker, existing).get("state") == "done":
        for f in plan.files.values():
            log.blob("skipped", f.blob, "drive already imported; nothing changed", f.size)
        result.already = True
        return result

    for fid, f in plan.superseded.items():
        log.blob("skipped", f.blob, "an older copy of the file, rewritten later on this drive "
                 "(its staging copy changed); never written", f.size, file_id=fid)
    # A newer copy already delivered by another drive: this one must not touch the blob.
    newest = _newest_versions(await _read_markers(store, sb.session_id, net))
    on_drive: dict[int, FileOnDrive] = {}
    for fid, f in plan.files.items():
        if fid in plan.rejected:
            status, why = plan.rejected[fid]
            log.blob(status, f.blob, why, f.size, file_id=fid)
        elif newest.get(f.blob, 0) > fid:
            log.blob("skipped", f.blob, "superseded by a newer copy of the file on another "
                     "drive; never written", f.size, file_id=fid)
        else:
            on_drive[fid] = FileOnDrive(f)
    for e in plan.extents:
        if e.file_id in on_drive and e.codec is format.Codec.ZERO:
            on_drive[e.file_id].zero.update(range(e.offset, e.offset + e.raw_len, format.CELL))
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
    await trio.to_thread.run_sync(store.put, STATE_CONTAINER, marker,
                                  json.dumps(record).encode(), limiter=net)
    await _commit_ready(store, container, sb, on_drive, log, net,
                        vouched=not plan.incomplete)
    await trio.to_thread.run_sync(store.sync, limiter=net)  # commits durable before "done"
    record["state"] = "done"
    await trio.to_thread.run_sync(store.put, STATE_CONTAINER, marker,
                                  json.dumps(record).encode(), limiter=net)
    return result


async def _commit_ready(store: Storage, container: str, sb: format.Superblock,
                        on_drive: dict[int, FileOnDrive], log: CopyLog,
                        net: trio.CapacityLimiter, vouched: bool = True) -> None:
    """Commit each file of this drive whose cells every imported drive now covers.

    From a drive that cannot vouch for itself (``vouched`` false: its records come
    from a walk of the log), a committed blob is "unvouched", not "ok": every byte
    checks, but a newer copy of the file may lie on another drive, which only the
    closing index (rewritten by prep when that happens) or the journal would say.
    """
    done = "ok" if vouched else "unvouched"
    why = "" if vouched else ("every extent checks, but the drive has no intact closing index "
                              "to vouch that this is the newest copy; import the session's "
                              "other drives, or compare with the source (pipeline repair)")
    markers = await _read_markers(store, sb.session_id, net)
    cells: dict[int, set[int]] = {}
    zero: dict[int, set[int]] = {}
    where: dict[int, set[int]] = {}
    for m in markers:
        for f in m["files"]:
            cells.setdefault(f["file_id"], set()).update(f["cells"])
            zero.setdefault(f["file_id"], set()).update(f["zero"])
            where.setdefault(f["file_id"], set()).add(m["seq"])
    newest = _newest_versions(markers)
    btype = sb.blob_type
    ready: list[format.FileEntry] = []

    def commit_all(entries: list[format.FileEntry]) -> None:
        for f in entries:
            store.commit(container, f.blob, btype, f.size, sorted(zero.get(f.file_id, set())))

    async def flush() -> None:
        await trio.to_thread.run_sync(commit_all, ready, limiter=net)
        for f in ready:
            log.blob(done, f.blob, why, f.size, file_id=f.file_id)
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


async def _read_markers(store: Storage, session_id: str, net: trio.CapacityLimiter
                        ) -> list[dict[str, Any]]:
    """Every imported drive's marker of the session (this drive's too, once written)."""
    prefix = state_name(session_id, "drive-")
    found = await trio.to_thread.run_sync(store.list, STATE_CONTAINER, prefix, limiter=net)
    markers = []
    for name in found:
        if name.endswith(".json"):
            raw = await trio.to_thread.run_sync(store.get, STATE_CONTAINER, name, limiter=net)
            if raw:
                markers.append(_parse_marker(name, raw))
    return markers


def _parse_marker(name: str, raw: bytes) -> dict[str, Any]:
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


def _newest_versions(markers: list[dict[str, Any]]) -> dict[str, int]:
    """Blob -> the newest file id any imported drive delivered for it."""
    newest: dict[str, int] = {}
    for m in markers:
        for f in m["files"]:
            newest[f["blob"]] = max(newest.get(f["blob"], 0), f["file_id"])
    return newest


def log_path(log_dir: Path, session_id: str, seq: int) -> Path:
    return log_dir / f"copylog-{session_id}-drive{seq:02d}.jsonl"
