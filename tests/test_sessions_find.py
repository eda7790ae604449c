"""volume.sessions.find over a plaintext image built with the format's encoders: the chain
from the trailer, the walk without it, and hostile bytes (flipped anywhere, or forged with
valid checksums) answered only with CorruptRecord, never another exception or a loop."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.drive import format as fmt
from pipeline.drive.format import HEADER_SIZE, SECTOR, BlobType, Codec, CorruptRecord
from pipeline.volume import sessions

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
SIZE = 64 * SECTOR


class Plain:
    """A drive's data area in the clear: what ``find`` reads through the cipher."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def read(self, _drive: object, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > len(self.data):
            raise OSError("read past the end")
        return bytes(self.data[offset:offset + length])


def _session_log(img: bytearray, at: int, seq: int, tag: str) -> tuple[int, int, int]:
    """One DATA segment and its INDEX at ``at``; returns (index offset, length, seq)."""
    data = tag.encode() * 100
    fe = fmt.FileEntry(1, f"{tag}.txt", f"{tag}.txt", len(data), 0, 0o644)
    ext = fmt.Extent(1, 0, len(data), Codec.RAW, len(data), bytes(16))
    blob = fmt.layout_data_segment([fe], [(ext, data)], seq, at).blob
    img[at:at + len(blob)] = blob
    placed = fmt.Extent(1, 0, len(data), Codec.RAW, len(data), bytes(16), at + HEADER_SIZE)
    index_at = at + len(blob)
    index = fmt.encode_index([fe, placed], seq + 1, index_at, start=at)
    img[index_at:index_at + len(index)] = index
    return index_at, len(index), seq + 1


def image() -> tuple[bytearray, fmt.Superblock]:
    img = bytearray(SIZE)
    sb = fmt.Superblock(1, UUID, "ses1", "", "cont/", BlobType.BLOCK, 0, SIZE, 3, 1)
    img[:SECTOR] = fmt.encode_superblock(sb)
    i1 = _session_log(img, SECTOR, 0, "one")
    s2 = i1[0] + i1[1]
    digest = hashlib.sha256(bytes(img[i1[0]:s2])).digest()
    rec = fmt.SessionRecord("ses2", "", "cont2/", BlobType.BLOCK, 1, 0, 1, SECTOR, i1[0], i1[1],
                            digest)
    img[s2:s2 + SECTOR] = fmt.encode_session_segment(rec, i1[2] + 1, s2)
    i2 = _session_log(img, s2 + SECTOR, i1[2] + 2, "two")
    img[SIZE - SECTOR:] = fmt.encode_trailer(fmt.Trailer(
        1, SIZE, i2[0], i2[1], i2[2] + 1, 0, version=2, session_offset=s2, sessions=2))
    return img, sb


def test_the_chain_and_the_walk_find_the_same_sessions() -> None:
    img, sb = image()
    spans = sessions.find(None, Plain(img), sb)  # type: ignore[arg-type]
    assert [s.session_id for s in spans] == ["ses1", "ses2"]
    assert [s.superblock.version for s in spans] == [1, 1]
    assert spans[0].index_sha256 is not None and spans[1].index_sha256 is None
    img[SIZE - SECTOR:] = bytes(SECTOR)  # no trailer: the walk from the start
    walked = sessions.find(None, Plain(img), sb)  # type: ignore[arg-type]
    assert walked == spans


def _fuzz(img: bytearray, sb: fmt.Superblock) -> None:
    with contextlib.suppress(CorruptRecord):
        sessions.find(None, Plain(img), sb)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 255)), max_size=4))
def test_flipped_bytes_raise_only_corrupt_record(flips: list[tuple[int, int]]) -> None:
    img, sb = image()
    for pos, xor in flips:
        img[pos] ^= xor
    _fuzz(img, sb)


def _seal_session(img: bytearray, at: int, seq: int, fields: tuple) -> None:
    """A SESSION segment at ``at`` with any fixed fields, its checksums valid."""
    body = struct.pack("<IqBBHQQQ32s", *fields) + b"".join(
        struct.pack("<H", len(s)) + s for s in (b"ses2", b"", b"cont2/"))
    rec = struct.pack("<BI", 3, len(body)) + body
    rec += struct.pack("<I", xxhash.xxh32_intdigest(rec))
    head = struct.pack("<4sBBHQQIIIIQQ", b"PLSG", 3, 0, 0, seq, at, 1, len(rec), 0, len(rec),
                       xxhash.xxh3_64_intdigest(rec), xxhash.xxh3_64_intdigest(b""))
    head += struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    seg = head + rec
    img[at:at + SECTOR] = seg + bytes(SECTOR - len(seg))


offsets = st.integers(0, 2**64 - 1) | st.sampled_from([0, SECTOR, 2 * SECTOR, SIZE, 1 << 40])


@settings(max_examples=300)
@given(offsets, offsets, offsets, st.integers(0, 2**64 - 1), offsets, st.integers(0, 2**32 - 1))
def test_forged_chain_raises_only_corrupt_record(first: int, ioff: int, ilen: int, seq: int,
                                                 session_offset: int, sessions_n: int) -> None:
    """A SESSION record pointing anywhere (outside the drive, back at itself, at another
    session's segments) and a trailer pointing anywhere: damage, or a chain that holds."""
    img, sb = image()
    tr = fmt.decode_trailer(bytes(img[SIZE - SECTOR:]), sb)
    _seal_session(img, tr.session_offset, seq % (1 << 64),
                  (1, 0, 1, 1, 0, first, ioff, ilen, bytes(32)))
    _fuzz(img, sb)
    body = fmt._TR_FIXED.pack(fmt.TRAILER_MAGIC, 2, 0, 1, SIZE, tr.index_offset,
                              tr.index_length, tr.segment_count, 0)
    body += struct.pack("<QI", session_offset, sessions_n)
    body = body.ljust(fmt.CHECKSUM_AT, b"\0")
    img[SIZE - SECTOR:] = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    _fuzz(img, sb)


def test_a_session_segment_pointing_outside_the_drive_is_named() -> None:
    img, sb = image()
    tr = fmt.decode_trailer(bytes(img[SIZE - SECTOR:]), sb)
    _seal_session(img, tr.session_offset, tr.segment_count - 3,
                  (1, 0, 1, 1, 0, SECTOR, 1 << 40, SECTOR, bytes(32)))
    with pytest.raises(CorruptRecord, match="does not end where this SESSION segment begins"):
        sessions.find(None, Plain(img), sb)  # type: ignore[arg-type]
