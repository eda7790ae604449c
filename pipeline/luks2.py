"""LUKS2 volume header and keyslots, sans-I/O; BitLocker-style recovery passwords.

Bytes in, objects out: nothing here opens a file.  ``drives.py`` reads the
header region and the keyslot areas and hands them over; formatting returns the
bytes to write.  The layout is the one ``cryptsetup`` writes by default, so
``cryptsetup luksDump`` reads our drives on any Linux machine::

    offset 0         primary binary header (4096 B) + JSON area  } hdr_size (16 KiB)
    offset hdr_size  secondary binary header + JSON area         } hdr_size
    offset 32 KiB    keyslot areas: AF-split volume key, encrypted with
                     aes-xts-plain64 (512-byte sectors, IV from 0) under the
                     key a KDF (argon2id / pbkdf2) derives from the passphrase
    offset 16 MiB    data segment: aes-xts-plain64, 512-bit key, 4096-byte
                     sectors, IV = 512-byte sector number from segment start

Binary header (big-endian; LUKS2 on-disk format spec, section 2)::

    0    magic[6]  "LUKS\\xba\\xbe" (secondary: "SKUL\\xba\\xbe")
    6    version u16 = 2          8    hdr_size u64      16   seqid u64
    24   label[48]                72   checksum_alg[32]  104  salt[64]
    168  uuid[40]                 208  subsystem[48]     256  hdr_offset u64
    264  padding[184]             448  csum[64]          512  padding[3584]

``csum`` is sha256 over the whole ``hdr_size`` bytes with the csum field zeroed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
import threading
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from pipeline import xts
from pipeline.errors import BadInput, IntegrityError, InvalidRecoveryPassword

MAGIC_PRIMARY = b"LUKS\xba\xbe"
MAGIC_SECONDARY = b"SKUL\xba\xbe"
VERSION = 2
BINARY_HEADER_SIZE = 4096
HDR_SIZE = 16 * 1024  # cryptsetup's default metadata size
KEYSLOTS_OFFSET = 2 * HDR_SIZE
DATA_OFFSET = 16 * 1024 * 1024  # cryptsetup's default data offset
KEYSLOTS_SIZE = DATA_OFFSET - KEYSLOTS_OFFSET
VOLUME_KEY_SIZE = 64  # aes-xts-plain64 with two AES-256 keys
CIPHER = "aes-xts-plain64"
SECTOR_SIZE = 4096
AF_STRIPES = 4000
AF_HASH = "sha256"
SALT_SIZE = 32
DIGEST_ITERATIONS = 100_000
TOKEN_TYPE = "pipeline-drive"  # plaintext drive identity (session, job, sequence)
# hdr_size values cryptsetup accepts; the secondary header sits at one of them.
HDR_SIZES = tuple(16384 << i for i in range(9))

_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
_CSUM_OFFSET = 448
_CSUM_LEN = 64


class CorruptHeader(IntegrityError):
    """{}"""


class NeedMoreData(Exception):
    """The caller must pass at least ``size`` bytes from offset 0 (h11's NEED_DATA)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


# --------------------------------------------------------------------------
# Recovery passwords (BitLocker style): 8 groups of 6 digits, each a multiple
# of 11 below 720896, i.e. 16 bits per group, 128 bits from the CSPRNG.


RECOVERY_GROUPS = 8
_GROUP_LIMIT = 65536 * 11


def new_recovery_password() -> str:
    """A fresh recovery password from the OS CSPRNG (128 bits of entropy)."""
    raw = secrets.token_bytes(2 * RECOVERY_GROUPS)
    words = struct.unpack("<8H", raw)
    return "-".join(f"{w * 11:06d}" for w in words)


def parse_recovery_password(text: str) -> str:
    """Validate a typed recovery password; return its canonical form.

    Accepts surrounding whitespace, and spaces instead of dashes.  A mistyped
    group is reported by its number, as BitLocker does, so the operator knows
    which six digits to look at again.
    """
    groups = [g for g in re.split(r"[-\s]+", text.strip()) if g]
    if len(groups) != RECOVERY_GROUPS:
        raise InvalidRecoveryPassword(
            f"has {len(groups)} groups",
            "it must be 48 digits in 8 groups of 6 separated by dashes",
        )
    for number, group in enumerate(groups, 1):
        if len(group) != 6 or not group.isascii() or not group.isdigit():
            raise InvalidRecoveryPassword(
                f"group {number} ({group!r})", "each group must be exactly 6 digits"
            )
        value = int(group)
        if value % 11 or value >= _GROUP_LIMIT:
            raise InvalidRecoveryPassword(
                f"group {number} ({group})",
                "this group is mistyped (each group is a multiple of 11 below 720896)",
            )
    return "-".join(groups)


# --------------------------------------------------------------------------
# Key derivation and the anti-forensic splitter


@dataclass(frozen=True)
class KdfParams:
    """A keyslot's KDF, as stored in the JSON ``kdf`` object (memory in KiB)."""

    type: str = "argon2id"
    time: int = 4  # argon2 passes
    memory: int = 262144  # KiB
    cpus: int = 4
    iterations: int = 1000  # pbkdf2 only
    hash: str = "sha256"  # pbkdf2 only

    def __post_init__(self) -> None:
        if self.type not in ("argon2id", "argon2i", "pbkdf2"):
            raise ValueError(f"unsupported kdf {self.type!r}")
        if self.type == "pbkdf2":
            if self.iterations < 1000:
                raise ValueError("pbkdf2 needs at least 1000 iterations")
        elif self.time < 1 or self.memory < 8 * self.cpus or not 1 <= self.cpus <= 16:
            raise ValueError("argon2 needs time >= 1, 1..16 cpus, memory >= 8 KiB per cpu")

    def to_json(self, salt: bytes) -> dict[str, Any]:
        b64 = base64.b64encode(salt).decode()
        if self.type == "pbkdf2":
            return {"type": "pbkdf2", "hash": self.hash, "iterations": self.iterations,
                    "salt": b64}
        return {"type": self.type, "time": self.time, "memory": self.memory,
                "cpus": self.cpus, "salt": b64}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KdfParams:
        if obj.get("type") == "pbkdf2":
            return cls(type="pbkdf2", iterations=int(obj["iterations"]), hash=str(obj["hash"]))
        return cls(type=str(obj["type"]), time=int(obj["time"]), memory=int(obj["memory"]),
                   cpus=int(obj["cpus"]))


# One memory-hard KDF at a time in this process: each takes ``kdf.memory`` KiB (256 MiB by
# default), and drives formatted or unlocked together would take that many times as much.
_KDF_SLOT = threading.Lock()


def derive(kdf: KdfParams, passphrase: bytes, salt: bytes, length: int) -> bytes:
    """Run the keyslot KDF; argon2 is libargon2 at version 0x13, as in cryptsetup.

    libargon2 (argon2-cffi) runs the lanes in threads and lets go of the GIL: the
    argon2 of ``cryptography`` held it for the whole derivation (2.2 s at the default
    256 MiB here), freezing every other task of prep, its progress display included,
    at each new drive.
    """
    if kdf.type == "pbkdf2":
        return hashlib.pbkdf2_hmac(kdf.hash, passphrase, salt, kdf.iterations, length)
    with _KDF_SLOT:
        return hash_secret_raw(passphrase, salt, time_cost=kdf.time, memory_cost=kdf.memory,
                               parallelism=kdf.cpus, hash_len=length,
                               type=Type.ID if kdf.type == "argon2id" else Type.I,
                               version=0x13)


def _diffuse(block: bytes, hash_name: str) -> bytes:
    """cryptsetup's AF diffuse: hash each digest-sized piece with its index."""
    size = hashlib.new(hash_name).digest_size
    out = bytearray()
    for i in range(0, len(block), size):
        piece = block[i:i + size]
        digest = hashlib.new(hash_name, struct.pack(">I", i // size) + piece).digest()
        out += digest[:len(piece)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def af_split(key: bytes, stripes: int, hash_name: str = AF_HASH) -> bytes:
    """Spread ``key`` over ``stripes`` random-looking blocks (LUKS1 AF)."""
    size = len(key)
    out = bytearray()
    acc = bytes(size)
    for _ in range(stripes - 1):
        stripe = secrets.token_bytes(size)
        out += stripe
        acc = _diffuse(_xor(acc, stripe), hash_name)
    out += _xor(acc, key)
    return bytes(out)


def af_merge(material: bytes, key_size: int, stripes: int, hash_name: str = AF_HASH) -> bytes:
    """Inverse of :func:`af_split`; needs every stripe intact."""
    acc = bytes(key_size)
    for i in range(stripes - 1):
        acc = _diffuse(_xor(acc, material[i * key_size:(i + 1) * key_size]), hash_name)
    last = material[(stripes - 1) * key_size:stripes * key_size]
    return _xor(acc, last)


def _af_bytes(key_size: int, stripes: int) -> int:
    """Bytes of AF material, rounded up to whole 512-byte sectors (as cryptsetup)."""
    return -(-key_size * stripes // 512) * 512


# --------------------------------------------------------------------------
# Parsed header


@dataclass(frozen=True)
class Keyslot:
    id: int
    key_size: int
    area_offset: int
    area_size: int
    area_encryption: str
    area_key_size: int
    stripes: int
    af_hash: str
    kdf: KdfParams
    kdf_salt: bytes
    priority: int

    @property
    def material_size(self) -> int:
        return _af_bytes(self.key_size, self.stripes)


@dataclass(frozen=True)
class Segment:
    offset: int
    size: int | None  # None = "dynamic": up to the end of the device
    encryption: str
    sector_size: int
    iv_tweak: int


@dataclass(frozen=True)
class Volume:
    """A LUKS2 header that passed its checksum and our structural checks."""

    uuid: str
    label: str
    subsystem: str
    seqid: int
    hdr_size: int
    metadata: dict[str, Any]
    copy: str  # "primary" or "secondary": which header copy was valid
    warnings: tuple[str, ...] = field(default=())

    @property
    def keyslots(self) -> dict[int, Keyslot]:
        out = {}
        for key, ks in self.metadata["keyslots"].items():
            af, area, kdf = ks["af"], ks["area"], ks["kdf"]
            out[int(key)] = Keyslot(
                id=int(key), key_size=int(ks["key_size"]), area_offset=int(area["offset"]),
                area_size=int(area["size"]), area_encryption=str(area["encryption"]),
                area_key_size=int(area["key_size"]), stripes=int(af["stripes"]),
                af_hash=str(af["hash"]), kdf=KdfParams.from_json(kdf),
                kdf_salt=base64.b64decode(kdf["salt"]), priority=int(ks.get("priority", 1)),
            )
        return dict(sorted(out.items()))

    @property
    def segment(self) -> Segment:
        seg = self.metadata["segments"]["0"]
        size = seg["size"]
        return Segment(
            offset=int(seg["offset"]), size=None if size == "dynamic" else int(size),
            encryption=str(seg["encryption"]), sector_size=int(seg["sector_size"]),
            iv_tweak=int(seg["iv_tweak"]),
        )

    @property
    def token(self) -> dict[str, Any] | None:
        """Our plaintext drive-identity token, if the volume has one."""
        for tok in self.metadata["tokens"].values():
            if isinstance(tok, dict) and tok.get("type") == TOKEN_TYPE:
                return {k: v for k, v in tok.items() if k not in ("type", "keyslots")}
        return None

    def summary(self) -> dict[str, Any]:
        """What ``drive info`` shows: no secret, nothing that helps an attacker."""
        seg = self.segment
        return {
            "version": VERSION, "uuid": self.uuid, "label": self.label,
            "subsystem": self.subsystem, "seqid": self.seqid, "header_copy": self.copy,
            "metadata_size": self.hdr_size,
            "keyslots_size": int(self.metadata["config"]["keyslots_size"]),
            "segment": {"offset": seg.offset, "size": seg.size or "dynamic",
                        "cipher": seg.encryption, "sector_size": seg.sector_size},
            "keyslots": [
                {"id": ks.id, "key_size_bits": ks.key_size * 8, "kdf": ks.kdf.type,
                 **({"iterations": ks.kdf.iterations, "hash": ks.kdf.hash}
                    if ks.kdf.type == "pbkdf2" else
                    {"time": ks.kdf.time, "memory_kib": ks.kdf.memory, "cpus": ks.kdf.cpus}),
                 "area_offset": ks.area_offset, "area_size": ks.area_size,
                 "af_stripes": ks.stripes}
                for ks in self.keyslots.values()
            ],
            "drive": self.token,
            "warnings": list(self.warnings),
        }


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _check_copy(blob: bytes, at: int, magic: bytes) -> tuple[dict[str, Any], tuple] | str:
    """Validate one header copy at ``at``; return (json, fields) or why not."""
    if len(blob) < at + BINARY_HEADER_SIZE:
        raise NeedMoreData(at + BINARY_HEADER_SIZE)
    fields = _BIN.unpack_from(blob, at)
    if fields[0] != magic:
        return "no LUKS2 header magic"
    if fields[1] != VERSION:
        return f"LUKS version {fields[1]}, not 2"
    hdr_size = fields[2]
    if hdr_size not in HDR_SIZES:
        return f"unsupported header size {hdr_size}"
    if fields[9] != at:
        return f"header offset field {fields[9]} does not match its position {at}"
    if len(blob) < at + hdr_size:
        raise NeedMoreData(at + hdr_size)
    alg = _cstr(fields[5])
    if alg not in ("sha256", "sha512", "sha1"):
        return f"unsupported checksum algorithm {alg!r}"
    area = bytearray(blob[at:at + hdr_size])
    stored = bytes(area[_CSUM_OFFSET:_CSUM_OFFSET + _CSUM_LEN])
    area[_CSUM_OFFSET:_CSUM_OFFSET + _CSUM_LEN] = bytes(_CSUM_LEN)
    digest = hashlib.new(alg, area).digest()
    if not hmac.compare_digest(stored[:len(digest)], digest):
        return "header checksum mismatch"
    text = bytes(area[BINARY_HEADER_SIZE:]).split(b"\0", 1)[0]
    try:
        meta = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "JSON metadata does not parse"
    return meta, fields


def _validate(meta: Any, hdr_size: int) -> None:
    """Structural checks; raise CorruptHeader with the reason."""
    try:
        for name in ("keyslots", "tokens", "segments", "digests", "config"):
            if not isinstance(meta[name], dict):
                raise CorruptHeader(f"LUKS2 metadata: {name!r} is not an object")
        if int(meta["config"]["json_size"]) != hdr_size - BINARY_HEADER_SIZE:
            raise CorruptHeader("LUKS2 metadata: json_size does not match the header size")
        ks_end = 2 * hdr_size + int(meta["config"]["keyslots_size"])
        for key, ks in meta["keyslots"].items():
            if ks["type"] != "luks2" or ks["af"]["type"] != "luks1":
                raise CorruptHeader(f"LUKS2 keyslot {key}: unsupported type")
            off, size = int(ks["area"]["offset"]), int(ks["area"]["size"])
            if off < 2 * hdr_size or off + size > ks_end:
                raise CorruptHeader(f"LUKS2 keyslot {key}: area outside the keyslots area")
            if _af_bytes(int(ks["key_size"]), int(ks["af"]["stripes"])) > size:
                raise CorruptHeader(f"LUKS2 keyslot {key}: area too small for its key")
            KdfParams.from_json(ks["kdf"])
            base64.b64decode(ks["kdf"]["salt"], validate=True)
        seg = meta["segments"]["0"]
        if seg["type"] != "crypt":
            raise CorruptHeader("LUKS2 segment 0 is not a crypt segment")
        if int(seg["offset"]) < ks_end or int(seg["sector_size"]) not in (512, 1024, 2048, 4096):
            raise CorruptHeader("LUKS2 segment 0: bad offset or sector size")
        for key, dg in meta["digests"].items():
            if dg["type"] != "pbkdf2":
                raise CorruptHeader(f"LUKS2 digest {key}: unsupported type {dg['type']!r}")
            base64.b64decode(dg["salt"], validate=True)
            base64.b64decode(dg["digest"], validate=True)
            int(dg["iterations"])
    except CorruptHeader:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptHeader(f"LUKS2 metadata is malformed ({exc!r})") from None


def parse_header(blob: bytes) -> Volume:
    """Parse the LUKS2 header from the first bytes of a device.

    Raises :class:`NeedMoreData` when ``blob`` is too short (read that many
    bytes and call again), :class:`CorruptHeader` when neither copy is valid.
    Like cryptsetup, a damaged primary falls back to the secondary copy.
    """
    if len(blob) < BINARY_HEADER_SIZE:
        raise NeedMoreData(BINARY_HEADER_SIZE)
    if blob[:6] != MAGIC_PRIMARY and blob[:6] != MAGIC_SECONDARY:
        raise CorruptHeader("no LUKS2 header (not a drive formatted by pipeline or cryptsetup)")
    primary = _check_copy(blob, 0, MAGIC_PRIMARY)
    secondary: tuple | str = "not found"
    if isinstance(primary, tuple):
        secondary = _check_copy(blob, primary[1][2], MAGIC_SECONDARY)
    else:
        for at in HDR_SIZES:  # where cryptsetup looks for the secondary copy
            secondary = _check_copy(blob, at, MAGIC_SECONDARY)
            if isinstance(secondary, tuple):
                break
    warnings = []
    if not isinstance(primary, tuple):
        warnings.append(f"primary header: {primary}")
    if not isinstance(secondary, tuple):
        warnings.append(f"secondary header: {secondary}")
    elif isinstance(primary, tuple) and secondary[1][3] != primary[1][3]:
        warnings.append("header copies have different sequence ids")
    if isinstance(primary, tuple):
        chosen, copy = primary, "primary"
    elif isinstance(secondary, tuple):
        chosen, copy = secondary, "secondary"
    else:
        raise CorruptHeader(f"LUKS2 header damaged: {'; '.join(warnings)}")
    meta, fields = chosen
    _validate(meta, fields[2])
    return Volume(
        uuid=_cstr(fields[7]), label=_cstr(fields[4]), subsystem=_cstr(fields[8]),
        seqid=fields[3], hdr_size=fields[2], metadata=meta, copy=copy,
        warnings=tuple(warnings),
    )


def is_luks(first_bytes: bytes) -> bool:
    """True if the device starts with a LUKS header magic (either copy)."""
    return first_bytes[:6] in (MAGIC_PRIMARY, MAGIC_SECONDARY)


# --------------------------------------------------------------------------
# Unlocking


def _keyslot_cipher_key_check(ks: Keyslot) -> None:
    if ks.area_encryption != CIPHER:
        raise CorruptHeader(f"LUKS2 keyslot {ks.id}: unsupported area cipher {ks.area_encryption}")


def open_keyslot(volume: Volume, slot: int, passphrase: bytes, area: bytes) -> bytes | None:
    """Return the volume key if ``passphrase`` opens ``slot``, else None.

    ``area`` is the keyslot's area as read from the device (at least
    ``material_size`` bytes from ``area_offset``).
    """
    ks = volume.keyslots[slot]
    _keyslot_cipher_key_check(ks)
    size = ks.material_size
    if len(area) < size:
        raise NeedMoreData(size)
    slot_key = derive(ks.kdf, passphrase, ks.kdf_salt, ks.area_key_size)
    material = xts.decrypt(slot_key, bytes(area[:size]), 0, sector_size=512)
    key = af_merge(material, ks.key_size, ks.stripes, ks.af_hash)
    return key if verify_key(volume, slot, key) else None


def verify_key(volume: Volume, slot: int, key: bytes) -> bool:
    """Check a candidate volume key against the digest bound to ``slot``."""
    for dg in volume.metadata["digests"].values():
        if str(slot) not in dg["keyslots"]:
            continue
        salt = base64.b64decode(dg["salt"])
        want = base64.b64decode(dg["digest"])
        got = hashlib.pbkdf2_hmac(dg["hash"], key, salt, int(dg["iterations"]), len(want))
        return hmac.compare_digest(got, want)
    return False


# --------------------------------------------------------------------------
# Formatting


def _keyslot_json(slot: int, kdf: KdfParams, salt: bytes, area_offset: int,
                  area_size: int) -> dict[str, Any]:
    return {
        "type": "luks2",
        "key_size": VOLUME_KEY_SIZE,
        "af": {"type": "luks1", "stripes": AF_STRIPES, "hash": AF_HASH},
        "area": {"type": "raw", "offset": str(area_offset), "size": str(area_size),
                 "encryption": CIPHER, "key_size": VOLUME_KEY_SIZE},
        "kdf": kdf.to_json(salt),
    }


def _encode_copy(meta: dict[str, Any], magic: bytes, at: int, seqid: int, uuid: str,
                 label: str, subsystem: str) -> bytes:
    text = json.dumps(meta, separators=(",", ":")).encode()
    if len(text) >= HDR_SIZE - BINARY_HEADER_SIZE:
        raise ValueError("LUKS2 JSON metadata too large")
    binary = _BIN.pack(
        magic, VERSION, HDR_SIZE, seqid, label.encode()[:47], b"sha256",
        secrets.token_bytes(64), uuid.encode(), subsystem.encode()[:47], at, b"", b"",
    )
    area = bytearray(HDR_SIZE)
    area[:len(binary)] = binary
    area[BINARY_HEADER_SIZE:BINARY_HEADER_SIZE + len(text)] = text
    area[_CSUM_OFFSET:_CSUM_OFFSET + 32] = hashlib.sha256(area).digest()
    return bytes(area)


def format_volume(
    volume_key: bytes,
    passphrases: Iterable[tuple[bytes, KdfParams]],
    *,
    uuid: str | None = None,
    label: str = "",
    subsystem: str = "pipeline",
    token: dict[str, Any] | None = None,
    digest_iterations: int = DIGEST_ITERATIONS,
) -> tuple[bytes, Volume]:
    """Build a fresh LUKS2 volume: return the first DATA_OFFSET bytes and the parsed header.

    Keyslot ``i`` opens with ``passphrases[i]``.  ``token`` is stored in the
    clear as LUKS2 token 0 of type :data:`TOKEN_TYPE` (drive identity only:
    never a secret).  The returned region zeroes
    the whole keyslots area, so no keyslot of an earlier volume survives.
    """
    if len(volume_key) != VOLUME_KEY_SIZE or volume_key[:32] == volume_key[32:]:
        raise ValueError("volume key must be 64 bytes with distinct XTS halves")
    uuid = uuid or str(uuidlib.uuid4())
    region = bytearray(DATA_OFFSET)
    area_size = -(-_af_bytes(VOLUME_KEY_SIZE, AF_STRIPES) // 4096) * 4096
    keyslots: dict[str, Any] = {}
    for slot, (passphrase, kdf) in enumerate(passphrases):
        offset = KEYSLOTS_OFFSET + slot * area_size
        if offset + area_size > DATA_OFFSET:
            raise ValueError("too many keyslots")
        salt = secrets.token_bytes(SALT_SIZE)
        slot_key = derive(kdf, passphrase, salt, VOLUME_KEY_SIZE)
        material = af_split(volume_key, AF_STRIPES, AF_HASH)
        material += bytes(_af_bytes(VOLUME_KEY_SIZE, AF_STRIPES) - len(material))
        region[offset:offset + len(material)] = xts.encrypt(slot_key, material, 0,
                                                            sector_size=512)
        keyslots[str(slot)] = _keyslot_json(slot, kdf, salt, offset, area_size)
    if not keyslots:
        raise ValueError("a volume needs at least one keyslot")
    digest_salt = secrets.token_bytes(SALT_SIZE)
    digest = hashlib.pbkdf2_hmac("sha256", volume_key, digest_salt, digest_iterations, 32)
    meta = {
        "keyslots": keyslots,
        "tokens": {"0": {"type": TOKEN_TYPE, "keyslots": [], **token}} if token else {},
        "segments": {"0": {
            "type": "crypt", "offset": str(DATA_OFFSET), "size": "dynamic",
            "iv_tweak": "0", "encryption": CIPHER, "sector_size": SECTOR_SIZE,
        }},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": sorted(keyslots), "segments": ["0"],
            "hash": "sha256", "iterations": digest_iterations,
            "salt": base64.b64encode(digest_salt).decode(),
            "digest": base64.b64encode(digest).decode(),
        }},
        "config": {"json_size": str(HDR_SIZE - BINARY_HEADER_SIZE),
                   "keyslots_size": str(KEYSLOTS_SIZE)},
    }
    region[0:HDR_SIZE] = _encode_copy(meta, MAGIC_PRIMARY, 0, 1, uuid, label, subsystem)
    region[HDR_SIZE:2 * HDR_SIZE] = _encode_copy(meta, MAGIC_SECONDARY, HDR_SIZE, 1, uuid,
                                                 label, subsystem)
    return bytes(region), parse_header(bytes(region[:2 * HDR_SIZE]))


def new_volume_key() -> bytes:
    """64 random bytes with distinct halves (XTS refuses equal halves)."""
    while True:
        key = secrets.token_bytes(VOLUME_KEY_SIZE)
        if key[:32] != key[32:]:
            return key


def check_supported(volume: Volume) -> Segment:
    """The data segment, if it is one our XTS code can read."""
    seg = volume.segment
    if seg.encryption != CIPHER:
        raise BadInput(f"LUKS2 volume {volume.uuid}: cipher {seg.encryption} is not supported; "
                       f"pipeline reads {CIPHER} volumes")
    return seg
