"""Extent bytes -> stored bytes and back: zstd, xxh3-128, "store raw if not smaller".

Bytes only: no files, no trio.  ``pack`` runs in worker threads, so every heavy
step is one call into C that releases the GIL (zstd ``compress``/``decompress``,
xxh3, the ``memcmp`` behind ``is_zero``) and each thread keeps its own zstd
contexts (``threading.local``): libzstd contexts are not for concurrent use.

The xxh3-128 digest is always of the *raw* bytes, whatever the codec, so the
importer checks exactly what it writes.  Our zstd frames carry their content
size (``zstd -d`` decodes them standalone) and no checksum of their own: the
xxh3-128 already covers them.

An extent is never empty (``format.Extent`` requires ``raw_len >= 1``), so
``pack(b"")`` and ``zero(0)`` are caller bugs (ValueError), and ``unpack`` of a
record claiming ``raw_len < 1`` is corrupt.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import xxhash
import zstandard

from pipeline.drive.format import Codec, CorruptRecord
from pipeline.sparse import is_zero, zero_buf

__all__ = ["MAX_RAW_LEN", "Packed", "check", "is_zero", "pack", "pack_many", "unpack",
           "zero"]

MAX_RAW_LEN = 0xFFFF_FFFF
"""Largest extent ``format.Extent`` can describe (u32 raw_len)."""


@dataclass(frozen=True, slots=True)
class Packed:
    """One packed extent: what goes into an ``Extent`` record and its payload."""

    codec: Codec
    stored: bytes
    """The bytes to store: a zstd frame, the raw bytes (RAW) or b"" (ZERO)."""
    raw_len: int
    xxh3: bytes
    """xxh3-128 digest (16 bytes) of the raw bytes."""


# --------------------------------------------------------------------------- zero detection

@functools.lru_cache(maxsize=64)
def _zero_digest(raw_len: int) -> bytes:
    return xxhash.xxh3_128_digest(memoryview(zero_buf(raw_len))[:raw_len])


def zero(raw_len: int) -> Packed:
    """A ZERO extent of ``raw_len`` bytes known without reading them (a hole).

    The digest of n zeros depends only on n and extents come in few lengths
    (the grid size, file tails), so digests are cached.
    """
    if not 1 <= raw_len <= MAX_RAW_LEN:
        raise ValueError(f"raw_len={raw_len} is not an extent length (1..{MAX_RAW_LEN})")
    return Packed(Codec.ZERO, b"", raw_len, _zero_digest(raw_len))


# --------------------------------------------------------------------------- per-thread contexts

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=False
        )
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


# --------------------------------------------------------------------------- pack / unpack


def pack(raw: bytes | memoryview, level: int = 1) -> Packed:
    """Compress and hash one extent: ZERO if all zero, RAW if zstd does not shrink it, else ZSTD."""
    if isinstance(raw, memoryview):
        raw = raw.cast("B")  # count bytes, not items
    n = len(raw)
    if not 1 <= n <= MAX_RAW_LEN:
        raise ValueError(f"an extent is 1..{MAX_RAW_LEN} bytes, got {n}")
    if is_zero(raw):
        return zero(n)
    return _stored(raw, _compressor(level).compress(raw))


def _stored(raw: bytes | memoryview, frame: bytes) -> Packed:
    """ZSTD with ``frame`` (zstd of ``raw``) if it is smaller, else RAW."""
    n, digest = len(raw), xxhash.xxh3_128_digest(raw)
    if len(frame) >= n:
        return Packed(Codec.RAW, bytes(raw), n, digest)
    return Packed(Codec.ZSTD, frame, n, digest)


def pack_many(raws: list[bytes], level: int = 1) -> list[Packed]:
    """``pack`` of each, with the zstd frames made in one call (small files).

    ``compress`` releases the GIL for each input and must take it back, which
    beside busy threads costs far more than compressing a few KiB (see
    ``pipeline.prep.smallio``); ``multi_compress_to_buffer`` lets go of it once for
    them all, and makes the same frames.
    """
    out: list[Packed | None] = []
    todo: list[bytes] = []
    for raw in raws:
        if not 1 <= len(raw) <= MAX_RAW_LEN:
            raise ValueError(f"an extent is 1..{MAX_RAW_LEN} bytes, got {len(raw)}")
        if is_zero(raw):
            out.append(zero(len(raw)))
        else:
            out.append(None)
            todo.append(raw)
    if not todo:
        return out  # type: ignore[return-value]
    frames = _compressor(level).multi_compress_to_buffer(todo, threads=0)
    k = 0
    for i, got in enumerate(out):
        if got is None:
            out[i] = _stored(todo[k], frames[k].tobytes())
            k += 1
    return out  # type: ignore[return-value]


def _raw_of(codec: Codec, stored: bytes | memoryview, raw_len: int) -> bytes:
    if codec is Codec.ZERO:
        if len(stored):
            raise CorruptRecord(f"ZERO extent of {raw_len} bytes has {len(stored)} stored bytes")
        return bytes(raw_len)
    if codec is Codec.RAW:
        if len(stored) != raw_len:
            raise CorruptRecord(
                f"RAW extent: {len(stored)} stored bytes, but raw_len says {raw_len}"
            )
        return bytes(stored)
    if codec is Codec.ZSTD:
        # Check the declared size first: with a content size in the header, zstd
        # allocates that much and ignores max_output_size, so a damaged header
        # could otherwise ask for gigabytes.
        try:
            declared = zstandard.get_frame_parameters(stored).content_size
        except zstandard.ZstdError as e:
            raise CorruptRecord(f"ZSTD extent: bad frame header: {e}") from None
        if declared != raw_len:
            shown = "none" if declared == zstandard.CONTENTSIZE_UNKNOWN else declared
            raise CorruptRecord(
                f"ZSTD extent: frame content size is {shown}, but raw_len says {raw_len}"
            )
        try:
            raw = _decompressor().decompress(stored, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise CorruptRecord(f"ZSTD extent: cannot decompress: {e}") from None
        if len(raw) != raw_len:
            raise CorruptRecord(f"ZSTD extent: decompressed {len(raw)} bytes, expected {raw_len}")
        return raw
    raise CorruptRecord(f"unknown codec {codec!r}")


def unpack(codec: Codec, stored: bytes | memoryview, raw_len: int, xxh3: bytes) -> bytes:
    """The raw bytes of a stored extent, checked: never returns wrong bytes.

    Length and xxh3-128 must match the record, else ``CorruptRecord`` saying
    what failed.  Trailing bytes after a ZSTD frame are not read (the segment's
    payload checksum covers them).
    """
    if not 1 <= raw_len <= MAX_RAW_LEN:
        raise CorruptRecord(f"raw_len={raw_len} is not an extent length")
    try:
        codec = Codec(codec)
    except ValueError:
        raise CorruptRecord(f"unknown codec {codec!r}") from None
    raw = _raw_of(codec, stored, raw_len)
    if xxhash.xxh3_128_digest(raw) != xxh3:
        raise CorruptRecord(
            f"{codec.name} extent of {raw_len} bytes: xxh3-128 mismatch "
            f"(record {bytes(xxh3).hex()}, data {xxhash.xxh3_128_digest(raw).hex()})"
        )
    return raw


_CODECS: dict[int, Codec] = {c.value: c for c in Codec}


def check(codec: Codec | int, stored: bytes | memoryview, raw_len: int, xxh3: bytes) -> None:
    """What ``unpack`` checks, for a reader that does not keep the raw bytes (verify).

    Nothing is copied that need not be: a RAW extent's stored bytes are hashed where
    they lie, a ZERO extent's digest is the cached digest of ``raw_len`` zeros (no
    zeros allocated); a ZSTD frame is decompressed, as it must be to be checked.
    """
    if not 1 <= raw_len <= MAX_RAW_LEN:
        raise CorruptRecord(f"raw_len={raw_len} is not an extent length")
    known = _CODECS.get(codec)  # an enum call per extent costs more than the lookup
    if known is None:
        raise CorruptRecord(f"unknown codec {codec!r}")
    codec = known
    if codec is Codec.ZERO:
        if len(stored):
            raise CorruptRecord(f"ZERO extent of {raw_len} bytes has {len(stored)} stored bytes")
        digest = _zero_digest(raw_len)
    elif codec is Codec.RAW:
        if len(stored) != raw_len:
            raise CorruptRecord(
                f"RAW extent: {len(stored)} stored bytes, but raw_len says {raw_len}"
            )
        digest = xxhash.xxh3_128_digest(stored)
    else:
        digest = xxhash.xxh3_128_digest(_raw_of(codec, stored, raw_len))
    if digest != xxh3:
        raise CorruptRecord(
            f"{codec.name} extent of {raw_len} bytes: xxh3-128 mismatch "
            f"(record {bytes(xxh3).hex()}, data {digest.hex()})"
        )
