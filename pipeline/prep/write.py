"""Stage: one writer per drive — segment, encrypt, pwrite, fdatasync, journal commit.

The order on the success path is the whole consistency story::

    seal segment -> encrypt (cpu thread) -> pwrite -> ... -> fdatasync -> journal commit

Three tasks per drive (``fill``, ``encrypt_all``, ``write_all``; ``run.py`` wires
them with unbuffered channels, a hand-over, no slot: in parallel fill a slot per
drive cost two segments each), so that sealing the next segment (a worker
thread), encrypting the one before (a CPU thread) and writing or syncing the one
before that (I/O threads) overlap: a writer that did them one after another
spent most of its time waiting on itself.

Nothing is marked committed in ``finally`` or ``except``: if anything raises,
the nursery cancels us and whatever was not committed is rewritten by
``--resume``, at the same offsets, from the journal's watermark.

A writer takes an extent only while the drive can hold the largest possible
one plus its share of the closing index, so it never has to hand an extent
back: when that stops being true, the drive is full, the writer writes the
index and trailer and returns.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from pipeline import faults, journal
from pipeline.drive import format
from pipeline.prep.pack import Bundle, PackedExtent
from pipeline.progress import Stats
from pipeline.volume import drives

SEGMENT_PAYLOAD = 4 << 20  # seal a segment at this much stored payload
SEGMENT_RECORDS = 256 << 10  # ... or at this many bytes of records (small files)
COMMIT_BYTES = 32 << 20  # fdatasync + journal commit after this much written ...
COMMIT_RECORDS = 2 << 20  # ... or this many bytes of records (their objects wait for it) ...
COMMIT_SECONDS = 1.0  # ... or this long since the last commit
# What a byte of records costs while a writer holds it, in Python objects: its file entry
# (names included), extent and encoding, ~4.8 bytes a byte for 64 B-2 KiB files (tiny files
# are all records).  Segments of records and the records waiting for their commit are held
# as objects, not bytes: 1 MiB segments and 32 MiB commits held ~75 MiB at 1,000,000 files.
RECORD_OBJECTS = 5
WRITE_BEHIND = 8 << 20  # written but not yet on the device, at most, per drive
WRITER_THREADS = 2  # a drive's I/O threads at once: its seal, and its write/sync/journal
# Worst case one message adds: a file entry with the longest names, an extent record,
# the largest stored extent, and the same records again in the closing index.
_MAX_FILE_RECORD = format.record_size(
    format.FileEntry(1, "p" * format.MAX_NAME_BYTES, "b" * format.MAX_NAME_BYTES, 0, 0, 0))
_MAX_RECORDS = _MAX_FILE_RECORD + format.EXTENT_RECORD_SIZE
# _end_with(_MAX_RECORDS, format.CELL) is at most the drive's counters plus this.
_ANY_FITS = 2 * (format.HEADER_SIZE + format.SECTOR - 1) + 2 * _MAX_RECORDS + format.CELL


@dataclass(frozen=True, slots=True)
class Sealed:
    """A segment laid out in plain text, and what committing it records."""

    blob: bytes
    committed: journal.SyncedSegment


@dataclass(frozen=True, slots=True)
class Encrypted:
    """A segment ready to pwrite: its cipher text, its plain length, what it commits."""

    data: bytes
    length: int
    committed: journal.SyncedSegment


@dataclass
class LogSpace:
    """Bookkeeping of one drive's log: where the next segment goes, what it holds."""

    capacity: int  # data must end before the trailer
    offset: int
    seq: int
    index_records: int  # bytes of records the closing index will hold
    files_here: set[int] = field(default_factory=set)
    seg_files: list[format.FileEntry] = field(default_factory=list)
    seg_extents: list[tuple[format.Extent, bytes]] = field(default_factory=list)
    seg_records: int = 0
    seg_payload: int = 0

    def _end_with(self, records: int, payload: int) -> int:
        seg_records, seg_payload = self.seg_records + records, self.seg_payload + payload
        seg = format.segment_total_len(seg_records, seg_payload) if (
            seg_records or seg_payload) else 0
        index = format.segment_total_len(self.index_records + records, 0)
        return self.offset + seg + index

    def can_take_any(self) -> bool:
        """Room for the largest extent of a new file, and the index that lists it."""
        # Asked before every extent: first the sum without the two roundings to a sector
        # (each adds less than one), which answers yes until the drive is nearly full.
        if (self.offset + self.seg_records + self.seg_payload + self.index_records
                + _ANY_FITS) <= self.capacity:
            return True
        return self._end_with(_MAX_RECORDS, format.CELL) <= self.capacity

    def add(self, item: PackedExtent) -> bool:
        """Add to the open segment; True when the segment should be sealed."""
        added = 0
        fid = item.file.file_id
        if fid not in self.files_here:
            # Only a file with more extents to come needs remembering: one whose single
            # extent is the whole file (or an empty one) never shows up again, and a run
            # of small files would otherwise grow this set without bound.
            if item.extent is not None and item.extent.raw_len != item.file.size:
                self.files_here.add(fid)
            self.seg_files.append(item.file)
            added += format.record_size(item.file)
        if item.extent is not None:
            self.seg_extents.append((item.extent, item.stored))
            self.seg_payload += len(item.stored)
            added += format.EXTENT_RECORD_SIZE
        self.seg_records += added
        self.index_records += added
        return self.seg_payload >= SEGMENT_PAYLOAD or self.seg_records >= SEGMENT_RECORDS

    def seal(self) -> Sealed | None:
        """Lay out the open segment at the log end and advance past it."""
        if not (self.seg_files or self.seg_extents):
            return None
        blob, records, encoded = format.layout_data_segment(self.seg_files, self.seg_extents,
                                                            self.seq, self.offset)
        header = format.decode_segment_header(blob[:format.HEADER_SIZE], self.offset, self.seq)
        self.offset, self.seq = header.end, self.seq + 1
        self.seg_files, self.seg_extents, self.seg_records, self.seg_payload = [], [], 0, 0
        return Sealed(blob, (header, records, encoded))


