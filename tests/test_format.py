"""Tests for pipeline.drive.format: round trips, h11-style incremental decoding, damage, fuzz.

Every decoder must return what the encoder was given, whatever way the bytes
arrive, and must answer anything else with CorruptRecord and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
import tracemalloc

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import names
from pipeline.drive import format as fmt
from pipeline.drive.format import (
    END,
    EXTENT_RECORD_SIZE,
    HEADER_SIZE,
    NEED_DATA,
    SECTOR,
    BlobType,
    Codec,
    CorruptRecord,
    Extent,
    FileEntry,
    SegmentDecoder,
    SegmentKind,
    Superblock,
    Trailer,
)
from pipeline.errors import EXIT_INTEGRITY, BadInput, IntegrityError

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# --------------------------------------------------------------------------- strategies

u64 = st.integers(0, U64)
u32 = st.integers(0, U32)
i64 = st.integers(I64_MIN, I64_MAX)
digests = st.binary(min_size=16, max_size=16)

# Real file names: any character but '/', NUL and lone surrogates; spaces and non-ASCII welcome.
_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
components = st.text(_name_chars, min_size=1, max_size=12).filter(lambda c: c not in (".", ".."))
paths = st.one_of(
    st.lists(components, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["a file with spaces.txt", "Relatório 2026/ação ñ.xlsx", "日本語/ファイル",
                     " lead/trail ", "emoji 🙂/x"]),
)
blob_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                     min_size=1, max_size=40)


def file_entries(file_id: st.SearchStrategy[int] = u64,
                 size: st.SearchStrategy[int] = u64) -> st.SearchStrategy[FileEntry]:
    return st.builds(FileEntry, file_id=file_id, path=paths, blob=blob_names, size=size,
                     mtime_ns=i64, mode=u32)


@st.composite
def extents(draw: st.DrawFn, max_stored: int = U32, placed: bool = True) -> Extent:
    """Any valid Extent; ``max_stored`` bounds stored bytes so tests can supply them."""
    codec = draw(st.sampled_from(Codec))
    if codec is Codec.RAW:
        raw_len = draw(st.integers(1, min(U32, max_stored)))
        stored = raw_len
    else:
        raw_len = draw(st.integers(1, U32))
        stored = 0 if codec is Codec.ZERO else draw(st.integers(1, min(U32, max_stored)))
    offset = draw(st.integers(0, U64 + 1 - raw_len))
    location = 0
    if placed and codec is not Codec.ZERO:
        location = draw(st.integers(0, U64 + 1 - stored))
    return Extent(draw(u64), offset, raw_len, codec, stored, draw(digests), location)


records = st.one_of(file_entries(), extents())


@st.composite
def unplaced_extents(draw: st.DrawFn) -> tuple[Extent, bytes]:
    """(extent without location, its stored bytes), as pack hands them to placement."""
    ext = draw(extents(max_stored=300, placed=False))
    return ext, draw(st.binary(min_size=ext.stored_len, max_size=ext.stored_len))


def _valid_dstdir(dstdir: str) -> bool:
    try:
        return names.check_dstdir(dstdir) == dstdir
    except BadInput:
        return False


sector_offsets = st.integers(1, 2**40).map(lambda n: n * SECTOR)
superblocks = st.builds(
    Superblock,
    drive_seq=st.integers(1, U32),
    volume_uuid=st.uuids().map(str),
    session_id=st.from_regex(r"[A-Za-z0-9_#-]{3,30}", fullmatch=True),
    job_name=st.text(_name_chars, max_size=40).filter(str.isprintable),
    dstdir=st.tuples(st.from_regex(r"[a-z0-9]{3,20}", fullmatch=True),
                     st.lists(components, max_size=3)).map(
        lambda c: "/".join([c[0], *c[1]]) + "/").filter(_valid_dstdir),
    blob_type=st.sampled_from(BlobType),
    created_ns=i64,
    data_area_size=st.integers(3, U64 // SECTOR).map(lambda n: n * SECTOR),
)


@st.composite
def trailers(draw: st.DrawFn) -> Trailer:
    size = draw(st.integers(3, U64 // SECTOR)) * SECTOR
    index_offset = draw(st.integers(1, size // SECTOR - 2)) * SECTOR
    room = (size - SECTOR - index_offset) // SECTOR
    index_length = draw(st.integers(1, room)) * SECTOR
    return Trailer(draw(st.integers(1, U32)), size, index_offset, index_length,
                   draw(st.integers(1, U64)), draw(u64))


@st.composite
def index_contents(draw: st.DrawFn) -> tuple[int, list[fmt.Record]]:
    """(index offset, records): self-contained, extents pointing before the index."""
    offset = draw(st.integers(2, 2**30)) * SECTOR
    lowest = SECTOR + HEADER_SIZE
    ids = draw(st.lists(u64, max_size=5, unique=True))
    recs: list[fmt.Record] = []
    for file_id in ids:
        f = draw(file_entries(file_id=st.just(file_id), size=st.integers(0, 2**40)))
        recs.append(f)
        for _ in range(draw(st.integers(0, 3)) if f.size else 0):
            off = draw(st.integers(0, f.size - 1))
            codec = draw(st.sampled_from(Codec))
            raw = draw(st.integers(1, min(U32, f.size - off, offset - lowest)))
            if codec is Codec.ZSTD:
                stored = draw(st.integers(1, min(U32, offset - lowest)))
            else:
                stored = raw if codec is Codec.RAW else 0
            loc = 0 if codec is Codec.ZERO else draw(st.integers(lowest, offset - stored))
            recs.append(Extent(file_id, off, raw, codec, stored, draw(digests), loc))
    return offset, draw(st.permutations(recs))


def make_log(specs: list[tuple[list[FileEntry], list[tuple[Extent, bytes]]]],
             start: int = SECTOR, seq: int = 0) -> tuple[bytes, list[fmt.Segment]]:
    """Back-to-back DATA segments as prep writes them, and their expected decodings.

    Odd segments keep their records uncompressed, so a log mixes both kinds.
    """
    out, segs, offset = [], [], start
    for files, exts in specs:
        blob, _, _ = fmt.layout_data_segment(files, exts, seq, offset, compress=seq % 2 == 0)
        out.append(blob)
        segs.append(fmt.decode_segment(blob, offset))
        offset += len(blob)
        seq += 1
    return b"".join(out), segs


log_specs = st.lists(
    st.tuples(st.lists(file_entries(), max_size=2), st.lists(unplaced_extents(), max_size=3)),
    min_size=1, max_size=3,
)

SB = Superblock(3, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "sess-2026-11-26", "job 1 ação",
                "backups/seed/", BlobType.PAGE, 1_764_115_200_000_000_000, 1 << 30)
FE = FileEntry(7, "docs/relatório final.txt", "seed/docs/relatório final.txt", 10_000,
               1_700_000_000_123_456_789, 0o100644)
EXT_RAW = Extent(7, 0, 5, Codec.RAW, 5, xxhash.xxh3_128_digest(b"hello"))
EXT_ZSTD = Extent(7, 5, 9995, Codec.ZSTD, 3, bytes(range(16)))
EXT_ZERO = Extent(7, 8192, 1808, Codec.ZERO, 0, xxhash.xxh3_128_digest(bytes(1808)))


def small_segment(offset: int = SECTOR, seq: int = 0,
                  compress: bool = True) -> tuple[bytes, list[fmt.Record]]:
    return fmt.layout_data_segment(
        [FE], [(EXT_RAW, b"hello"), (EXT_ZSTD, b"zst"), (EXT_ZERO, b"")], seq, offset,
        compress=compress)[:2]


def many_files(n: int, start: int = 0, tiny: bool = False) -> list[tuple[FileEntry, Extent, bytes]]:
    """Small files as a real tree gives them: records that compress well.

    ``tiny`` stores a few bytes per file, to keep segments short.
    """
    out = []
    for i in range(start, start + n):
        path = f"small/d{i // 1000}/e{(i // 50) % 20}/file {i:05d}.txt"
        size = 1 + (i * 7919) % (64 << 10)
        stored = bytes(1 + (i % 17 if tiny else size // 3))
        ext = Extent(i, 0, size, Codec.ZSTD, len(stored),
                     xxhash.xxh3_128_digest(i.to_bytes(8, "little")))
        out.append((FileEntry(i, path, "vdir/" + path, size,
                              1_764_115_200_000_000_000 + i * 4_294_967_291, 0o100644),
                    ext, stored))
    return out


def many_segment(n: int = 20, offset: int = SECTOR, seq: int = 0, compress: bool = True,
                 tiny: bool = False) -> tuple[bytes, list[fmt.Record]]:
    rows = many_files(n, tiny=tiny)
    return fmt.layout_data_segment([f for f, _, _ in rows], [(e, d) for _, e, d in rows], seq,
                                   offset, compress=compress)[:2]


HEADER_FMT = "<4sBBHQQIIIIQQ"
"""The segment header as docs/FORMAT.md gives it, before the header checksum."""


def flip(b: bytes, pos: int, mask: int) -> bytes:
    out = bytearray(b)
    out[pos] ^= mask
    return bytes(out)


def seal_sector(body: bytes) -> bytes:
    """A superblock/trailer sector with a valid checksum over arbitrary contents."""
    body = body[: fmt.CHECKSUM_AT].ljust(fmt.CHECKSUM_AT, b"\0")
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def raw_segment(kind: int, seq: int, offset: int, blob: bytes, payload: bytes = b"",
                count: int | None = None, reserved: tuple[int, int] = (0, 0),
                stored: bytes | None = None, raw_len: int | None = None) -> bytes:
    """A segment with valid checksums around whatever contents, bypassing encoder checks.

    ``stored`` replaces the records blob on disk (say, a zstd frame of ``blob``);
    ``reserved`` is (flags, reserved u16), flags defaulting to RECORDS_ZSTD with ``stored``.
    """
    if count is None:
        count = len(fmt.decode_records(blob)) if blob else 0
    if stored is None:
        stored = blob
    elif reserved == (0, 0):
        reserved = (fmt.RECORDS_ZSTD, 0)
    head = struct.pack(HEADER_FMT, fmt.SEGMENT_MAGIC, kind, *reserved, seq, offset, count,
                       len(stored), len(payload), len(blob) if raw_len is None else raw_len,
                       xxhash.xxh3_64_intdigest(stored), xxhash.xxh3_64_intdigest(payload))
    body = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head)) + payload + stored
    return body + bytes(fmt.align_up(len(body)) - len(body))


def zstd_frame(blob: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=False).compress(blob)


def framed(rtype: int, body: bytes) -> bytes:
    """One record frame with a correct xxh32, whatever the body says."""
    head = struct.pack("<BI", rtype, len(body)) + body
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


# --------------------------------------------------------------------------- errors


def test_corrupt_record_is_an_integrity_error_with_the_message_as_given() -> None:
    e = CorruptRecord("segment 12 at offset 4096: header checksum mismatch")
    assert isinstance(e, IntegrityError)
    assert str(e) == "segment 12 at offset 4096: header checksum mismatch"
    assert e.exit_code == EXIT_INTEGRITY


def test_damaged_header_message_names_segment_and_offset() -> None:
    blob, _ = small_segment(offset=5 * SECTOR, seq=12)
    with pytest.raises(CorruptRecord) as info:
        fmt.decode_segment(flip(blob, 9, 0x01), 5 * SECTOR, seq=12)
    assert str(info.value) == "segment 12 at offset 20480: header checksum mismatch"


# --------------------------------------------------------------------------- known answers


def _sanity_buffer(n: int) -> bytes:
    """xxHash's own test input (cli/xsum_sanity_check.c, XSUM_fillTestBuffer)."""
    prime32, prime64 = 2654435761, 11400714785074694797
    gen, out = prime32, bytearray(n)
    for i in range(n):
        out[i] = gen >> 56
        gen = (gen * prime64) & U64
    return bytes(out)


