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
import io
import json
import re
import secrets
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from argon2.low_level import Type, hash_secret_raw

from pipeline.errors import BadInput, IntegrityError, InvalidRecoveryPassword
from pipeline.volume import xts

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
# Where cryptsetup probes for the secondary header when the primary cannot say its
# hdr_size (LUKS2_HDR2_OFFSETS): the secondary always follows a primary of one of
# the sizes above.
HDR2_OFFSETS = HDR_SIZES
MAX_KEYSLOTS_SIZE = 128 * 1024 * 1024  # cryptsetup's LUKS2_MAX_KEYSLOTS_SIZE
MAX_KEYSLOTS = 32  # cryptsetup's LUKS2_KEYSLOTS_MAX
MAX_ARGON2_MEMORY = 4 * 1024 * 1024  # KiB; cryptsetup's upper bound
_UINT32 = 2**32 - 1
_UINT64 = 2**64 - 1
# Hashes a header may name (checksum, AF, PBKDF2): hashlib has them everywhere.
_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512")

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
    copy: str  # "primary" or "secondary": which header copy was used
    warnings: tuple[str, ...] = field(default=())
    offset: int = 0  # where the copy used sits on the device

    @property
    def keyslots(self) -> dict[int, Keyslot]:
        """The keyslots, by id (parse_header has already checked every field)."""
        out = {int(key): _parse_keyslot(key, ks) for key, ks in self.metadata["keyslots"].items()}
        return dict(sorted(out.items()))

    @property
    def segment(self) -> Segment:
        return _parse_segment(self.metadata["segments"]["0"])

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
            "header_offset": self.offset, "metadata_size": self.hdr_size,
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


class _Binary(NamedTuple):
    """The fields of one binary header, in ``_BIN`` order."""

    magic: bytes
    version: int
    hdr_size: int
    seqid: int
    label: bytes
    checksum_alg: bytes
    salt: bytes
    uuid: bytes
    subsystem: bytes
    hdr_offset: int
    padding: bytes
    csum: bytes


@dataclass(frozen=True)
class _Copy:
    """One header copy whose checksum and metadata both hold."""

    at: int
    binary: _Binary
    meta: dict[str, Any]


# -- hostile-input field readers: every field of the JSON area goes through one,
# so a crafted header gives a CorruptHeader naming the field, never a KeyError.

