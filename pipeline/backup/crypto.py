"""The repository's keys and the one way bytes are sealed: AES-256-GCM under a random master key.

The master key material (an encryption key, a chunk-id key and the chunker's gear
seed) is random and stored only in key files, sealed with a key derived from the
operator's backup passphrase by argon2id (``luks2.derive``).  Chunk ids are keyed
BLAKE3 of the plaintext under the id key (HMAC-SHA256 in repositories made before it:
``MasterKeys.ids``), so equal data dedups while an id says nothing about the data to
whoever lacks the key.  Each sealed item has a
random 96-bit nonce: with 2**32 items per key as the GCM limit, a repository
holds up to ~4 PiB of 1 MiB chunks.  The associated data binds a chunk to its
kind and id (a blob moved to another place does not decrypt as another chunk).

Bytes only: no files, no trio.  Secrets are never in ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository
from pipeline.volume import luks2

KEY_AAD = b"pipeline-backup key v1 "
PACK_HEADER_AAD = b"PLBK pack header"
SALT_LEN = 32
# argon2id for the key file, calibrated at ``init`` as restic (scrypt, 0.5 s) and
# cryptsetup (argon2, --iter-time) do, and recorded in the key file, so that a repository
# opens with whatever its key file says.  The floor is RFC 9106's second recommended option
# (section 4: argon2id, t=3, m=64 MiB): a slow or busy machine gets that, never less; a fast
# one more memory (up to 256 MiB, cryptsetup's old fixed default here) and then more passes.
# The key is derived at every backup (hourly, say): 256 MiB x 4 passes took 2.4 s of each
# run here, 64 MiB x 3 about 0.45 s.  Tests and perf pass cheaper ones explicitly.
MIN_KDF = luks2.KdfParams(type="argon2id", time=3, memory=65536, cpus=4)
KDF_TARGET_S = 0.5              # restic's scrypt target
KDF_MAX_MEMORY = 262144         # KiB
KDF_MAX_TIME = 16               # passes (open_key_file accepts up to 64)


@dataclass(frozen=True)
class MasterKeys:
    """The repository's secrets; ``repr`` never shows them."""

    enc_key: bytes = field(repr=False)
    id_key: bytes = field(repr=False)
    chunker_seed: int = field(repr=False)
    # How chunk and pack ids are made (fmt.CONFIG_IDS): here, sealed, so that editing the
    # plaintext config cannot change it; key material without it is older, HMAC-SHA-256.
    ids: str = fmt.BLAKE3

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32),
                   secrets.randbits(63) | 1)

    def encode(self) -> bytes:
        return json.dumps({"enc_key": fmt.b64(self.enc_key), "id_key": fmt.b64(self.id_key),
                           "chunker_seed": self.chunker_seed, "ids": self.ids}).encode()

    @classmethod
    def decode(cls, plain: bytes) -> MasterKeys:
        obj = fmt.decode_json(plain, "key material")
        try:
            keys = cls(fmt.unb64(obj["enc_key"], "enc_key"), fmt.unb64(obj["id_key"], "id_key"),
                       int(obj["chunker_seed"]), obj.get("ids", fmt.HMAC_SHA256))
        except (KeyError, TypeError, ValueError):
            raise CorruptRepository("key material lacks fields") from None
        if len(keys.enc_key) != 32 or len(keys.id_key) != 32:
            raise CorruptRepository("key material has keys of the wrong length")
        if keys.ids not in fmt.CONFIG_IDS.values():
            raise CorruptRepository(f"key material names ids {keys.ids!r}, which this pipeline "
                                    "does not know; upgrade pipeline")
        return keys


