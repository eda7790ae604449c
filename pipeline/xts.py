"""AES-XTS over runs of data units, with dm-crypt ``plain64`` IVs.

Why this module exists: ``cryptography`` fixes the XTS tweak when a cipher context is
built, so encrypting a run sector by sector costs one context per sector, a few hundred
MB/s at best.  For block j of a data unit whose IV is ``i``, XTS is::

    C_j = E_K1(P_j ^ T_j) ^ T_j,    T_j = E_K2(i) * alpha^j  in GF(2^128)

so a whole run needs only AES-ECB: one call over the IVs of all units (their initial
tweaks) and one over the data.  The per-block tweaks are derived from the initial ones
with vectorised numpy arithmetic, a MiB of data at a time so that the scratch buffers
stay cache-sized.

The module is pure (no I/O) and safe to call from several threads at once: cipher
contexts belong to one call and scratch buffers to one thread; the only shared state is
a read-only table.  numpy releases the GIL in its loops, so threads overlap there;
cryptography (48) holds the GIL during AES, so that part (about a fifth of the time)
runs one thread at a time.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Iterator

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

try:  # the masks compiled (setup.py builds it where a C compiler is at hand)
    from pipeline import _xtsmask as _native
except ImportError:  # pragma: no cover - exercised by forcing _native = None in the tests
    _native = None

__all__ = ["decrypt", "encrypt"]

_BLOCK = 16
_MASK64 = (1 << 64) - 1
# A GF(2^128) element is the little-endian 128-bit integer of a block (byte 0 least
# significant), held as two uint64 lanes: lane 0 "lo" = bytes 0..7, lane 1 "hi" = 8..15.
# The dtypes are explicitly little-endian so the lanes mean the same on any host.
_U64 = np.dtype("<u8")
_I64 = np.dtype("<i8")
_RAW16 = np.dtype("V16")  # a whole block, moved as raw bytes

# Data handled per inner step: its scratch (~6x this) should stay in the CPU caches.
_CHUNK_BYTES = 1 << 20
# Data whose units' initial tweaks are computed together: bounds that table to 1/16 of it.
_BATCH_BYTES = 16 << 20

# Tweaks come in two levels.  For each unit, "bases" T_0 * alpha^(S*a) are made by
# doubling over few, small arrays; then block j = S*a + b (b < S <= 16) is base a times
# alpha^b, for a whole chunk in a handful of numpy operations.  Times alpha^b is a
# 128-bit shift left by b whose b shifted-out top bits v fold back in as
# v * (x^7 + x^2 + x + 1), i.e. XOR with the carry-less product of v and 0x87.
_SPAN = 16


def _clmul87(v: np.ndarray) -> np.ndarray:
    """Low 64 bits of the carry-less product of each element with 0x87."""
    return v ^ (v << np.uint64(1)) ^ (v << np.uint64(2)) ^ (v << np.uint64(7))


# Key-independent fold of up to _SPAN shifted-out bits (512 KiB, read-only).
_FOLD = _clmul87(np.arange(1 << _SPAN, dtype=_U64))
_FOLD.flags.writeable = False


def encrypt(
    key: bytes,
    data: bytes | bytearray | memoryview,
    iv: int,
    sector_size: int = 4096,
    iv_step: int | None = None,
) -> bytes:
    """Encrypt a run of whole data units with AES-XTS and dm-crypt ``plain64`` IVs.

    ``key`` is 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS) with distinct halves.
    Data unit ``k`` (``sector_size`` bytes) uses the tweak ``iv + k * iv_step`` modulo
    2**64, little-endian, zero-padded to 16 bytes.  ``iv_step`` defaults to
    ``max(1, sector_size // 512)`` because dm-crypt without ``iv_large_sectors`` counts
    IVs in 512-byte sectors even when the sector size is 4096 (the LUKS2 default), so the
    unit at byte offset ``off`` of a segment has IV ``off // 512``.
    """
    key1, key2 = _split_key(key)
    return _xts(key1, key2, data, iv, sector_size, iv_step, decrypting=False)


def decrypt(
    key: bytes,
    data: bytes | bytearray | memoryview,
    iv: int,
    sector_size: int = 4096,
    iv_step: int | None = None,
) -> bytes:
    """Decrypt what :func:`encrypt` produced; same arguments and IV numbering."""
    key1, key2 = _split_key(key)
    return _xts(key1, key2, data, iv, sector_size, iv_step, decrypting=True)


def _split_key(key: bytes) -> tuple[bytes, bytes]:
    """Split an XTS key into (data key, tweak key), refusing what XTS forbids."""
    key = bytes(key)
    if len(key) not in (32, 64):
        raise ValueError(f"XTS key must be 32 or 64 bytes, not {len(key)}")
    half = len(key) // 2
    key1, key2 = key[:half], key[half:]
    if key1 == key2:
        # As cryptography and OpenSSL do: equal halves void XTS's security argument.
        raise ValueError("XTS key halves must differ")
    return key1, key2


def _xts(
    key1: bytes,
    key2: bytes,
    data: bytes | bytearray | memoryview,
    iv: int,
    sector_size: int,
    iv_step: int | None,
    *,
    decrypting: bool,
) -> bytes:
    """XTS over whole data units, without the equal-halves check.

    Separate from the public functions only so that IEEE 1619 vector 1, whose key
    halves are equal, can still be checked against this implementation.
    """
    if len(key1) not in (16, 32) or len(key2) != len(key1):
        raise ValueError("XTS key halves must both be 16 or both be 32 bytes")
    if sector_size <= 0 or sector_size % _BLOCK:
        raise ValueError(f"sector_size must be a positive multiple of 16, not {sector_size}")
    if iv_step is None:
        iv_step = max(1, sector_size // 512)
    if iv < 0 or iv_step < 1:
        raise ValueError(f"need iv >= 0 and iv_step >= 1, not iv={iv}, iv_step={iv_step}")
    source = memoryview(data)
    if not source.c_contiguous:
        source = memoryview(source.tobytes())
    source = source.cast("B")
    size = source.nbytes
    if size == 0 or size % sector_size:
        raise ValueError(
            f"data length {size} is not a positive multiple of sector_size {sector_size}"
        )

    # The result is written straight into the bytes object that is returned: BytesIO
    # adopts the zero-filled bytes (it holds the only reference), getbuffer() exposes it
    # writable, and getvalue() hands it back without a copy once that view is dropped.
    # This saves a run-sized temporary and a copy of the whole run.
    result = io.BytesIO(bytes(size))
    target = result.getbuffer()
    _transform(key1, key2, source, target, iv, iv_step, sector_size, decrypting)
    del target  # no export left, so getvalue() need not copy
    return result.getvalue()


def _transform(
    key1: bytes,
    key2: bytes,
    source: memoryview,
    target: memoryview,
    iv: int,
    iv_step: int,
    sector_size: int,
    decrypting: bool,
) -> None:
    """C = E(P ^ T) ^ T (or D(C ^ T) ^ T) from ``source`` into ``target``, by chunks."""
    blocks = sector_size // _BLOCK  # AES blocks per data unit
    units = source.nbytes // sector_size
    if _native is not None:
        with _scratch() as scratch:
            _transform_native(scratch, key1, key2, source, target, iv, iv_step, sector_size,
                              decrypting)
        return
    src = np.frombuffer(source, dtype=_U64).reshape(units, blocks, 2)
    dst = np.frombuffer(target, dtype=_U64).reshape(units, blocks, 2)
    with _scratch() as scratch:
        _transform_with(scratch, key1, key2, src, dst, iv, iv_step, sector_size, decrypting)


def _transform_with(scratch: _Scratch, key1: bytes, key2: bytes, src: np.ndarray,
                    dst: np.ndarray, iv: int, iv_step: int, sector_size: int,
                    decrypting: bool) -> None:
    units, blocks, _ = src.shape
    span = math.gcd(blocks, _SPAN)

    tweak_cipher = Cipher(algorithms.AES(key2), modes.ECB()).encryptor()
    data_ecb = Cipher(algorithms.AES(key1), modes.ECB())
    data_cipher = data_ecb.decryptor() if decrypting else data_ecb.encryptor()

    per_chunk = max(1, min(units, _CHUNK_BYTES // sector_size))
    per_batch = per_chunk * max(1, _BATCH_BYTES // (per_chunk * sector_size))
    for first in range(0, units, per_batch):
        last = min(first + per_batch, units)
        bases = _unit_bases(
            scratch, tweak_cipher, iv + first * iv_step, iv_step, last - first, blocks, span
        )
        for start in range(first, last, per_chunk):
            stop = min(start + per_chunk, last)
            n = stop - start
            tweaks = _expand(scratch, bases[start - first : stop - first], span)
            # "staged" is free again once _expand has returned.
            masked = scratch.get("staged", n * blocks * 2).reshape(n, blocks, 2)
            np.bitwise_xor(src[start:stop], tweaks, out=masked)
            # update_into wants room for one block more than it writes.
            aes_out = scratch.get("aes_out", n * sector_size + _BLOCK, np.uint8)
            data_cipher.update_into(masked.view(np.uint8), aes_out[:-1])
            crypted = aes_out[: n * sector_size].view(_U64).reshape(n, blocks, 2)
            np.bitwise_xor(crypted, tweaks, out=dst[start:stop])
    data_cipher.finalize()


def _transform_native(scratch: _Scratch, key1: bytes, key2: bytes, source: memoryview,
                      target: memoryview, iv: int, iv_step: int, sector_size: int,
                      decrypting: bool) -> None:
    """As _transform_with, the masks by the compiled module: one pass each side of AES."""
    units = source.nbytes // sector_size
    blocks = sector_size // _BLOCK
    tweak_cipher = Cipher(algorithms.AES(key2), modes.ECB()).encryptor()
    data_ecb = Cipher(algorithms.AES(key1), modes.ECB())
    data_cipher = data_ecb.decryptor() if decrypting else data_ecb.encryptor()
    per_chunk = max(1, min(units, _CHUNK_BYTES // sector_size))
    for start in range(0, units, per_chunk):
        n = min(per_chunk, units - start)
        ivs = scratch.get("ivs", 2 * n).reshape(n, 2)
        ivs[:, 1] = 0
        lane = ivs[:, 0]
        lane[:] = np.arange(start, start + n, dtype=_U64)
        lane *= np.uint64(iv_step & _MASK64)  # wraps modulo 2**64, as plain64 does
        lane += np.uint64(iv & _MASK64)
        first = tweak_cipher.update(ivs.view(np.uint8))
        lo, hi = start * sector_size, (start + n) * sector_size
        masked = scratch.get("masked", n * sector_size, np.uint8)
        _native.xor_tweaks(source[lo:hi], masked, first, blocks)
        aes_out = scratch.get("aes_out", n * sector_size + _BLOCK, np.uint8)
        data_cipher.update_into(masked, aes_out[:-1])  # wants room for a block more
        _native.xor_tweaks(aes_out[: n * sector_size], target[lo:hi], first, blocks)
    data_cipher.finalize()


def _unit_bases(
    scratch: _Scratch,
    tweak_cipher: CipherContext,
    iv: int,
    iv_step: int,
    units: int,
    blocks: int,
    span: int,
) -> np.ndarray:
    """Per unit u of a batch: E_K2(plain64(iv + u*iv_step)) * alpha^(span*a), a < blocks/span.

    All initial tweaks of the batch come from a single ECB call.
    """
    ivs = scratch.get("ivs", 2 * units).reshape(units, 2)
    ivs[:, 1] = 0
    lane = ivs[:, 0]
    lane[:] = np.arange(units, dtype=_U64)
    lane *= np.uint64(iv_step & _MASK64)  # numpy wraps modulo 2**64, as plain64 does
    lane += np.uint64(iv & _MASK64)
    groups = blocks // span
    bases = scratch.get("bases", 2 * units * groups).reshape(units, groups, 2)
    first = tweak_cipher.update(ivs.view(np.uint8))
    bases[:, 0, :] = np.frombuffer(first, dtype=_U64).reshape(units, 2)
    # Doubling: bases [d, 2d) = bases [0, d) * alpha^(span*d).
    done = 1
    while done < groups:
        n = min(done, groups - done)
        _mul_alpha_pow(bases[:, :n], bases[:, done : done + n], span * done)
        done += n
    return bases


def _expand(scratch: _Scratch, bases: np.ndarray, span: int) -> np.ndarray:
    """Tweak of every block of a chunk: block span*a + b of unit u is bases[u, a] * alpha^b.

    Worked out with b outermost, as (b, unit, group): every shift is then by one amount
    over a long contiguous run, which numpy vectorises well.  The blocks are put in order
    at the end by one 16-byte move each, which costs much less than storing the two
    8-byte lanes out of order (several times less on some Xeons).
    """
    units, groups, _ = bases.shape
    size = span * units * groups  # blocks in the chunk
    lo = scratch.get("base_lo", units * groups).reshape(units, groups)
    hi = scratch.get("base_hi", units * groups).reshape(units, groups)
    np.copyto(lo, bases[:, :, 0])
    np.copyto(hi, bases[:, :, 1])
    t1, t2, t3 = (scratch.get(name, size).reshape(span, units, groups) for name in _TEMPS)
    staged = scratch.get("staged", 2 * size).reshape(span, units, groups, 2)
    shift, rshift = _SHIFTS[span]
    # hi = (base_hi << b) | (base_lo >> (64 - b))
    np.left_shift(hi, shift, out=t1)
    np.right_shift(lo, rshift, out=t2)
    np.bitwise_or(t1, t2, out=staged[..., 1])
    # lo = (base_lo << b) ^ fold(base_hi >> (64 - b))
    np.right_shift(hi, rshift, out=t2)
    _FOLD.take(t2.view(_I64), out=t3, mode="clip")
    np.left_shift(lo, shift, out=t1)
    np.bitwise_xor(t1, t3, out=staged[..., 0])
    tweaks = scratch.get("tweaks", 2 * size).reshape(units, span * groups, 2)
    ordered = tweaks.view(_RAW16).reshape(units, groups, span).transpose(2, 0, 1)
    np.copyto(ordered, staged.view(_RAW16).reshape(span, units, groups))
    return tweaks


_TEMPS = ("tmp1", "tmp2", "tmp3")


def _shift_amounts(span: int) -> tuple[np.ndarray, np.ndarray]:
    """b and 64 - b for b < span, shaped to broadcast over (b, unit, group)."""
    shift = np.arange(span, dtype=_U64).reshape(span, 1, 1)
    rshift = np.uint64(64) - shift  # numpy yields 0 for a shift by 64, as wanted for b = 0
    shift.flags.writeable = rshift.flags.writeable = False
    return shift, rshift


_SHIFTS = {span: _shift_amounts(span) for span in (1, 2, 4, 8, 16)}  # span divides _SPAN


class _Scratch:
    """Named flat scratch buffers, grown on demand and reused by later calls.

    Fresh memory costs a page fault per 4 KiB when first touched, which for a 1 MiB run
    costs more than the arithmetic; so a set (about 6 x _CHUNK_BYTES) is kept for later
    calls, and used by one call at a time (see ``_scratch``).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, count: int, dtype: np.dtype | type = _U64) -> np.ndarray:
        """A writable array of ``count`` elements; its content is left over from before."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < count:
            buffer = np.empty(count, dtype=dtype)
            if buffer.nbytes <= _KEEP_BYTES:  # unusually large ones are not kept
                self._buffers[name] = buffer
        return buffer[:count]


_KEEP_BYTES = 4 * (_CHUNK_BYTES + _BATCH_BYTES // 16)
_idle: list[_Scratch] = []  # sets not in use: as many as calls ever ran at once
_idle_lock = threading.Lock()


@contextlib.contextmanager
def _scratch() -> Iterator[_Scratch]:
    """A set of scratch buffers for one call, reused by later calls.

    A pool, not one set per thread: prep encrypts in whichever of Trio's cached
    worker threads is free, so per-thread sets grew with the number of threads
    that ever encrypted (parallel fill on 4 drives peaked at 316-335 MiB).  The
    pool holds as many sets as calls ever ran at once.
    """
    with _idle_lock:
        scratch = _idle.pop() if _idle else _Scratch()
    try:
        yield scratch
    finally:
        with _idle_lock:
            _idle.append(scratch)


def _mul_alpha_pow(src: np.ndarray, dst: np.ndarray, k: int) -> None:
    """dst = src * alpha^k in GF(2^128), any k >= 0; the arrays end in (lo, hi) lanes."""
    lo = src[..., 0].copy()
    hi = src[..., 1].copy()
    while k >= 64:
        # Times x^64: lo moves up a lane; hi * x^128 = hi * (x^7 + x^2 + x + 1) is a
        # 71-bit value whose low 64 bits form the new lo and top 7 bits join the new hi.
        carry = (hi >> np.uint64(63)) ^ (hi >> np.uint64(62)) ^ (hi >> np.uint64(57))
        lo, hi = _clmul87(hi), lo ^ carry
        k -= 64
    while k:
        s = min(k, 57)  # the fold of s bits must fit in a lane: s + 7 <= 64
        over = hi >> np.uint64(64 - s)
        hi = (hi << np.uint64(s)) | (lo >> np.uint64(64 - s))
        lo = (lo << np.uint64(s)) ^ _clmul87(over)
        k -= s
    dst[..., 0] = lo
    dst[..., 1] = hi
