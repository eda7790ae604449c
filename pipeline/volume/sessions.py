"""The copy sessions on one drive (format version 3): find them, pick one.

Session 1 is the superblock's; each later one begins with a SESSION segment
where the session before it ends (its INDEX), on the drive's one sequence of
segment numbers.  ``find`` reaches them from the trailer (which points at the
newest INDEX and its SESSION segment; each SESSION record points at the session
before), or, when the trailer is damaged, by walking segment headers from the
start.  Shared by prep (continuing a drive) and the readers (import, verify),
so neither room imports the other.  Synchronous: run it in a worker thread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.drive import format
from pipeline.errors import IntegrityError, Refused
from pipeline.volume import drives

__all__ = ["SessionSpan", "find", "index_problem", "pick", "pick_by_index"]


@dataclass(frozen=True, slots=True)
class SessionSpan:
    """One copy session on a version-3 drive: who it is and where its log lies."""

    superblock: format.Superblock  # this session's identity, its files' version
    first_offset: int  # where its log starts: 4096 (session 1) or its SESSION segment
    data_offset: int  # where its first DATA segment goes (the SESSION segment's end)
    data_seq: int  # that segment's sequence number
    index: tuple[int, int, int] | None  # its INDEX (offset, length, seq); None: not closed
    index_sha256: bytes | None = None  # as the next session's SESSION record says

    @property
    def session_id(self) -> str:
        return self.superblock.session_id


def pick(path: str, spans: list[SessionSpan], session_id: str | None) -> SessionSpan:
    """The session asked for, or the only one; Refused naming the sessions otherwise."""
    ids = ", ".join(s.session_id for s in spans)
    if session_id is None:
        if len(spans) == 1:
            return spans[0]
        raise Refused(f"{path} holds {len(spans)} copy sessions ({ids}); pick one with "
                      "--session-id")
    for span in spans:
        if span.session_id == session_id:
            return span
    raise Refused(f"{path} holds no session {session_id} (its sessions: {ids}); pass the "
                  "session id of one of them")


def pick_by_index(path: str, spans: list[SessionSpan], index_at: tuple[int, int], whose: str
                  ) -> SessionSpan:
    """The session whose closing INDEX lies at ``index_at`` (offset, length): the one a
    job's drive entry names (its ``manifestFile``, ``/index@OFFSET+LENGTH``), since each
    session's job lists the same drive with its own manifest.  Refused, naming the
    sessions, when none does: the drive holds no session of that job."""
    for span in spans:
        if span.index is not None and span.index[:2] == index_at:
            return span
    ids = ", ".join(s.session_id for s in spans)
    raise Refused(f"{path} holds {len(spans)} copy session(s) ({ids}), none whose closing index "
                  f"is {whose}'s manifest /index@{index_at[0]}+{index_at[1]}: the drive holds "
                  "no session of that job; check the drive and --job")


def index_problem(drive: drives.Drive, cipher: drives.DriveCipher, sb: format.Superblock,
                  span: SessionSpan) -> str:
    """Why a closed session's INDEX does not read as its session's, or "" (``drive info``):
    its bytes against the sha256 the next session recorded, decoded with its span's start,
    so an index listing another session's extents is named.  ``sb``: sector 0 as read."""
    if span.index is None:
        return ""
    offset, length, seq = span.index
    try:
        trailer = format.Trailer(sb.drive_seq, sb.data_area_size, offset, length, seq + 1, 0)
        blob = cipher.read(drive, offset, length)
        if span.index_sha256 is not None and hashlib.sha256(blob).digest() != span.index_sha256:
            return (f"index at offset {offset}: its sha256 is not the one the next session "
                    "recorded")
        format.decode_index(blob, trailer, span.data_offset)
    except (IntegrityError, OSError, ValueError) as exc:
        return str(exc)
    return ""


def _session_view(sb: format.Superblock, rec: format.SessionRecord) -> format.Superblock:
    """A later session's identity as a superblock: what readers of one session expect."""
    return format.Superblock(rec.drive_seq, sb.volume_uuid, rec.session_id, rec.job_name,
                             rec.dstdir, rec.blob_type, rec.created_ns, sb.data_area_size,
                             rec.version)


def _first_view(sb: format.Superblock) -> format.Superblock:
    """Session 1's identity on a version-3 drive: the superblock at the version it had."""
    if sb.version != format.SESSIONS_VERSION:
        return sb
    return format.Superblock(sb.drive_seq, sb.volume_uuid, sb.session_id, sb.job_name,
                             sb.dstdir, sb.blob_type, sb.created_ns, sb.data_area_size,
                             sb.first_version)


def _read_session_segment(drive: drives.Drive, cipher: drives.DriveCipher,
                          sb: format.Superblock, offset: int, seq: int | None
                          ) -> tuple[format.SegmentHeader, format.SessionRecord]:
    head = format.decode_segment_header(cipher.read(drive, offset, format.SECTOR), offset, seq)
    if head.kind is not format.SegmentKind.SESSION:
        raise format.CorruptRecord(f"segment {head.seq} at offset {offset}: a {head.kind.name} "
                                   "segment where a SESSION segment should begin")
    if head.end > format.trailer_offset(sb.data_area_size):
        raise format.CorruptRecord(f"segment {head.seq} at offset {offset} runs past the end "
                                   "of the data area")
    return format.decode_session_segment(cipher.read(drive, offset, head.total_len), offset,
                                         seq)