class DriveWriter:
    """Owns one open drive and its journal for the length of a prep run."""

    def __init__(self, drive: drives.Drive, cipher: drives.DriveCipher,
                 jrn: journal.Journal, cpu: trio.CapacityLimiter, stats: Stats) -> None:
        self.drive, self.cipher, self.journal, self.cpu, self.stats = (
            drive, cipher, jrn, cpu, stats)
        self.io = trio.CapacityLimiter(WRITER_THREADS)
        info = jrn.drive
        self.progress = stats.add_drive(f"drive {info.seq}", info.data_area_size, info.seq)
        files = list(jrn.files(include_superseded=True))
        index_records = jrn.index_records_len()
        self.state = LogSpace(
            capacity=format.trailer_offset(info.data_area_size), offset=info.log_offset,
            seq=info.log_seq, index_records=index_records,
            files_here={f.file_id for f in files})
        self.pending: list[journal.SyncedSegment] = []
        self.in_flight: deque[tuple[int, int]] = deque()  # written, maybe not yet on the device
        self.in_flight_bytes = 0
        self.pending_bytes = 0
        self.pending_records = 0  # bytes of records in ``pending`` (decoded)
        self.last_commit = time.monotonic()

    async def _thread(self, fn: Callable[..., object], *args: object,
                      stage: str, cpu: bool = False) -> object:
        def timed() -> object:
            with self.stats.timed(stage):
                return fn(*args)
        return await trio.to_thread.run_sync(timed, limiter=self.cpu if cpu else self.io)

    def _stale_tail(self) -> list[int]:
        """Offsets of the segments a killed run wrote past the journal's watermark that a
        log scan could still read as the log's continuation (each the next one's header)."""
        out: list[int] = []
        offset, seq = self.state.offset, self.state.seq
        while offset + format.SECTOR <= self.state.capacity:
            try:
                head = format.decode_segment_header(
                    self.cipher.read(self.drive, offset, format.SECTOR), offset, seq)
            except format.CorruptRecord:
                break
            out.append(offset)
            if head.kind is format.SegmentKind.INDEX:
                break
            offset, seq = head.end, seq + 1
        return out

    def _wipe_stale_tail(self) -> None:
        """Make the uncommitted tail unreadable before anything new is appended.

        A resumed run writes new segments from the watermark; if one ended exactly
        where an old uncommitted segment with the next sequence number begins, a
        log scan (an import without journal or index) would read that stale
        segment, and the old copy of a file changed since, as the log going on.
        Wiped last first, each synced: a crash midway leaves a shorter chain that
        the next run finds and wipes.
        """
        zero = bytes(format.SECTOR)
        for offset in reversed(self._stale_tail()):
            self.cipher.write(self.drive, offset, zero)
            self.drive.sync()

    async def reopen(self) -> None:
        """Invalidate the uncommitted tail and a trailer that a crashed or earlier close may
        have left, before appending (a later session on a drive: the earlier sessions'
        trailer is put back instead, ``Journal.base_trailer``)."""
        await self._thread(self._wipe_stale_tail, stage="write")
        await self._thread(self.cipher.write, self.drive, self.state.capacity,
                           self.journal.base_trailer(), stage="write")
        if self.journal.drive.state != "open":
            await self._thread(self.journal.set_state, "open", stage="journal")
        faults.reached("after_reopen")

    async def _seal_into(self, tx: trio.MemorySendChannel[Sealed]) -> None:
        # In a thread: laying out a segment copies and hashes megabytes, and the hash lets
        # go of the GIL, then waits for it behind the workers, up to a switch interval a
        # segment; on the Trio thread that wait stalled every task, here only this drive.
        sealed: Sealed | None = await self._thread(self.state.seal,  # type: ignore[assignment]
                                                   stage="seal")
        if sealed is not None:
            await tx.send(sealed)

    async def fill(self, rx: trio.MemoryReceiveChannel[Bundle], spill: deque[PackedExtent],
                   tx: trio.MemorySendChannel[Sealed]) -> bool:
        """Take extents while the drive can hold them; True if the stream ended.

        Bundles are unpacked into ``spill``, shared by every writer of the run:
        what a drive cannot take when it fills is there for the next one.
        """
        async with tx:
            ended = False
            while self.state.can_take_any():
                if not spill:
                    try:
                        spill.extend(await rx.receive())
                    except trio.EndOfChannel:
                        if spill:  # another writer's bundle arrived meanwhile: ours too
                            continue
                        ended = True
                        break
                    continue  # another writer may have emptied it while we waited
                if self.state.add(spill.popleft()):
                    await self._seal_into(tx)
            await self._seal_into(tx)
            return ended

    async def encrypt_all(self, rx: trio.MemoryReceiveChannel[Sealed],
                          tx: trio.MemorySendChannel[Encrypted]) -> None:
        """Encrypt each sealed segment at its offset, in a CPU thread."""
        async with rx, tx:
            async for sealed in rx:
                header = sealed.committed[0]
                data: bytes = await self._thread(  # type: ignore[assignment]
                    self.cipher.encrypt, sealed.blob, header.offset, stage="encrypt", cpu=True)
                await tx.send(Encrypted(data, len(sealed.blob), sealed.committed))

    async def write_all(self, rx: trio.MemoryReceiveChannel[Encrypted]) -> None:
        """pwrite each segment; commit every COMMIT_BYTES or COMMIT_RECORDS (what the
        journal rows wait for is bounded in bytes of log and in records), or
        COMMIT_SECONDS, and at the end."""
        async with rx:
            while True:
                wait = COMMIT_SECONDS - (time.monotonic() - self.last_commit)
                with trio.move_on_after(max(0.0, wait) if self.pending else math.inf):
                    try:
                        item = await rx.receive()
                    except trio.EndOfChannel:
                        break
                    await self._write(item)
                if self.pending_bytes >= COMMIT_BYTES or self.pending_records >= COMMIT_RECORDS \
                        or (self.pending and
                            time.monotonic() - self.last_commit >= COMMIT_SECONDS):
                    await self.commit()
            await self.commit()

    async def _write(self, item: Encrypted) -> None:
        header = item.committed[0]
        with trio.CancelScope(shield=True):  # the COMMIT_SECONDS timer must not cut a write
            await self._thread(self._pwrite, item.data,
                               self.cipher.segment_offset + header.offset, stage="write")
        faults.reached("after_pwrite")
        self.stats.bytes_written += item.length
        self.stats.bytes_stored += header.payload_len
        self.stats.raw_stored += sum(r.raw_len for r in item.committed[1]
                                     if isinstance(r, format.Extent)
                                     and r.codec is not format.Codec.ZERO)
        self.progress.used = header.end
        self.pending.append(item.committed)
        self.pending_bytes += item.length
        self.pending_records += header.records_raw_len

    def _pwrite(self, encrypted: bytes, offset: int) -> None:
        """pwrite, start the device on it, and wait for all but WRITE_BEHIND of it."""
        self.drive.pwrite(encrypted, offset)
        self.drive.write_behind(offset, len(encrypted))
        self.in_flight.append((offset, len(encrypted)))
        self.in_flight_bytes += len(encrypted)
        while self.in_flight_bytes - self.in_flight[0][1] >= WRITE_BEHIND:
            start, length = self.in_flight.popleft()
            self.drive.wait_written(start, length)
            self.in_flight_bytes -= length

    async def commit(self) -> None:
        """fdatasync the drive, then record what it now durably holds."""
        if not self.pending:
            return
        await self._thread(self.drive.sync, stage="sync")
        faults.reached("after_sync")
        header = self.pending[-1][0]
        await self._thread(self.journal.commit, self.pending, header.end, header.seq + 1,
                           stage="journal")
        faults.reached("after_commit")
        self.pending, self.pending_bytes, self.pending_records = [], 0, 0
        self.in_flight.clear()  # on the device now
        self.in_flight_bytes = 0
        self.last_commit = time.monotonic()

    async def close(self, state: str) -> None:
        """Write the closing index and trailer (state: closed|full); all else is committed."""
        offset = self.state.offset
        index: journal.IndexFile = await self._thread(  # type: ignore[assignment]
            self.journal.index_file, self.state.seq, offset, stage="journal")
        with index:
            trailer = self.journal.trailer(offset, index.length, self.state.seq + 1)
            sha256: str = await self._thread(  # type: ignore[assignment]
                write_index, self.drive, self.cipher, offset, index, stage="write")
        if self.journal.drive.continued:  # the earlier sessions' trailer stands until then
            await self._thread(self.drive.sync, stage="sync")
        faults.reached("after_index")
        await self._thread(self.cipher.write, self.drive, self.state.capacity, trailer,
                           stage="write")
        faults.reached("after_trailer")
        await self._thread(self.drive.sync, stage="sync")
        self.stats.bytes_written += index.length + len(trailer)
        self.progress.used, self.progress.state = offset + index.length, state
        await self._thread(functools.partial(self.journal.set_state, state,
                                             index_offset=offset, index_length=index.length,
                                             index_sha256=sha256),
                           stage="journal")


