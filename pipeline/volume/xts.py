"""AES-XTS over runs of data units, with dm-crypt ``plain64`` IVs.

Why this module exists: ``cryptography`` fixes the XTS tweak when a cipher context is
built, so encrypting a run sector by sector costs one context per sector, a few hundred
MB/s at best.  For block j of a data unit whose IV is ``i``, XTS is::

    C_j = E_K1(P_j ^ T_j) ^ T_j,    T_j = E_K2(i) * alpha^j  in GF(2^128)

so a whole run needs only AES-ECB: one call over the IVs of all units (their initial
tweaks) and one over the data.  The masks ``^ T_j`` are applied by a small compiled
module (``pipeline/volume/_xtsmask.c``: one pass, the GIL let go), a MiB at a time; where it
was not built, ``pipeline.volume.xts_numpy`` derives them with numpy, at about half the speed.

The module is pure (no I/O) and safe to call from several threads at once: cipher
contexts belong to one call and buffers to one call (a pool).  cryptography holds the
GIL during AES, a small part of the time.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # the masks compiled (setup.py builds it where a C compiler is at hand)
    from pipeline.volume import _xtsmask as _native
except ImportError:  # exercised by the tests, which set _native = None
    _native = None

__all__ = ["decrypt", "encrypt"]

_BLOCK = 16
_MASK64 = (1 << 64) - 1
# Data handled per inner step: its buffers (2x this) should stay in the CPU caches.
_CHUNK_BYTES = 1 << 20
# numpy path only: data whose units' initial tweaks are computed together.
_BATCH_BYTES = 16 << 20


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
    if _native is not None:
        _transform_native(key1, key2, source, target, iv, iv_step, sector_size, decrypting)
    else:
        from pipeline.volume import xts_numpy  # numpy: ~0.2 s and ~11 MiB, only where needed

        xts_numpy.transform(key1, key2, source, target, iv, iv_step, sector_size, decrypting,
                            _CHUNK_BYTES, _BATCH_BYTES)
    del target  # no export left, so getvalue() need not copy
    return result.getvalue()


def _transform_native(key1: bytes, key2: bytes, source: memoryview, target: memoryview,
                      iv: int, iv_step: int, sector_size: int, decrypting: bool) -> None:
    """C = E(P ^ T) ^ T (or D(C ^ T) ^ T) from ``source`` into ``target``, a chunk at a time:
    the initial tweaks by one ECB call, the masks by the compiled module, AES by OpenSSL.

    Each tweak T is derived once: the first XOR stores it in ``target`` (its room is free
    until the result lands there), and the second XORs AES's output into it.  A build of
    the module from before ``xor_tweaks_keep`` derives it twice, as it always did."""
    units = source.nbytes // sector_size
    blocks = sector_size // _BLOCK
    tweak_cipher = Cipher(algorithms.AES(key2), modes.ECB()).encryptor()
    data_ecb = Cipher(algorithms.AES(key1), modes.ECB())
    data_cipher = data_ecb.decryptor() if decrypting else data_ecb.encryptor()
    per_chunk = max(1, min(units, _CHUNK_BYTES // sector_size))
    keep = hasattr(_native, "xor_tweaks_keep")
    with _buffers(per_chunk * sector_size) as (masked, aes_out):
        for start in range(0, units, per_chunk):
            n = min(per_chunk, units - start)
            lo, hi = start * sector_size, (start + n) * sector_size
            ivs = _native.plain64((iv + start * iv_step) & _MASK64, iv_step & _MASK64, n)
            first = tweak_cipher.update(ivs)
            mask_in = masked[: hi - lo]
            if keep:
                _native.xor_tweaks_keep(source[lo:hi], mask_in, first, blocks, target[lo:hi])
            else:
                _native.xor_tweaks(source[lo:hi], mask_in, first, blocks)
            data_cipher.update_into(mask_in, aes_out)  # wants room for a block more
            if keep:
                _native.xor_into(target[lo:hi], aes_out[: hi - lo])
            else:
                _native.xor_tweaks(aes_out[: hi - lo], target[lo:hi], first, blocks)
    data_cipher.finalize()


_KEEP_BYTES = _CHUNK_BYTES + _BLOCK  # larger buffers (units over a MiB) are not kept
_idle: list[tuple[memoryview, memoryview]] = []  # buffer pairs not in use
_idle_lock = threading.Lock()


@contextlib.contextmanager
def _buffers(size: int) -> Iterator[tuple[memoryview, memoryview]]:
    """Two buffers of at least ``size`` (+ a block) for one call, reused by later calls.

    Fresh memory costs a page fault per 4 KiB when first touched, about as much as the
    masks themselves; a pool, not one pair per thread, because prep encrypts in
    whichever of Trio's cached threads is free.
    """
    with _idle_lock:
        pair = next((p for p in _idle if len(p[0]) >= size + _BLOCK), None)
        if pair is not None:
            _idle.remove(pair)
    if pair is None:
        room = max(size, _CHUNK_BYTES) + _BLOCK
        pair = (memoryview(bytearray(room)), memoryview(bytearray(room)))
    try:
        yield pair
    finally:
        if len(pair[0]) <= _KEEP_BYTES:
            with _idle_lock:
                _idle.append(pair)