_KINDS = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict):
        raise CorruptHeader(f"{where} is not an object")
    if key not in obj:
        raise CorruptHeader(f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CorruptHeader(f"{where}: {key!r} is not {_KINDS.get(kind, kind.__name__)}")
    return value


def _uint(obj: Any, key: str, where: str, limit: int = _UINT64) -> int:
    """A non-negative integer stored as a JSON number or a decimal string (LUKS2 uses both)."""
    if not isinstance(obj, dict) or key not in obj:
        raise CorruptHeader(f"{where} has no {key!r}")
    value = obj[key]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise CorruptHeader(f"{where}: {key!r} is not an integer from 0 to {limit}")
    return value


def _hash_name(obj: Any, key: str, where: str) -> str:
    name = _field(obj, key, str, where)
    if name not in _HASHES:
        raise CorruptHeader(f"{where}: unsupported hash {name[:32]!r}")
    return name


def _b64(obj: Any, key: str, where: str) -> bytes:
    try:
        return base64.b64decode(_field(obj, key, str, where), validate=True)
    except ValueError:
        raise CorruptHeader(f"{where}: {key!r} is not base64") from None


def _parse_kdf(obj: Any, where: str) -> tuple[KdfParams, bytes]:
    """A keyslot's KDF and salt, bounded as cryptsetup bounds them: a hostile
    header must not make unlocking allocate terabytes or overflow libargon2."""
    kind = _field(obj, "type", str, where)
    try:
        if kind == "pbkdf2":
            kdf = KdfParams(type="pbkdf2", iterations=_uint(obj, "iterations", where, _UINT32),
                            hash=_hash_name(obj, "hash", where))
        else:
            kdf = KdfParams(type=kind, time=_uint(obj, "time", where, _UINT32),
                            memory=_uint(obj, "memory", where, MAX_ARGON2_MEMORY),
                            cpus=_uint(obj, "cpus", where, _UINT32))
    except ValueError as exc:
        raise CorruptHeader(f"{where}: {exc}") from None
    salt = _b64(obj, "salt", where)
    if kdf.type != "pbkdf2" and len(salt) < 8:  # libargon2's minimum
        raise CorruptHeader(f"{where}: salt shorter than 8 bytes")
    return kdf, salt


def _parse_keyslot(key: str, ks: Any) -> Keyslot:
    where = f"keyslot {key[:20]}"
    if not (key.isascii() and key.isdigit() and int(key) < MAX_KEYSLOTS):
        raise CorruptHeader(f"{where}: keyslot ids are 0 to {MAX_KEYSLOTS - 1}")
    if _field(ks, "type", str, where) != "luks2":
        raise CorruptHeader(f"{where}: unsupported type")
    af = _field(ks, "af", dict, where)
    area = _field(ks, "area", dict, where)
    if _field(af, "type", str, f"{where} af") != "luks1":
        raise CorruptHeader(f"{where}: unsupported anti-forensic splitter")
    if _field(area, "type", str, f"{where} area") != "raw":
        raise CorruptHeader(f"{where}: unsupported area type")
    kdf, salt = _parse_kdf(ks.get("kdf"), f"{where} kdf")
    priority = _uint(ks, "priority", where, 2) if "priority" in ks else 1
    encryption = _field(area, "encryption", str, f"{where} area")
    area_key_size = _uint(area, "key_size", f"{where} area", 512)
    if encryption == CIPHER and area_key_size not in (32, 64):
        raise CorruptHeader(f"{where}: XTS keys are 32 or 64 bytes, not {area_key_size}")
    key_size = _uint(ks, "key_size", where, 512)
    stripes = _uint(af, "stripes", f"{where} af", _UINT32)
    if key_size < 1 or stripes < 1:
        raise CorruptHeader(f"{where}: key_size and stripes must be at least 1")
    return Keyslot(
        id=int(key), key_size=key_size, area_offset=_uint(area, "offset", f"{where} area"),
        area_size=_uint(area, "size", f"{where} area"), area_encryption=encryption,
        area_key_size=area_key_size, stripes=stripes,
        af_hash=_hash_name(af, "hash", f"{where} af"), kdf=kdf, kdf_salt=salt,
        priority=priority,
    )


def _parse_segment(seg: Any) -> Segment:
    where = "segment 0"
    if _field(seg, "type", str, where) != "crypt":
        raise CorruptHeader(f"{where} is not a crypt segment")
    size = _uint(seg, "size", where) if seg.get("size") != "dynamic" else None
    sector_size = _uint(seg, "sector_size", where)
    if sector_size not in (512, 1024, 2048, 4096):
        raise CorruptHeader(f"{where}: bad sector size {sector_size}")
    return Segment(offset=_uint(seg, "offset", where), size=size,
                   encryption=_field(seg, "encryption", str, where), sector_size=sector_size,
                   iv_tweak=_uint(seg, "iv_tweak", where))


def _validate(meta: Any, hdr_size: int, device_size: int | None) -> None:
    """Structural checks on a copy's JSON (as cryptsetup's LUKS2_hdr_validate, for
    the parts we use); raise CorruptHeader with the reason."""
    if not isinstance(meta, dict):
        raise CorruptHeader("JSON metadata is not an object")
    for name in ("keyslots", "tokens", "segments", "digests", "config"):
        _field(meta, name, dict, "JSON metadata")
    config = meta["config"]
    if _uint(config, "json_size", "config") != hdr_size - BINARY_HEADER_SIZE:
        raise CorruptHeader("config: json_size does not match the header size")
    keyslots_size = _uint(config, "keyslots_size", "config", MAX_KEYSLOTS_SIZE)
    if keyslots_size % 4096:
        raise CorruptHeader("config: keyslots_size is not a multiple of 4096")
    ks_end = 2 * hdr_size + keyslots_size
    if device_size is not None and ks_end > device_size:
        raise CorruptHeader(f"keyslots area ends at {ks_end}, beyond the end of the device "
                            f"({device_size})")
    if len(meta["keyslots"]) > MAX_KEYSLOTS:
        raise CorruptHeader(f"more than {MAX_KEYSLOTS} keyslots")
    areas = []
    for key, value in meta["keyslots"].items():
        ks = _parse_keyslot(key, value)
        if ks.area_offset < 2 * hdr_size or ks.area_offset + ks.area_size > ks_end:
            raise CorruptHeader(f"keyslot {key}: area outside the keyslots area")
        if ks.material_size > ks.area_size:
            raise CorruptHeader(f"keyslot {key}: area too small for its key")
        areas.append((ks.area_offset, ks.area_offset + ks.area_size, key))
    areas.sort()
    for (_, end, key), (start, _, other) in pairwise(areas):
        if start < end:
            raise CorruptHeader(f"keyslot {key}: area overlaps keyslot {other}")
    if "0" not in meta["segments"]:
        raise CorruptHeader("no segment 0")
    seg = _parse_segment(meta["segments"]["0"])
    if seg.offset < ks_end:
        raise CorruptHeader("segment 0 starts inside the metadata or keyslots area")
    if device_size is not None and seg.offset + (seg.size or 0) > device_size:
        raise CorruptHeader(f"segment 0 ends beyond the end of the device ({device_size})")
    for key, dg in meta["digests"].items():
        where = f"digest {key[:20]}"
        if _field(dg, "type", str, where) != "pbkdf2":
            raise CorruptHeader(f"{where}: unsupported type")
        slots = _field(dg, "keyslots", list, where)
        if any(not isinstance(s, str) or s not in meta["keyslots"] for s in slots):
            raise CorruptHeader(f"{where}: refers to a keyslot that does not exist")
        if not all(isinstance(s, str) for s in _field(dg, "segments", list, where)):
            raise CorruptHeader(f"{where}: 'segments' is not an array of ids")
        _hash_name(dg, "hash", where)
        if _uint(dg, "iterations", where, _UINT32) < 1:
            raise CorruptHeader(f"{where}: no iterations")
        _b64(dg, "salt", where)
        if not 16 <= len(_b64(dg, "digest", where)) <= 64:
            raise CorruptHeader(f"{where}: digest is not 16 to 64 bytes")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _binary(blob: bytes, at: int, magic: bytes, device_size: int | None) -> _Binary | str:
    """The binary header at ``at`` if it passes cryptsetup's checks and its checksum
    (``hdr_read_disk``), else why not."""
    end = at + BINARY_HEADER_SIZE
    if device_size is not None and end > device_size:
        return "beyond the end of the device"
    if len(blob) < end:
        raise NeedMoreData(end)
    hdr = _Binary._make(_BIN.unpack_from(blob, at))
    if hdr.magic != magic:
        return "bad magic"
    if hdr.version != VERSION:
        return f"LUKS version {hdr.version}, not 2"
    if hdr.hdr_offset != at:
        return f"its offset field says {hdr.hdr_offset}"
    if hdr.hdr_size not in HDR_SIZES:
        return f"unsupported header size {hdr.hdr_size}"
    if magic == MAGIC_SECONDARY and hdr.hdr_size != at:
        return f"header size {hdr.hdr_size} does not match its offset"
    if device_size is not None and at + hdr.hdr_size > device_size:
        return "beyond the end of the device"
    if len(blob) < at + hdr.hdr_size:
        raise NeedMoreData(at + hdr.hdr_size)
    alg = _cstr(hdr.checksum_alg)
    if alg not in _HASHES:
        return f"unsupported checksum algorithm {alg!r}"
    area = bytearray(blob[at:at + hdr.hdr_size])
    area[_CSUM_OFFSET:_CSUM_OFFSET + _CSUM_LEN] = bytes(_CSUM_LEN)
    digest = hashlib.new(alg, area).digest()
    if not hmac.compare_digest(hdr.csum[:len(digest)], digest):
        return "checksum mismatch"
    return hdr


def _copy(blob: bytes, hdr: _Binary, at: int, device_size: int | None) -> _Copy | str:
    """The copy whose binary header passed, if its JSON area parses and validates."""
    area = bytes(blob[at + BINARY_HEADER_SIZE:at + hdr.hdr_size])
    text, nul, rest = area.partition(b"\0")
    if not text.startswith(b"{"):
        return "JSON area does not start with '{'"
    if not nul:  # as cryptsetup's validate_json_area
        return "JSON area has no NUL after the JSON text"
    if rest.count(0) != len(rest):
        return "JSON area holds data after the JSON text"
    try:
        meta = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return "JSON metadata does not parse"
    try:
        _validate(meta, hdr.hdr_size, device_size)
    except CorruptHeader as exc:
        return str(exc)
    return _Copy(at, hdr, meta)


def _secondary(blob: bytes, offsets: tuple[int, ...], device_size: int | None
               ) -> tuple[_Copy | str, int | None]:
    """The secondary copy, probed as cryptsetup does: the first offset whose binary
    header and checksum hold is the copy; (copy or why not, where)."""
    reasons: list[tuple[int, str]] = []
    for at in offsets:
        hdr = _binary(blob, at, MAGIC_SECONDARY, device_size)
        if isinstance(hdr, _Binary):
            return _copy(blob, hdr, at, device_size), at
        reasons.append((at, hdr))
    if len(offsets) == 1:
        return reasons[0][1], offsets[0]
    for at, reason in reasons:  # the one that looked like a header says the most
        if reason not in ("bad magic", "beyond the end of the device"):
            return reason, at
    return f"not found at offsets {offsets[0]} to {offsets[-1]}", None


def parse_header(blob: bytes, device_size: int | None = None) -> Volume:
    """Parse the LUKS2 header from the first bytes of a device, as cryptsetup reads it.

    The primary copy sits at 0; the secondary at the primary's hdr_size, or, when
    the primary's binary header is damaged, at the first of :data:`HDR2_OFFSETS`
    where one holds.  Each copy is checked on its own (magic, version, offset,
    checksum, JSON); the valid copy with the higher seqid wins, the primary on a
    tie.  A damaged copy is reported in ``Volume.warnings``, never repaired here.

    Raises :class:`NeedMoreData` when ``blob`` is too short (read that many bytes
    and call again), :class:`CorruptHeader` naming each copy's fault when no copy
    is valid.  ``device_size``, when given, bounds the offsets a header may name.
    """
    first = _binary(blob, 0, MAGIC_PRIMARY, device_size)
    if isinstance(first, _Binary):
        primary = _copy(blob, first, 0, device_size)
        offsets: tuple[int, ...] = (first.hdr_size,)
    else:
        primary, offsets = first, HDR2_OFFSETS
    secondary, at2 = _secondary(blob, offsets, device_size)
    where2 = f"secondary at {at2}" if at2 is not None else "secondary"
    if not isinstance(primary, _Copy) and not isinstance(secondary, _Copy):
        hint = ""
        if primary in ("bad magic", "beyond the end of the device") and at2 is None:
            hint = " (not a drive formatted by pipeline or cryptsetup, or both copies are lost)"
        raise CorruptHeader(f"no valid LUKS2 header: primary at 0: {primary}; "
                            f"{where2}: {secondary}{hint}")
    repair = "`cryptsetup repair` on a writable device rewrites it from the good copy"
    warnings = []
    if not isinstance(primary, _Copy):
        assert isinstance(secondary, _Copy)
        chosen = secondary
        warnings.append(f"primary LUKS2 header at 0 is damaged ({primary}); using the "
                        f"secondary copy at {secondary.at} ({repair})")
    elif not isinstance(secondary, _Copy):
        chosen = primary
        warnings.append(f"{where2.replace('secondary', 'secondary LUKS2 header')} is damaged "
                        f"({secondary}); using the primary copy ({repair})")
    else:
        chosen = secondary if secondary.binary.seqid > primary.binary.seqid else primary
        if secondary.binary.seqid != primary.binary.seqid:
            newer = "primary" if chosen is primary else "secondary"
            warnings.append(f"LUKS2 header copies differ: primary seqid "
                            f"{primary.binary.seqid}, secondary seqid "
                            f"{secondary.binary.seqid}; using the newer {newer} copy")
    hdr = chosen.binary
    return Volume(
        uuid=_cstr(hdr.uuid), label=_cstr(hdr.label), subsystem=_cstr(hdr.subsystem),
        seqid=hdr.seqid, hdr_size=hdr.hdr_size, metadata=chosen.meta,
        copy="primary" if chosen is primary else "secondary", warnings=tuple(warnings),
        offset=chosen.at,
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
    if not verify_key(volume, slot, key):
        return None
    if volume.segment.encryption == CIPHER and (
            len(key) not in (32, 64) or key[:len(key) // 2] == key[len(key) // 2:]):
        # Only a crafted header gets here: XTS would refuse this key later, less clearly.
        raise CorruptHeader(f"LUKS2 keyslot {slot}: the volume key does not fit {CIPHER}")
    return key


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

    Memory: the region is held once (16 MiB), written in place and returned without a
    copy, and made only after the KDFs ran (argon2id: 256 MiB by default), so it never
    sits on top of them: the encrypted keyslots (250 KiB each) wait until then.
    """
    if len(volume_key) != VOLUME_KEY_SIZE or volume_key[:32] == volume_key[32:]:
        raise ValueError("volume key must be 64 bytes with distinct XTS halves")
    import uuid as uuidlib  # here: every backup imports this module for its KDF (uuid: 2 ms)

    uuid = uuid or str(uuidlib.uuid4())
    area_size = -(-_af_bytes(VOLUME_KEY_SIZE, AF_STRIPES) // 4096) * 4096
    keyslots: dict[str, Any] = {}
    areas: list[tuple[int, bytes]] = []  # (offset, encrypted key material) of each keyslot
    for slot, (passphrase, kdf) in enumerate(passphrases):
        offset = KEYSLOTS_OFFSET + slot * area_size
        if offset + area_size > DATA_OFFSET:
            raise ValueError("too many keyslots")
        salt = secrets.token_bytes(SALT_SIZE)
        slot_key = derive(kdf, passphrase, salt, VOLUME_KEY_SIZE)
        material = af_split(volume_key, AF_STRIPES, AF_HASH)
        material += bytes(_af_bytes(VOLUME_KEY_SIZE, AF_STRIPES) - len(material))
        areas.append((offset, xts.encrypt(slot_key, material, 0, sector_size=512)))
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
    headers = (_encode_copy(meta, MAGIC_PRIMARY, 0, 1, uuid, label, subsystem)
               + _encode_copy(meta, MAGIC_SECONDARY, HDR_SIZE, 1, uuid, label, subsystem))
    # The bytes returned are written in place: BytesIO adopts the zero-filled bytes (it
    # holds the only reference), getbuffer() exposes them writable, and getvalue() hands
    # them back without a copy once that view is dropped (as xts.encrypt does).
    result = io.BytesIO(bytes(DATA_OFFSET))
    region = result.getbuffer()
    region[:2 * HDR_SIZE] = headers
    for offset, area in areas:
        region[offset:offset + len(area)] = area
    del region
    return result.getvalue(), parse_header(headers)


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
