"""AES-XTS tweak masks in numpy: pipeline.volume.xts's fallback where _xtsmask was not built.

For block j of a data unit whose IV is ``i``, XTS is::

    C_j = E_K1(P_j ^ T_j) ^ T_j,    T_j = E_K2(i) * alpha^j  in GF(2^128)

so a whole run needs only AES-ECB: one call over the IVs of all units (their initial
tweaks) and one over the data.  The per-block tweaks are derived from the initial ones
with vectorised numpy arithmetic, a chunk at a time so that the scratch buffers stay
cache-sized.  About half the speed of the compiled masks, and numpy costs prep ~0.2 s
of start-up and ~11 MiB, so it is imported only when needed.

Safe to call from several threads at once: cipher contexts belong to one call and
scratch buffers to one call (a pool); the only shared state is a read-only table.
numpy releases the GIL in its loops, so threads overlap there.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

_BLOCK = 16
_MASK64 = (1 << 64) - 1
# A GF(2^128) element is the little-endian 128-bit integer of a block (byte 0 least
# significant), held as two uint64 lanes: lane 0 "lo" = bytes 0..7, lane 1 "hi" = 8..15.
# The dtypes are explicitly little-endian so the lanes mean the same on any host.
_U64 = np.dtype("<u8")
_I64 = np.dtype("<i8")
_RAW16 = np.dtype("V16")  # a whole block, moved as raw bytes


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


def transform(
    key1: bytes,
    key2: bytes,
    source: memoryview,
    target: memoryview,
    iv: int,
    iv_step: int,
    sector_size: int,
    decrypting: bool,
    chunk_bytes: int,
    batch_bytes: int,
) -> None:
    """C = E(P ^ T) ^ T (or D(C ^ T) ^ T) from ``source`` into ``target``, by chunks."""
    blocks = sector_size // _BLOCK  # AES blocks per data unit
    units = source.nbytes // sector_size
    src = np.frombuffer(source, dtype=_U64).reshape(units, blocks, 2)
    dst = np.frombuffer(target, dtype=_U64).reshape(units, blocks, 2)
    with _scratch() as scratch:
        _transform_with(scratch, key1, key2, src, dst, iv, iv_step, sector_size, decrypting,
                        chunk_bytes, batch_bytes)


def _transform_with(scratch: _Scratch, key1: bytes, key2: bytes, src: np.ndarray,
                    dst: np.ndarray, iv: int, iv_step: int, sector_size: int,
                    decrypting: bool, chunk_bytes: int, batch_bytes: int) -> None:
    units, blocks, _ = src.shape
    span = math.gcd(blocks, _SPAN)

    tweak_cipher = Cipher(algorithms.AES(key2), modes.ECB()).encryptor()
    data_ecb = Cipher(algorithms.AES(key1), modes.ECB())
    data_cipher = data_ecb.decryptor() if decrypting else data_ecb.encryptor()

    per_chunk = max(1, min(units, chunk_bytes // sector_size))
    per_batch = per_chunk * max(1, batch_bytes // (per_chunk * sector_size))
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


_KEEP_BYTES = 4 * ((1 << 20) + (16 << 20) // 16)  # at xts's chunk and batch sizes
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