def rewrite_index(drive: drives.Drive, cipher: drives.DriveCipher, jrn: journal.Journal
                  ) -> None:
    """Write a closed drive's index again, without the files superseded since it was closed.

    Without it, the drive alone (imported without its journal) would still offer
    the old copy of a file that --resume wrote again on another drive, and call
    it complete.  The new index is written where the old one was (it lists fewer
    records, so it never grows past it), then the trailer: a crash in between
    leaves an index the trailer does not match, which an import reports as a
    damaged index (it walks the log, and says it cannot vouch), never as an old
    index that looks whole.
    """
    info = jrn.drive
    end = format.trailer_offset(info.data_area_size)
    with jrn.index_file(info.log_seq, info.index_offset) as index:
        if info.index_offset + index.length > end:
            raise ValueError(f"drive {info.seq}: the new index does not fit before the trailer")
        sha256 = write_index(drive, cipher, info.index_offset, index)
    faults.reached("after_index")
    drive.sync()
    cipher.write(drive, end, jrn.trailer(info.index_offset, index.length, info.log_seq + 1))
    faults.reached("after_trailer")
    drive.sync()
    jrn.set_state(info.state, index_offset=info.index_offset, index_length=index.length,
                  index_sha256=sha256)


def write_index(drive: drives.Drive, cipher: drives.DriveCipher, offset: int,
                index: journal.IndexFile) -> str:
    """Encrypt and write a spooled closing index at ``offset`` a block at a time (never
    whole: ~48 MB at 1,000,000 files); its sha256 (hex), as the journal records it."""
    sha256 = hashlib.sha256()
    at = offset
    for block in index.blocks():
        cipher.write(drive, at, block)
        sha256.update(block)
        at += len(block)
    return sha256.hexdigest()
