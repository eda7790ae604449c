"""Tests for pipeline.drive.codec: round trips, codec choice, known answers, damage, threads."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import xxhash
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.drive import codec
from pipeline.drive.codec import Packed, is_zero, pack, unpack, zero
from pipeline.drive.format import Codec, CorruptRecord, Extent
from pipeline.errors import EXIT_INTEGRITY

from .conftest import require_tool

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(30000))


def _extent(p: Packed) -> Extent:
    """Every Packed must make a valid on-drive record."""
    return Extent(1, 0, p.raw_len, p.codec, len(p.stored), p.xxh3)


def _check(raw: bytes, p: Packed) -> None:
    assert p.raw_len == len(raw)
    assert p.xxh3 == xxhash.xxh3_128(raw).digest()
    _extent(p)
    assert unpack(p.codec, p.stored, p.raw_len, p.xxh3) == raw


# --------------------------------------------------------------------------- round trips


@given(raw=st.binary(min_size=1, max_size=4096), level=st.integers(1, 19))
def test_roundtrip_any_bytes_any_level(raw: bytes, level: int) -> None:
    p = pack(raw, level)
    _check(raw, p)
    if p.codec is Codec.ZSTD:
        assert len(p.stored) < len(raw)


@settings(max_examples=30)
@given(
    parts=st.lists(
        st.one_of(
            st.binary(max_size=3000),
            st.integers(1, 20000).map(bytes),
            st.sampled_from([TEXT[:5000], os.urandom(5000)]),
        ),
        min_size=1, max_size=8,
    ).map(b"".join).filter(bool),
    level=st.integers(1, 19),
)
def test_roundtrip_mixed_content(parts: bytes, level: int) -> None:
    _check(parts, pack(parts, level))


def test_memoryview_input_same_as_bytes() -> None:
    for raw in (TEXT[:100000], os.urandom(70000), bytes(5000)):
        assert pack(memoryview(raw)) == pack(raw)
        assert pack(memoryview(bytearray(raw))[10:]) == pack(raw[10:])
    wide = memoryview(TEXT[:4000]).cast("I")  # 1000 items, 4000 bytes
    assert pack(wide) == pack(TEXT[:4000])


def test_empty_is_not_an_extent() -> None:
    # format.Extent requires raw_len >= 1: an empty extent is a caller bug, not data.
    with pytest.raises(ValueError):
        pack(b"")
    with pytest.raises(ValueError):
        zero(0)
    with pytest.raises(CorruptRecord):
        unpack(Codec.ZERO, b"", 0, xxhash.xxh3_128(b"").digest())


# --------------------------------------------------------------------------- codec choice


def test_incompressible_is_raw() -> None:
    raw = os.urandom(1 << 20)
    p = pack(raw)
    assert p.codec is Codec.RAW and p.stored == raw
    _check(raw, p)
    one = pack(b"\x01")  # a 1-byte extent never shrinks
    assert one.codec is Codec.RAW and one.stored == b"\x01"


def test_zeros_are_zero_without_compressing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_compressor", lambda level: pytest.fail("compressed zeros"))
    for n in (1, 4096, 1 << 20, (1 << 20) + 7, 3 << 20):
        p = pack(bytes(n))
        assert p == Packed(Codec.ZERO, b"", n, xxhash.xxh3_128(bytes(n)).digest())
        assert p == zero(n)
        _check(bytes(n), p)


def test_text_is_zstd_and_smaller() -> None:
    raw = TEXT[: 1 << 20]
    p = pack(raw)
    assert p.codec is Codec.ZSTD and len(p.stored) < len(raw) // 4
    _check(raw, p)
    assert len(pack(raw, 19).stored) < len(p.stored)


def test_frame_has_content_size_and_no_checksum() -> None:
    raw = TEXT[:123457]
    params = zstandard.get_frame_parameters(pack(raw).stored)
    assert params.content_size == len(raw)
    assert not params.has_checksum


def test_zero_digest_known_answer() -> None:
    # xxh3-128 of fixed inputs, computed independently of the code under test.
    assert zero(1).xxh3 == xxhash.xxh3_128(b"\0").digest()
    assert zero(1 << 20).xxh3 == xxhash.xxh3_128(b"\0" * (1 << 20)).digest()
    assert xxhash.xxh3_128(b"").hexdigest() == "99aa06d3014798d86001c324468d497f"


def test_is_zero() -> None:
    assert is_zero(b"") and is_zero(bytes(1)) and is_zero(bytes(5 << 20))
    assert is_zero(memoryview(bytes(100)))
    for n in (1, 2, 4097, 1 << 20):
        for i in {0, n // 2, n - 1}:
            b = bytearray(n)
            b[i] = 0x80
            assert not is_zero(bytes(b)) and not is_zero(memoryview(b))
    assert not is_zero(memoryview(b"\0\0\1\0").cast("I"))


# --------------------------------------------------------------------------- zstd CLI interop


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_cli_decodes_our_frames(tmp_path, level: int) -> None:
    zstd = require_tool("zstd")
    raw = TEXT[:300000] + os.urandom(2000) + bytes(70000) + TEXT[:1000]
    p = pack(raw, level)
    assert p.codec is Codec.ZSTD
    f = tmp_path / "x.zst"
    f.write_bytes(p.stored)
    out = subprocess.run([zstd, "-d", "-c", "-q", str(f)], capture_output=True, check=True)
    assert out.stdout == raw
    listed = subprocess.run([zstd, "-lv", str(f)], capture_output=True, text=True, check=True)
    assert f"({len(raw)} B)" in listed.stdout  # content size is in the header
    assert "Check: None" in listed.stdout


def test_we_decode_zstd_cli_frames(tmp_path) -> None:
    zstd = require_tool("zstd")
    raw = TEXT[:200000]
    f = tmp_path / "raw"
    f.write_bytes(raw)
    frame = subprocess.run([zstd, "-3", "-c", "-q", str(f)], capture_output=True, check=True)
    digest = xxhash.xxh3_128(raw).digest()
    assert unpack(Codec.ZSTD, frame.stdout, len(raw), digest) == raw


# --------------------------------------------------------------------------- damage


def _flip(b: bytes, i: int, bit: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ (1 << bit)]) + b[i + 1 :]


def test_flipped_byte_in_zstd_frame_never_gives_wrong_bytes() -> None:
    raw = TEXT[:20000]
    p = pack(raw)
    caught = 0
    for i in range(len(p.stored)):
        for bit in (0, 7):
            try:
                out = unpack(p.codec, _flip(p.stored, i, bit), p.raw_len, p.xxh3)
            except CorruptRecord:
                caught += 1
            else:  # a flip zstd ignores (e.g. the window size) must still give the right bytes
                assert out == raw
    assert caught >= 2 * len(p.stored) * 0.9
    with pytest.raises(CorruptRecord, match="xxh3-128 mismatch|cannot decompress"):
        unpack(p.codec, _flip(p.stored, len(p.stored) // 2), p.raw_len, p.xxh3)


def test_flipped_byte_in_raw_detected() -> None:
    raw = os.urandom(5000)
    p = pack(raw)
    assert p.codec is Codec.RAW
    for i in (0, 2500, 4999):
        with pytest.raises(CorruptRecord, match="xxh3-128 mismatch") as ei:
            unpack(p.codec, _flip(p.stored, i), p.raw_len, p.xxh3)
        assert ei.value.exit_code == EXIT_INTEGRITY


@pytest.mark.parametrize("kind", ["zstd", "raw", "zero"])
def test_wrong_length_detected(kind: str) -> None:
    raw = {"zstd": TEXT[:10000], "raw": os.urandom(10000), "zero": bytes(10000)}[kind]
    p = pack(raw)
    assert p.codec.name.lower() == kind
    for n in (1, 9999, 10001, 1 << 20):
        with pytest.raises(CorruptRecord):
            unpack(p.codec, p.stored, n, p.xxh3)
    if kind == "raw":
        with pytest.raises(CorruptRecord, match="stored bytes"):
            unpack(p.codec, p.stored[:-1], p.raw_len, p.xxh3)
    if kind == "zero":
        with pytest.raises(CorruptRecord, match="stored bytes"):
            unpack(p.codec, b"\0", p.raw_len, p.xxh3)


def test_zstd_length_checked_before_allocating() -> None:
    raw = TEXT[:10000]
    p = pack(raw)
    with pytest.raises(CorruptRecord, match="content size is 10000, but raw_len says 9999"):
        unpack(Codec.ZSTD, p.stored, 9999, p.xxh3)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    with pytest.raises(CorruptRecord, match="content size is none"):
        unpack(Codec.ZSTD, no_size, len(raw), p.xxh3)
    with pytest.raises(CorruptRecord, match="bad frame header"):
        unpack(Codec.ZSTD, b"not a zstd frame", len(raw), p.xxh3)
    with pytest.raises(CorruptRecord, match="cannot decompress"):
        unpack(Codec.ZSTD, p.stored[: len(p.stored) // 2], len(raw), p.xxh3)


@pytest.mark.parametrize("kind", ["zstd", "raw", "zero"])
def test_wrong_hash_detected(kind: str) -> None:
    raw = {"zstd": TEXT[:10000], "raw": os.urandom(10000), "zero": bytes(10000)}[kind]
    p = pack(raw)
    bad = bytes(16) if p.xxh3 != bytes(16) else b"\1" * 16
    with pytest.raises(CorruptRecord, match="xxh3-128 mismatch"):
        unpack(p.codec, p.stored, p.raw_len, bad)


def test_unknown_codec_is_corrupt() -> None:
    with pytest.raises(CorruptRecord, match="unknown codec"):
        unpack(9, b"x", 1, bytes(16))  # type: ignore[arg-type]


@given(stored=st.binary(max_size=300), raw_len=st.integers(-1, 1 << 16),
       c=st.sampled_from(list(Codec)), digest=st.binary(min_size=16, max_size=16))
def test_garbage_raises_only_corrupt_record(stored: bytes, raw_len: int, c: Codec,
                                            digest: bytes) -> None:
    try:
        out = unpack(c, stored, raw_len, digest)
    except CorruptRecord:
        return
    assert len(out) == raw_len and xxhash.xxh3_128(out).digest() == digest


# --------------------------------------------------------------------------- threads


def test_four_threads_match_sequential() -> None:
    blocks = [
        TEXT[i * 70000 : i * 70000 + (1 << 20)] + os.urandom(i * 1000) + bytes(i * 3000)
        for i in range(8)
    ] + [os.urandom(1 << 20), bytes(1 << 20), TEXT[:5000] * 200]
    levels = [1, 3, 1, 6, 1, 1, 2, 1, 1, 1, 9]
    jobs = [(b, lvl) for b, lvl in zip(blocks, levels, strict=True)] * 4
    sequential = [pack(b, lvl) for b, lvl in jobs]
    with ThreadPoolExecutor(4) as ex:
        concurrent = list(ex.map(lambda j: pack(*j), jobs))
        back = list(ex.map(lambda p: unpack(p.codec, p.stored, p.raw_len, p.xxh3), concurrent))
    assert concurrent == sequential
    assert back == [b for b, _ in jobs]


# --------------------------------------------------------------------------- check (verify's)


def _outcome(f: object, *args: object) -> str:
    try:
        f(*args)  # type: ignore[operator]
    except CorruptRecord as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("kind", ["zstd", "raw", "zero"])
def test_check_accepts_and_refuses_exactly_what_unpack_does(kind: str) -> None:
    """codec.check is unpack without the raw bytes kept: the same verdict and the same
    words, for intact extents and every kind of damage (bytes, length, digest, codec)."""
    raw = {"zstd": TEXT[:10000], "raw": os.urandom(10000), "zero": bytes(10000)}[kind]
    p = pack(raw)
    assert p.codec.name.lower() == kind
    cases = [(p.codec, p.stored, p.raw_len, p.xxh3),
             (p.codec, memoryview(p.stored), p.raw_len, p.xxh3),
             (p.codec, p.stored, p.raw_len, bytes(16)),
             (p.codec, p.stored, p.raw_len + 1, p.xxh3),
             (p.codec, p.stored, 0, p.xxh3),
             (p.codec, b"\0" + p.stored, p.raw_len, p.xxh3),
             (99, p.stored, p.raw_len, p.xxh3),
             (int(p.codec), p.stored, p.raw_len, p.xxh3)]
    if p.stored:
        cases.append((p.codec, _flip(p.stored, len(p.stored) // 2), p.raw_len, p.xxh3))
    verdicts = [_outcome(codec.check, *c) for c in cases]
    assert verdicts == [_outcome(unpack, *c) for c in cases]
    assert verdicts[0] == verdicts[1] == verdicts[-2 if p.stored else -1] == "ok"
    assert sum(v == "ok" for v in verdicts) == 3