# XSUM_XXH128_testdata, seed 0, from Cyan4973/xxHash cli/xsum_sanity_check.c: (len, low64, high64).
XXH128_VECTORS = [
    (0, 0x6001C324468D497F, 0x99AA06D3014798D8),
    (1, 0xC44BDFF4074EECDB, 0xA6CD5E9392000F6A),
    (6, 0x3E7039BDDA43CFC6, 0x082AFE0B8162D12A),
    (12, 0x061A192713F69AD9, 0x6E3EFD8FC7802B18),
    (24, 0x1E7044D28B1B901D, 0x0CE966E4678D3761),
    (48, 0xF942219AED80F67B, 0xA002AC4E5478227E),
    (81, 0x5E8BAFB9F95FB803, 0x4952F58181AB0042),
    (222, 0xF1AEBD597CEC6B3A, 0x337E09641B948717),
    (403, 0xCDEB804D65C6DEA4, 0x1B6DE21E332DD73D),
    (512, 0x617E49599013CB6B, 0x18D2D110DCC9BCA1),
    (2048, 0xDD59E2C3A5F038E0, 0xF736557FD47073A5),
    (2240, 0x6E73A90539CF2948, 0xCCB134FBFA7CE49D),
    (2367, 0xCB37AEB9E5D361ED, 0xE89C0F6FF369B427),
]


@pytest.mark.parametrize(("length", "low", "high"), XXH128_VECTORS)
def test_xxh3_128_known_answers_and_stored_byte_order(length: int, low: int, high: int) -> None:
    data = _sanity_buffer(length)
    # The canonical form (XXH128_canonicalFromHash) is high64 then low64, both big-endian:
    # that is what Extent.xxh3 holds and what the record stores verbatim.
    canonical = high.to_bytes(8, "big") + low.to_bytes(8, "big")
    assert xxhash.xxh3_128_digest(data) == canonical
    assert xxhash.xxh3_128(data).digest() == canonical
    ext = Extent(1, 0, max(length, 1), Codec.ZSTD, 1, canonical)
    assert fmt.encode_records([ext])[5 + 25 : 5 + 41] == canonical


def test_empty_input_digests_from_xxhash_sanity_check() -> None:
    assert xxhash.xxh3_128_digest(b"").hex() == "99aa06d3014798d86001c324468d497f"
    assert xxhash.xxh3_64_intdigest(b"") == 0x2D06800538D394C2  # segment/sector checksums
    assert xxhash.xxh32_intdigest(b"") == 0x02CC5D05  # per-record checksums
    assert xxhash.xxh3_64_intdigest(_sanity_buffer(2048)) == 0xDD59E2C3A5F038E0
    assert xxhash.xxh32_intdigest(_sanity_buffer(222)) == 0x5BD11DBD


# --------------------------------------------------------------------------- documented layout


def test_superblock_bytes_match_docs() -> None:
    b = fmt.encode_superblock(SB)
    assert len(b) == SECTOR
    assert b[0:8] == b"PLSEEDSB"
    assert struct.unpack_from("<HHIqQB", b, 8) == (1, 0, 3, SB.created_ns, 1 << 30, 2)
    assert b[33:36] == b"\0\0\0"
    assert b[36:72] == SB.volume_uuid.encode()
    n = struct.unpack_from("<H", b, 72)[0]
    assert b[74 : 74 + n] == SB.session_id.encode()
    assert struct.unpack_from("<Q", b, 4088)[0] == xxhash.xxh3_64_intdigest(b[:4088])


def test_trailer_bytes_match_docs() -> None:
    tr = Trailer(3, 1 << 30, 5 * SECTOR, 2 * SECTOR, 4, 12345)
    b = fmt.encode_trailer(tr)
    assert len(b) == SECTOR and b[:8] == b"PLSEEDTR"
    assert struct.unpack_from("<HHIQQQQQ", b, 8) == (1, 0, 3, 1 << 30, 5 * SECTOR, 2 * SECTOR,
                                                     4, 12345)
    assert b[56:4088] == bytes(4088 - 56)
    assert struct.unpack_from("<Q", b, 4088)[0] == xxhash.xxh3_64_intdigest(b[:4088])
    assert fmt.trailer_offset(1 << 30) == (1 << 30) - SECTOR


def test_segment_and_record_bytes_match_docs() -> None:
    blob, recs = small_segment(offset=2 * SECTOR, seq=9, compress=False)
    assert len(blob) == SECTOR
    (magic, kind, flags, r2, seq, off, count, rlen, plen, raw_len, rh, ph, hh) = (
        struct.unpack_from(HEADER_FMT + "Q", blob, 0))
    assert (magic, kind, flags, r2, seq, off, count) == (b"PLSG", 1, 0, 0, 9, 2 * SECTOR, 4)
    assert plen == 8 and raw_len == rlen and hh == xxhash.xxh3_64_intdigest(blob[:56])
    # The payload comes first, right after the header; the records follow it.
    assert blob[64 : 64 + plen] == b"hellozst"
    assert ph == xxhash.xxh3_64_intdigest(blob[64 : 64 + plen])
    records_blob = blob[64 + plen : 64 + plen + rlen]
    assert rh == xxhash.xxh3_64_intdigest(records_blob)
    # First record: the FileEntry.
    rtype, body_len = struct.unpack_from("<BI", records_blob, 0)
    assert rtype == 1 and body_len == fmt.record_size(FE) - 9
    assert struct.unpack_from("<QQqIH", records_blob, 5)[:4] == (7, 10_000, FE.mtime_ns, 0o100644)
    crc_at = 5 + body_len
    assert struct.unpack_from("<I", records_blob, crc_at)[0] == xxhash.xxh32_intdigest(
        records_blob[:crc_at])
    # Second record: the RAW extent, placed at the first payload byte.
    e = records_blob[crc_at + 4 : crc_at + 4 + EXTENT_RECORD_SIZE]
    assert struct.unpack("<BIQQIBI16sQI", e)[:9] == (
        2, 49, 7, 0, 5, 2, 5, EXT_RAW.xxh3, 2 * SECTOR + 64)
    assert recs[1].location == 2 * SECTOR + 64
    assert blob[64 + plen + rlen :] == bytes(SECTOR - 64 - rlen - plen)


