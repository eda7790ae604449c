"""The on-drive record format: a pure, sans-I/O codec (bytes in, records out).

This module describes the *decrypted* contents of a drive's LUKS2 data segment,
the "data area", addressed in bytes from 0 and always in SECTOR (4096-byte)
units.  It does no I/O, imports no trio and knows nothing of files or keys, so
what ``encode_*`` writes is exactly what the importer's ``decode_*`` reads
(h11's symmetry).  The full byte tables are in ``docs/FORMAT.md``::

    data area (decrypted LUKS2 data segment), integers little-endian
    0        4096                                              size-4096    size
    +--------+---------+---------+-----+---------+-   free   -+-----------+
    | super- | segment | segment | ... | INDEX   |  (zeros or | trailer   |
    | block  | seq 0   | seq 1   |     | seq N-1 |  garbage)  | (at close)|
    +--------+---------+---------+-----+---------+------------+-----------+

    one segment (starts on a 4096 boundary, length a multiple of 4096)
    +--------------+-------------------+------------------------+---------+
    | header (64)  | payload blob      | records blob           | zero    |
    | magic, kind, | stored extent     | record, record, ...    | padding |
    | flags, seq,  | bytes (DATA only) | as one zstd frame when | to 4096 |
    | offset, lens,|                   | that is smaller        |         |
    | 3x xxh3-64   |                   |                        |         |
    +--------------+-------------------+------------------------+---------+

The payload comes first so that it always starts at ``offset + 64``: extent
locations then never depend on how well the records that hold them compress.

    one record
    +----------+---------------+-------------------+---------------------+
    | type u8  | body_len u32  | body (body_len)   | xxh32 of type..body |
    +----------+---------------+-------------------+---------------------+

A reader goes superblock -> trailer -> index.  If the trailer is missing
(a crash before the drive was closed), it scans segments from offset 4096 until
the first block that is not a valid header with the next sequence number
(``SegmentDecoder(scan=True)``).

Version 3 (several copy sessions on one drive): a later session begins with a
SESSION segment (one ``SessionRecord``: who it is, and the previous session's
start and INDEX) where the previous INDEX ends, on the same sequence of segment
numbers; each INDEX lists its own session only, and trailer 2 points at the
newest INDEX and its SESSION segment.

Errors: garbage on the drive raises only ``CorruptRecord`` (exit code 4);
invalid values handed to a constructor or encoder raise ``ValueError`` or
``TypeError``, which are bugs in the caller, like h11's LocalProtocolError vs
RemoteProtocolError.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import struct
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple, TypeVar

import xxhash
import zstandard

from pipeline.drive.attrs import PROPERTIES, BlobAttrs, Disposition
from pipeline.drive.blob import CELL, BlobType  # the storage layer's too: re-exported
from pipeline.errors import IntegrityError

__all__ = [
    "END",
    "CELL",
    "CHECKSUM_AT",
    "EXTENT_RECORD_SIZE",
    "FILE_RECORD_OVERHEAD",
    "FORMAT_VERSION",
    "ATTRS_VERSION",
    "HEADER_SIZE",
    "MAX_DATA_PAYLOAD",
    "MAX_DATA_RECORDS_LEN",
    "MAX_INDEX_RECORDS_LEN",
    "MAX_NAME_BYTES",
    "MAX_SB_STRING_BYTES",
    "NEED_DATA",
    "RECORDS_ZSTD",
    "RECORDS_ZSTD_LEVEL",
    "SECTOR",
    "SEGMENT_MAGIC",
    "SUPERBLOCK_MAGIC",
    "SUPPORTED_VERSIONS",
    "SESSIONS_VERSION",
    "TRAILER_VERSIONS",
    "ATTRS_VERSIONS",
    "MAX_SESSION_RECORDS_LEN",
    "SessionRecord",
    "encode_session_segment",
    "decode_session_segment",
    "TRAILER_MAGIC",
    "BlobAttrs",
    "BlobType",
    "Disposition",
    "Codec",
    "CorruptRecord",
    "RuleBreach",
    "Extent",
    "FileEntry",
    "Record",
    "RecordType",
    "Segment",
    "SegmentDecoder",
    "SegmentHeader",
    "SegmentKind",
    "Superblock",
    "Trailer",
    "align_up",
    "decode_attrs",
    "decode_index",
    "decode_records",
    "decode_extent_rows",
    "decode_segment_rows",
    "ExtentRow",
    "SegmentRows",
    "decode_segment",
    "decode_segment_header",
    "decode_superblock",
    "decode_trailer",
    "encode_attrs",
    "encode_index",
    "IndexEncoder",
    "IndexStream",
    "encode_record_list",
    "encode_records",
    "encode_segment",
    "encode_superblock",
    "encode_trailer",
    "grid",
    "grid_cells",
    "LaidOut",
    "layout_data_segment",
    "record_size",
    "segment_total_len",
    "superblock_names_problem",
    "trailer_offset",
]

# --------------------------------------------------------------------------- constants

SECTOR = 4096
"""Every structure starts on a SECTOR boundary: it is dm-crypt's sector size."""

FORMAT_VERSION = 1
"""What a drive without per-file attributes is written as (the --source shorthand)."""
ATTRS_VERSION = 2
"""Version 2 adds each FileEntry's optional attributes (WAImportExport's dataset: container,
blob type, disposition, metadata, properties); a drive that carries any is written as 2."""
SESSIONS_VERSION = 3
"""Version 3: a drive holding several copy sessions (a SESSION segment opens each one after
the first).  The superblock says 3 only once a second session begins; the version session 1
was written as (1 or 2) moves to its ``first_version`` field."""
SUPPORTED_VERSIONS = frozenset({1, 2, 3})
TRAILER_VERSIONS = frozenset({1, 2})
"""Trailer 1: one session; trailer 2 (version-3 drives): also where the newest session
starts and how many sessions the drive holds."""
ATTRS_VERSIONS = frozenset({1, 2})
"""What one session's files are written as (a SESSION record's ``version``)."""

SUPERBLOCK_MAGIC = b"PLSEEDSB"
TRAILER_MAGIC = b"PLSEEDTR"
SEGMENT_MAGIC = b"PLSG"

HEADER_SIZE = 64
"""Bytes in a segment header; ``decode_segment_header`` needs only these."""

RECORDS_ZSTD = 0x01
"""Segment header flag: the records blob is stored as one zstd frame."""
RECORDS_ZSTD_LEVEL = 3
"""zstd level for records blobs (writers only; readers take any level)."""

CHECKSUM_AT = SECTOR - 8
"""Superblock and trailer: xxh3-64 of bytes [0, CHECKSUM_AT) is stored here."""

MAX_DATA_PAYLOAD = 64 << 20
"""Largest payload of a DATA segment (64 MiB): bounds what garbage can make us buffer."""
MAX_DATA_RECORDS_LEN = 16 << 20
"""Largest records blob of a DATA segment (16 MiB), decompressed."""
MAX_INDEX_RECORDS_LEN = 1 << 31
"""Largest records blob of an INDEX segment (2 GiB, about 37 million extents), decompressed."""
MAX_NAME_BYTES = 4096
"""Largest UTF-8 FileEntry path or blob name (PATH_MAX; Azure blob names are shorter)."""
MAX_SB_STRING_BYTES = 1024
"""Largest UTF-8 session id, job name or dstdir in the superblock (three must fit one sector)."""
MAX_SESSION_RECORDS_LEN = 2 * SECTOR
"""Largest records blob of a SESSION segment (its one record: at most 3,163 bytes)."""

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_E = TypeVar("_E", bound=enum.IntEnum)


class CorruptRecord(IntegrityError):
    """{}"""


class RuleBreach(CorruptRecord):
    """{}"""
    # A segment whose checksums all hold but whose records break the format's rules (an
    # INDEX listing extents outside its session's segments, a file id twice, ...): no crash
    # or bit rot writes one, so it is forged or a faulty writer's, and its drive's log
    # cannot be trusted in its place either (readers refuse, exit 4; never a log scan).


class Codec(enum.IntEnum):
    """How an extent's raw bytes are stored in a payload."""

    ZSTD = 1
    RAW = 2
    ZERO = 3  # all-zero extent: a record only, no stored bytes


class SegmentKind(enum.IntEnum):
    DATA = 1
    INDEX = 2
    SESSION = 3  # version 3: opens a later copy session on the drive


class RecordType(enum.IntEnum):
    FILE = 1
    EXTENT = 2
    SESSION = 3  # version 3: only in a SESSION segment, alone


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    END = "END"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = _Sentinel.NEED_DATA
"""``SegmentDecoder.next_segment``: feed more bytes."""
END = _Sentinel.END
"""``SegmentDecoder.next_segment``: the log has ended; nothing more will come."""


