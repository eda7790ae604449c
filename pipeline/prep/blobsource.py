"""Stage: an export's blobs, streamed from the storage account, as prep's raw extents.

::

    select (a thread: list each prefix, size each blob; the blob list as Azure has it)
    plan (the session's Planner: what the journals already hold is skipped on resume)
      -> jobs -> read x readers (storage threads: ``Storage.read`` a cell at a time)
         -> raw extents -> pack -> the writers, exactly as prep's staging source

The export's counterpart of ``source`` + ``large`` (the staging directory): the rest
of prep's pipeline (``run``), the drive format and the journals are the same, so an
export drive is read back by everything that reads a prep drive.  Only the storage
protocol's ``list``, ``size`` and ``read`` are used.  A blob that cannot become a
file entry (its name breaks the path rules), or that changes while it is read (a
short read), is named through the callbacks and left out; ``export`` records it in
the job's incomplete blob list.  Each blob's type, metadata and properties go on its
file entry (format version 2, ``blob_attrs``), as a dataset's files carry theirs, so
unpack gives the files the blob's attributes.  ``parse_blob_list`` reads Azure's blob list file
(``export.blobListBlobPath``), bytes in, paths out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import trio

from pipeline import names
from pipeline.drive import attrs, codec, format
from pipeline.errors import BadInput
from pipeline.prep.pack import Bundle, RawExtent
from pipeline.prep.scan import SourceFile
from pipeline.prep.session import FileJob, Session
from pipeline.progress import Stats
from pipeline.storage.base import BlobInfo, Storage

__all__ = ["ExportBlob", "Selection", "feed", "format_blob_list", "parse_blob_list", "select",
           "split_path"]

OnEvent = Callable[[str, str], None]
AHEAD = 1024  # blobs planned ahead of the readers
DESCRIBE_WORKERS = 8  # storage calls at once while sizing the blob list
_PER_CALL = 4  # cells read per storage-thread call
MAX_LIST_BYTES = 16 << 20
_FORBIDDEN_XML = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
FILE_MODE = 0o644  # what an exported blob's entry records (a blob has no mode)


@dataclass(frozen=True, slots=True)
class ExportBlob:
    container: str
    name: str
    size: int
    info: BlobInfo | None = field(default=None, compare=False)  # type, metadata, properties

    @property
    def path(self) -> str:
        return f"/{self.container}/{self.name}"


@dataclass
class Selection:
    """The blobs a blob list names (each once, sorted), and what it names that is not there."""

    blobs: list[ExportBlob] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # path, why

    @property
    def containers(self) -> list[str]:
        return sorted({b.container for b in self.blobs})

    @property
    def total(self) -> int:
        return sum(b.size for b in self.blobs)


def split_path(path: str, what: str) -> tuple[str, str]:
    """'/container/blob/name' -> (container, 'blob/name'), by the name rules."""
    if not path.startswith("/"):
        raise BadInput(f"{what} {names.show(path)} must start with '/': /CONTAINER/BLOB")
    container, _, rest = path[1:].partition("/")
    names.check_container_name(container)
    return container, rest


async def select(store: Storage, paths: Sequence[str], prefixes: Sequence[str],
                 workers: int = DESCRIBE_WORKERS) -> Selection:
    """Resolve a blob list against the account: each prefix listed (a storage thread
    each), then every blob's size and attributes, ``workers`` storage calls at once (on
    Azure each is a round trip: one after another, 100,000 blobs would take minutes)."""
    wanted: dict[tuple[str, str], str] = {}  # (container, name) -> the path that named it
    out = Selection()
    for prefix in prefixes:
        container, start = split_path(prefix, "--blob-prefix")
        listed = await trio.to_thread.run_sync(store.list, container, start)
        if not listed:
            out.missing.append((prefix, "no blob has this prefix"))
        wanted.update({(container, name): "" for name in listed})
    for path in paths:
        container, name = split_path(path, "--blob-path")
        names.check_blob_name(name)
        wanted.setdefault((container, name), path)
    found: dict[tuple[str, str], ExportBlob] = {}
    limit = trio.CapacityLimiter(workers)

    async def describe(container: str, name: str) -> None:
        got = await trio.to_thread.run_sync(_describe, store, container, name, limiter=limit)
        if got is not None:
            found[(container, name)] = ExportBlob(container, name, *got)

    async with trio.open_nursery() as nursery:
        for container, name in wanted:
            nursery.start_soon(describe, container, name)
    out.missing += [(path, "no such blob") for key, path in wanted.items()
                    if path and key not in found]
    out.blobs = [found[key] for key in sorted(found)]
    return out


def _describe(store: Storage, container: str, name: str) -> tuple[int, BlobInfo] | None:
    """(size, attributes) of a committed blob, None if there is none (a storage thread)."""
    size = store.size(container, name)
    info = store.get_attributes(container, name) if size is not None else None
    return None if size is None or info is None else (size, info)


def parse_blob_list(data: bytes) -> tuple[list[str], list[str]]:
    """Azure's blob list file (``<BlobList><BlobPath>/c/b</BlobPath><BlobPathPrefix>/c/p
    </BlobPathPrefix></BlobList>``) -> (paths, prefixes).  Hostile input: no DTD or
    entity is accepted (they are how XML bombs work), size bounded."""
    if len(data) > MAX_LIST_BYTES:
        raise BadInput(f"the blob list is {len(data)} bytes; at most {MAX_LIST_BYTES}")
    if _FORBIDDEN_XML.search(data):
        raise BadInput("the blob list holds a DOCTYPE or ENTITY declaration; give a plain "
                       "<BlobList> of <BlobPath> and <BlobPathPrefix> elements")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise BadInput(f"the blob list is not XML: {exc}") from None
    if root.tag != "BlobList":
        raise BadInput(f"the blob list's root element is <{root.tag[:40]}>, not <BlobList>")
    paths: list[str] = []
    prefixes: list[str] = []
    for child in root:
        text = (child.text or "").strip()
        if child.tag == "BlobPath":
            paths.append(text)
        elif child.tag == "BlobPathPrefix":
            prefixes.append(text)
        else:
            raise BadInput(f"the blob list holds <{child.tag[:40]}>; only <BlobPath> and "
                           "<BlobPathPrefix> belong in it")
    return paths, prefixes


def format_blob_list(paths: Sequence[str], prefixes: Sequence[str] = ()) -> bytes:
    """(paths, prefixes) -> Azure's blob list file: ``parse_blob_list``'s inverse."""
    rows = [f"  <BlobPath>{escape(p)}</BlobPath>\n" for p in paths]
    rows += [f"  <BlobPathPrefix>{escape(p)}</BlobPathPrefix>\n" for p in prefixes]
    return f"<BlobList>\n{''.join(rows)}</BlobList>\n".encode()


async def feed(store: Storage, blobs: Sequence[ExportBlob], session: Session,
               raw_tx: trio.MemorySendChannel[RawExtent], packed_tx: trio.MemorySendChannel[Bundle],
               readers: int, journal_io: trio.CapacityLimiter, stats: Stats,
               on_skip: OnEvent, on_changed: OnEvent) -> None:
    """The pipeline's source for an export: every blob planned against the session's
    journals, read by ``readers`` storage tasks."""
    io = trio.CapacityLimiter(readers)
    jobs_tx, jobs_rx = trio.open_memory_channel[tuple[FileJob, str]](AHEAD)
    async with raw_tx, packed_tx, trio.open_nursery() as nursery:
        async with jobs_rx:
            for _ in range(readers):
                nursery.start_soon(_read, store, jobs_rx.clone(), raw_tx.clone(), io, stats,
                                   on_changed)
        await _plan(store, blobs, session, jobs_tx, journal_io, stats, on_skip)


def blob_attrs(info: BlobInfo) -> attrs.BlobAttrs:
    """What the account says of a blob -> the drive's record of it (format version 2): its
    type, metadata and properties travel with its bytes.  Overwrite: an unpack run again,
    or into a folder holding an older copy, gets the exported blob."""
    return attrs.BlobAttrs(
        blob_type=int(info.blob_type), disposition=attrs.Disposition.OVERWRITE,
        metadata=tuple(sorted(info.metadata.items())),
        properties=tuple((k, info.properties[k]) for k in attrs.PROPERTIES
                         if k in info.properties))


async def _plan(store: Storage, blobs: Sequence[ExportBlob], session: Session,
                jobs_tx: trio.MemorySendChannel[tuple[FileJob, str]],
                journal_io: trio.CapacityLimiter, stats: Stats, on_skip: OnEvent) -> None:
    async with jobs_tx:
        for blob in blobs:
            info = blob.info or await trio.to_thread.run_sync(
                store.get_attributes, blob.container, blob.name)
            if info is None:
                on_skip(blob.path, "gone from the account since it was listed")
                continue
            try:
                job, stale = session.planner.plan(
                    SourceFile(blob.name, blob.size, 0, FILE_MODE),
                    f"{blob.container}/{blob.name}", blob_attrs(info))
            except ValueError as exc:  # a name or attribute the drive format refuses
                on_skip(blob.path, f"cannot be written to a drive: {exc}")
                continue
            if stale is not None:  # the blob changed since a crashed run wrote it
                await trio.to_thread.run_sync(session.supersede, stale, limiter=journal_io)
            if job is None:
                stats.files_done += 1
                stats.skipped_bytes += blob.size
                continue
            await jobs_tx.send((job, blob.container))


async def _read(store: Storage, rx: trio.MemoryReceiveChannel[tuple[FileJob, str]],
                tx: trio.MemorySendChannel[RawExtent], io: trio.CapacityLimiter,
                stats: Stats, on_changed: OnEvent) -> None:
    """One reader: a blob's cells not yet on a drive, in grid order."""
    async with rx, tx:
        async for job, container in rx:
            entry = job.entry
            if entry.size == 0:
                await tx.send(RawExtent(entry, 0, 0, None))
                stats.files_done += 1
                continue
            stats.skipped_bytes += sum(min(format.CELL, entry.size - o) for o in job.skip)
            todo = [o for o in range(0, entry.size, format.CELL) if o not in job.skip]
            for i in range(0, len(todo), _PER_CALL):
                batch = todo[i:i + _PER_CALL]
                cells = await trio.to_thread.run_sync(_read_cells, store, container, entry,
                                                      batch, stats, limiter=io)
                if cells is None:
                    on_changed(f"/{entry.blob}", f"/{entry.blob} changed while it was read "
                               "(a short read); run the export again to write it")
                    break
                for offset, length, data in cells:
                    await tx.send(RawExtent(entry, offset, length, data))
                    stats.bytes_read += length
                    stats.extents += 1
                    if data is None:
                        stats.zero_bytes += length
            else:
                stats.files_done += 1


def _read_cells(store: Storage, container: str, entry: format.FileEntry, offsets: list[int],
                stats: Stats) -> list[tuple[int, int, bytes | None]] | None:
    """Read cells of a blob (a storage thread); None if the blob is shorter than listed."""
    out: list[tuple[int, int, bytes | None]] = []
    with stats.timed("read"):
        for offset in offsets:
            length = min(format.CELL, entry.size - offset)
            data = store.read(container, entry.blob.partition("/")[2], offset, length)
            if len(data) != length:
                return None
            out.append((offset, length, None if codec.is_zero(data) else data))
    return out
