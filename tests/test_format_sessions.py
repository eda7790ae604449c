"""Format version 3 (several copy sessions on one drive): the SESSION record and segment,
superblock 3, trailer 2, an index held to its session's span.  Round trips, the byte
layout docs/FORMAT.md gives, and decoders that answer garbage only with CorruptRecord."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from pipeline.drive import format as fmt
from pipeline.drive.format import (
    HEADER_SIZE,
    SECTOR,
    BlobType,
    Codec,
    CorruptRecord,
    Extent,
    FileEntry,
    SegmentKind,
    SessionRecord,
    Superblock,
    Trailer,
)

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
DIGEST = hashlib.sha256(b"index").digest()
REC = SessionRecord("sess-2", "job two", "cont/vdir/", BlobType.BLOCK, 3, 1_700_000_000, 1,
                    SECTOR, 5 * SECTOR, 2 * SECTOR, DIGEST)
AT = REC.prev_index_end  # 7 * SECTOR: where the SESSION segment must begin


def test_session_segment_round_trip_and_bytes() -> None:
    blob = fmt.encode_session_segment(REC, seq=6, offset=AT)
    assert len(blob) == SECTOR
    head, rec = fmt.decode_session_segment(blob, AT, 6)
    assert rec == REC and head.kind is SegmentKind.SESSION and head.seq == 6
    assert head.payload_len == 0 and not head.records_compressed
    # The record as docs/FORMAT.md lays it out: frame, fixed part, three str16, xxh32.
    body = struct.pack("<IqBBHQQQ32s", 3, 1_700_000_000, 1, 1, 0, SECTOR, 5 * SECTOR,
                       2 * SECTOR, DIGEST)
    for s in (b"sess-2", b"job two", b"cont/vdir/"):
        body += struct.pack("<H", len(s)) + s
    rec_bytes = struct.pack("<BI", 3, len(body)) + body
    rec_bytes += struct.pack("<I", xxhash.xxh32_intdigest(rec_bytes))
    assert blob[HEADER_SIZE:HEADER_SIZE + len(rec_bytes)] == rec_bytes
    assert blob[4] == 3  # kind SESSION
    assert fmt.record_size(REC) == len(rec_bytes)


def test_session_segment_must_follow_the_previous_index() -> None:
    with pytest.raises(ValueError, match="does not end where this SESSION segment begins"):
        fmt.encode_session_segment(REC, seq=6, offset=AT + SECTOR)
    blob = fmt.encode_session_segment(REC, seq=6, offset=AT)
    with pytest.raises(CorruptRecord, match="header says it belongs at offset"):
        fmt.decode_session_segment(blob, AT + SECTOR)


def test_session_record_rules() -> None:
    base = dict(session_id="s2x", job_name="", dstdir="cont/", blob_type=1, drive_seq=1,
                created_ns=0, version=2, prev_first_offset=SECTOR, prev_index_offset=SECTOR,
                prev_index_length=SECTOR, prev_index_sha256=DIGEST)
    SessionRecord(**base)
    for change in ({"version": 3}, {"version": 0}, {"drive_seq": 0},
                   {"prev_first_offset": 2 * SECTOR}, {"prev_index_offset": SECTOR + 1},
                   {"prev_index_length": 0}, {"prev_index_sha256": b"x" * 31},
                   {"dstdir": "c"}, {"blob_type": 3}, {"session_id": ""}):
        with pytest.raises(ValueError):
            SessionRecord(**{**base, **change})


def _forged_session(body_change: dict) -> bytes:
    """A SESSION segment with valid checksums around a record no encoder would write."""
    fields = dict(drive_seq=3, created_ns=0, blob_type=1, version=1, reserved=0,
                  first=SECTOR, ioff=5 * SECTOR, ilen=2 * SECTOR, digest=DIGEST,
                  strings=(b"sess-2", b"", b"cont/"))
    fields.update(body_change)
    body = struct.pack("<IqBBHQQQ32s", fields["drive_seq"], fields["created_ns"],
                       fields["blob_type"], fields["version"], fields["reserved"],
                       fields["first"], fields["ioff"], fields["ilen"], fields["digest"])
    for s in fields["strings"]:
        body += struct.pack("<H", len(s)) + s
    rec = struct.pack("<BI", 3, len(body)) + body
    rec += struct.pack("<I", xxhash.xxh32_intdigest(rec))
    head = struct.pack("<4sBBHQQIIIIQQ", b"PLSG", 3, 0, 0, 6, AT, 1, len(rec), 0, len(rec),
                       xxhash.xxh3_64_intdigest(rec), xxhash.xxh3_64_intdigest(b""))
    head += struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    seg = head + rec
    return seg + bytes(-len(seg) % SECTOR)


@pytest.mark.parametrize(("change", "match"), [
    ({"ioff": 1 << 40}, "does not end where this SESSION segment begins"),  # outside the drive
    ({"ioff": 6 * SECTOR}, "does not end where"),
    ({"first": 6 * SECTOR}, "starts at .* after its index"),
    ({"version": 3}, "session version=3"),
    ({"reserved": 1}, "reserved"),
    ({"strings": (b"x/../../tmp/PWNED", b"", b"cont/")}, "not one prep writes"),
    ({"strings": (b"sess-2", b"a\nb", b"cont/")}, "control character"),
    ({"strings": (b"sess-2", b"", b"Cont/")}, "dstdir"),
])
def test_forged_session_records_are_damage(change: dict, match: str) -> None:
    fmt.decode_session_segment(_forged_session({}), AT)  # the unforged one decodes
    with pytest.raises(CorruptRecord, match=match):
        fmt.decode_session_segment(_forged_session(change), AT)


def test_session_records_only_in_session_segments() -> None:
    fe = FileEntry(1, "a", "a", 1, 0, 0o644)
    with pytest.raises(ValueError, match="session record outside a SESSION segment"):
        fmt.encode_segment([fe, REC], b"", 0, SECTOR)
    with pytest.raises(ValueError, match="exactly one session record"):
        fmt.encode_segment([REC, REC], b"", 6, AT, SegmentKind.SESSION)
    blob = fmt.encode_records([fe, REC])
    with pytest.raises(CorruptRecord, match="session record outside a SESSION segment"):
        fmt.decode_extent_rows(blob)
    # A DATA segment carrying a session record, checksums valid: damage.
    head = struct.pack("<4sBBHQQIIIIQQ", b"PLSG", 1, 0, 0, 0, SECTOR, 2, len(blob), 0,
                       len(blob), xxhash.xxh3_64_intdigest(blob), xxhash.xxh3_64_intdigest(b""))
    seg = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head)) + blob
    seg += bytes(-len(seg) % SECTOR)
    with pytest.raises(CorruptRecord, match="session record outside"):
        fmt.decode_segment(seg, SECTOR)
    with pytest.raises(CorruptRecord, match="session record outside"):
        fmt.decode_segment_rows(seg, SECTOR)
    with pytest.raises(CorruptRecord, match="where a SESSION segment should begin"):
        fmt.decode_session_segment(fmt.encode_index([fe], 0, SECTOR), SECTOR)


def test_superblock_version_3_keeps_session_1s_version() -> None:
    sb = Superblock(2, UUID, "sess-1", "", "cont/v/", BlobType.PAGE, 7, 1 << 30, 3, 2)
    raw = fmt.encode_superblock(sb)
    assert struct.unpack_from("<HH", raw, 8) == (3, 2)
    assert fmt.decode_superblock(raw) == sb
    for version, first in ((3, 0), (3, 3), (2, 1), (1, 2)):
        with pytest.raises(ValueError):
            Superblock(2, UUID, "sess-1", "", "cont/v/", BlobType.PAGE, 7, 1 << 30, version, first)
    # version 1 and 2 superblocks are byte for byte as before: the field is 0
    v2 = Superblock(2, UUID, "sess-1", "", "cont/v/", BlobType.PAGE, 7, 1 << 30, 2)
    assert struct.unpack_from("<HH", fmt.encode_superblock(v2), 8) == (2, 0)


def test_trailer_2_round_trip_and_bytes() -> None:
    tr = Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 999, version=2,
                 session_offset=30 * SECTOR, sessions=2)
    raw = fmt.encode_trailer(tr)
    assert struct.unpack_from("<QI", raw, 56) == (30 * SECTOR, 2)
    assert raw[68:fmt.CHECKSUM_AT] == bytes(fmt.CHECKSUM_AT - 68)
    assert fmt.decode_trailer(raw) == tr
    v1 = Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 999)
    assert fmt.encode_trailer(v1)[56:fmt.CHECKSUM_AT] == bytes(fmt.CHECKSUM_AT - 56)
    for bad in ({"sessions": 1}, {"session_offset": SECTOR}, {"session_offset": 40 * SECTOR},
                {"session_offset": 30 * SECTOR + 1}):
        with pytest.raises(ValueError):
            Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 999, version=2,
                    **{"session_offset": 30 * SECTOR, "sessions": 2, **bad})
    with pytest.raises(ValueError):
        Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 999, version=1, sessions=2)
    with pytest.raises(ValueError):
        Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 999, version=3)


def test_trailer_2_fields_on_a_version_1_trailer_are_damage() -> None:
    raw = bytearray(fmt.encode_trailer(Trailer(2, 1 << 30, 40 * SECTOR, SECTOR, 12, 0)))
    raw[56:68] = struct.pack("<QI", 30 * SECTOR, 2)
    raw[fmt.CHECKSUM_AT:] = struct.pack("<Q", xxhash.xxh3_64_intdigest(raw[:fmt.CHECKSUM_AT]))
    with pytest.raises(CorruptRecord, match="unused bytes are not zero"):
        fmt.decode_trailer(bytes(raw))


def test_index_of_a_later_session_holds_to_its_span() -> None:
    """An INDEX whose extents lie in another session's segments is damage, named."""
    fe = FileEntry(1, "a", "a", 10, 0, 0o644)
    start = 20 * SECTOR  # the session's first DATA segment (after its SESSION segment)
    inside = Extent(1, 0, 10, Codec.RAW, 10, bytes(16), start + HEADER_SIZE)
    before = Extent(1, 0, 10, Codec.RAW, 10, bytes(16), SECTOR + HEADER_SIZE)  # session 1's
    at = 30 * SECTOR
    good = fmt.encode_index([fe, inside], 9, at, start=start)
    tr = Trailer(1, 1 << 30, at, len(good), 10, 0)
    assert fmt.decode_index(good, tr, start=start).extents == (inside,)
    with pytest.raises(ValueError, match="outside its session's segments"):
        fmt.encode_index([fe, before], 9, at, start=start)
    forged = fmt.encode_index([fe, before], 9, at)  # valid for a one-session drive
    tr = Trailer(1, 1 << 30, at, len(forged), 10, 0)
    fmt.decode_index(forged, tr)
    with pytest.raises(CorruptRecord, match="outside its session's segments"):
        fmt.decode_index(forged, tr, start=start)
    enc = fmt.IndexEncoder(9, at, fmt.record_size(fe) + fmt.record_size(before), start=start)
    enc.add([fe])
    with pytest.raises(ValueError, match="of its session"):
        enc.add([before])