def test_compressed_records_bytes_match_docs() -> None:
    plain, recs = many_segment(20, offset=2 * SECTOR, seq=9, compress=False)
    blob, recs2 = many_segment(20, offset=2 * SECTOR, seq=9)
    assert recs2 == recs  # locations do not depend on compression
    (_, kind, flags, r2, _, _, count, rlen, plen, raw_len, rh, ph, hh) = struct.unpack_from(
        HEADER_FMT + "Q", blob, 0)
    p_rlen = struct.unpack_from(HEADER_FMT, plain, 0)[7]
    assert (kind, flags, r2, count, raw_len) == (1, fmt.RECORDS_ZSTD, 0, 40, p_rlen)
    assert rlen < raw_len and hh == xxhash.xxh3_64_intdigest(blob[:56])
    assert blob[64 : 64 + plen] == plain[64 : 64 + plen]
    frame = blob[64 + plen : 64 + plen + rlen]
    assert rh == xxhash.xxh3_64_intdigest(frame)
    # One standard zstd frame, with its content size, that yields the uncompressed records.
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and zstandard.frame_content_size(frame) == raw_len
    assert zstandard.ZstdDecompressor().decompress(frame) == plain[64 + plen : 64 + plen + raw_len]
    assert blob[64 + plen + rlen :] == bytes(len(blob) - 64 - plen - rlen)


def test_format_is_pinned() -> None:
    """Regression pin: if these change, the on-drive format changed: bump FORMAT_VERSION.

    Records are pinned uncompressed: zstd's output may differ between library
    versions without any change to the format (readers take any valid frame).
    """
    blob, recs = small_segment(offset=2 * SECTOR, seq=9, compress=False)
    index = fmt.encode_index(recs, 10, 3 * SECTOR, compress=False)
    trailer = fmt.encode_trailer(Trailer(3, 1 << 30, 3 * SECTOR, SECTOR, 11, 8))
    digest = hashlib.sha256(fmt.encode_superblock(SB) + blob + index + trailer).hexdigest()
    assert digest == "11bd99ff85726e8a0ae3d3a8ce91f785072cdbb754a6c7bebe067443d8a30178"
    packed, packed_recs = small_segment(offset=2 * SECTOR, seq=9)
    assert packed_recs == recs and fmt.decode_segment(packed, 2 * SECTOR).records == tuple(recs)


# --------------------------------------------------------------------------- round trips


@given(records)
def test_record_roundtrip(rec: fmt.Record) -> None:
    b = fmt.encode_records([rec])
    assert len(b) == fmt.record_size(rec)
    assert fmt.decode_records(b) == [rec]


@given(st.lists(records, max_size=20))
def test_records_roundtrip(recs: list[fmt.Record]) -> None:
    assert fmt.decode_records(fmt.encode_records(recs)) == recs