class Crypto:
    """Seal/open and chunk ids under one repository's master keys; thread-safe."""

    def __init__(self, keys: MasterKeys) -> None:
        self.keys = keys
        self._aead = AESGCM(keys.enc_key)
        self._mac = hmac.new(keys.id_key, digestmod="sha256")
        self._blake3 = keys.ids == fmt.BLAKE3

    def __repr__(self) -> str:
        return "Crypto(<keys>)"

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """The chunk's id: keyed BLAKE3, or (repositories seeded before it) HMAC-SHA-256."""
        if self._blake3:
            return blake3.blake3(data, key=self.keys.id_key).digest()
        mac = self._mac.copy()  # the keyed inner/outer state, without rehashing the key
        mac.update(data)
        return mac.digest()

    def pack_hash(self, data: bytes | memoryview = b"") -> blake3.blake3 | hashlib._Hash:
        """A hasher for a pack's id (the hash of its bytes, unkeyed: anyone holding the
        repository can check a pack against its name), as this repository makes them."""
        return blake3.blake3(data) if self._blake3 else hashlib.sha256(data)

    def seal_parts(self, plain: bytes | memoryview, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext + tag): kept apart so a pack joins them without another copy."""
        nonce = secrets.token_bytes(fmt.NONCE_LEN)
        return nonce, self._aead.encrypt(nonce, plain, aad)

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes:
        nonce, ct = self.seal_parts(plain, aad)
        return nonce + ct

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if len(sealed) < fmt.SEAL_OVERHEAD:
            raise CorruptRepository(f"{what} is too short to be sealed")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:fmt.NONCE_LEN], view[fmt.NONCE_LEN:], aad)
        except InvalidTag:
            raise CorruptRepository(f"{what} does not decrypt (damaged, or not of this "
                                    "repository)") from None

    # -- chunks ------------------------------------------------------------------------------
    #
    # A chunk's plaintext is a zstd frame when that is smaller than the data, else the data
    # itself: a sealed chunk of exactly raw_len + 28 bytes is stored raw (a frame is always
    # shorter), so no codec byte is needed and nothing is copied to prepend one.

    def seal_chunk(self, kind: int, cid: bytes, raw: bytes | memoryview, level: int
                   ) -> tuple[bytes, bytes]:
        """Compress (zstd, or raw when that is not smaller), then seal; runs in worker threads.
        Straight to zstd: the drive codec's extent checks, digest and copy of raw data
        are not this format's (a zero run never reaches here: the reader keeps it as a run)."""
        frame = _compress(raw, level)
        payload = frame if len(frame) < len(raw) else raw
        return self.seal_parts(payload, _chunk_aad(kind, cid))

    def open_chunk(self, kind: int, cid: bytes, sealed: bytes | memoryview, raw_len: int) -> bytes:
        """The chunk's plaintext, checked against its id: never returns wrong bytes."""
        what = f"chunk {cid.hex()[:16]}"
        plain = self.open(sealed, _chunk_aad(kind, cid), what)
        raw = plain if len(plain) == raw_len else _decompress(plain, raw_len, what)
        if len(raw) != raw_len or not hmac.compare_digest(self.chunk_id(raw), cid):
            raise CorruptRepository(f"{what}: the data does not match its id")
        return raw

    # -- whole files -------------------------------------------------------------------------

    def seal_file(self, magic: bytes, plain: bytes, level: int = 3) -> bytes:
        """An index or snapshot file: compressed, sealed, enveloped, padded."""
        return fmt.encode_envelope(magic, self.seal(_compress(plain, level), magic))

    def open_file(self, magic: bytes, data: bytes, what: str, limit: int = 1 << 30) -> bytes:
        sealed = fmt.decode_envelope(data, magic, what)
        return _decompress(self.open(sealed, magic, what), None, what, limit)


def _chunk_aad(kind: int, cid: bytes) -> bytes:
    return b"PLBK" + bytes([kind]) + cid


_local = threading.local()
# Level 1 (backup's default) is zstd's level-1 fast strategy with minMatch 7 (zstd's: 6)
# and hashLog 14 (13): on the 1.47 GB of new chunks of perf's 2 GB real tree, 3 interleaved
# rounds, ~10 % less CPU (3.12 -> 2.83 s) for the same ratio (2.808 -> 2.801).  Any zstd
# decoder reads the frames: nothing about the format changes.
_FAST = {1: {"window_log": 19, "chain_log": 12, "hash_log": 14, "search_log": 1,
             "min_match": 7, "target_length": 0}}


def _compressor(level: int) -> zstandard.ZstdCompressor:
    fast = _FAST.get(level)
    if fast is None:
        return zstandard.ZstdCompressor(level=level, write_content_size=True)
    return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
        strategy=zstandard.STRATEGY_FAST, write_content_size=True, **fast))


def _compress(plain: bytes | memoryview, level: int) -> bytes:
    cctx = getattr(_local, "cctx", None)
    if cctx is None or _local.level != level:
        cctx = _local.cctx = _compressor(level)
        _local.level = level
    return cctx.compress(plain)