# ------------------------------------------------------------------ fuzz: only CorruptRecord

_DECODERS = [
    lambda b: fmt.decode_session_segment(b, AT),
    lambda b: fmt.decode_session_segment(b, AT, 6),
    lambda b: fmt.decode_segment(b, AT),
    lambda b: fmt.decode_records(b),
    lambda b: fmt.decode_extent_rows(b),
    lambda b: fmt.decode_trailer(b),
    lambda b: fmt.decode_superblock(b),
]


def _only_corrupt(b: bytes) -> None:
    for decode in _DECODERS:
        with contextlib.suppress(CorruptRecord):
            decode(b)


@given(st.binary(max_size=2 * SECTOR))
def test_arbitrary_bytes_raise_only_corrupt_record(b: bytes) -> None:
    _only_corrupt(b)


@given(st.integers(0, SECTOR - 1), st.integers(1, 255))
def test_any_flipped_byte_of_a_session_segment_is_corrupt(pos: int, xor: int) -> None:
    blob = bytearray(fmt.encode_session_segment(REC, 6, AT))
    blob[pos] ^= xor
    with pytest.raises(CorruptRecord):
        fmt.decode_session_segment(bytes(blob), AT, 6)


@given(st.dictionaries(st.sampled_from(["drive_seq", "created_ns", "blob_type", "version",
                                        "reserved", "first", "ioff", "ilen"]),
                       st.integers(0, 2**32 - 1)),
       st.tuples(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=40)))
def test_forged_session_fields_raise_only_corrupt_record(change: dict, strings: tuple) -> None:
    """Checksums valid, fields anything: the decoders answer with a record or CorruptRecord."""
    change = {k: v % 256 if k in ("blob_type", "version") else v % 65536 if k == "reserved"
              else v for k, v in change.items()}
    _only_corrupt(_forged_session({**change, "strings": strings}))


@given(st.binary(min_size=56, max_size=80), st.integers(1, 2))
def test_trailer_garbage_behind_valid_checksum(body: bytes, version: int) -> None:
    raw = bytearray(fmt.TRAILER_MAGIC + struct.pack("<H", version) + body)
    raw = raw[:fmt.CHECKSUM_AT].ljust(fmt.CHECKSUM_AT, b"\0")
    raw += struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(raw)))
    with contextlib.suppress(CorruptRecord):
        fmt.decode_trailer(bytes(raw))