def align_up(n: int) -> int:
    """Round ``n`` up to a multiple of SECTOR."""
    return -(-n // SECTOR) * SECTOR


def grid_cells(size: int) -> int:
    """How many CELL grid cells a ``size``-byte file has (the last one may be short)."""
    return -(-size // CELL)


def grid(end: int, start: int = 0) -> range:
    """The offsets of the grid cells that begin in ``[start, end)`` (``start`` on the grid):
    ``grid(size)`` is every cell of a file, ``grid(e.offset + e.raw_len, e.offset)`` an
    extent's."""
    return range(start, end, CELL)


def trailer_offset(data_area_size: int) -> int:
    """Where the trailer lives: the last sector of the data area."""
    return data_area_size - SECTOR


def segment_total_len(records_len: int, payload_len: int) -> int:
    """Bytes a segment occupies on the drive, padding included.

    With the uncompressed records length (the sum of ``record_size``) this is an
    upper bound, because records are stored compressed only when that is smaller.
    """
    return align_up(HEADER_SIZE + records_len + payload_len)


# --------------------------------------------------------------------------- validation helpers


def _int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range [{lo}, {hi}]")


def _utf8(name: str, value: object, max_bytes: int, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} {value!r} is not valid UTF-8 text: {e.reason}") from None
    if not raw and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(raw) > max_bytes:
        raise ValueError(f"{name} is {len(raw)} bytes of UTF-8; at most {max_bytes} allowed")
    if b"\0" in raw:
        raise ValueError(f"{name} {value!r} contains a NUL byte")
    return raw


def _enum(cls: type[_E], name: str, value: object) -> _E:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a {cls.__name__}, got {value!r}")
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{name}={value} is not a valid {cls.__name__}") from None


def _check_relpath(path: str) -> None:
    # Import writes blobs named after these paths: refuse anything that could escape dstdir.
    if path.startswith("/"):
        raise ValueError(f"path {path!r} must be relative")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")


def _check_uuid(value: object) -> None:
    if not isinstance(value, str) or len(value) != 36 or not value.isascii():
        raise ValueError(f"volume_uuid {value!r} must be a 36-character ASCII UUID")
    for i, ch in enumerate(value):
        if i in (8, 13, 18, 23):
            if ch != "-":
                raise ValueError(f"volume_uuid {value!r} is not in 8-4-4-4-12 form")
        elif ch not in "0123456789abcdefABCDEF":
            raise ValueError(f"volume_uuid {value!r} has a non-hex digit")


def _file_fields_ok(fid: object, path: object, blob: object, size: object, mtime_ns: object,
                    mode: object, attrs: object = None) -> bool:
    """``FileEntry``'s rules in one combined test, for the hot paths (prep makes one entry a
    staging file, decoding an index millions): ASCII names are their own UTF-8, so their
    length is their size.  False sends the caller to the per-field checks, which say what
    is wrong (and accept non-ASCII names that are valid)."""
    return (
        attrs is None  # with attributes, FileEntry checks them and the blob's container
        and type(fid) is int and type(size) is int and type(mtime_ns) is int
        and type(mode) is int and 0 <= fid <= _U64 and 0 <= size <= _U64
        and _I64_MIN <= mtime_ns <= _I64_MAX and 0 <= mode <= _U32
        and type(path) is str and type(blob) is str and path.isascii() and blob.isascii()
        and 0 < len(path) <= MAX_NAME_BYTES and 0 < len(blob) <= MAX_NAME_BYTES
        and "\0" not in path and "\0" not in blob
        and "//" not in (p := f"/{path}/") and "/./" not in p and "/../" not in p
    )


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:
    """One file in staging; extents refer to it by ``file_id``."""

    file_id: int
    path: str
    blob: str
    size: int
    mtime_ns: int
    mode: int
    attrs: BlobAttrs | None = None
    """Version 2: how the file becomes a blob.  With attrs, ``blob`` is
    ``container/name`` (each file names its own container); without, it is the name
    under the superblock's dstdir, and the superblock's blob type applies."""

    def __post_init__(self) -> None:
        fid, path, blob, size, mtime_ns, mode = (
            self.file_id, self.path, self.blob, self.size, self.mtime_ns, self.mode)
        if self.attrs is not None:
            if type(self.attrs) is not BlobAttrs:
                raise ValueError(f"attrs must be BlobAttrs, got {type(self.attrs).__name__}")
            if not isinstance(blob, str) or not all(blob.partition("/")[::2]):
                raise ValueError(f"blob {blob!r} of a file with attrs must be 'container/name'")
        if _file_fields_ok(fid, path, blob, size, mtime_ns, mode):
            return
        _int("file_id", fid, 0, _U64)
        _utf8("path", path, MAX_NAME_BYTES)
        _check_relpath(path)
        _utf8("blob", blob, MAX_NAME_BYTES)
        _int("size", size, 0, _U64)
        _int("mtime_ns", mtime_ns, _I64_MIN, _I64_MAX)
        _int("mode", mode, 0, _U32)


@dataclasses.dataclass(frozen=True, slots=True)
class Extent:
    """A run of a file's bytes: where it came from, how it is stored, where it lies.

    ``location`` is the absolute data-area offset of the stored bytes; 0 means
    "not placed yet" (``layout_data_segment`` assigns it) and is the only value
    allowed for ZERO extents, which store nothing.
    """

    file_id: int
    offset: int
    raw_len: int
    codec: Codec
    stored_len: int
    xxh3: bytes
    location: int = 0

    def __post_init__(self) -> None:
        codec = self.codec
        if type(codec) is not Codec:
            codec = _enum(Codec, "codec", codec)
            object.__setattr__(self, "codec", codec)
        fid, off, raw, stored, loc = (
            self.file_id, self.offset, self.raw_len, self.stored_len, self.location
        )
        # One combined test on the hot path (decoding an index builds millions of these);
        # the per-field checks below only run to say what is wrong.
        if not (
            type(fid) is int and type(off) is int and type(raw) is int
            and type(stored) is int and type(loc) is int
            and 0 <= fid <= _U64 and off >= 0 and 0 < raw <= _U32 and off + raw <= _U64 + 1
            and 0 <= stored <= _U32 and loc >= 0 and loc + stored <= _U64 + 1
            and type(self.xxh3) is bytes and len(self.xxh3) == 16
        ):
            _int("file_id", fid, 0, _U64)
            _int("offset", off, 0, _U64)
            _int("raw_len", raw, 1, _U32)
            _int("stored_len", stored, 0, _U32)
            _int("location", loc, 0, _U64)
            if off + raw > _U64 + 1:
                raise ValueError(f"extent offset={off} + raw_len={raw} exceeds 2**64")
            if loc + stored > _U64 + 1:
                raise ValueError(f"extent location={loc} + stored_len={stored} exceeds 2**64")
            if not isinstance(self.xxh3, bytes) or len(self.xxh3) != 16:
                raise ValueError(f"xxh3 must be 16 bytes (an xxh3-128 digest), got {self.xxh3!r}")
        if codec is Codec.ZERO:
            if stored or loc:
                raise ValueError("a ZERO extent stores nothing: stored_len and location must be 0")
        elif not stored:
            raise ValueError(f"a {codec.name} extent must store at least one byte")
        elif codec is Codec.RAW and stored != raw:
            raise ValueError(f"a RAW extent stores its raw_len={raw} bytes, not {stored}")


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRecord:
    """A later copy session on this drive (version 3): the one record of its SESSION segment.

    Who the session is (what the superblock says of session 1) and where the session
    before it lies: its log's start (``prev_first_offset``: 4096 for session 1, else its
    SESSION segment) and its INDEX, which ends exactly where this SESSION segment begins,
    with that INDEX's sha256.  So the sessions chain from the trailer back to the first,
    and, walking segment headers, from the first on.
    """

    session_id: str
    job_name: str
    dstdir: str
    blob_type: BlobType
    drive_seq: int
    created_ns: int
    version: int  # what this session's files are written as: 1, or 2 with attributes
    prev_first_offset: int
    prev_index_offset: int
    prev_index_length: int
    prev_index_sha256: bytes

    def __post_init__(self) -> None:
        _utf8("session_id", self.session_id, MAX_SB_STRING_BYTES)
        _utf8("job_name", self.job_name, MAX_SB_STRING_BYTES, allow_empty=True)
        _utf8("dstdir", self.dstdir, MAX_SB_STRING_BYTES)
        if self.dstdir.startswith("/") or not self.dstdir.endswith("/"):
            raise ValueError(f"dstdir {self.dstdir!r} must look like 'container/virtual/dir/'")
        if type(self.blob_type) is not BlobType:
            object.__setattr__(self, "blob_type", _enum(BlobType, "blob_type", self.blob_type))
        _int("drive_seq", self.drive_seq, 1, _U32)
        _int("created_ns", self.created_ns, _I64_MIN, _I64_MAX)
        _int("version", self.version, 0, 0xFF)
        if self.version not in ATTRS_VERSIONS:
            raise ValueError(f"session version={self.version} is not one of "
                             f"{sorted(ATTRS_VERSIONS)}")
        for name in ("prev_first_offset", "prev_index_offset", "prev_index_length"):
            value = getattr(self, name)
            _int(name, value, SECTOR, _U64)
            if value % SECTOR:
                raise ValueError(f"{name}={value} is not a multiple of {SECTOR}")
        if self.prev_first_offset > self.prev_index_offset:
            raise ValueError(f"the previous session starts at {self.prev_first_offset}, after "
                             f"its index at {self.prev_index_offset}")
        if self.prev_index_offset + self.prev_index_length > _U64:
            raise ValueError("the previous index runs past 2**64")
        if not isinstance(self.prev_index_sha256, bytes) or len(self.prev_index_sha256) != 32:
            raise ValueError("prev_index_sha256 must be 32 bytes (a sha256 digest)")

    @property
    def prev_index_end(self) -> int:
        """Where the previous session's INDEX ends: this SESSION segment's offset."""
        return self.prev_index_offset + self.prev_index_length


Record = FileEntry | Extent | SessionRecord

_FRAME = struct.Struct("<BI")  # type, body_len
_CRC = struct.Struct("<I")
_FILE_FIXED = struct.Struct("<QQqI")  # file_id, size, mtime_ns, mode
_LEN16 = struct.Struct("<H")
_EXTENT_BODY = struct.Struct("<QQIBI16sQ")
_EXTENT_HEAD = struct.Struct("<BIQQIBI16sQ")  # frame + body, packed in one call
_EXTENT_REC = struct.Struct("<BIQQIBI16sQI")  # frame + body + crc, unpacked in one call
_CODEC_OF = {c.value: c for c in Codec}
_FRAME_SIZE = _FRAME.size + _CRC.size
_FILE_MIN_BODY = _FILE_FIXED.size + 2 * _LEN16.size
_ATTRS_MAX = 2 + 2 + 2 + 4 * 4096 + 8192 + 5 * (1 + 2 + 1024)
"""Bound on an encoded BlobAttrs: types, counts, at most 8 KiB of metadata (whose names are
at least one byte, so at most 4096 pairs of two str16 lengths) and five properties."""
_FILE_MAX_BODY = _FILE_MIN_BODY + 2 * MAX_NAME_BYTES + _ATTRS_MAX
EXTENT_RECORD_SIZE = _EXTENT_HEAD.size + _CRC.size
"""Every Extent record is this many bytes (58), whatever its values."""
FILE_RECORD_OVERHEAD = _FRAME_SIZE + _FILE_MIN_BODY
"""A FileEntry record is this many bytes plus its path and blob name in UTF-8."""
_MIN_RECORD_SIZE = _FRAME_SIZE + min(_FILE_MIN_BODY + 2, _EXTENT_BODY.size)
# drive_seq, created_ns, blob_type, version, reserved, prev_first_offset, prev_index_offset,
# prev_index_length, prev_index_sha256; then session_id, job_name, dstdir as str16
_SESSION_FIXED = struct.Struct("<IqBBHQQQ32s")
_SESSION_MAX_BODY = _SESSION_FIXED.size + 3 * (2 + MAX_SB_STRING_BYTES)

_xxh32 = xxhash.xxh32_intdigest
_xxh3_64 = xxhash.xxh3_64_intdigest


def record_size(rec: Record) -> int:
    """Encoded size of one record before compression, so callers can plan segments."""
    if type(rec) is Extent:
        return EXTENT_RECORD_SIZE
    if type(rec) is FileEntry:
        extra = 0 if rec.attrs is None else len(encode_attrs(rec.attrs))
        return FILE_RECORD_OVERHEAD + len(rec.path.encode()) + len(rec.blob.encode()) + extra
    if type(rec) is SessionRecord:
        return len(_session_head(rec)) + _CRC.size
    raise TypeError(f"not a record: {rec!r}")


def _session_head(rec: SessionRecord) -> bytes:
    body = b"".join([
        _SESSION_FIXED.pack(rec.drive_seq, rec.created_ns, rec.blob_type, rec.version, 0,
                            rec.prev_first_offset, rec.prev_index_offset,
                            rec.prev_index_length, rec.prev_index_sha256),
        _str16(rec.session_id), _str16(rec.job_name), _str16(rec.dstdir)])
    return _FRAME.pack(RecordType.SESSION.value, len(body)) + body


def _decode_session_body(mv: memoryview, pos: int, end: int) -> SessionRecord:
    if not _SESSION_FIXED.size + 6 <= end - pos <= _SESSION_MAX_BODY:
        raise ValueError(f"session record body length {end - pos} is out of range")
    (drive_seq, created_ns, blob_type, version, reserved, first, ioff, ilen, digest) = (
        _SESSION_FIXED.unpack_from(mv, pos))
    if reserved:
        raise ValueError("reserved bytes are not zero")
    p = pos + _SESSION_FIXED.size
    strings = []
    for _ in range(3):
        if p + 2 > end:
            raise ValueError("session record strings are truncated")
        (k,) = _LEN16.unpack_from(mv, p)
        if p + 2 + k > end:
            raise ValueError("a session record string runs past the record")
        strings.append(str(mv[p + 2 : p + 2 + k], "utf-8"))
        p += 2 + k
    if p != end:
        raise ValueError("bytes after the session record's strings")
    rec = SessionRecord(strings[0], strings[1], strings[2], blob_type, drive_seq, created_ns,
                        version, first, ioff, ilen, bytes(digest))
    problem = _names_problem(rec.session_id, rec.job_name, rec.dstdir)
    if problem is not None:
        raise ValueError(problem)
    return rec


def encode_record_list(records: Iterable[Record]) -> list[bytes]:
    """Each record framed and checksummed on its own, in order; linear time.

    The journal keeps these bytes, so that the closing index is a
    concatenation of rows rather than records encoded all over again.
    """
    out: list[bytes] = []
    append = out.append
    ext_pack = _EXTENT_HEAD.pack
    crc_pack = _CRC.pack
    file_fixed = _FILE_FIXED.pack
    len16 = _LEN16.pack
    ext_type = RecordType.EXTENT.value
    file_frame = _FRAME.pack
    file_type = RecordType.FILE.value
    ext_len = _EXTENT_BODY.size
    for rec in records:
        if type(rec) is Extent:
            head = ext_pack(
                ext_type, ext_len, rec.file_id, rec.offset, rec.raw_len, rec.codec,
                rec.stored_len, rec.xxh3, rec.location,
            )
        elif type(rec) is SessionRecord:
            head = _session_head(rec)
        elif type(rec) is FileEntry:
            path = rec.path.encode()
            blob = rec.blob.encode()
            head = b"".join((
                file_frame(file_type, _FILE_MIN_BODY + len(path) + len(blob)),
                file_fixed(rec.file_id, rec.size, rec.mtime_ns, rec.mode),
                len16(len(path)), path, len16(len(blob)), blob,
            )) if rec.attrs is None else _file_head_with_attrs(rec, path, blob)
        else:
            raise TypeError(f"not a record: {rec!r}")
        append(head + crc_pack(_xxh32(head)))
    return out


def _file_head_with_attrs(rec: FileEntry, path: bytes, blob: bytes) -> bytes:
    attrs = encode_attrs(rec.attrs)  # type: ignore[arg-type]
    return b"".join((
        _FRAME.pack(RecordType.FILE.value, _FILE_MIN_BODY + len(path) + len(blob) + len(attrs)),
        _FILE_FIXED.pack(rec.file_id, rec.size, rec.mtime_ns, rec.mode),
        _LEN16.pack(len(path)), path, _LEN16.pack(len(blob)), blob, attrs,
    ))


_ATTR_HEAD = struct.Struct("<BBH")  # blob_type, disposition, metadata pairs


def _str16(s: str) -> bytes:
    raw = s.encode()
    return _LEN16.pack(len(raw)) + raw


@functools.lru_cache(maxsize=1024)
def encode_attrs(attrs: BlobAttrs) -> bytes:
    """A FileEntry's attributes section (version 2), after its blob name: blob_type u8,
    disposition u8, u16 count + (str16 name, str16 value) metadata pairs, u16 count +
    (u8 property index, str16 value) properties.  A dataset row's files share one
    BlobAttrs, so each is encoded once."""
    parts = [_ATTR_HEAD.pack(attrs.blob_type, attrs.disposition, len(attrs.metadata))]
    for name, value in attrs.metadata:
        parts += [_str16(name), _str16(value)]
    parts.append(_LEN16.pack(len(attrs.properties)))
    for name, value in attrs.properties:
        parts += [bytes([PROPERTIES.index(name)]), _str16(value)]
    return b"".join(parts)


@functools.lru_cache(maxsize=1024)
def decode_attrs(raw: bytes) -> BlobAttrs:
    """``encode_attrs`` backwards; ValueError (the caller's CorruptRecord) on any fault."""
    mv = memoryview(raw)
    if len(mv) < _ATTR_HEAD.size:
        raise ValueError("attributes are truncated")
    btype, disp, n = _ATTR_HEAD.unpack_from(mv, 0)
    p = _ATTR_HEAD.size

    def text() -> str:
        nonlocal p
        if p + 2 > len(mv):
            raise ValueError("attributes are truncated")
        (k,) = _LEN16.unpack_from(mv, p)
        if p + 2 + k > len(mv):
            raise ValueError("an attribute string runs past the record")
        p += 2 + k
        return str(mv[p - k : p], "utf-8")

    meta = tuple((text(), text()) for _ in range(n))
    if p + 2 > len(mv):
        raise ValueError("attributes are truncated")
    (m,) = _LEN16.unpack_from(mv, p)
    p += 2
    props = []
    for _ in range(m):
        if p >= len(mv) or mv[p] >= len(PROPERTIES):
            raise ValueError("unknown property index")
        p += 1
        props.append((PROPERTIES[mv[p - 1]], text()))
    if p != len(mv):
        raise ValueError("bytes after the attributes")
    return BlobAttrs(btype, disp, meta, tuple(props))


def encode_records(records: Iterable[Record]) -> bytes:
    """Serialise records back to back, each framed and checksummed; linear time."""
    return b"".join(encode_record_list(records))


def _file_body_fields(mv: memoryview, pos: int, end: int
                      ) -> tuple[int, str, str, int, int, int, BlobAttrs | None]:
    file_id, size, mtime_ns, mode = _FILE_FIXED.unpack_from(mv, pos)
    p = pos + _FILE_FIXED.size
    (path_len,) = _LEN16.unpack_from(mv, p)
    p += 2
    if p + path_len + 2 > end:
        raise ValueError("path length runs past the record")
    path = str(mv[p : p + path_len], "utf-8")
    p += path_len
    (blob_len,) = _LEN16.unpack_from(mv, p)
    p += 2
    if p + blob_len > end:
        raise ValueError("blob length runs past the record")
    blob = str(mv[p : p + blob_len], "utf-8")
    attrs = None if p + blob_len == end else decode_attrs(bytes(mv[p + blob_len : end]))
    return file_id, path, blob, size, mtime_ns, mode, attrs


def _decode_file_body(mv: memoryview, pos: int, end: int) -> FileEntry:
    return FileEntry(*_file_body_fields(mv, pos, end))


_ZERO, _RAW = Codec.ZERO.value, Codec.RAW.value

ExtentRow = tuple[int, int, int, int, int, bytes, int]
"""An extent as plain values, in ``Extent``'s field order: (file_id, offset, raw_len, codec,
stored_len, xxh3, location); codec a plain int.  What the hot readers (verify, import)
compare and use, without an object per extent."""


def _extent_row_ok(off: int, raw: int, codec: int, stored: int, loc: int) -> bool:
    """``Extent``'s rules for values unpacked from a record (field widths already hold):
    False sends the caller to ``Extent(...)``, which says what is wrong."""
    if not (raw and off + raw <= _U64 + 1 and loc + stored <= _U64 + 1):
        return False
    if codec == _ZERO:
        return not stored and not loc
    return bool(stored) and (codec != _RAW or stored == raw)


def decode_records(blob: bytes | memoryview, where: str = "records") -> list[Record]:
    """Parse a records blob; a damaged record raises CorruptRecord naming it.

    Each record's own xxh32 is checked before its body is read, so damage is
    reported as such and never decoded into wrong values.
    """
    return _decode_records(blob, where, False)[0]  # type: ignore[return-value]


def decode_extent_rows(blob: bytes | memoryview, where: str = "records"
                       ) -> tuple[list[ExtentRow], int]:
    """``decode_records`` for readers that need the extents only: (every extent as an
    ``ExtentRow``, the number of records).  The same checks on every record, file entries
    included (checksum, lengths, UTF-8, path rules), without an object per record."""
    return _decode_records(blob, where, True)  # type: ignore[return-value]


def _decode_records(blob: bytes | memoryview, where: str, rows: bool
                    ) -> tuple[list[Record] | list[ExtentRow], int]:
    """The records (or, with ``rows``, the extents as rows) and how many records there were."""
    mv = memoryview(blob).cast("B") if not isinstance(blob, bytes) else memoryview(blob)
    n = len(mv)
    out: list = []
    append = out.append
    count = 0
    frame_unpack = _FRAME.unpack_from
    crc_unpack = _CRC.unpack_from
    ext_unpack = _EXTENT_REC.unpack_from
    codec_of = _CODEC_OF.get
    ext_type = RecordType.EXTENT.value
    ext_len = _EXTENT_BODY.size
    ext_crc_at = _EXTENT_HEAD.size
    file_type = RecordType.FILE.value
    pos = 0
    while pos < n:
        try:
            if mv[pos] == ext_type and n - pos >= EXTENT_RECORD_SIZE:
                # Hot path: an index is mostly extents; one unpack reads frame, body and crc.
                (_, body_len, fid, off, raw, codec, stored, digest, loc, crc) = ext_unpack(mv, pos)
                if body_len == ext_len:
                    if _xxh32(mv[pos : pos + ext_crc_at]) != crc:
                        raise CorruptRecord("checksum mismatch")
                    c = codec_of(codec)
                    if c is None:
                        raise ValueError(f"unknown codec {codec}")
                    if not rows:
                        append(Extent(fid, off, raw, c, stored, digest, loc))
                    else:
                        if not _extent_row_ok(off, raw, codec, stored, loc):
                            Extent(fid, off, raw, c, stored, digest, loc)  # raises, saying why
                        append((fid, off, raw, codec, stored, digest, loc))
                    count += 1
                    pos += EXTENT_RECORD_SIZE
                    continue
            if n - pos < _FRAME_SIZE:
                raise CorruptRecord("truncated")
            rtype, body_len = frame_unpack(mv, pos)
            body = pos + _FRAME.size
            end = body + body_len
            if end + _CRC.size > n:
                raise CorruptRecord(f"body length {body_len} runs past the blob")
            if _xxh32(mv[pos:end]) != crc_unpack(mv, end)[0]:
                raise CorruptRecord("checksum mismatch")
            if rtype == file_type:
                if not _FILE_MIN_BODY <= body_len <= _FILE_MAX_BODY:
                    raise ValueError(f"file entry body length {body_len} is out of range")
                if not rows:
                    append(_decode_file_body(mv, body, end))
                else:
                    fields = _file_body_fields(mv, body, end)
                    if not _file_fields_ok(*fields):
                        FileEntry(*fields)  # the per-field checks: raises if it is wrong
            elif rtype == ext_type:
                raise ValueError(f"extent body is {body_len} bytes, not {ext_len}")
            elif rtype == RecordType.SESSION.value:
                rec = _decode_session_body(mv, body, end)
                if rows:
                    raise ValueError("a session record outside a SESSION segment")
                append(rec)
            else:
                raise ValueError(f"unknown record type {rtype}")
            count += 1
            pos = end + _CRC.size
        except (CorruptRecord, ValueError) as e:  # ValueError includes UnicodeDecodeError
            raise CorruptRecord(f"{where}: record {count} at byte {pos}: {e}") from None
    return out, count


# --------------------------------------------------------------------------- superblock


_SB_FIXED = struct.Struct("<8sHHIqQB3s36s")
_CKSUM = struct.Struct("<Q")


@dataclasses.dataclass(frozen=True, slots=True)
class Superblock:
    """Sector 0 of the data area: which job, session and drive this is."""

    drive_seq: int
    volume_uuid: str
    session_id: str
    job_name: str
    dstdir: str
    blob_type: BlobType
    created_ns: int
    data_area_size: int
    version: int = FORMAT_VERSION
    first_version: int = 0
    """Version 3 only: what session 1 was written as (1 or 2); 0 on versions 1 and 2."""

    def __post_init__(self) -> None:
        _int("drive_seq", self.drive_seq, 1, _U32)
        _check_uuid(self.volume_uuid)
        _utf8("session_id", self.session_id, MAX_SB_STRING_BYTES)
        # Empty job name: a drive formatted (diskprep) before the import job was named.
        _utf8("job_name", self.job_name, MAX_SB_STRING_BYTES, allow_empty=True)
        _utf8("dstdir", self.dstdir, MAX_SB_STRING_BYTES)
        if self.dstdir.startswith("/") or not self.dstdir.endswith("/"):
            raise ValueError(
                f"dstdir {self.dstdir!r} must look like 'container/virtual/dir/' "
                "(no leading '/', a trailing '/')"
            )
        if type(self.blob_type) is not BlobType:
            object.__setattr__(self, "blob_type", _enum(BlobType, "blob_type", self.blob_type))
        _int("created_ns", self.created_ns, _I64_MIN, _I64_MAX)
        _int("data_area_size", self.data_area_size, 3 * SECTOR, _U64)
        if self.data_area_size % SECTOR:
            raise ValueError(f"data_area_size={self.data_area_size} is not a multiple of {SECTOR}")
        _int("version", self.version, 0, _U16)
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"version={self.version} is not one of {sorted(SUPPORTED_VERSIONS)}")
        _int("first_version", self.first_version, 0, _U16)
        if (self.first_version in ATTRS_VERSIONS) != (self.version == SESSIONS_VERSION) or (
                self.version != SESSIONS_VERSION and self.first_version):
            raise ValueError(f"first_version={self.first_version} with version={self.version}: "
                             "version 3 carries session 1's version (1 or 2), others 0")


def _sector_with_checksum(parts: Sequence[bytes]) -> bytes:
    body = b"".join(parts)
    sector = body + bytes(CHECKSUM_AT - len(body))
    return sector + _CKSUM.pack(_xxh3_64(sector))


def encode_superblock(sb: Superblock) -> bytes:
    """The 4096-byte sector written at data-area offset 0."""
    parts = [
        _SB_FIXED.pack(
            SUPERBLOCK_MAGIC, sb.version, sb.first_version, sb.drive_seq, sb.created_ns,
            sb.data_area_size, sb.blob_type, b"\0\0\0", sb.volume_uuid.encode("ascii"),
        )
    ]
    for s in (sb.session_id, sb.job_name, sb.dstdir):
        raw = s.encode()
        parts += [_LEN16.pack(len(raw)), raw]
    return _sector_with_checksum(parts)


def _check_sector(b: bytes, magic: bytes, what: str,
                  versions: frozenset[int] = SUPPORTED_VERSIONS) -> memoryview:
    """Magic, version, checksum: in that order, so old readers say "too new", not "corrupt"."""
    mv = memoryview(b).cast("B") if not isinstance(b, bytes) else memoryview(b)
    if len(mv) < SECTOR:
        raise CorruptRecord(f"{what}: truncated: {len(mv)} bytes, need {SECTOR}")
    mv = mv[:SECTOR]
    if mv[:8] != magic:
        raise CorruptRecord(f"{what}: bad magic {bytes(mv[:8])!r}, expected {magic!r}")
    (version,) = _LEN16.unpack_from(mv, 8)
    if version not in versions:
        raise CorruptRecord(
            f"{what}: format version {version} is not supported by this reader "
            f"(supports {', '.join(map(str, sorted(versions)))}); "
            "read this drive with a newer pipeline"
        )
    if _xxh3_64(mv[:CHECKSUM_AT]) != _CKSUM.unpack_from(mv, CHECKSUM_AT)[0]:
        raise CorruptRecord(f"{what}: checksum mismatch")
    return mv


def _torn_version_write(b: bytes) -> memoryview | None:
    """Sector 0 as one of the two states a torn version-3 rewrite leaves, or None.

    Sector 0 is rewritten in place once, when a second session begins: only the
    version (offset 8) and ``first_version`` (offset 10) change, and the checksum (the
    last 8 bytes).  The data area's cipher is deterministic per 16-byte block, so a
    write torn anywhere between them leaves the first block of one state and the last
    of the other: the fields say 3 and the checksum is the old one's, or the fields are
    the old ones and the checksum the new one's.  Exactly that state, whose checksum
    holds with the fields swapped back, is read as the state its checksum belongs to
    (the old: no session begun yet; the new: version 3); any other mismatch is damage.
    """
    mv = memoryview(b).cast("B") if not isinstance(b, bytes) else memoryview(b)
    version, first_version = struct.unpack_from("<HH", mv, 8)
    if version == SESSIONS_VERSION and first_version in (FORMAT_VERSION, ATTRS_VERSION):
        fields = (first_version, 0)  # new fields, old checksum: the old state
    elif version in (FORMAT_VERSION, ATTRS_VERSION) and first_version == 0:
        fields = (SESSIONS_VERSION, version)  # old fields, new checksum: the new state
    else:
        return None
    other = bytearray(mv[:SECTOR])
    struct.pack_into("<HH", other, 8, *fields)
    try:
        return _check_sector(bytes(other), SUPERBLOCK_MAGIC, "superblock")
    except CorruptRecord:
        return None


def decode_superblock(b: bytes) -> Superblock:
    """Parse the sector at data-area offset 0 (``b`` may be longer; the rest is ignored)."""
    what = "superblock"
    try:
        mv = _check_sector(b, SUPERBLOCK_MAGIC, what)
    except CorruptRecord as exc:
        if not str(exc).endswith("checksum mismatch"):
            raise
        mv = _torn_version_write(b)
        if mv is None:
            raise
    try:
        (_, version, first_version, drive_seq, created_ns, size, blob_type, pad, uuid) = (
            _SB_FIXED.unpack_from(mv, 0)
        )
        if pad != b"\0\0\0":
            raise ValueError("reserved bytes are not zero")
        strings = []
        p = _SB_FIXED.size
        for _ in range(3):
            if p + 2 > CHECKSUM_AT:
                raise ValueError("strings run past the checksum")
            (n,) = _LEN16.unpack_from(mv, p)
            p += 2
            if p + n > CHECKSUM_AT:
                raise ValueError("strings run past the checksum")
            strings.append(str(mv[p : p + n], "utf-8"))
            p += n
        if mv[p:CHECKSUM_AT] != bytes(CHECKSUM_AT - p):
            raise ValueError("bytes after the strings are not zero")
        sb = Superblock(
            drive_seq, str(uuid, "ascii"), *strings, blob_type, created_ns, size, version,
            first_version,
        )
    except ValueError as e:
        raise CorruptRecord(f"{what}: {e}") from None
    problem = superblock_names_problem(sb)
    if problem is not None:
        raise CorruptRecord(f"{what}: {problem}")
    return sb


def superblock_names_problem(sb: Superblock) -> str | None:
    """The superblock's strings against the rules prep wrote them under, or what breaks.

    They name files (journals, copy logs), containers and the importer's state,
    so a drive must not carry one prep would never write: a session id like
    ``x/../../tmp/PWNED`` or with a newline, a dstdir that is no container and
    plain virtual directory.  The checksum only says the bytes are the ones
    written; whoever wrote them may be hostile.
    """
    return _names_problem(sb.session_id, sb.job_name, sb.dstdir)


def _names_problem(session_id: str, job_name: str, dstdir: str) -> str | None:
    """``superblock_names_problem``'s rules, shared with a SESSION record's strings."""
    from pipeline import names  # pure, like this module
    from pipeline.errors import BadInput

    why = names.session_id_problem(session_id)
    if why is not None:
        return f"session id {names.show(session_id)} is not one prep writes ({why})"
    if not job_name.isprintable():  # it is shown in messages and logs, one line each
        return f"job name {names.show(job_name)} has a control character"
    try:
        if names.check_dstdir(dstdir) != dstdir:
            return f"dstdir {names.show(dstdir)} is not in its normal form"
    except BadInput as e:
        return f"dstdir {names.show(dstdir)} is not one prep writes ({e})"
    return None


# --------------------------------------------------------------------------- trailer

_TR_FIXED = struct.Struct("<8sHHIQQQQQ")
_TR_V2 = struct.Struct("<QI")  # trailer 2: session_offset, sessions


@dataclasses.dataclass(frozen=True, slots=True)
class Trailer:
    """Last sector of the data area, written at close: where the index is."""

    drive_seq: int
    data_area_size: int
    index_offset: int
    index_length: int
    segment_count: int
    payload_bytes: int
    version: int = FORMAT_VERSION
    session_offset: int = SECTOR
    """Trailer 2: where the newest session's log starts (its SESSION segment)."""
    sessions: int = 1
    """Trailer 2: how many sessions the drive holds (at least 2)."""

    def __post_init__(self) -> None:
        _int("drive_seq", self.drive_seq, 1, _U32)
        _int("data_area_size", self.data_area_size, 3 * SECTOR, _U64)
        _int("index_offset", self.index_offset, SECTOR, _U64)
        _int("index_length", self.index_length, SECTOR, _U64)
        _int("segment_count", self.segment_count, 1, _U64)
        _int("payload_bytes", self.payload_bytes, 0, _U64)
        for name in ("data_area_size", "index_offset", "index_length"):
            if getattr(self, name) % SECTOR:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of {SECTOR}")
        if self.index_offset + self.index_length > trailer_offset(self.data_area_size):
            raise ValueError(
                f"index [{self.index_offset}, +{self.index_length}) overlaps the trailer"
            )
        _int("version", self.version, 0, _U16)
        if self.version not in TRAILER_VERSIONS:
            raise ValueError(f"version={self.version} is not one of {sorted(TRAILER_VERSIONS)}")
        _int("session_offset", self.session_offset, SECTOR, _U64)
        _int("sessions", self.sessions, 1, _U32)
        if self.version == 1 and (self.session_offset, self.sessions) != (SECTOR, 1):
            raise ValueError("a version-1 trailer is of one session starting at 4096")
        if self.version == 2 and not (
                self.sessions >= 2 and self.session_offset % SECTOR == 0
                and SECTOR < self.session_offset < self.index_offset):
            raise ValueError(f"trailer 2: {self.sessions} sessions, the newest starting at "
                             f"{self.session_offset}, its index at {self.index_offset}: needs "
                             "two sessions or more and a sector after 4096, before the index")


def encode_trailer(tr: Trailer) -> bytes:
    """The 4096-byte sector written at ``trailer_offset(data_area_size)`` when the drive closes."""
    parts = [
        _TR_FIXED.pack(
            TRAILER_MAGIC, tr.version, 0, tr.drive_seq, tr.data_area_size, tr.index_offset,
            tr.index_length, tr.segment_count, tr.payload_bytes,
        )
    ]
    if tr.version == 2:
        parts.append(_TR_V2.pack(tr.session_offset, tr.sessions))
    return _sector_with_checksum(parts)


def decode_trailer(b: bytes, superblock: Superblock | None = None) -> Trailer:
    """Parse the trailer sector; with ``superblock``, also check it belongs to that drive.

    A missing trailer (a crash before close) raises CorruptRecord too: the caller
    then falls back to scanning the segment log.
    """
    what = "trailer"
    if superblock is not None:
        what = f"trailer at offset {trailer_offset(superblock.data_area_size)}"
    mv = _check_sector(b, TRAILER_MAGIC, what, TRAILER_VERSIONS)
    try:
        (_, version, reserved, *fields) = _TR_FIXED.unpack_from(mv, 0)
        if reserved:
            raise ValueError("reserved bytes are not zero")
        used = _TR_FIXED.size
        extra = {}
        if version == 2:
            session_offset, sessions = _TR_V2.unpack_from(mv, used)
            extra = {"session_offset": session_offset, "sessions": sessions}
            used += _TR_V2.size
        if mv[used:CHECKSUM_AT] != bytes(CHECKSUM_AT - used):
            raise ValueError("unused bytes are not zero")
        tr = Trailer(*fields, version=version, **extra)
    except ValueError as e:
        raise CorruptRecord(f"{what}: {e}") from None
    if superblock is not None and (tr.drive_seq, tr.data_area_size) != (
        superblock.drive_seq,
        superblock.data_area_size,
    ):
        raise CorruptRecord(
            f"{what}: written for drive {tr.drive_seq} of {tr.data_area_size} bytes, but the "
            f"superblock says drive {superblock.drive_seq} of {superblock.data_area_size} bytes"
        )
    return tr


# --------------------------------------------------------------------------- segments

_HEADER = struct.Struct("<4sBBHQQIIIIQQ")  # everything before the header checksum
assert _HEADER.size + _CKSUM.size == HEADER_SIZE


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The first HEADER_SIZE bytes of a segment: enough to know how much to read next.

    ``records_len`` counts the records blob as stored (compressed when ``flags``
    has RECORDS_ZSTD); ``records_raw_len`` counts it decompressed.
    """

    kind: SegmentKind
    flags: int
    seq: int
    offset: int
    record_count: int
    records_len: int
    payload_len: int
    records_raw_len: int
    records_xxh3: int
    payload_xxh3: int

    @property
    def records_compressed(self) -> bool:
        return bool(self.flags & RECORDS_ZSTD)

    @property
    def total_len(self) -> int:
        """Bytes on the drive, padding included: read this many from ``offset``."""
        return segment_total_len(self.records_len, self.payload_len)

    @property
    def payload_offset(self) -> int:
        """Absolute data-area offset of the payload's first byte (right after the header)."""
        return self.offset + HEADER_SIZE

    @property
    def records_offset(self) -> int:
        """Absolute data-area offset of the stored records blob (right after the payload)."""
        return self.offset + HEADER_SIZE + self.payload_len

    @property
    def end(self) -> int:
        """Absolute offset where the next segment starts."""
        return self.offset + self.total_len


def _where(seq: int | None, offset: int | None) -> str:
    s = "segment" if seq is None else f"segment {seq}"
    return s if offset is None else f"{s} at offset {offset}"


def _check_layout(kind: SegmentKind, records_len: int, payload_len: int) -> str | None:
    """The size limits per kind (``records_len`` decompressed); returns what is wrong, or None."""
    if kind is SegmentKind.DATA:
        if records_len > MAX_DATA_RECORDS_LEN:
            return f"records blob of {records_len} bytes exceeds {MAX_DATA_RECORDS_LEN}"
        if payload_len > MAX_DATA_PAYLOAD:
            return f"payload of {payload_len} bytes exceeds {MAX_DATA_PAYLOAD}"
    else:
        limit = MAX_INDEX_RECORDS_LEN if kind is SegmentKind.INDEX else MAX_SESSION_RECORDS_LEN
        if records_len > limit:
            return f"{kind.name} records blob of {records_len} bytes exceeds {limit}"
        if payload_len:
            return f"an {kind.name} segment has no payload, but payload_len={payload_len}"
    return None


def decode_segment_header(
    b: bytes, offset: int | None = None, seq: int | None = None
) -> SegmentHeader:
    """Parse and check a segment header from the first HEADER_SIZE bytes of ``b``.

    With ``offset`` (where ``b`` was read from), the header must say it lives
    there, which rejects stale or misplaced segments; with ``seq``, it must
    carry that sequence number.  Both also name the segment in error messages.
    """
    where = _where(seq, offset)
    if len(b) < HEADER_SIZE:
        raise CorruptRecord(f"{where}: truncated header: {len(b)} bytes, need {HEADER_SIZE}")
    (magic, kind, flags, reserved, own_seq, own_offset, count, rlen, plen, raw_len, rhash,
     phash) = _HEADER.unpack_from(b, 0)
    if magic != SEGMENT_MAGIC:
        raise CorruptRecord(f"{where}: bad magic {magic!r}, expected {SEGMENT_MAGIC!r}")
    if _xxh3_64(memoryview(b)[: _HEADER.size]) != _CKSUM.unpack_from(b, _HEADER.size)[0]:
        raise CorruptRecord(f"{where}: header checksum mismatch")
    where = _where(seq if seq is not None else own_seq, own_offset if offset is None else offset)
    if offset is not None and own_offset != offset:
        raise CorruptRecord(f"{where}: header says it belongs at offset {own_offset}")
    if seq is not None and own_seq != seq:
        raise CorruptRecord(f"{where}: header carries sequence number {own_seq}")
    if own_offset < SECTOR or own_offset % SECTOR:
        raise CorruptRecord(f"{where}: offset is not a sector boundary after the superblock")
    if kind not in (SegmentKind.DATA, SegmentKind.INDEX, SegmentKind.SESSION):
        raise CorruptRecord(f"{where}: unknown segment kind {kind}")
    if reserved or flags & ~RECORDS_ZSTD:
        raise CorruptRecord(f"{where}: reserved header bytes or flags are not zero")
    kind = SegmentKind(kind)
    problem = _check_layout(kind, raw_len, plen)
    if problem is None:
        if not flags & RECORDS_ZSTD and raw_len != rlen:
            problem = f"uncompressed records: raw length {raw_len} differs from {rlen}"
        elif flags & RECORDS_ZSTD and raw_len <= rlen:
            problem = f"compressed records of {rlen} bytes do not shrink {raw_len} bytes"
        elif count * _MIN_RECORD_SIZE > raw_len:
            problem = f"{count} records cannot fit in {raw_len} bytes"
    if problem is not None:
        raise CorruptRecord(f"{where}: {problem}")
    return SegmentHeader(kind, flags, own_seq, own_offset, count, rlen, plen, raw_len, rhash,
                         phash)


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A decoded, fully checked segment; ``payload`` is a view of the bytes it came from."""

    header: SegmentHeader
    records: tuple[Record, ...]
    payload: memoryview

    @property
    def kind(self) -> SegmentKind:
        return self.header.kind

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def offset(self) -> int:
        return self.header.offset

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(r for r in self.records if type(r) is FileEntry)

    @property
    def extents(self) -> tuple[Extent, ...]:
        return tuple(r for r in self.records if type(r) is Extent)

    def stored(self, ext: Extent) -> memoryview:
        """The stored (compressed or raw) bytes of one of this segment's extents."""
        start = ext.location - self.header.payload_offset
        if ext.codec is Codec.ZERO or start < 0 or start + ext.stored_len > len(self.payload):
            raise ValueError(f"{ext} is not stored in {_where(self.seq, self.offset)}")
        return self.payload[start : start + ext.stored_len]


def _check_records(
    kind: SegmentKind, records: Sequence[Record], offset: int, payload_offset: int, payload_len: int
) -> str | None:
    """Cross-record rules shared by encoder (-> ValueError) and decoder (-> CorruptRecord)."""
    if kind is SegmentKind.SESSION:
        if len(records) != 1 or type(records[0]) is not SessionRecord:
            return "a SESSION segment holds exactly one session record"
        if records[0].prev_index_end != offset:
            return (f"the previous session's index [{records[0].prev_index_offset}, "
                    f"+{records[0].prev_index_length}) does not end where this SESSION "
                    "segment begins")
        return None
    for i, r in enumerate(records):
        if type(r) is SessionRecord:
            return f"record {i}: a session record outside a SESSION segment"
    if kind is SegmentKind.DATA:
        end = payload_offset + payload_len
        for i, r in enumerate(records):
            if type(r) is Extent and r.codec is not Codec.ZERO and not (
                payload_offset <= r.location and r.location + r.stored_len <= end
            ):
                return (
                    f"record {i}: extent stored at [{r.location}, +{r.stored_len}) is outside "
                    f"this segment's payload [{payload_offset}, {end})"
                )
        return None
    # INDEX: self-contained (a drive plus its key is enough to import it), and
    # every stored extent points into an earlier DATA segment.
    sizes: dict[int, int] = {}
    for i, r in enumerate(records):
        if type(r) is FileEntry:
            problem = _index_file_problem(i, r, sizes)
            if problem is not None:
                return problem
            sizes[r.file_id] = r.size
    for i, r in enumerate(records):
        if type(r) is Extent:
            problem = _index_extent_problem(i, r, sizes, offset)
            if problem is not None:
                return problem
    return None


def _index_file_problem(i: int, r: FileEntry, sizes: dict[int, int]) -> str | None:
    if r.file_id in sizes:
        return f"record {i}: file id {r.file_id} appears twice in the index"
    return None


def _index_extent_problem(i: int, r: Extent, sizes: dict[int, int], offset: int,
                          start: int = SECTOR) -> str | None:
    """An index extent must belong to a listed file and lie in the segments of its session
    before ``offset`` (the session's DATA segments begin at ``start``)."""
    size = sizes.get(r.file_id)
    if size is None:
        return f"record {i}: extent of file id {r.file_id}, which has no FileEntry in the index"
    if r.offset + r.raw_len > size:
        return f"record {i}: extent [{r.offset}, +{r.raw_len}) runs past the file size {size}"
    if r.codec is not Codec.ZERO and not (r.location >= start + HEADER_SIZE
                                          and r.location + r.stored_len <= offset):
        return (
            f"record {i}: extent stored at [{r.location}, +{r.stored_len}) is not inside the "
            f"segments before the index (offset {offset})"
            + ("" if start == SECTOR else f" of its session (from {start})")
        )
    return None


def _compress_records(blob: bytes, compress: bool) -> tuple[bytes, int]:
    """(stored blob, flags): one zstd frame if that is smaller, else the blob itself."""
    if compress and blob:
        frame = zstandard.ZstdCompressor(
            level=RECORDS_ZSTD_LEVEL, write_checksum=False, write_content_size=True,
            write_dict_id=False,
        ).compress(blob)
        if len(frame) < len(blob):
            return frame, RECORDS_ZSTD
    return blob, 0


def _decompress_records(stored: memoryview, raw_len: int, where: str) -> bytes:
    """Decompress a records frame to exactly ``raw_len`` bytes (checked against the limits).

    The frame's own content size must equal ``raw_len`` before anything is
    allocated: python-zstandard allocates whatever a frame header declares.
    """
    try:
        declared = zstandard.frame_content_size(stored)
        if declared != raw_len:
            shown = "no size" if declared < 0 else f"{declared} bytes"
            raise CorruptRecord(f"records zstd frame declares {shown}, the header {raw_len}")
        blob = zstandard.ZstdDecompressor().decompress(stored, allow_extra_data=False)
    except (zstandard.ZstdError, ValueError) as e:
        raise CorruptRecord(f"{where}: records do not decompress: {e}") from None
    except CorruptRecord as e:
        raise CorruptRecord(f"{where}: {e}") from None
    if len(blob) != raw_len:
        raise CorruptRecord(f"{where}: records decompress to {len(blob)} bytes, not {raw_len}")
    return blob


def encode_segment(
    records: Sequence[Record],
    payload: bytes,
    seq: int,
    offset: int,
    kind: SegmentKind = SegmentKind.DATA,
    *,
    compress: bool = True,
) -> bytes:
    """Encode one segment to be written at data-area ``offset``; returns SECTOR-aligned bytes.

    Every stored extent must lie inside this segment's payload (DATA), which
    starts at ``offset + HEADER_SIZE``, or in the segments before it (INDEX);
    anything else is a caller bug: ValueError.  The records blob is stored as
    a zstd frame when ``compress`` and that is smaller.
    """
    return _encode_segment(records, encode_records(records), payload, seq, offset, kind,
                           compress)


def _encode_segment(records: Sequence[Record], blob: bytes, payload: bytes, seq: int,
                    offset: int, kind: SegmentKind, compress: bool) -> bytes:
    """``encode_segment`` with the records already encoded into ``blob``."""
    kind = SegmentKind(kind)
    _int("seq", seq, 0, _U64)
    _int("offset", offset, SECTOR, _U64)
    if offset % SECTOR:
        raise ValueError(f"segment offset {offset} is not a multiple of {SECTOR}")
    if len(records) > _U32:
        raise ValueError(f"{len(records)} records do not fit in one segment")
    problem = _check_layout(kind, len(blob), len(payload))
    problem = problem or _check_records(
        kind, records, offset, offset + HEADER_SIZE, len(payload)
    )
    if problem is not None:
        raise ValueError(f"{_where(seq, offset)}: {problem}")
    stored, flags = _compress_records(blob, compress)
    head = _HEADER.pack(
        SEGMENT_MAGIC, kind, flags, 0, seq, offset, len(records), len(stored), len(payload),
        len(blob), _xxh3_64(stored), _xxh3_64(payload),
    )
    used = HEADER_SIZE + len(stored) + len(payload)
    return b"".join(
        (head, _CKSUM.pack(_xxh3_64(head)), payload, stored, bytes(align_up(used) - used))
    )


class LaidOut(NamedTuple):
    """A DATA segment ready to encrypt, with its final records and each one's encoding."""

    blob: bytes
    records: list[Record]
    encoded: list[bytes]


def layout_data_segment(
    files: Sequence[FileEntry],
    extents: Sequence[tuple[Extent, bytes]],
    seq: int,
    offset: int,
    *,
    compress: bool = True,
) -> LaidOut:
    """Place extents in a DATA segment at ``offset``: the encoded bytes and the final records.

    Records are the file entries, then the extents in the order given, each
    stored extent's ``location`` set to where its bytes land in the payload.
    The payload starts right after the header whatever the records compress
    to, so one pass suffices.  ``encoded`` holds each record's bytes, for the
    journal (see ``encode_record_list``).
    """
    location = offset + HEADER_SIZE
    placed: list[Record] = list(files)
    parts: list[bytes] = []
    zero = Codec.ZERO
    for ext, data in extents:
        if len(data) != ext.stored_len:
            raise ValueError(f"{ext} comes with {len(data)} stored bytes, not {ext.stored_len}")
        if ext.codec is zero:
            placed.append(ext)
            continue
        placed.append(_placed(ext, location))
        parts.append(data)
        location += len(data)
    encoded = encode_record_list(placed)
    blob = _encode_segment(placed, b"".join(encoded), b"".join(parts), seq, offset,
                           SegmentKind.DATA, compress)
    return LaidOut(blob, placed, encoded)


def _placed(ext: Extent, location: int) -> Extent:
    """``ext`` at ``location``: a checked Extent moved by us (the DATA check in
    ``_encode_segment`` then holds it to its segment's payload), so not checked again;
    field by field, not ``dataclasses.replace``, which costs 5x as much."""
    obj = object.__new__(Extent)
    set_ = object.__setattr__
    set_(obj, "file_id", ext.file_id)
    set_(obj, "offset", ext.offset)
    set_(obj, "raw_len", ext.raw_len)
    set_(obj, "codec", ext.codec)
    set_(obj, "stored_len", ext.stored_len)
    set_(obj, "xxh3", ext.xxh3)
    set_(obj, "location", location)
    return obj


def encode_index(records: Sequence[Record], seq: int, offset: int, *,
                 compress: bool = True, start: int = SECTOR) -> bytes:
    """The closing INDEX segment: every FileEntry and Extent of the session, no payload.
    ``start``: where the session's DATA segments begin (after its SESSION segment)."""
    problem = _session_span_problem(records, offset, start)
    if problem is not None:
        raise ValueError(f"{_where(seq, offset)}: {problem}")
    return encode_segment(records, b"", seq, offset, SegmentKind.INDEX, compress=compress)


def _session_span_problem(records: Sequence[Record], offset: int, start: int) -> str | None:
    """An index's stored extents against its session's span ``[start, offset)``."""
    if start == SECTOR:
        return None  # the INDEX rule of ``_check_records`` is this one
    for i, r in enumerate(records):
        if type(r) is Extent and r.codec is not Codec.ZERO and not (
                r.location >= start + HEADER_SIZE and r.location + r.stored_len <= offset):
            return (f"record {i}: extent stored at [{r.location}, +{r.stored_len}) lies outside "
                    f"its session's segments [{start}, {offset})")
    return None


def encode_session_segment(rec: SessionRecord, seq: int, offset: int) -> bytes:
    """The SESSION segment that opens a later session at ``offset``, right where the
    previous session's INDEX ends (``rec.prev_index_end``; else ValueError)."""
    if type(rec) is not SessionRecord:
        raise TypeError(f"not a session record: {rec!r}")
    return encode_segment([rec], b"", seq, offset, SegmentKind.SESSION, compress=False)


def decode_session_segment(b: bytes | memoryview, offset: int, seq: int | None = None
                           ) -> tuple[SegmentHeader, SessionRecord]:
    """Decode a SESSION segment read from ``offset``: its header and its one record."""
    seg = decode_segment(b, offset, seq)
    if seg.kind is not SegmentKind.SESSION:
        raise CorruptRecord(f"{_where(seg.seq, offset)}: a {seg.kind.name} segment where a "
                            "SESSION segment should begin")
    return seg.header, seg.records[0]  # type: ignore[return-value]


class IndexStream:
    """The closing INDEX segment, encoded from records fed in batches and given out as it is made.

    ``encode_index`` needs every record in memory at once, which on a drive of
    millions of small files is the largest allocation prep makes.  This holds
    only zstd's window: each ``add``/``add_encoded`` returns the stored
    (compressed) bytes it made, which follow the header on the drive; ``end``
    returns the header (it holds the stored length and xxh3, known only then)
    and the last stored bytes with the padding.  The segment is
    ``head + every returned piece + tail``, byte for byte what one zstd stream
    over the whole records blob makes (the split of the batches does not change
    it).  Feed every FileEntry first, then the Extents; ``records_len`` is their
    encoded size (the sum of ``record_size``), known beforehand because the zstd
    frame declares it.  The checks are those of ``encode_segment`` for an INDEX:
    ValueError on a caller bug.  An index of at most ``_KEEP_RAW`` bytes of records
    is held whole until ``end``: it may not compress, and is then stored raw.
    """

    _KEEP_RAW = 1 << 20  # below this, keep the raw blob too: tiny indexes may not compress

    def __init__(self, seq: int, offset: int, records_len: int, start: int = SECTOR) -> None:
        _int("seq", seq, 0, _U64)
        _int("offset", offset, SECTOR, _U64)
        if offset % SECTOR:
            raise ValueError(f"segment offset {offset} is not a multiple of {SECTOR}")
        problem = _check_layout(SegmentKind.INDEX, records_len, 0)
        if problem is not None:
            raise ValueError(f"{_where(seq, offset)}: {problem}")
        self.seq, self.offset, self.records_len, self.start = seq, offset, records_len, start
        self._sizes: dict[int, int] = {}  # add() only: FileEntry objects' sizes, for the checks
        self._count = self._fed = self._stored = 0
        self._extents_begun = self._ended = False
        self._hash = xxhash.xxh3_64()  # of the stored bytes given out so far
        self._held: list[bytes] | None = [] if records_len <= self._KEEP_RAW else None
        self._raw: list[bytes] | None = [] if records_len <= self._KEEP_RAW else None
        self._zstd = zstandard.ZstdCompressor(
            level=RECORDS_ZSTD_LEVEL, write_checksum=False, write_content_size=True,
            write_dict_id=False).compressobj(size=records_len)

    def add(self, records: Sequence[Record]) -> bytes:
        """Check and feed ``records``; the stored bytes they made (often none yet)."""
        for i, r in enumerate(records, self._count):
            problem = None  # not a record at all: encode_records says so below
            if type(r) is FileEntry:
                problem = (f"record {i}: a FileEntry after the extents began"
                           if self._extents_begun else _index_file_problem(i, r, self._sizes))
                self._sizes[r.file_id] = r.size
            elif type(r) is Extent:
                self._extents_begun = True
                problem = _index_extent_problem(i, r, self._sizes, self.offset, self.start)
            if problem is not None:
                raise ValueError(f"{_where(self.seq, self.offset)}: {problem}")
        return self._feed(encode_records(records), len(records))

    def add_encoded(self, encoded: Sequence[bytes]) -> bytes:
        """Feed records already encoded (``encode_record_list``), files first as for ``add``.

        Nothing is decoded, so the cross-record checks of ``add`` are the
        caller's: the journal makes them in SQL over the rows it lists.
        """
        self._extents_begun = True  # no FileEntry objects may follow through add()
        return self._feed(b"".join(encoded), len(encoded))

    def _feed(self, blob: bytes, count: int) -> bytes:
        if self._ended:
            raise ValueError(f"{_where(self.seq, self.offset)}: records fed after the end")
        self._fed += len(blob)
        if self._fed > self.records_len:
            raise ValueError(f"{_where(self.seq, self.offset)}: records exceed the declared "
                             f"{self.records_len} bytes")
        self._count += count
        return self._out(self._zstd.compress(blob), blob)

    def _out(self, frame: bytes, blob: bytes) -> bytes:
        if self._held is not None and self._raw is not None:
            self._held.append(frame)
            self._raw.append(blob)
            return b""
        self._stored += len(frame)
        self._hash.update(frame)
        return frame

    def end(self) -> tuple[bytes, bytes]:
        """(head, tail): the header sector's first ``HEADER_SIZE`` bytes, and the stored bytes
        not given out yet with the zero padding to the next SECTOR."""
        if self._fed != self.records_len:
            raise ValueError(f"{_where(self.seq, self.offset)}: records came to {self._fed} "
                             f"bytes, not the declared {self.records_len}")
        if self._ended:
            raise ValueError(f"{_where(self.seq, self.offset)}: the index was ended already")
        self._ended, flags = True, RECORDS_ZSTD
        last = self._zstd.flush()
        if self._held is not None and self._raw is not None:
            stored = b"".join((*self._held, last))
            if len(stored) >= self.records_len:  # did not shrink: store the records raw
                stored, flags = b"".join(self._raw), 0
            self._held = self._raw = None
            last = self._out(stored, b"")
        else:
            last = self._out(last, b"")
            if self._stored >= self.records_len:
                raise ValueError(f"{_where(self.seq, self.offset)}: {self.records_len} bytes of "
                                 "records did not compress")
        head = _HEADER.pack(
            SEGMENT_MAGIC, SegmentKind.INDEX, flags, 0, self.seq, self.offset, self._count,
            self._stored, 0, self.records_len, self._hash.intdigest(), _xxh3_64(b""),
        )
        used = HEADER_SIZE + self._stored
        return head + _CKSUM.pack(_xxh3_64(head)), last + bytes(align_up(used) - used)


class IndexEncoder:
    """``IndexStream`` with its pieces kept, for a caller that wants the segment whole."""

    _KEEP_RAW = IndexStream._KEEP_RAW

    def __init__(self, seq: int, offset: int, records_len: int, start: int = SECTOR) -> None:
        self._stream = IndexStream(seq, offset, records_len, start)
        self._pieces: list[bytes] = []

    def add(self, records: Sequence[Record]) -> None:
        self._pieces.append(self._stream.add(records))

    def add_encoded(self, encoded: Sequence[bytes]) -> None:
        self._pieces.append(self._stream.add_encoded(encoded))

    def finish(self) -> bytes:
        """The whole segment, SECTOR-aligned, ready to encrypt and write at ``offset``."""
        head, tail = self._stream.end()
        return b"".join((head, *self._pieces, tail))


def decode_segment(b: bytes, offset: int, seq: int | None = None, *,
                   check_payload: bool = True) -> Segment:
    """Decode and check a whole segment read from data-area ``offset``.

    ``b`` (bytes or a memoryview) starts with the header and holds at least
    ``header.total_len`` bytes; anything after that is ignored.  Every byte
    counts: header, payload, stored records (xxh3-64 each) and padding (must be
    zero); compressed records are decompressed only after all of that held.
    ``seq``, if given, is the sequence number the segment must carry.
    ``check_payload=False`` salvages the records of a segment whose payload is
    damaged, so that each extent's own xxh3-128 can tell which ones are.
    """
    header, where, blob, payload = _segment_parts(b, offset, seq, check_payload)
    records = decode_records(blob, where)
    if len(records) != header.record_count:
        raise CorruptRecord(
            f"{where}: {len(records)} records, but the header says {header.record_count}"
        )
    problem = _check_records(
        header.kind, records, offset, header.payload_offset, header.payload_len
    )
    if problem is not None:
        raise RuleBreach(f"{where}: {problem}")
    return Segment(header, tuple(records), payload)


class SegmentRows(NamedTuple):
    """A DATA segment decoded for a reader that needs its extents only (verify, import)."""

    header: SegmentHeader
    extents: list[ExtentRow]  # in record order
    payload: memoryview  # starts at data-area offset ``header.payload_offset``


def decode_segment_rows(b: bytes | memoryview, offset: int, seq: int | None = None, *,
                        check_payload: bool = True) -> SegmentRows:
    """``decode_segment`` of a DATA segment, its extents as ``ExtentRow``: every check
    ``decode_segment`` makes (file entries are checked, not kept), and a segment that is
    not DATA is damage here, since the journal said DATA."""
    header, where, blob, payload = _segment_parts(b, offset, seq, check_payload)
    if header.kind is not SegmentKind.DATA:
        raise CorruptRecord(f"{where}: a {header.kind.name} segment where a DATA one was "
                            "recorded")
    rows, count = decode_extent_rows(blob, where)
    if count != header.record_count:
        raise CorruptRecord(f"{where}: {count} records, but the header says "
                            f"{header.record_count}")
    start, end = header.payload_offset, header.payload_offset + header.payload_len
    for _, _, _, codec, stored, _, loc in rows:
        if codec != _ZERO and not (start <= loc and loc + stored <= end):
            decode_segment(b, offset, seq, check_payload=check_payload)  # names the record
            raise AssertionError("decode_segment accepted what decode_segment_rows did not")
    return SegmentRows(header, rows, payload)


def _segment_parts(b: bytes | memoryview, offset: int, seq: int | None, check_payload: bool
                   ) -> tuple[SegmentHeader, str, bytes | memoryview, memoryview]:
    """Header, where, records blob (decompressed) and payload of a segment, every checksum
    and the padding checked."""
    header = decode_segment_header(b, offset, seq)
    where = _where(header.seq, offset)
    mv = memoryview(b).cast("B") if not isinstance(b, bytes) else memoryview(b)
    total = header.total_len
    if len(mv) < total:
        raise CorruptRecord(f"{where}: truncated: {len(mv)} bytes, the segment is {total}")
    pend = HEADER_SIZE + header.payload_len
    rend = pend + header.records_len
    payload = mv[HEADER_SIZE:pend]
    stored = mv[pend:rend]
    if _xxh3_64(stored) != header.records_xxh3:
        if not header.records_compressed:
            decode_records(stored, where)  # names the damaged record, if its xxh32 catches it
        raise CorruptRecord(f"{where}: records checksum mismatch")
    if check_payload and _xxh3_64(payload) != header.payload_xxh3:
        raise CorruptRecord(f"{where}: payload checksum mismatch")
    if mv[rend:total] != bytes(total - rend):
        raise CorruptRecord(f"{where}: padding after the records is not zero")
    blob: bytes | memoryview = stored
    if header.records_compressed:
        blob = _decompress_records(stored, header.records_raw_len, where)
    return header, where, blob, payload


def decode_index(b: bytes, trailer: Trailer, start: int = SECTOR) -> Segment:
    """Decode the INDEX segment the trailer points at, checking it is the one meant.

    It must lie at ``trailer.index_offset``, span ``trailer.index_length`` bytes
    and be the last segment of its session (sequence number ``segment_count - 1``);
    every stored extent must lie in its session's DATA segments, which begin at
    ``start`` (a later session's: where its SESSION segment ends).
    """
    seg = decode_segment(b, trailer.index_offset, trailer.segment_count - 1)
    where = _where(seg.seq, seg.offset)
    if seg.kind is not SegmentKind.INDEX:
        raise CorruptRecord(f"{where}: the trailer points at a {seg.kind.name} segment, not INDEX")
    if seg.header.total_len != trailer.index_length:
        raise CorruptRecord(
            f"{where}: index is {seg.header.total_len} bytes, the trailer says "
            f"{trailer.index_length}"
        )
    problem = _session_span_problem(seg.records, trailer.index_offset, start)
    if problem is not None:
        raise RuleBreach(f"{where}: {problem}")
    return seg


# --------------------------------------------------------------------------- incremental decoder


class SegmentDecoder:
    """Reads segments back to back from a byte stream, h11-style: no I/O here.

    ``receive_data(b)`` only buffers (``b""`` = end of data); ``next_segment()``
    returns a Segment, NEED_DATA or END; ``feed(b)`` does both and returns every
    complete segment.  Sequence numbers must run on from ``next_seq``.

    Strict (default): everything fed must be whole, valid segments; anything
    else, or a partial segment at end of data, raises CorruptRecord.
    ``scan=True`` (recovering a drive without a trailer): the first block whose
    header is not a valid header for the next sequence number ends the log
    (END, reason in ``end_reason``); a valid header followed by a damaged body
    still raises.  After an error every call raises it again.
    ``max_segment_len`` bounds each segment as if its records were uncompressed.
    """

    def __init__(
        self,
        offset: int = SECTOR,
        next_seq: int = 0,
        *,
        scan: bool = False,
        max_segment_len: int = HEADER_SIZE + MAX_INDEX_RECORDS_LEN + SECTOR,
    ) -> None:
        _int("offset", offset, SECTOR, _U64)
        if offset % SECTOR:
            raise ValueError(f"offset {offset} is not a multiple of {SECTOR}")
        _int("next_seq", next_seq, 0, _U64)
        self.offset = offset
        """Absolute data-area offset of the next segment expected."""
        self.next_seq = next_seq
        self.scan = scan
        self.max_segment_len = max_segment_len
        self.end_reason: str | None = None
        self._buf = bytearray()
        self._start = 0  # consumed prefix of _buf, compacted lazily (linear time overall)
        self._header: SegmentHeader | None = None
        self._eof = False
        self._ended = False
        self._error: CorruptRecord | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; ``b""`` means end of data (and may be repeated, as in h11)."""
        if not data:
            self._eof = True
        elif self._eof:
            raise RuntimeError("received data after end of data")
        elif not self._ended:  # after END in scan mode the rest is not ours to read
            self._buf += data

    def _fail(self, msg: str) -> CorruptRecord:
        self._error = CorruptRecord(msg)
        return self._error

    def _end(self, reason: str) -> Literal[_Sentinel.END]:
        self._ended = True
        self.end_reason = reason
        self._buf = bytearray()
        self._start = 0
        return END

    def next_segment(self) -> Segment | Literal[_Sentinel.NEED_DATA, _Sentinel.END]:
        if self._error is not None:
            raise CorruptRecord(f"decoder stopped after an earlier error: {self._error}")
        if self._ended:
            return END
        have = len(self._buf) - self._start
        where = _where(self.next_seq, self.offset)
        if self._header is None:
            if have < HEADER_SIZE:
                if not self._eof:
                    return NEED_DATA
                if have == 0:
                    return self._end("end of data")
                if self.scan:
                    return self._end(f"{have} bytes at end of data are no segment header")
                raise self._fail(f"{where}: end of data inside a segment header ({have} bytes)")
            raw = bytes(self._buf[self._start : self._start + HEADER_SIZE])  # a small copy
            try:
                header = decode_segment_header(raw, self.offset, self.next_seq)
                # Counted with the records decompressed: it bounds memory, not just reads.
                size = segment_total_len(header.records_raw_len, header.payload_len)
                if size > self.max_segment_len:
                    raise CorruptRecord(
                        f"{where}: {size} bytes (records decompressed) exceeds this reader's "
                        f"limit of {self.max_segment_len}"
                    )
            except CorruptRecord as e:
                if self.scan:
                    return self._end(str(e))
                self._error = e
                raise
            self._header = header
        total = self._header.total_len
        if have < total:
            if self._eof:
                raise self._fail(f"{where}: end of data after {have} of its {total} bytes")
            return NEED_DATA
        with memoryview(self._buf) as view:  # one copy, and the export ends before any resize
            chunk = view[self._start : self._start + total].tobytes()
        self._start += total
        if self._start > len(self._buf) // 2:
            del self._buf[: self._start]
            self._start = 0
        self._header = None
        try:
            seg = decode_segment(chunk, self.offset, self.next_seq)
        except CorruptRecord as e:
            self._error = e
            raise
        self.offset += total
        self.next_seq += 1
        return seg

    def feed(self, data: bytes) -> list[Segment]:
        """``receive_data`` then every segment now complete, in order."""
        self.receive_data(data)
        out: list[Segment] = []
        while True:
            seg = self.next_segment()
            if seg is NEED_DATA or seg is END:
                return out
            out.append(seg)