def find(drive: drives.Drive, cipher: drives.DriveCipher, sb: format.Superblock
         ) -> list[SessionSpan]:
    """Every session on a version-3 drive, oldest first (CorruptRecord when none can be).

    From the trailer: it points at the newest closed INDEX and (trailer 2) at its
    session's SESSION segment, whose record points at the session before, and so
    on back to session 1.  A SESSION segment right after the newest INDEX is a
    session begun and not closed.  Without a valid trailer, the segment headers
    are walked from the start (``_walk``).  ``sb``: sector 0 as read.
    """
    size = sb.data_area_size
    try:
        trailer = format.decode_trailer(
            cipher.read(drive, format.trailer_offset(size), format.SECTOR), sb)
    except (IntegrityError, OSError):
        return _walk(drive, cipher, sb)
    index_seq = trailer.segment_count - 1
    spans: list[SessionSpan] = []
    index: tuple[int, int, int] = (trailer.index_offset, trailer.index_length, index_seq)
    digest: bytes | None = None
    first = trailer.session_offset
    while first != format.SECTOR:
        head, rec = _read_session_segment(drive, cipher, sb, first, None)
        if not head.end <= index[0] or not 1 <= head.seq < index[2]:
            raise format.CorruptRecord(f"SESSION segment at offset {first} lies after its "
                                       f"index at {index[0]}")
        spans.append(SessionSpan(_session_view(sb, rec), first, head.end, head.seq + 1, index,
                                 digest))
        index = (rec.prev_index_offset, rec.prev_index_length, head.seq - 1)
        digest = rec.prev_index_sha256
        if rec.prev_first_offset >= first:
            raise format.CorruptRecord(f"SESSION segment at offset {first}: the previous "
                                       f"session starts at {rec.prev_first_offset}, not before")
        first = rec.prev_first_offset
    spans.append(SessionSpan(_first_view(sb), format.SECTOR, format.SECTOR, 0, index, digest))
    spans.reverse()
    newest_end = trailer.index_offset + trailer.index_length
    if newest_end + format.SECTOR <= format.trailer_offset(size):
        try:
            head, rec = _read_session_segment(drive, cipher, sb, newest_end, trailer.segment_count)
        except (IntegrityError, OSError):
            return spans  # no session begun after the newest closed one
        if (rec.prev_first_offset, rec.prev_index_offset, rec.prev_index_length) != (
                spans[-1].first_offset, trailer.index_offset, trailer.index_length):
            raise format.CorruptRecord(f"SESSION segment at offset {newest_end} does not "
                                       "point at the session before it")
        spans[-1] = SessionSpan(spans[-1].superblock, spans[-1].first_offset,
                                spans[-1].data_offset, spans[-1].data_seq, spans[-1].index,
                                rec.prev_index_sha256)
        spans.append(SessionSpan(_session_view(sb, rec), newest_end, head.end, head.seq + 1,
                                 None))
    _check_distinct(spans)
    return spans


def _check_distinct(spans: list[SessionSpan]) -> None:
    seen: set[str] = set()
    for s in spans:
        if s.session_id in seen:
            raise format.CorruptRecord(f"session {s.session_id} appears twice on the drive")
        seen.add(s.session_id)


def _walk(drive: drives.Drive, cipher: drives.DriveCipher, sb: format.Superblock
          ) -> list[SessionSpan]:
    """``find`` without a trailer: every segment header from the start, in order.
    The log ends at the first block that is not the next segment; a session whose last
    segment is not an INDEX was not closed."""
    end = format.trailer_offset(sb.data_area_size)
    spans: list[SessionSpan] = []
    view, first, data_offset, data_seq = _first_view(sb), format.SECTOR, format.SECTOR, 0
    offset, seq = format.SECTOR, 0
    last_index: tuple[int, int, int] | None = None
    while offset + format.SECTOR <= end:
        try:
            head = format.decode_segment_header(
                cipher.read(drive, offset, format.SECTOR), offset, seq)
        except (IntegrityError, OSError):
            break
        if head.end > end:
            break
        if head.kind is format.SegmentKind.INDEX:
            last_index = (offset, head.total_len, seq)
        elif head.kind is format.SegmentKind.SESSION:
            _, rec = _read_session_segment(drive, cipher, sb, offset, seq)
            if last_index is None or (rec.prev_first_offset, rec.prev_index_offset,
                                      rec.prev_index_length) != (first, *last_index[:2]):
                raise format.CorruptRecord(f"SESSION segment {seq} at offset {offset} does "
                                           "not follow the closing index of the session before")
            spans.append(SessionSpan(view, first, data_offset, data_seq, last_index,
                                     rec.prev_index_sha256))
            view, first, data_offset, data_seq = _session_view(sb, rec), offset, head.end, seq + 1
            last_index = None
        else:
            last_index = None  # DATA after an INDEX: a session's log goes on (rewritten index)
        offset, seq = head.end, seq + 1
    spans.append(SessionSpan(view, first, data_offset, data_seq, last_index, None))
    _check_distinct(spans)
    return spans
