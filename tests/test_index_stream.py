"""The closing index encoded as a stream (issue 18): byte for byte today's whole encoding.

``format.IndexStream`` gives out the stored bytes as they are made and the header at the
end; the journal spools them (prep writes the drive from the spool) or digests them
(verify).  What reaches the drive must not change: every test here compares with the
encoding that held the whole index in memory (``whole_index``, the code it replaced).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.drive.format import HEADER_SIZE, SECTOR, Codec, Extent, FileEntry
from pipeline.receive import reader

from . import test_hostile_damage as hd
from .test_format import _files_first, index_contents, u64
from .test_hostile_damage import session  # noqa: F401 - the module's fixture, shared


def whole_index(recs: list[fmt.Record], seq: int, offset: int, keep_raw: int) -> bytes:
    """The index as the encoder before streaming made it: one zstd stream over the whole
    records blob, kept whole; stored raw if it did not shrink (only up to ``keep_raw``)."""
    blob = fmt.encode_records(recs)
    z = zstandard.ZstdCompressor(level=fmt.RECORDS_ZSTD_LEVEL, write_checksum=False,
                                 write_content_size=True, write_dict_id=False
                                 ).compressobj(size=len(blob))
    stored, flags = z.compress(blob) + z.flush(), fmt.RECORDS_ZSTD
    if len(stored) >= len(blob):
        if len(blob) > keep_raw:
            raise ValueError("did not compress")
        stored, flags = blob, 0
    head = fmt._HEADER.pack(fmt.SEGMENT_MAGIC, fmt.SegmentKind.INDEX, flags, 0, seq, offset,
                            len(recs), len(stored), 0, len(blob),
                            xxhash.xxh3_64_intdigest(stored), xxhash.xxh3_64_intdigest(b""))
    used = HEADER_SIZE + len(stored)
    return b"".join((head, fmt._CKSUM.pack(xxhash.xxh3_64_intdigest(head)), stored,
                     bytes(fmt.align_up(used) - used)))


def streamed(recs: list[fmt.Record], seq: int, offset: int, cuts: list[int],
             keep_raw: int, *, encoded: bool = False) -> tuple[bytes, list[bytes]]:
    """(segment, the pieces given out before ``end``), fed in batches cut at ``cuts``."""

    class Stream(fmt.IndexStream):
        _KEEP_RAW = keep_raw

    enc = Stream(seq, offset, sum(fmt.record_size(r) for r in recs))
    pieces: list[bytes] = []
    bounds = [0, *sorted(c % (len(recs) + 1) for c in cuts), len(recs)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        batch = recs[a:b]
        pieces.append(enc.add_encoded(fmt.encode_record_list(batch)) if encoded
                      else enc.add(batch))
    head, tail = enc.end()
    assert len(head) == HEADER_SIZE
    return b"".join((head, *pieces, tail)), [p for p in pieces if p]


@given(index_contents(), u64, st.lists(st.integers(0, 50), max_size=6),
       st.sampled_from([0, 64, fmt.IndexStream._KEEP_RAW]), st.booleans())
def test_streamed_index_is_the_whole_encoding(content: tuple[int, list[fmt.Record]], seq: int,
                                              cuts: list[int], keep_raw: int,
                                              encoded: bool) -> None:
    offset, recs = content
    recs = _files_first(recs)
    try:
        want = whole_index(recs, seq, offset, keep_raw)
    except ValueError:
        with pytest.raises(ValueError, match="did not compress"):
            streamed(recs, seq, offset, cuts, keep_raw, encoded=encoded)
        return
    got, pieces = streamed(recs, seq, offset, cuts, keep_raw, encoded=encoded)
    assert got == want
    if len(fmt.encode_records(recs)) <= keep_raw:
        assert pieces == []  # held: it may yet be stored raw
    seg = fmt.decode_segment(got, offset)
    assert list(seg.records) == recs
    assert seg == fmt.decode_segment(fmt.encode_index(recs, seq, offset), offset)


def many_records(n: int, seed: int) -> tuple[int, list[fmt.Record]]:
    rng = random.Random(seed)
    files: list[fmt.Record] = []
    exts: list[fmt.Record] = []
    for i in range(1, n + 1):
        files.append(FileEntry(i, f"d{rng.randrange(1000)}/f-{rng.random()}.txt", f"c/x{i}",
                               4096, 1_700_000_000_000_000_000 + i, 0o100644))
        exts.append(Extent(i, 0, 4096, Codec.ZSTD, 100, rng.randbytes(16),
                           SECTOR + HEADER_SIZE + 100 * i))
    return fmt.align_up(SECTOR + HEADER_SIZE + 100 * (n + 1)), files + exts


@pytest.mark.parametrize("batch", [1, 333, 4096, 100_000])
def test_a_large_index_comes_out_as_it_is_made(batch: int) -> None:
    """Past the raw threshold the stored bytes leave before the end, whatever the batches:
    the encoder holds zstd's window, never the index."""
    offset, recs = many_records(30_000, batch)
    size = len(fmt.encode_records(recs))
    assert size > fmt.IndexStream._KEEP_RAW
    want = whole_index(recs, 7, offset, fmt.IndexStream._KEEP_RAW)
    got, pieces = streamed(recs, 7, offset, list(range(batch, len(recs), batch)),
                           fmt.IndexStream._KEEP_RAW)
    assert got == want
    assert sum(map(len, pieces)) > len(want) // 2