@given(superblocks)
@example(Superblock(U32, "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "s" * 30, "é" * 512,
                    "cnt/" + ("c" * 250 + "/") * 4, BlobType.BLOCK, I64_MIN,
                    U64 // SECTOR * SECTOR))
def test_superblock_roundtrip(sb: Superblock) -> None:
    b = fmt.encode_superblock(sb)
    assert len(b) == SECTOR
    assert fmt.decode_superblock(b) == sb
    assert fmt.decode_superblock(b + b"trailing data is ignored") == sb


@given(trailers())
def test_trailer_roundtrip(tr: Trailer) -> None:
    b = fmt.encode_trailer(tr)
    assert len(b) == SECTOR
    assert fmt.decode_trailer(b) == tr


def test_trailer_checked_against_superblock() -> None:
    tr = Trailer(SB.drive_seq, SB.data_area_size, 5 * SECTOR, SECTOR, 2, 0)
    assert fmt.decode_trailer(fmt.encode_trailer(tr), SB) == tr
    other = Trailer(SB.drive_seq + 1, SB.data_area_size, 5 * SECTOR, SECTOR, 2, 0)
    with pytest.raises(CorruptRecord, match="superblock says drive 3"):
        fmt.decode_trailer(fmt.encode_trailer(other), SB)


@given(st.lists(file_entries(), max_size=3), st.lists(unplaced_extents(), max_size=4),
       u64, sector_offsets, st.booleans())
def test_data_segment_roundtrip(files: list[FileEntry], exts: list[tuple[Extent, bytes]],
                                seq: int, offset: int, compress: bool) -> None:
    blob, recs, _ = fmt.layout_data_segment(files, exts, seq, offset, compress=compress)
    assert len(blob) % SECTOR == 0
    assert recs[: len(files)] == files
    header = fmt.decode_segment_header(blob[:HEADER_SIZE])
    assert (header.kind, header.seq, header.offset, header.total_len) == (
        SegmentKind.DATA, seq, offset, len(blob))
    raw_len = sum(map(fmt.record_size, recs))
    assert header.records_raw_len == raw_len and header.records_len <= raw_len
    assert header.records_compressed == (header.records_len < raw_len)
    assert compress or not header.records_compressed
    seg = fmt.decode_segment(blob, offset)
    assert seg.header == header and list(seg.records) == recs
    assert fmt.decode_segment(memoryview(b"..." + blob)[3:], offset) == seg
    assert seg.files == tuple(files)
    assert fmt.encode_segment(recs, seg.payload, seq, offset, compress=compress) == blob
    for placed, (ext, data) in zip(recs[len(files) :], exts, strict=True):
        assert dataclass_without_location(placed) == dataclass_without_location(ext)
        if ext.codec is Codec.ZERO:
            assert placed.location == 0
            with pytest.raises(ValueError):
                seg.stored(placed)
        else:
            assert seg.stored(placed) == data


def dataclass_without_location(e: fmt.Record) -> tuple[object, ...]:
    assert isinstance(e, Extent)
    return (e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3)


@given(index_contents(), u64, st.booleans())
def test_index_segment_roundtrip(content: tuple[int, list[fmt.Record]], seq: int,
                                 compress: bool) -> None:
    offset, recs = content
    blob = fmt.encode_index(recs, seq, offset, compress=compress)
    assert compress or not fmt.decode_segment_header(blob).records_compressed
    seg = fmt.decode_segment(blob, offset)
    assert seg.kind is SegmentKind.INDEX and list(seg.records) == recs and seg.payload == b""
    assert fmt.decode_segment_header(blob).total_len == len(blob)
    if seq < U64:
        tr = Trailer(1, offset + len(blob) + SECTOR, offset, len(blob), seq + 1, 0)
        assert fmt.decode_index(blob, tr) == seg


def _files_first(recs: list[fmt.Record]) -> list[fmt.Record]:
    return ([r for r in recs if type(r) is FileEntry] + [r for r in recs if type(r) is Extent])


@given(index_contents(), u64, st.integers(1, 7))
def test_index_encoder_decodes_as_encode_index(content: tuple[int, list[fmt.Record]], seq: int,
                                               batch: int) -> None:
    offset, recs = content
    recs = _files_first(recs)
    enc = fmt.IndexEncoder(seq, offset, sum(fmt.record_size(r) for r in recs))
    for i in range(0, len(recs), batch):
        enc.add(recs[i:i + batch])
    enc.add([])
    blob = enc.finish()
    seg = fmt.decode_segment(blob, offset)
    assert seg.kind is SegmentKind.INDEX and list(seg.records) == recs and seg.payload == b""
    assert seg == fmt.decode_segment(fmt.encode_index(recs, seq, offset), offset)
    assert fmt.decode_segment_header(blob).total_len == len(blob) and len(blob) % SECTOR == 0


def test_index_encoder_streams_a_large_index_compressed() -> None:
    """Beyond the raw-copy threshold only compressed output is kept; it still decodes."""
    offset = 1 << 30
    recs: list[fmt.Record] = []
    exts: list[fmt.Record] = []
    for i in range(1, 20_001):
        recs.append(FileEntry(i, f"dir{i % 97}/file-{i:06d}.txt", f"c/dir{i % 97}/file-{i:06d}.txt",
                              4096, 1_700_000_000_000_000_000 + i, 0o100644))
        exts.append(Extent(i, 0, 4096, Codec.ZSTD, 100, i.to_bytes(16, "little"),
                           SECTOR + HEADER_SIZE + 100 * i))
    recs += exts
    size = sum(fmt.record_size(r) for r in recs)
    assert size > fmt.IndexEncoder._KEEP_RAW
    enc = fmt.IndexEncoder(3, offset, size)
    for i in range(0, len(recs), 4096):
        enc.add(recs[i:i + 4096])
    blob = enc.finish()
    assert fmt.decode_segment_header(blob).records_compressed
    assert list(fmt.decode_segment(blob, offset).records) == recs


def test_index_encoder_refuses_what_encode_index_refuses() -> None:
    f = FileEntry(1, "a", "c/a", 10, 0, 0o100644)
    ext = Extent(1, 0, 10, Codec.RAW, 10, bytes(16), SECTOR + HEADER_SIZE)
    size = fmt.record_size(f) + fmt.record_size(ext)
    g = FileEntry(2, "b", "c/b", 10, 0, 0o100644)
    with pytest.raises(ValueError, match="after the extents began"):
        fmt.IndexEncoder(0, 4 * SECTOR, size + fmt.record_size(g)).add([f, ext, g])
    with pytest.raises(ValueError, match="no FileEntry"):
        fmt.IndexEncoder(0, 4 * SECTOR, size).add([ext])
    with pytest.raises(ValueError, match="appears twice"):
        fmt.IndexEncoder(0, 4 * SECTOR, 2 * fmt.record_size(f)).add([f, f])
    with pytest.raises(ValueError, match="not inside the segments before the index"):
        fmt.IndexEncoder(0, SECTOR, size).add([f, ext])
    with pytest.raises(ValueError, match="runs past the file size"):
        fmt.IndexEncoder(0, 4 * SECTOR, size).add([f, Extent(1, 5, 10, Codec.ZERO, 0,
                                                              bytes(16), 0)])
    short = fmt.IndexEncoder(0, 4 * SECTOR, size + 1)
    short.add([f, ext])
    with pytest.raises(ValueError, match="not the declared"):
        short.finish()
    with pytest.raises(ValueError, match="exceed the declared"):
        fmt.IndexEncoder(0, 4 * SECTOR, size - 1).add([f, ext])
    with pytest.raises(ValueError, match="multiple of"):
        fmt.IndexEncoder(0, SECTOR + 1, size)


def test_decode_index_checks_what_the_trailer_says() -> None:
    _, recs = small_segment()
    index = fmt.encode_index(recs, 1, 2 * SECTOR)
    good = Trailer(3, 1 << 30, 2 * SECTOR, len(index), 2, 8)
    assert list(fmt.decode_index(index, good).records) == recs
    for bad, match in [
        (Trailer(3, 1 << 30, 2 * SECTOR, len(index), 5, 8), "sequence number 1"),
        (Trailer(3, 1 << 30, 2 * SECTOR, len(index) + SECTOR, 2, 8), "the trailer says"),
        (Trailer(3, 1 << 30, 3 * SECTOR, len(index), 2, 8), "belongs at offset 8192"),
    ]:
        with pytest.raises(CorruptRecord, match=match):
            fmt.decode_index(index, bad)
    data, _ = small_segment(offset=2 * SECTOR, seq=1)
    with pytest.raises(CorruptRecord, match="not INDEX"):
        fmt.decode_index(data, good)


def test_full_drive_read_path() -> None:
    """superblock -> trailer -> index, and the scan fallback, over one small data area."""
    size = 16 * SECTOR
    sb = Superblock(1, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "s-1", "j", "cnt/", BlobType.BLOCK,
                    0, size)
    log, segs = make_log([([FE], [(EXT_RAW, b"hello")]), ([], [(EXT_ZSTD, b"zst")])])
    placed = [r for s in segs for r in s.records]
    index_at = SECTOR + len(log)
    index = fmt.encode_index(placed, len(segs), index_at)
    tr = Trailer(1, size, index_at, len(index), len(segs) + 1, 8)
    area = bytearray(size)
    area[:SECTOR] = fmt.encode_superblock(sb)
    area[SECTOR : index_at + len(index)] = log + index
    area[fmt.trailer_offset(size) :] = fmt.encode_trailer(tr)
    area = bytes(area)

    got_sb = fmt.decode_superblock(area[:SECTOR])
    got_tr = fmt.decode_trailer(area[fmt.trailer_offset(size) :], got_sb)
    idx = fmt.decode_index(area[got_tr.index_offset : got_tr.index_offset + got_tr.index_length],
                           got_tr)
    assert list(idx.records) == placed
    for ext in idx.extents:
        if ext.codec is not Codec.ZERO:
            seg = next(s for s in segs if s.offset < ext.location < s.header.end)
            assert area[ext.location : ext.location + ext.stored_len] == seg.stored(ext)

    # No trailer (crash before close): scan until the first non-segment block.
    dec = SegmentDecoder(scan=True)
    scanned = dec.feed(area[SECTOR : fmt.trailer_offset(size)]) + dec.feed(b"")
    assert [s.seq for s in scanned] == [0, 1, 2] and scanned[:2] == segs
    assert dec.ended and "bad magic" in (dec.end_reason or "")


# --------------------------------------------------------------------------- h11-style decoding


def _decode_all(dec: SegmentDecoder, chunks: list[bytes]) -> list[fmt.Segment]:
    out: list[fmt.Segment] = []
    for c in chunks:
        if c:  # b"" would mean end of data
            out += dec.feed(c)
    return out + dec.feed(b"")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(log_specs, st.integers(0, 1 << 16), st.integers(0, 1 << 16))
def test_decoder_any_split_gives_the_same_segments(
    specs: list[tuple[list[FileEntry], list[tuple[Extent, bytes]]]], cut1: int, cut2: int
) -> None:
    log, expected = make_log(specs)
    a, b = sorted((cut1 % (len(log) + 1), cut2 % (len(log) + 1)))
    assert _decode_all(SegmentDecoder(), [log]) == expected
    assert _decode_all(SegmentDecoder(), [log[:a], log[a:b], log[b:]]) == expected
    assert _decode_all(SegmentDecoder(scan=True), [log[:a], log[a:]]) == expected


def test_decoder_one_byte_at_a_time() -> None:
    log, expected = make_log([([FE], [(EXT_RAW, b"hello")]), ([], [(EXT_ZERO, b"")]),
                              ([], [(EXT_ZSTD, b"zst")])])
    dec = SegmentDecoder()
    got: list[fmt.Segment] = []
    for i in range(len(log)):
        got += dec.feed(log[i : i + 1])
        assert dec.offset == SECTOR + sum(s.header.total_len for s in got)
    assert got == expected and dec.feed(b"") == [] and dec.ended
    assert dec.next_segment() is END


def test_decoder_next_segment_events() -> None:
    log, expected = make_log([([FE], [(EXT_RAW, b"hello")]), ([], [])], start=3 * SECTOR, seq=7)
    dec = SegmentDecoder(3 * SECTOR, 7)
    assert dec.next_segment() is NEED_DATA
    dec.receive_data(log[:100])
    assert dec.next_segment() is NEED_DATA
    dec.receive_data(log[100:])
    assert dec.next_segment() == expected[0]
    assert dec.next_segment() == expected[1]
    assert dec.next_segment() is NEED_DATA
    dec.receive_data(b"")
    assert dec.next_segment() is END
    with pytest.raises(RuntimeError):
        dec.receive_data(b"more")


@given(log_specs, st.data())
def test_partial_trailing_data_at_eof_is_corrupt(
    specs: list[tuple[list[FileEntry], list[tuple[Extent, bytes]]]], data: st.DataObject
) -> None:
    log, expected = make_log(specs)
    last = expected[-1].header.total_len
    cut = data.draw(st.integers(1, last - 1))
    dec = SegmentDecoder()
    with pytest.raises(CorruptRecord, match="end of data"):
        dec.feed(log[: len(log) - last + cut])
        dec.feed(b"")
    with pytest.raises(CorruptRecord, match="earlier error"):  # stays failed, like h11's ERROR
        dec.next_segment()


def test_scan_stops_at_a_partial_header_but_strict_refuses_it() -> None:
    log, expected = make_log([([FE], [(EXT_RAW, b"hello")])])
    dec = SegmentDecoder(scan=True)
    assert dec.feed(log + b"PLS") + dec.feed(b"") == expected
    assert dec.ended
    dec = SegmentDecoder()
    dec.feed(log + b"PLS")
    with pytest.raises(CorruptRecord, match="inside a segment header"):
        dec.feed(b"")


def test_scan_stops_at_the_first_block_that_is_not_the_next_segment() -> None:
    log, expected = make_log([([FE], [(EXT_RAW, b"hello")]), ([], [(EXT_ZSTD, b"zst")])])
    first = expected[0].header.total_len
    stale, _ = small_segment(offset=SECTOR + len(log), seq=7)  # a valid segment, wrong seq
    misplaced, _ = small_segment(offset=9 * SECTOR, seq=2)  # right seq, wrong place
    for tail, reason in [(bytes(SECTOR), "bad magic"), (b"\xff" * SECTOR, "bad magic"),
                         (stale, "sequence number 7"), (misplaced, "belongs at offset 36864"),
                         (flip(stale, 20, 1), "header checksum")]:
        dec = SegmentDecoder(scan=True)
        assert dec.feed(log + tail + log) == expected  # what follows the end is not read
        assert dec.ended and reason in (dec.end_reason or "")
        assert dec.feed(b"junk after the end") == [] and dec.feed(b"") == []
        with pytest.raises(CorruptRecord, match=reason):
            SegmentDecoder().feed(log + tail)
    # A valid header over a damaged body is damage, not the end of the log.
    dec = SegmentDecoder(scan=True)
    with pytest.raises(CorruptRecord, match="segment 1 at offset"):
        dec.feed(log[:first] + flip(log[first:], 200, 0x40))


def test_decoder_limit_on_segment_length() -> None:
    log, _ = make_log([([], [(EXT_RAW, b"hello")])])
    with pytest.raises(CorruptRecord, match="limit"):
        SegmentDecoder(max_segment_len=SECTOR - 1).feed(log)


# --------------------------------------------------------------------------- damage: any byte


@pytest.mark.parametrize("compressed", [False, True])
def test_every_single_byte_flip_of_a_segment_is_detected(compressed: bool) -> None:
    if compressed:
        blob, _ = many_segment(40, tiny=True)
    else:
        blob, _ = small_segment(offset=SECTOR, seq=0, compress=False)
    assert len(blob) == SECTOR
    assert fmt.decode_segment_header(blob).records_compressed == compressed
    for pos in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            with pytest.raises(CorruptRecord):
                fmt.decode_segment(flip(blob, pos, mask), SECTOR)


def test_every_single_byte_flip_of_superblock_and_trailer_is_detected() -> None:
    sb = fmt.encode_superblock(SB)
    tr = fmt.encode_trailer(Trailer(3, 1 << 30, 5 * SECTOR, 2 * SECTOR, 4, 12345))
    for pos in range(SECTOR):
        with pytest.raises(CorruptRecord):
            fmt.decode_superblock(flip(sb, pos, 0x01))
        with pytest.raises(CorruptRecord):
            fmt.decode_trailer(flip(tr, pos, 0x01))


@given(st.lists(file_entries(), max_size=2), st.lists(unplaced_extents(), max_size=3),
       st.booleans(), st.data())
def test_any_byte_flip_of_a_data_segment_is_detected(
    files: list[FileEntry], exts: list[tuple[Extent, bytes]], compress: bool,
    data: st.DataObject
) -> None:
    blob, _, _ = fmt.layout_data_segment(files, exts, 5, 2 * SECTOR, compress=compress)
    pos = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = flip(blob, pos, mask)
    with pytest.raises(CorruptRecord):
        fmt.decode_segment(damaged, 2 * SECTOR)
    with pytest.raises(CorruptRecord):
        SegmentDecoder(2 * SECTOR, 5).feed(damaged)


@given(index_contents(), st.booleans(), st.data())
def test_any_byte_flip_of_an_index_segment_is_detected(
    content: tuple[int, list[fmt.Record]], compress: bool, data: st.DataObject
) -> None:
    offset, recs = content
    blob = fmt.encode_index(recs, 1, offset, compress=compress)
    pos = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CorruptRecord):
        fmt.decode_segment(flip(blob, pos, data.draw(st.integers(1, 255))), offset)


@given(superblocks, trailers(), st.integers(0, SECTOR - 1), st.integers(1, 255))
def test_any_byte_flip_of_superblock_or_trailer_is_detected(
    sb: Superblock, tr: Trailer, pos: int, mask: int
) -> None:
    with pytest.raises(CorruptRecord):
        fmt.decode_superblock(flip(fmt.encode_superblock(sb), pos, mask))
    with pytest.raises(CorruptRecord):
        fmt.decode_trailer(flip(fmt.encode_trailer(tr), pos, mask))


def test_damaged_record_is_named() -> None:
    plain, _ = small_segment(compress=False)
    plen = struct.unpack_from("<I", plain, 32)[0]
    second = HEADER_SIZE + plen + fmt.record_size(FE)
    with pytest.raises(CorruptRecord, match=r"record 1 at byte \d+: checksum mismatch"):
        fmt.decode_segment(flip(plain, second + 10, 0x04), SECTOR)
    for blob in (plain, many_segment(20)[0]):
        plen = struct.unpack_from("<I", blob, 32)[0]
        with pytest.raises(CorruptRecord, match="payload checksum mismatch"):
            fmt.decode_segment(flip(blob, HEADER_SIZE + 1, 0x04), SECTOR)
        with pytest.raises(CorruptRecord, match="record.* checksum mismatch"):
            fmt.decode_segment(flip(blob, HEADER_SIZE + plen + 20, 0x04), SECTOR)
        with pytest.raises(CorruptRecord, match="padding"):
            fmt.decode_segment(flip(blob, len(blob) - 1, 0x04), SECTOR)
        with pytest.raises(CorruptRecord, match="truncated"):
            fmt.decode_segment(blob[:-1], SECTOR)


def test_unsupported_version_says_so() -> None:
    b = bytearray(fmt.encode_superblock(SB))
    b[8:10] = struct.pack("<H", 4)
    with pytest.raises(CorruptRecord, match="format version 4 is not supported.*newer pipeline"):
        fmt.decode_superblock(seal_sector(bytes(b)))
    t = bytearray(fmt.encode_trailer(Trailer(3, 1 << 30, 5 * SECTOR, SECTOR, 2, 0)))
    t[8:10] = struct.pack("<H", 9)
    with pytest.raises(CorruptRecord, match="format version 9"):
        fmt.decode_trailer(seal_sector(bytes(t)))


# ------------------------------------------------------------------ fuzz: only CorruptRecord

decoders = [
    lambda b: fmt.decode_superblock(b),
    lambda b: fmt.decode_trailer(b),
    lambda b: fmt.decode_trailer(b, SB),
    lambda b: fmt.decode_segment_header(b),
    lambda b: fmt.decode_segment_header(b, SECTOR, 0),
    lambda b: fmt.decode_segment(b, SECTOR),
    lambda b: fmt.decode_records(b),
    lambda b: fmt.decode_index(b, Trailer(1, 1 << 30, SECTOR, SECTOR, 1, 0)),
    lambda b: SegmentDecoder().feed(b) + SegmentDecoder().feed(b""),
    lambda b: (d := SegmentDecoder()).feed(b) + d.feed(b""),
    lambda b: (d := SegmentDecoder(scan=True)).feed(b) + d.feed(b""),
]


def _only_corrupt(b: bytes) -> None:
    for decode in decoders:
        with contextlib.suppress(CorruptRecord):
            decode(b)


@given(st.binary(max_size=3 * SECTOR))
@example(b"")
@example(b"PLSG" + bytes(60))
@example(b"PLSEEDSB" + b"\x01\x00" + bytes(SECTOR - 10))
def test_arbitrary_bytes_raise_only_corrupt_record(b: bytes) -> None:
    _only_corrupt(b)


@given(st.binary(min_size=4, max_size=SECTOR), st.sampled_from([fmt.SUPERBLOCK_MAGIC,
                                                                fmt.TRAILER_MAGIC]))
def test_sealed_garbage_sectors_raise_only_corrupt_record(body: bytes, magic: bytes) -> None:
    """Garbage behind a valid magic, version and checksum reaches the field parsers."""
    sector = seal_sector(magic + b"\x01\x00" + body)
    for decode in (fmt.decode_superblock, fmt.decode_trailer):
        with contextlib.suppress(CorruptRecord):
            decode(sector)


@st.composite
def garbage_frames(draw: st.DrawFn) -> bytes:
    """Records with correct xxh32s around bodies that may be nonsense."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        rtype = draw(st.integers(0, 3))
        if draw(st.booleans()):
            good = draw(records)
            body = fmt.encode_records([good])[5:-4]
            pos = draw(st.integers(0, len(body) - 1))
            body = flip(body, pos, draw(st.integers(1, 255)))
            rtype = 1 if isinstance(good, FileEntry) else 2
        else:
            body = draw(st.binary(max_size=80))
        out.append(framed(rtype, body))
    if draw(st.booleans()):  # a frame whose length lies
        out.append(struct.pack("<BI", 2, draw(u32)) + draw(st.binary(max_size=60)))
    return b"".join(out)


@given(garbage_frames(), st.sampled_from(SegmentKind), st.binary(max_size=64))
def test_garbage_records_with_valid_checksums_raise_only_corrupt_record(
    blob: bytes, kind: SegmentKind, payload: bytes
) -> None:
    with contextlib.suppress(CorruptRecord):
        fmt.decode_records(blob)
    seg = raw_segment(kind, 0, SECTOR, blob, payload, count=1)
    with contextlib.suppress(CorruptRecord):
        fmt.decode_segment(seg, SECTOR)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), u64, u64, u32, u32, u32,
       u32)
@example(1, 0, 0, 0, SECTOR, 0, 0, 0, 0)
@example(2, 0, 0, 0, SECTOR, 0, fmt.MAX_INDEX_RECORDS_LEN, 0, fmt.MAX_INDEX_RECORDS_LEN)
@example(2, 1, 0, 0, SECTOR, 0, 100, 0, fmt.MAX_INDEX_RECORDS_LEN)
@example(1, 1, 0, 0, SECTOR, 0, 100, 0, U32)
def test_sealed_garbage_headers_raise_only_corrupt_record(
    kind: int, flags: int, r2: int, seq: int, offset: int, count: int, rlen: int, plen: int,
    raw_len: int,
) -> None:
    head = struct.pack(HEADER_FMT, b"PLSG", kind, flags, r2, seq, offset, count, rlen, plen,
                       raw_len, 0, 0)
    b = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    try:
        h = fmt.decode_segment_header(b)
    except CorruptRecord:
        return
    assert h.total_len % SECTOR == 0 and h.total_len >= HEADER_SIZE + h.records_len + h.payload_len
    assert h.total_len <= HEADER_SIZE + fmt.MAX_INDEX_RECORDS_LEN + SECTOR
    assert h.records_len <= h.records_raw_len <= fmt.MAX_INDEX_RECORDS_LEN
    _only_corrupt(b)


def test_checksum_valid_but_inconsistent_segments_are_corrupt() -> None:
    """What an encoder would refuse, a decoder reports as damage, even under valid checksums."""
    blob = fmt.encode_records([FE, EXT_RAW])  # EXT_RAW.location 0: outside any payload
    cases = [
        (raw_segment(1, 0, SECTOR, blob, b"hello"), "outside this segment's payload"),
        (raw_segment(1, 0, SECTOR, blob, b"hello", count=3), "header says 3"),
        (raw_segment(2, 0, SECTOR, blob, b"x"), "INDEX segment has no payload"),
        (raw_segment(4, 0, SECTOR, b""), "unknown segment kind 4"),
        (raw_segment(3, 0, SECTOR, b""), "exactly one session record"),
        (raw_segment(1, 0, SECTOR, b"", reserved=(2, 0)), "reserved"),
        (raw_segment(1, 0, SECTOR, b"", reserved=(0, 1)), "reserved"),
        (raw_segment(1, 0, SECTOR, blob, b"hello", raw_len=len(blob) + 1), "raw length"),
        (raw_segment(1, 0, SECTOR, blob, b"hello", reserved=(1, 0)), "do not shrink"),
        (raw_segment(1, 0, SECTOR + 1, b""), "sector boundary"),
        (raw_segment(2, 0, 2 * SECTOR, fmt.encode_records([EXT_ZERO])), "no FileEntry"),
        (raw_segment(2, 0, 2 * SECTOR, fmt.encode_records([FE, FE])), "appears twice"),
        (raw_segment(2, 0, 2 * SECTOR, blob), "not inside the segments before the index"),
        (raw_segment(1, 0, SECTOR, framed(9, bytes(40)), count=1), "unknown record type 9"),
        (raw_segment(1, 0, SECTOR, framed(2, b"\0" * 48), count=1), "extent body is 48 bytes"),
        (raw_segment(1, 0, SECTOR, framed(2, bytes(20) + b"\x07" + bytes(28)), count=1),
         "unknown codec 7"),
        (raw_segment(1, 0, SECTOR, framed(1, bytes(28) + b"\x01\x00\xff\x01\x00x"), count=1),
         "utf-8"),
    ]
    for seg, match in cases:
        with pytest.raises(CorruptRecord, match=match):
            fmt.decode_segment(seg, seg_offset(seg))


def seg_offset(seg: bytes) -> int:
    return struct.unpack_from("<Q", seg, 16)[0]


# --------------------------------------------------------------------------- compressed records

# Fields with no redundancy to speak of: a zstd frame of these records is not smaller.
FE_DENSE = FileEntry(4712128852136459333, "Qz", "xK", 10876825249457225881, 6368248133177167415,
                     4047793130)
EXT_DENSE = Extent(4712128852136459333, 3614262064, 2941943690, Codec.ZSTD, 2847597351,
                   bytes.fromhex("a07d1dec25b1b087efe26c07ff0d21d7"), 1526713224155)


def test_records_are_stored_compressed_only_when_that_is_smaller() -> None:
    cases = [
        (fmt.encode_segment([], b"", 0, SECTOR), False),
        (fmt.encode_index([FE_DENSE, EXT_DENSE], 3, 2**42), False),
        (small_segment()[0], True),
        (many_segment(20)[0], True),
    ]
    for blob, compressed in cases:
        h = fmt.decode_segment_header(blob)
        assert h.records_compressed == compressed
        assert (h.records_len < h.records_raw_len) == compressed
        plain = fmt.encode_segment(fmt.decode_segment(blob, h.offset).records,
                                   blob[HEADER_SIZE : HEADER_SIZE + h.payload_len], h.seq,
                                   h.offset, h.kind, compress=False)
        p = fmt.decode_segment_header(plain)
        assert not p.records_compressed and p.records_len == p.records_raw_len == h.records_raw_len
        assert fmt.decode_segment(plain, h.offset).records == fmt.decode_segment(
            blob, h.offset).records


def test_locations_do_not_depend_on_compression() -> None:
    """The payload comes right after the header, so layout is one pass either way."""
    rows = many_files(50)
    files, exts = [f for f, _, _ in rows], [(e, d) for _, e, d in rows]
    a, recs, _ = fmt.layout_data_segment(files, exts, 4, 3 * SECTOR)
    b, plain_recs, _ = fmt.layout_data_segment(files, exts, 4, 3 * SECTOR, compress=False)
    assert recs == plain_recs and len(a) < len(b)
    ha, hb = fmt.decode_segment_header(a), fmt.decode_segment_header(b)
    assert ha.payload_offset == hb.payload_offset == 3 * SECTOR + HEADER_SIZE
    assert recs[len(files)].location == 3 * SECTOR + HEADER_SIZE
    assert ha.records_offset == 3 * SECTOR + HEADER_SIZE + ha.payload_len
    seg = fmt.decode_segment(a, 3 * SECTOR)
    for (_, data), ext in zip(exts, seg.extents, strict=True):
        assert seg.stored(ext) == data
        assert a[ext.location - 3 * SECTOR :][: ext.stored_len] == data


def zstd_rle_frame(declared: int | None, n: int) -> bytes:
    """A hand-made zstd frame: a content size (or none) and one RLE block of ``n`` zeros."""
    head = b"\x00\x00" if declared is None else b"\xe0" + declared.to_bytes(8, "little")
    return b"\x28\xb5\x2f\xfd" + head + ((n << 3) | 0b011).to_bytes(3, "little") + b"\x00"


def test_decompression_bombs_are_refused_before_anything_is_allocated() -> None:
    records = fmt.encode_records(many_segment(20)[1])
    frame = zstd_frame(records)
    assert 2 * len(frame) + 1 < len(records)
    assert zstandard.frame_content_size(zstd_rle_frame(16 << 20, 100)) == 16 << 20
    cases = [
        # The header's own raw length is checked against the limits first.
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=frame,
                     raw_len=fmt.MAX_DATA_RECORDS_LEN + 1), "exceeds"),
        (raw_segment(2, 0, 2 * SECTOR, records, stored=frame, raw_len=U32), "exceeds"),
        # The frame must declare the header's raw length: never trusted beyond it.
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=zstd_rle_frame(16 << 20, 100),
                     raw_len=len(records)), "declares 16777216 bytes"),
        (raw_segment(2, 0, 2 * SECTOR, records, stored=zstd_rle_frame(1 << 40, 100),
                     raw_len=len(records)), "declares 1099511627776 bytes"),
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=zstd_rle_frame(None, 200),
                     raw_len=len(records)), "declares no size"),
        # A frame that holds more than it declares, or more than one frame, or junk after it.
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=zstd_rle_frame(len(records), 900),
                     raw_len=len(records)), "do not decompress"),
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=frame + frame,
                     raw_len=len(records)), "do not decompress"),
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=frame + b"\0",
                     raw_len=len(records)), "do not decompress"),
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=frame[:-1],
                     raw_len=len(records)), "do not decompress"),
        (raw_segment(1, 0, SECTOR, records, b"hello", stored=b"not a zstd frame",
                     raw_len=len(records)), "records"),
    ]
    for seg, match in cases:
        tracemalloc.start()
        try:
            with pytest.raises(CorruptRecord, match=match):
                fmt.decode_segment(seg, seg_offset(seg))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, (match, peak)
        with pytest.raises(CorruptRecord):
            SegmentDecoder(seg_offset(seg)).feed(seg)


def test_decoder_limit_counts_records_decompressed() -> None:
    blob, _ = many_segment(200, tiny=True)
    h = fmt.decode_segment_header(blob)
    assert h.records_compressed
    unpacked = fmt.segment_total_len(h.records_raw_len, h.payload_len)
    assert h.total_len < unpacked
    with pytest.raises(CorruptRecord, match="records decompressed.*limit"):
        SegmentDecoder(max_segment_len=unpacked - 1).feed(blob)
    assert len(SegmentDecoder(max_segment_len=unpacked).feed(blob)) == 1


@given(garbage_frames(), st.sampled_from(SegmentKind), st.binary(max_size=64), st.data())
def test_compressed_garbage_with_valid_checksums_raises_only_corrupt_record(
    blob: bytes, kind: SegmentKind, payload: bytes, data: st.DataObject
) -> None:
    frame = zstd_frame(blob)
    if data.draw(st.booleans()):  # damage the frame itself, then reseal the checksums
        frame = flip(frame, data.draw(st.integers(0, len(frame) - 1)),
                     data.draw(st.integers(1, 255)))
    raw_len = data.draw(st.one_of(st.just(len(blob)), u32))
    seg = raw_segment(kind, 0, SECTOR, blob, payload, count=1, stored=frame, raw_len=raw_len)
    with contextlib.suppress(CorruptRecord):
        fmt.decode_segment(seg, SECTOR)


def overhead_tree(n: int, seed: int = 1) -> list[tuple[FileEntry, Extent, bytes]]:
    """A tree of small files: sequential ids, mtimes within a day, sizes 1-64 KiB."""
    rnd = random.Random(seed)
    day = 1_764_115_200_000_000_000
    out = []
    for i in range(n):
        path = f"small/d{i // 1000}/e{(i // 50) % 20}/file {i:05d}.txt"
        size = rnd.randint(1, 64 << 10)
        stored = bytes(max(1, size // 3))
        ext = Extent(i, 0, size, Codec.ZSTD, len(stored),
                     xxhash.xxh3_128_digest(i.to_bytes(8, "little")))
        out.append((FileEntry(i, path, "vdir/" + path, size, day + rnd.randrange(86_400 * 10**9),
                              0o100644), ext, stored))
    return out


def test_records_overhead_of_small_files() -> None:
    """Bytes per file beyond the stored payload, DATA segments of 1000 files plus the INDEX."""
    tree, per_seg = overhead_tree(20_000), 1000
    per_file = {}
    for compress in (False, True):
        offset, seq, data_bytes, placed = SECTOR, 0, 0, []
        for k in range(0, len(tree), per_seg):
            rows = tree[k : k + per_seg]
            blob, recs, _ = fmt.layout_data_segment(
                [f for f, _, _ in rows], [(e, d) for _, e, d in rows], seq, offset,
                compress=compress)
            h = fmt.decode_segment_header(blob[:HEADER_SIZE], offset, seq)
            data_bytes += h.total_len - h.payload_len  # header, records and padding
            placed += recs
            offset, seq = h.end, seq + 1
        index = fmt.encode_index(placed, seq, offset, compress=compress)
        assert list(fmt.decode_segment(index, offset).records) == placed
        per_file[compress] = (data_bytes / len(tree), len(index) / len(tree))
    (d0, i0), (d1, i1) = per_file[False], per_file[True]
    print(f"\nrecords overhead per small file: uncompressed DATA {d0:.1f} + INDEX {i0:.1f} = "
          f"{d0 + i0:.1f} B; zstd DATA {d1:.1f} + INDEX {i1:.1f} = {d1 + i1:.1f} B")
    assert d0 + i0 > 300  # 158 bytes of records per file, twice
    # Measured 58.4 + 55.5 = 113.9 (zstandard 0.25, level 3). The floor is about 48:
    # the xxh3-128 digest (16) and two xxh32 record checksums (8) do not compress.
    assert d1 + i1 < 125


# --------------------------------------------------------------------------- validation (bugs)

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
FE_ARGS = dict(file_id=1, path="a/b", blob="c/a/b", size=10, mtime_ns=0, mode=0o644)
EXT_ARGS = dict(file_id=1, offset=0, raw_len=10, codec=Codec.ZSTD, stored_len=5,
                xxh3=bytes(16), location=0)
SB_ARGS = dict(drive_seq=1, volume_uuid=UUID, session_id="s-1", job_name="j", dstdir="cnt/d/",
               blob_type=BlobType.BLOCK, created_ns=0, data_area_size=3 * SECTOR)
TR_ARGS = dict(drive_seq=1, data_area_size=4 * SECTOR, index_offset=SECTOR,
               index_length=2 * SECTOR, segment_count=1, payload_bytes=0)


@pytest.mark.parametrize(("cls", "base", "change"), [
    (FileEntry, FE_ARGS, {"file_id": -1}),
    (FileEntry, FE_ARGS, {"file_id": 2**64}),
    (FileEntry, FE_ARGS, {"file_id": True}),
    (FileEntry, FE_ARGS, {"file_id": "1"}),
    (FileEntry, FE_ARGS, {"path": ""}),
    (FileEntry, FE_ARGS, {"path": "/etc/passwd"}),
    (FileEntry, FE_ARGS, {"path": "a//b"}),
    (FileEntry, FE_ARGS, {"path": "a/./b"}),
    (FileEntry, FE_ARGS, {"path": "../escape"}),
    (FileEntry, FE_ARGS, {"path": "dir/"}),
    (FileEntry, FE_ARGS, {"path": "nul\x00byte"}),
    (FileEntry, FE_ARGS, {"path": "bad \udcff surrogate"}),
    (FileEntry, FE_ARGS, {"path": "x" * 4097}),
    (FileEntry, FE_ARGS, {"path": b"a/b"}),
    (FileEntry, FE_ARGS, {"blob": ""}),
    (FileEntry, FE_ARGS, {"blob": "a\x00"}),
    (FileEntry, FE_ARGS, {"size": -1}),
    (FileEntry, FE_ARGS, {"mtime_ns": 2**63}),
    (FileEntry, FE_ARGS, {"mode": 2**32}),
    (Extent, EXT_ARGS, {"raw_len": 0}),
    (Extent, EXT_ARGS, {"raw_len": 2**32}),
    (Extent, EXT_ARGS, {"offset": U64}),
    (Extent, EXT_ARGS, {"codec": 9}),
    (Extent, EXT_ARGS, {"codec": "ZSTD"}),
    (Extent, EXT_ARGS, {"stored_len": 0}),
    (Extent, EXT_ARGS, {"stored_len": 2**32}),
    (Extent, EXT_ARGS, {"codec": Codec.RAW, "stored_len": 9}),
    (Extent, EXT_ARGS, {"codec": Codec.ZERO}),
    (Extent, EXT_ARGS, {"codec": Codec.ZERO, "stored_len": 0, "location": SECTOR}),
    (Extent, EXT_ARGS, {"xxh3": bytes(15)}),
    (Extent, EXT_ARGS, {"xxh3": bytearray(16)}),
    (Extent, EXT_ARGS, {"location": U64}),
    (Extent, EXT_ARGS, {"location": -1}),
    (Superblock, SB_ARGS, {"drive_seq": 0}),
    (Superblock, SB_ARGS, {"volume_uuid": "not-a-uuid"}),
    (Superblock, SB_ARGS, {"volume_uuid": UUID.replace("-", "x")}),
    (Superblock, SB_ARGS, {"volume_uuid": "g" + UUID[1:]}),
    (Superblock, SB_ARGS, {"session_id": ""}),
    (Superblock, SB_ARGS, {"job_name": "j" * 1025}),
    (Superblock, SB_ARGS, {"job_name": "nul\x00"}),
    (Superblock, SB_ARGS, {"dstdir": "/c/d/"}),
    (Superblock, SB_ARGS, {"dstdir": "c/d"}),
    (Superblock, SB_ARGS, {"blob_type": 3}),
    (Superblock, SB_ARGS, {"created_ns": -(2**63) - 1}),
    (Superblock, SB_ARGS, {"data_area_size": 2 * SECTOR}),
    (Superblock, SB_ARGS, {"data_area_size": 3 * SECTOR + 1}),
    (Superblock, SB_ARGS, {"version": 3}),
    (Trailer, TR_ARGS, {"index_offset": 0}),
    (Trailer, TR_ARGS, {"index_offset": SECTOR + 1}),
    (Trailer, TR_ARGS, {"index_length": 3 * SECTOR}),
    (Trailer, TR_ARGS, {"segment_count": 0}),
    (Trailer, TR_ARGS, {"payload_bytes": -1}),
])
def test_invalid_field_values_raise_value_error(cls: type, base: dict, change: dict) -> None:
    cls(**base)
    with pytest.raises(ValueError):
        cls(**{**base, **change})


def _field_checks_pass(path: object, blob: object, size: object) -> bool:
    """The per-field checks alone, as FileEntry ran them before its combined fast test."""
    try:
        fmt._utf8("path", path, fmt.MAX_NAME_BYTES)
        fmt._check_relpath(path)  # type: ignore[arg-type]
        fmt._utf8("blob", blob, fmt.MAX_NAME_BYTES)
        fmt._int("size", size, 0, 2**64 - 1)
    except ValueError:
        return False
    return True


_name_parts = st.sampled_from(["", ".", "..", "a", "b.c", "...", "\0", "\u00fc", "\ud800",
                               "x" * 2100, "/"])


@settings(max_examples=400)
@given(path=st.lists(_name_parts, max_size=4).map("/".join) | st.text(max_size=12),
       blob=st.lists(_name_parts, max_size=3).map("/".join) | st.text(max_size=8),
       size=st.sampled_from([0, 1, -1, 2**64 - 1, 2**64, True, 1.0]))
@example(path="a/..", blob="b", size=0)
@example(path="x" * 4096, blob="b", size=0)
@example(path="x" * 4097, blob="b", size=0)
@example(path="\u00fc" * 2048, blob="b", size=0)
@example(path="\u00fc" * 2049, blob="b", size=0)
def test_file_entry_fast_check_agrees_with_the_field_checks(path: str, blob: str,
                                                            size: int) -> None:
    try:
        FileEntry(1, path, blob, size, 0, 0o644)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == _field_checks_pass(path, blob, size)


def test_job_name_may_be_empty_until_the_job_is_named() -> None:
    sb = Superblock(**{**SB_ARGS, "job_name": ""})
    assert fmt.decode_superblock(fmt.encode_superblock(sb)).job_name == ""


def test_enum_fields_accept_their_int_values() -> None:
    assert Extent(**{**EXT_ARGS, "codec": 1}).codec is Codec.ZSTD
    assert Superblock(**{**SB_ARGS, "blob_type": 2}).blob_type is BlobType.PAGE


def test_encoders_refuse_inconsistent_segments() -> None:
    placed = Extent(1, 0, 5, Codec.RAW, 5, bytes(16), location=SECTOR + 500)
    fe = FileEntry(1, "f", "c/f", 5, 0, 0o644)
    with pytest.raises(ValueError, match="outside this segment's payload"):
        fmt.encode_segment([placed], b"hello", 0, SECTOR)
    with pytest.raises(ValueError, match="multiple of 4096"):
        fmt.encode_segment([], b"", 0, SECTOR + 1)
    with pytest.raises(ValueError):
        fmt.encode_segment([], b"", 0, 0)
    with pytest.raises(ValueError, match="payload of"):
        fmt.encode_segment([], bytes(fmt.MAX_DATA_PAYLOAD + 1), 0, SECTOR)
    with pytest.raises(ValueError, match="no payload"):
        fmt.encode_segment([], b"x", 0, SECTOR, SegmentKind.INDEX)
    with pytest.raises(ValueError, match="no FileEntry"):
        fmt.encode_index([placed], 1, 2 * SECTOR)
    with pytest.raises(ValueError, match="appears twice"):
        fmt.encode_index([fe, fe], 1, 2 * SECTOR)
    with pytest.raises(ValueError, match="runs past the file size"):
        fmt.encode_index([FileEntry(1, "f", "c/f", 4, 0, 0), placed], 1, 2 * SECTOR)
    with pytest.raises(ValueError, match="before the index"):
        fmt.encode_index([fe, placed], 1, SECTOR)
    with pytest.raises(ValueError, match="stored bytes"):
        fmt.layout_data_segment([], [(placed, b"hell")], 0, SECTOR)
    with pytest.raises(TypeError):
        fmt.encode_records(["not a record"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        SegmentDecoder(SECTOR + 1)


# --------------------------------------------------------------------------- a large index


def test_index_of_200k_extents_round_trips() -> None:
    """A closing index at scale (200,000 extents, 2,000 files), plain and zstd, decodes to
    the same records.  Its speed is measured in perf/, never asserted here."""
    n_files, n = 2_000, 200_000
    files = [FileEntry(i, f"dir {i % 7}/file {i}.bin", f"c/dir/file {i}.bin", 1 << 30, 0, 0o644)
             for i in range(n_files)]
    exts = [Extent(i % n_files, (i // n_files) << 20, 1 << 20, Codec.ZSTD, 1000,
                   xxhash.xxh3_128_digest(i.to_bytes(8, "little")), SECTOR + 64 + 1000 * i)
            for i in range(n)]
    recs: list[fmt.Record] = [*files, *exts]
    offset = fmt.align_up(SECTOR + 64 + 1000 * n)
    raw_len = sum(map(fmt.record_size, recs))
    for compress in (False, True):
        blob = fmt.encode_index(recs, 1, offset, compress=compress)
        seg = fmt.decode_segment(blob, offset)
        assert list(seg.records) == recs
        assert seg.header.records_compressed == compress
        assert seg.header.records_raw_len == raw_len
        assert len(blob) <= fmt.align_up(HEADER_SIZE + raw_len)


@pytest.mark.parametrize(("field", "value", "said"), [
    ("session_id", "x/../../../../tmp/PWNED", "session id"),
    ("session_id", "new\nline", "session id"),
    ("session_id", "s", "session id"),
    ("job_name", "job\nname", "job name"),
    ("dstdir", "cnt/../x/", "dstdir"),
    ("dstdir", "Bad_Container/", "dstdir"),
    ("dstdir", "cnt/a\\b/", "dstdir"),
    ("dstdir", "cnt/a//b/", "dstdir"),
])
def test_superblock_strings_are_checked_before_use(field: str, value: str, said: str) -> None:
    """A checksum only says the bytes are the ones written; the decoder holds the strings to
    the rules prep writes them under (issue 15 #3: a session id named files outside --log-dir)."""
    sb = Superblock(**{**SB_ARGS, field: value})
    with pytest.raises(CorruptRecord, match=f"superblock: {said}"):
        fmt.decode_superblock(fmt.encode_superblock(sb))


# --------------------------------------------------------------------------- rows (verify's)


def _rows_of(seg: fmt.Segment) -> list[fmt.ExtentRow]:
    return [(e.file_id, e.offset, e.raw_len, e.codec.value, e.stored_len, e.xxh3, e.location)
            for e in seg.extents]


def _verdict(decode: object, blob: bytes, offset: int, seq: int | None,
             check_payload: bool = True) -> object:
    try:
        got = decode(blob, offset, seq, check_payload=check_payload)  # type: ignore[operator]
    except CorruptRecord as exc:
        return ("corrupt", str(exc))
    if isinstance(got, fmt.Segment):
        return (got.header, _rows_of(got), bytes(got.payload))
    return (got.header, got.extents, bytes(got.payload))


@pytest.mark.parametrize("compress", [True, False])
def test_segment_rows_are_the_segment_extents_and_damage_reads_the_same(compress: bool) -> None:
    """decode_segment_rows: the same extents, header and payload as decode_segment, and for
    a flipped bit anywhere in the segment (records, file entries, payload, padding) the same
    CorruptRecord with the same words, with and without the payload check."""
    blob, _ = many_segment(12, compress=compress, tiny=True)
    assert _verdict(fmt.decode_segment_rows, blob, SECTOR, 0) == _verdict(
        fmt.decode_segment, blob, SECTOR, 0)
    rng = random.Random(7)
    for pos in sorted({*rng.sample(range(len(blob)), 120), *range(0, 80, 7)}):
        bad = flip(blob, pos, 1 << rng.randrange(8))
        for check_payload in (True, False):
            assert _verdict(fmt.decode_segment_rows, bad, SECTOR, 0, check_payload) == \
                _verdict(fmt.decode_segment, bad, SECTOR, 0, check_payload), pos


def test_segment_rows_check_what_extent_and_file_entry_check() -> None:
    """Records with sound checksums but values Extent or FileEntry refuse (a ZERO extent that
    stores bytes, a RAW one whose lengths differ, a '..' path, an extent outside the payload)
    are refused by the rows decoder too, in the same words; an INDEX segment is not DATA."""
    ext = struct.pack("<QQIBI16sQ", 1, 0, 10, Codec.ZERO.value, 4, bytes(16), 0)
    raw = struct.pack("<QQIBI16sQ", 1, 0, 10, Codec.RAW.value, 4, bytes(16), SECTOR + 64)
    out = struct.pack("<QQIBI16sQ", 1, 0, 10, Codec.ZSTD.value, 4, bytes(16), 1 << 40)
    name = b"a/../b"
    fe = struct.pack("<QQqI", 1, 10, 0, 0o644) + struct.pack("<H", 6) + name + \
        struct.pack("<H", 6) + name
    for rec in (framed(2, ext), framed(2, raw), framed(2, out), framed(1, fe)):
        blob = raw_segment(SegmentKind.DATA.value, 0, SECTOR, rec, payload=bytes(8),
                           count=1)
        want = _verdict(fmt.decode_segment, blob, SECTOR, 0)
        assert want[0] == "corrupt" and "unknown record type" not in want[1]
        assert _verdict(fmt.decode_segment_rows, blob, SECTOR, 0) == want
    idx = fmt.encode_index([FE], 1, SECTOR)
    with pytest.raises(CorruptRecord, match="INDEX segment where a DATA one"):
        fmt.decode_segment_rows(idx, SECTOR, 1)
