"""Reading a prepared drive back: unlock, superblock, trailer + index, segments.

Shared by ``verify`` and the importer.  Synchronous: callers run it in worker
threads.  Reads are large and sequential (several segments per read), and a
damaged segment is reported, never decoded into wrong data.

A drive of several copy sessions (format version 3) is read one session at a
time: ``unlock_drive`` finds the sessions (``volume.sessions.find``: the
trailer's chain of SESSION segments, or a walk of segment headers from the start
when the trailer is damaged), picks one, and hands every caller that session's
superblock, index and log span, so the import plan and verify need not know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline import journal
from pipeline.drive import format
from pipeline.errors import IntegrityError, Refused, WrongPassword
from pipeline.volume import drives, luks2, sessions

READ_CHUNK = 16 << 20  # bytes per read when walking segments


@dataclass
class UnlockedDrive:
    drive: drives.Drive
    volume: luks2.Volume
    cipher: drives.DriveCipher
    keyslot: int
    superblock: format.Superblock  # the chosen session's (on a version-3 drive, not sector 0)
    truncated_at: int | None = None  # data-area bytes present, when fewer than it should hold
    superblock_damage: str = ""  # why the journal's record stands in for the superblock
    session: sessions.SessionSpan | None = None  # version 3: the session read; None: the only one
    drive_superblock: format.Superblock | None = None  # sector 0 as written, when it differs
    index_breach: str = ""  # the closing index breaks the rules: no log scan stands in

    def close(self) -> None:
        self.drive.close()

    def __enter__(self) -> UnlockedDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unlock_drive(path: str, secret: bytes, what: str = "recovery password",
               expected_uuid: str | None = None,
               recorded: format.Superblock | None = None,
               session_id: str | None = None,
               manifest: Manifest | None = None) -> UnlockedDrive:
    """Open read-only, unlock with ``secret``, decrypt and check the superblock.

    ``expected_uuid`` (the journal's record of the volume) is checked before any
    keyslot is tried, so another drive at the recorded path is named as such,
    not as a wrong password; with it, the secret is the journal's, known to be
    right, so a keyslot that does not open is damage (exit 4), not a mistyped
    password.  ``recorded`` (the superblock the journal knows) stands in for a
    damaged one, named in ``superblock_damage``: the LUKS2 uuid has already
    said which drive this is.  A drive shorter than its superblock says (a
    truncated image) still opens: what lies before the cut is read and checked,
    and reads past it fail as damage (``truncated_at`` says where).

    On a drive of several sessions (version 3), ``session_id`` (else the
    recorded superblock's) picks the session; without either, a drive holding
    more than one is refused, naming them.  ``manifest`` (a job's drive entry, for
    ``import --service``) picks the session whose closing index it names, and the
    index's bytes must then have its sha256; a drive of one session is held to it too
    (``_hold_one_session``), inside this one unlock: each drive's key is derived once.
    """
    drive = drives.open_drive(path)
    try:
        volume = drives.read_volume(drive)
        if expected_uuid is not None and volume.uuid != expected_uuid:
            raise Refused(f"{path} holds LUKS2 volume {volume.uuid}, not the journal's volume "
                          f"{expected_uuid}: another drive is at that path; pass the drive's "
                          "current path (--drive)")
        try:
            slot, key = drives.unlock(drive, volume, secret, what)
        except WrongPassword:
            if expected_uuid is None:
                raise
            raise IntegrityError(f"{path}: the journal's {what} opens no keyslot of this "
                                 "volume although it is the journal's: the keyslot area is "
                                 "damaged") from None
        cipher = drives.DriveCipher.for_volume(volume, key)
        damage = ""
        try:
            sb = drives.read_superblock(drive, cipher)
            if sb.volume_uuid != volume.uuid:
                raise format.CorruptRecord(f"superblock belongs to volume {sb.volume_uuid}, "
                                           f"not {volume.uuid}")
        except IntegrityError as exc:
            why = str(exc).removeprefix(f"{path}: ")
            if recorded is None:
                raise format.CorruptRecord(f"{path}: {why}") from None
            sb, damage = recorded, why
        od = UnlockedDrive(drive, volume, cipher, slot, sb, superblock_damage=damage)
        present = cipher.data_area_size(drive.size)
        if sb.data_area_size > present:
            od.truncated_at = max(present, 0)
        if sb.version == format.SESSIONS_VERSION:
            wanted = session_id or (recorded.session_id if recorded is not None else None)
            try:
                found = sessions.find(drive, cipher, sb)
            except (IntegrityError, OSError) as exc:
                if recorded is None:
                    raise format.CorruptRecord(f"{path}: the copy sessions on the drive do "
                                               f"not read: {exc}") from None
                # the journal knows its session: its records stand in, the damage named
                od.superblock = recorded
                od.superblock_damage = f"the copy sessions on the drive do not read: {exc}"
                return od
            if wanted is None and manifest is not None and manifest.where is not None:
                span = _by_manifest(path, drive, cipher, found, manifest.where, manifest)
            else:
                span = sessions.pick(path, found, wanted)
            od.session, od.drive_superblock, od.superblock = span, sb, span.superblock
        elif session_id is not None and session_id != sb.session_id:
            raise Refused(f"{path} holds session {sb.session_id}, not {session_id}; pass its "
                          "own --session-id")
        elif manifest is not None:
            _hold_one_session(path, drive, cipher, sb, manifest)
        return od
    except BaseException:
        drive.close()
        raise


@dataclass(frozen=True, slots=True)
class Manifest:
    """A job's record of one drive's closing index (``manifestFile`` /index@OFFSET+LENGTH,
    ``manifestHash``): on a drive of several sessions, it names the job's session."""

    where: tuple[int, int] | None  # (offset, length); None: the manifestFile names no place
    sha256: bytes
    whose: str  # "job NAME", for messages


_FIX = "the drive was changed in transit or is not the one prepared"


def _sha256(drive: drives.Drive, cipher: drives.DriveCipher, offset: int, length: int) -> bytes:
    """The sha256 of the data area's bytes at ``offset``, hashed in chunks."""
    digest = hashlib.sha256()
    end = offset + length
    for at in range(offset, end, READ_CHUNK):
        digest.update(cipher.read(drive, at, min(READ_CHUNK, end - at)))
    return digest.digest()


def _by_manifest(path: str, drive: drives.Drive, cipher: drives.DriveCipher,
                 found: list[sessions.SessionSpan], where: tuple[int, int],
                 manifest: Manifest) -> sessions.SessionSpan:
    """The session whose closing index is the job's manifest: at its place, with its
    sha256; Refused, naming the drive and the sessions, otherwise."""
    span = sessions.pick_by_index(path, found, where, manifest.whose)
    if _sha256(drive, cipher, *where) != manifest.sha256:
        raise Refused(f"{path}: the closing index of session {span.session_id} at offset "
                      f"{where[0]} is not the one {manifest.whose} declared "
                      f"(manifestHash): {_FIX}; to import what its log holds, pass "
                      f"--session-id {span.session_id}")
    return span


def _hold_one_session(path: str, drive: drives.Drive, cipher: drives.DriveCipher,
                      sb: format.Superblock, manifest: Manifest) -> None:
    """A one-session drive's closing index (the one its trailer points at; without a valid
    trailer, the one at ``manifestFile``) must lie where the job's entry says and have its
    manifestHash: Refused (exit 5) naming the drive otherwise, before anything is written.
    (It unlocked the drive a second time, one more KDF a drive, before it was done here.)"""
    fix = f"{_FIX}; check the drive and --job"
    end = format.trailer_offset(sb.data_area_size)
    try:
        trailer = format.decode_trailer(cipher.read(drive, end, format.SECTOR), sb)
        at: tuple[int, int] | None = (trailer.index_offset, trailer.index_length)
    except (IntegrityError, OSError):
        at = None  # never closed, or a damaged trailer: the job's place is looked at
    where = manifest.where
    if at is not None and where is not None and at != where:
        raise Refused(f"{path}: its closing index is /index@{at[0]}+{at[1]}, not "
                      f"{manifest.whose}'s manifest /index@{where[0]}+{where[1]}: {fix}")
    at = at or where
    if at is None or at[0] < format.SECTOR or at[0] + at[1] > end or at[1] <= 0 or (
            at[0] % format.SECTOR or at[1] % format.SECTOR):
        raise Refused(f"{path}: no closing index to hold to {manifest.whose}'s manifestHash "
                      "(no valid trailer, and its manifestFile names no place on this "
                      f"drive): {fix}")
    if _sha256(drive, cipher, *at) != manifest.sha256:
        raise Refused(f"{path}: the closing index at offset {at[0]} is not the one "
                      f"{manifest.whose} declared (manifestHash): {fix}")


def recorded_superblock(jrn: journal.Journal) -> format.Superblock:
    """The superblock as the journal knows it (all but the creation time and job name)."""
    info, session = jrn.drive, jrn.session
    return format.Superblock(info.seq, info.uuid, session.session_id, "", session.dstdir,
                             format.BlobType(session.blob_type), 0, info.data_area_size)


def unlock_with_journal(path: str, jrn: journal.Journal) -> UnlockedDrive:
    """Unlock ``path`` with its journal's recovery password and records (damage is named,
    not fatal), then refuse it if its closing index lies (``check_index``)."""
    od = unlock_drive(path, jrn.recovery_password.encode(), "recovery password",
                      expected_uuid=jrn.drive.uuid, recorded=recorded_superblock(jrn))
    try:
        check_index(od, jrn.drive.index_sha256)
    except BaseException:
        od.close()
        raise
    return od


def read_index(od: UnlockedDrive) -> tuple[format.Trailer, format.Segment]:
    """The closing index, via the trailer; CorruptRecord if either is missing or damaged.
    A later session's index must list only extents of its own span.

    An index whose checksums hold but whose records break the rules (``RuleBreach``:
    extents in another session's segments, ...) is forged or a faulty writer's: it is
    named (the drive, the session, the segment and its offset) and remembered on ``od``,
    so that ``scan_log`` refuses to stand in for it (exit 4 for every reader, never a
    log scan that could take what it points at)."""
    trailer, blob = read_index_bytes(od)
    start = format.SECTOR if od.session is None else od.session.data_offset
    try:
        return trailer, format.decode_index(blob, trailer, start)
    except format.RuleBreach as exc:
        od.index_breach = (f"{od.drive.path}: the closing index of session "
                           f"{od.superblock.session_id} breaks the format although its "
                           f"checksums hold ({exc}): forged or written by a faulty tool; "
                           "nothing is imported from it or from the log it describes: "
                           "re-send the session's files from the source (pipeline repair)")
        raise format.RuleBreach(od.index_breach) from None


def check_index(od: UnlockedDrive, index_sha256: str) -> None:
    """With a journal, the drive's closing index is not needed, but one that breaks the
    rules must still refuse the drive (``read_index``): its bytes are hashed in chunks and
    decoded only when they are not the journal's (``index_sha256``, hex; "" when the drive
    was not closed).  Ordinary damage is left to the journal, as before."""
    if not index_sha256 or od.superblock_damage:
        return
    try:
        _, offset, length = _index_location(od)
        digest = hashlib.sha256()
        for at in range(offset, offset + length, READ_CHUNK):
            digest.update(od.cipher.read(od.drive, at, min(READ_CHUNK, offset + length - at)))
        if digest.hexdigest() == index_sha256:
            return
        read_index(od)
    except format.RuleBreach:
        raise
    except (IntegrityError, OSError):
        return  # damage: the journal stands in for the index


def read_index_bytes(od: UnlockedDrive) -> tuple[format.Trailer, bytes]:
    """The trailer, checked, and the closing index's bytes (decrypted, not yet decoded).

    On a drive of several sessions, the chosen session's index and a trailer that
    describes it (``find_sessions`` found both); its bytes must have the sha256 the
    next session's SESSION record gives, when there is one."""
    trailer, offset, length = _index_location(od)
    blob = od.cipher.read(od.drive, offset, length)
    span = od.session
    if span is not None and span.index_sha256 is not None and \
            hashlib.sha256(blob).digest() != span.index_sha256:
        raise format.CorruptRecord(f"index of session {span.session_id} at offset {offset}: "
                                   "its sha256 is not the one the next session recorded")
    return trailer, blob


def index_digest(od: UnlockedDrive, block: int = 1 << 20
                 ) -> tuple[format.Trailer, bytes, bytes]:
    """``read_index_bytes``, read and digested a block at a time (never whole): the trailer,
    ``journal.rotated_digest`` of the index's bytes and their sha256, to compare with the
    journal's (the sha256 prep recorded as it wrote them, else the rows encoded again)."""
    trailer, offset, length = _index_location(od)
    span = od.session
    sha256 = hashlib.sha256()

    def blocks() -> Iterator[bytes]:
        for at in range(offset, offset + length, block):
            plain = od.cipher.read(od.drive, at, min(block, offset + length - at))
            sha256.update(plain)
            yield plain

    digest = journal.rotated_digest(blocks())
    if span is not None and span.index_sha256 is not None and \
            sha256.digest() != span.index_sha256:
        raise format.CorruptRecord(f"index of session {span.session_id} at offset {offset}: "
                                   "its sha256 is not the one the next session recorded")
    return trailer, digest, sha256.digest()


def _index_location(od: UnlockedDrive) -> tuple[format.Trailer, int, int]:
    """The trailer that describes the chosen session's closing index, and where it lies."""
    if od.session is not None:
        span, real = od.session, od.drive_superblock
        assert real is not None
        if span.index is None:
            raise format.CorruptRecord(f"session {span.session_id} was not closed: it has no "
                                       "index yet")
        offset, length, seq = span.index
        try:
            trailer = format.Trailer(real.drive_seq, real.data_area_size, offset, length,
                                     seq + 1, 0)
        except ValueError as exc:  # the chain's values, though each checked, do not fit
            raise format.CorruptRecord(f"index of session {span.session_id}: {exc}") from None
        return trailer, offset, length
    sb = od.superblock
    tr_off = format.trailer_offset(sb.data_area_size)
    trailer = format.decode_trailer(od.cipher.read(od.drive, tr_off, format.SECTOR), sb)
    return trailer, trailer.index_offset, trailer.index_length


@dataclass(frozen=True, slots=True)
class RawSegment:
    """One segment's plaintext as read from the drive, or why it could not be read."""

    seq: int
    offset: int
    data: memoryview | None  # None: unreadable (``error`` says why)
    error: format.CorruptRecord | None = None


@dataclass(frozen=True, slots=True)
class SegmentRead:
    """One segment decoded.  When only the payload is damaged, ``segment`` comes with its
    records (whose checksums held) and ``error``, so each extent's own xxh3-128 can tell
    which are hit; when the header or records are damaged, ``segment`` is None."""

    seq: int
    segment: format.Segment | None
    error: format.CorruptRecord | None


def batches(wanted: Iterable[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
    """Segments given as (seq, offset, length), neighbours grouped into reads of at most
    READ_CHUNK bytes (a lone larger segment is a read of its own)."""
    batch: list[tuple[int, int, int]] = []
    for seq, offset, length in wanted:
        if batch and (offset != batch[-1][1] + batch[-1][2]
                      or offset + length - batch[0][1] > READ_CHUNK):
            yield batch
            batch = []
        batch.append((seq, offset, length))
    if batch:
        yield batch


def read_batch(od: UnlockedDrive, batch: list[tuple[int, int, int]]) -> list[RawSegment]:
    """Read and decrypt a batch of neighbouring segments at once (runs in a thread).

    On a read error (a cut image, a bad sector) the batch is read again one segment
    at a time, so that only what is hit is lost.
    """
    start = batch[0][1]
    end = batch[-1][1] + batch[-1][2]
    try:
        data = memoryview(od.cipher.read(od.drive, start, end - start))
    except (IntegrityError, OSError) as exc:
        if len(batch) > 1:
            return [got for one in batch for got in read_batch(od, [one])]
        return [RawSegment(batch[0][0], start, None, format.CorruptRecord(
            f"segment {batch[0][0]} at offset {start}: unreadable: {exc}"))]
    return [RawSegment(seq, offset, data[offset - start:offset - start + length])
            for seq, offset, length in batch]


def decode(raw: RawSegment) -> SegmentRead:
    """Decode and check one segment read back; damage is named, never decoded into data."""
    if raw.data is None:
        return SegmentRead(raw.seq, None, raw.error)
    try:
        return SegmentRead(raw.seq, format.decode_segment(raw.data, raw.offset, raw.seq), None)
    except format.CorruptRecord as exc:
        try:
            salvaged = format.decode_segment(raw.data, raw.offset, raw.seq,
                                             check_payload=False)
        except format.CorruptRecord:
            salvaged = None
        return SegmentRead(raw.seq, salvaged, exc)


@dataclass(frozen=True, slots=True)
class SegmentRowsRead:
    """``SegmentRead`` for readers that need the extents only (``format.decode_segment_rows``):
    the same checks, no object per record."""

    seq: int
    segment: format.SegmentRows | None
    error: format.CorruptRecord | None


def decode_rows(raw: RawSegment) -> SegmentRowsRead:
    """``decode``, the extents as rows; the same damage, named the same way."""
    if raw.data is None:
        return SegmentRowsRead(raw.seq, None, raw.error)
    try:
        return SegmentRowsRead(raw.seq, format.decode_segment_rows(raw.data, raw.offset,
                                                                   raw.seq), None)
    except format.CorruptRecord as exc:
        try:
            salvaged = format.decode_segment_rows(raw.data, raw.offset, raw.seq,
                                                  check_payload=False)
        except format.CorruptRecord:
            salvaged = None
        return SegmentRowsRead(raw.seq, salvaged, exc)


@dataclass
class LogScan:
    """What a walk of the log found, and what it could not vouch for."""

    files: dict[int, format.FileEntry] = field(default_factory=dict)
    extents: list[format.Extent] = field(default_factory=list)
    segments: int = 0
    end_reason: str = ""  # why the walk stopped: the end of the committed log, or damage
    damage: list[str] = field(default_factory=list)  # segments read around, each named


def scan_log(od: UnlockedDrive) -> LogScan:
    """Recover the records of a drive whose closing index is missing or damaged.

    Walks the segments from the first; the first block that is not the next
    segment's header ends the log (the uncommitted tail of a crash, or the
    index).  A segment whose header holds but whose body is damaged is read
    around: its records when they are intact (each extent's xxh3-128 then says
    which bytes are hit), nothing when they are not; either way it is named in
    ``damage`` and the walk goes on after it, because the header says where it ends.
    After ``read_index`` found the index lying (``RuleBreach``), it refuses: the log is
    the same writer's word.
    """
    if od.index_breach:  # the index lies with valid checksums: the log is no witness either
        raise format.RuleBreach(od.index_breach)
    out = LogScan()
    offset, seq = format.SECTOR, 0
    if od.session is not None:  # one session of several: its own log only
        offset, seq = od.session.data_offset, od.session.data_seq
    end = format.trailer_offset(od.superblock.data_area_size)
    while True:
        if offset + format.SECTOR > end:
            out.end_reason = "the log reaches the end of the drive"
            break
        try:
            head = format.decode_segment_header(
                od.cipher.read(od.drive, offset, format.SECTOR), offset, seq)
        except (IntegrityError, OSError) as exc:
            out.end_reason = f"segment {seq} at {offset}: {exc}"
            break
        if head.end > end:
            out.end_reason = f"segment {seq} at {offset} runs past the end of the data area"
            break
        if head.kind is format.SegmentKind.INDEX:
            out.end_reason = f"the closing index at {offset}"
            break
        if head.kind is format.SegmentKind.SESSION:
            out.end_reason = f"the next session's SESSION segment at {offset}"
            break
        try:
            blob = od.cipher.read(od.drive, offset, head.total_len)
        except (IntegrityError, OSError) as exc:
            out.damage.append(f"segment {seq} at {offset}: unreadable ({exc})")
            out.end_reason = f"segment {seq} at {offset} is unreadable"
            break
        try:
            seg = format.decode_segment(blob, offset, seq)
        except format.CorruptRecord as exc:
            try:
                seg = format.decode_segment(blob, offset, seq, check_payload=False)
                out.damage.append(f"{exc} (its records are intact: each extent is checked)")
            except format.CorruptRecord:
                out.damage.append(f"{exc}: the files and extents it recorded are unknown")
                seg = None
        if seg is not None:
            out.files.update((f.file_id, f) for f in seg.files)
            out.extents.extend(seg.extents)
        out.segments += 1
        offset, seq = head.end, seq + 1
    return out


def journal_of(journals: Iterable[journal.Journal], path: str, fix: str,
               session_id: str | None = None) -> journal.Journal:
    """The journal of the drive at ``path``, found by its LUKS2 volume id (and session,
    when the drive holds several and the directory their journals); ``Refused``
    (naming the drive and ending with ``fix``) when the directory holds none of it."""
    with drives.open_drive(path) as d:
        uuid = drives.read_volume(d).uuid
    found = [j for j in journals if j.drive.uuid == uuid
             and (session_id is None or j.session.session_id == session_id)]
    if len(found) > 1:
        ids = ", ".join(sorted(j.session.session_id for j in found))
        raise Refused(f"{path} (volume {uuid}) holds several copy sessions with journals in "
                      f"this directory ({ids}); pick one with --session-id")
    if found:
        return found[0]
    raise Refused(f"{path} (volume {uuid}) belongs to no journal"
                  + (f" of session {session_id}" if session_id else "") + f" in {fix}")