def test_the_stream_refuses_feeding_after_its_end() -> None:
    f = FileEntry(1, "a", "c/a", 0, 0, 0o100644)
    enc = fmt.IndexStream(0, 4 * SECTOR, fmt.record_size(f))
    enc.add([f])
    enc.end()
    with pytest.raises(ValueError, match="ended already"):
        enc.end()
    with pytest.raises(ValueError, match="after the end"):
        enc.add([])


@given(st.binary(min_size=HEADER_SIZE, max_size=3000), st.lists(st.integers(0, 3000)))
def test_rotated_digest_of_any_split(blob: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(c % (len(blob) + 1) for c in cuts), len(blob)]
    blocks = [blob[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    want = xxhash.xxh3_128_digest(blob[HEADER_SIZE:] + blob[:HEADER_SIZE])
    assert journal.rotated_digest(blocks) == want


def _journal(tmp_path: Path, n: int) -> tuple[journal.Journal, int]:
    """A journal of ``n`` tiny files in segments of 1,000, one superseded; the index's offset."""
    info = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 40, 1 << 40)
    jrn = journal.Journal.create(tmp_path / "j.journal", info, drive, "pw")
    rng = random.Random(n)
    offset, seq = SECTOR, 0
    for first in range(1, n + 1, 1000):
        files = [FileEntry(i, f"d{i % 89}/{rng.random()}.txt", f"v/f{i}", 10, i, 0o100644)
                 for i in range(first, min(n + 1, first + 1000))]
        extents = [(Extent(f.file_id, 0, 10, Codec.RAW, 10, rng.randbytes(16), 0),
                    rng.randbytes(10)) for f in files]
        blob, records, encoded = fmt.layout_data_segment(files, extents, seq, offset)
        header = fmt.decode_segment_header(blob, offset, seq)
        jrn.commit([(header, records, encoded)], header.end, seq + 1)
        offset, seq = header.end, seq + 1
    jrn.supersede([2])
    return jrn, offset


@pytest.mark.parametrize("n", [3, 25_000])
def test_the_journal_spools_and_digests_the_whole_encoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    jrn, offset = _journal(tmp_path, n)
    recs = [*jrn.files(), *jrn.extents()]
    want = whole_index(recs, 9, offset, fmt.IndexStream._KEEP_RAW)
    assert (len(fmt.encode_records(recs)) > fmt.IndexStream._KEEP_RAW) == (n > 3)
    assert jrn.index_segment(9, offset) == want
    monkeypatch.setattr(journal.IndexFile, "BLOCK", 8 * SECTOR)
    with jrn.index_file(9, offset) as spooled:
        blocks = list(spooled.blocks())
        assert list(spooled.blocks()) == blocks  # read again from the start
    assert spooled.length == len(want) and b"".join(blocks) == want
    assert all(len(b) % SECTOR == 0 and len(b) <= 8 * SECTOR for b in blocks)
    assert len(blocks) == -(-len(want) // (8 * SECTOR))
    assert jrn.index_digest(9, offset) == journal.rotated_digest([want])
    assert all(p.name.startswith("j.journal") for p in tmp_path.iterdir())  # no spool left
    jrn.close()


@pytest.mark.parametrize("block", [SECTOR, 3 * SECTOR, 1 << 20])
def test_a_drive_s_index_digested_a_block_at_a_time(session: hd.Session,  # noqa: F811
                                                      block: int) -> None:
    """What verify compares: the drive's index read in blocks, digested as the journal's
    stream is; prep wrote the spooled index whole (its sha256 is the journal's)."""
    jrn, other = journal.session_journals(session.jdir)
    info = jrn.drive
    with reader.unlock_drive(str(session.base / "d1.img"), jrn.recovery_password.encode(),
                             expected_uuid=info.uuid,
                             recorded=reader.recorded_superblock(jrn)) as od:
        trailer, blob = reader.read_index_bytes(od)
        assert reader.index_digest(od, block) == (trailer, journal.rotated_digest([blob]),
                                                  hashlib.sha256(blob).digest())
    assert blob == jrn.index_segment(info.log_seq, info.index_offset)
    assert jrn.index_digest(info.log_seq, info.index_offset) == journal.rotated_digest([blob])
    assert hashlib.sha256(blob).hexdigest() == info.index_sha256
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    assert journal.rotated_digest([bytes(flipped)]) != journal.rotated_digest([blob])
    for j in (jrn, other):
        j.close()