def _decompress(frame: bytes, raw_len: int | None, what: str, limit: int = 1 << 30) -> bytes:
    """zstd with the declared size checked first (a damaged header cannot ask for GiBs)."""
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > limit or (
                raw_len is not None and declared != raw_len):
            raise CorruptRepository(f"{what}: zstd frame declares {declared} bytes")
        return dctx.decompress(frame, max_output_size=declared)
    except zstandard.ZstdError as exc:
        raise CorruptRepository(f"{what}: cannot decompress ({exc})") from None


# --------------------------------------------------------------------------- key files


def calibrate_kdf(target: float = KDF_TARGET_S,
                  timed: Callable[[luks2.KdfParams], float] | None = None) -> luks2.KdfParams:
    """The key file's argon2id cost for about ``target`` seconds on this machine now, never
    below ``MIN_KDF``.  ``timed(params)`` is seconds for one derivation (default: run one);
    derivation time grows linearly with memory x passes, so one timing of the floor says
    how far above it the target lies."""
    took = (timed or _time_kdf)(MIN_KDF)
    budget = MIN_KDF.memory * MIN_KDF.time * target / max(took, 1e-9)   # KiB x passes
    memory = MIN_KDF.memory
    while memory * 2 <= KDF_MAX_MEMORY and memory * 2 * MIN_KDF.time <= budget:
        memory *= 2
    passes = min(KDF_MAX_TIME, max(MIN_KDF.time, int(budget // memory)))
    return luks2.KdfParams(type="argon2id", time=passes, memory=memory, cpus=MIN_KDF.cpus)


def _time_kdf(params: luks2.KdfParams) -> float:
    started = time.perf_counter()
    luks2.derive(params, b"calibration", bytes(SALT_LEN), 32)
    return time.perf_counter() - started


def make_key_file(keys: MasterKeys, passphrase: bytes, repo_id: str, kdf: luks2.KdfParams,
                  created: str) -> bytes:
    """The key file: the master keys sealed under argon2id(passphrase, salt)."""
    if kdf.type != "argon2id":
        raise ValueError("the backup key file uses argon2id")
    salt = secrets.token_bytes(SALT_LEN)
    kek = luks2.derive(kdf, passphrase, salt, 32)
    nonce = secrets.token_bytes(fmt.NONCE_LEN)
    sealed = AESGCM(kek).encrypt(nonce, keys.encode(), KEY_AAD + repo_id.encode())
    return fmt.encode_json({"version": fmt.VERSION, "repo_id": repo_id, "created": created,
                            "kdf": kdf.to_json(salt), "cipher": "aes-256-gcm",
                            "nonce": fmt.b64(nonce), "data": fmt.b64(sealed)})


def open_key_file(data: bytes, passphrase: bytes, repo_id: str) -> MasterKeys | None:
    """The master keys, or None when the passphrase does not open this key file."""
    obj = fmt.decode_json(data, "key file")
    if obj.get("repo_id", repo_id) != repo_id:     # the config's is plaintext: say it was edited
        raise CorruptRepository(f"config's repo_id {repo_id} is not the one its key files "
                                "were made for: the config was altered or comes from another "
                                "repository; put back the repository's own config file")
    try:
        kdf_obj = obj["kdf"]
        kdf = luks2.KdfParams.from_json(kdf_obj)
        salt = fmt.unb64(kdf_obj["salt"], "key file salt")
        nonce = fmt.unb64(obj["nonce"], "key file nonce")
        sealed = fmt.unb64(obj["data"], "key file data")
    except (KeyError, TypeError, ValueError):
        raise CorruptRepository("key file lacks kdf, nonce or data") from None
    if kdf.type != "argon2id" or kdf.memory > 4 << 20 or kdf.time > 64:
        raise CorruptRepository(f"key file asks for an unexpected KDF ({kdf.type}, "
                                f"{kdf.memory} KiB, {kdf.time} passes)")
    kek = luks2.derive(kdf, passphrase, salt, 32)
    try:
        plain = AESGCM(kek).decrypt(nonce, sealed, KEY_AAD + repo_id.encode())
    except InvalidTag:
        return None
    return MasterKeys.decode(plain)
