"""The backup repository's byte layout: sans-I/O, bytes in, objects out (docs/FORMAT.md).

No files, no trio, no keys: the crypto module seals and opens what this module
frames.  Every file of a repository is a multiple of 512 bytes, so a seeded
repository imports as page blobs of exactly these bytes.  A damaged or foreign
file raises ``CorruptRepository`` (exit 4) and nothing else.

::

    pack      blob 0 | blob 1 | ... | sealed header | zero pad | trailer (32 bytes, at the end)
    blob      nonce (12) | AES-256-GCM ciphertext of a zstd frame, or of the raw data | tag (16)
    trailer   "PLBKPACK" | u16 version | u16 0 | u32 header_len | u64 header_offset | u64 0
    envelope  magic (8) | u16 version | u16 0 | u32 sealed_len | sealed | zero pad
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import xxhash

from pipeline.backup.errors import CorruptRepository

VERSION = 1                     # packs, index and snapshot envelopes, key files
HMAC_SHA256 = "hmac-sha256"     # chunk ids HMAC-SHA-256(id_key, data), pack ids SHA-256
BLAKE3 = "blake3"               # chunk ids BLAKE3 keyed with id_key, pack ids BLAKE3
# The config's version names its ids: version 1 repositories (seeded before BLAKE3) keep
# theirs; an older pipeline meets version 2 with "upgrade pipeline", not with every
# chunk failing its id.
CONFIG_IDS = {1: HMAC_SHA256, 2: BLAKE3}
ALIGN = 512                     # every repository file is a multiple of this (page blobs)
ID_LEN = 32                     # chunk, pack, index and snapshot ids: 32 bytes, 64 hex digits
NONCE_LEN = 12
TAG_LEN = 16
SEAL_OVERHEAD = NONCE_LEN + TAG_LEN

KIND_DATA = 1                   # a piece of a file
KIND_TREE = 2                   # a piece of a snapshot's file tree (JSON Lines)
KINDS = (KIND_DATA, KIND_TREE)

PACK_MAGIC = b"PLBKPACK"
INDEX_MAGIC = b"PLBKINDX"
SNAPSHOT_MAGIC = b"PLBKSNAP"
_TRAILER = struct.Struct("<8sHHIQQ")
TRAILER_LEN = _TRAILER.size     # 32
_ENVELOPE = struct.Struct("<8sHHI")
_PACK_ENTRY = struct.Struct("<B32sIII")          # kind, id, offset, length, raw_len: 45 bytes
_INDEX_ENTRY = struct.Struct("<B32sIIII")        # kind, id, pack, offset, length, raw_len: 49
_U32 = struct.Struct("<I")

CONFIG = "config"
KEYS = "keys/"
DATA = "data/"
INDEX = "index/"
SNAPSHOTS = "snapshots/"
_HEX = re.compile(r"[0-9a-f]{64}\Z")
_SNAPSHOT_NAME = re.compile(r"(\d{8}T\d{6}\d{6}Z)-([0-9a-f]{64})\Z")


def pad(data: bytes | bytearray, trailer: bytes = b"") -> bytes:
    """``data``, zeros, then ``trailer``: the smallest multiple of 512 bytes."""
    size = len(data) + len(trailer)
    size += -size % ALIGN
    return bytes(data) + bytes(size - len(data) - len(trailer)) + trailer


def check_id(text: str, what: str = "id") -> bytes:
    if not _HEX.match(text):
        raise CorruptRepository(f"{what} {text[:80]!r} is not 64 hex digits")
    return bytes.fromhex(text)


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{DATA}{h[:2]}/{h}"


def index_name(index_id: bytes) -> str:
    return f"{INDEX}{index_id.hex()}"


def key_name(key_id: bytes) -> str:
    return f"{KEYS}{key_id.hex()}"


def snapshot_name(when: datetime, snapshot_id: bytes) -> str:
    """The time leads so that names sort oldest first without a key (the time is public:
    the blob's own Last-Modified shows it too)."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{SNAPSHOTS}{stamp}-{snapshot_id.hex()}"


def parse_snapshot_name(name: str) -> tuple[datetime, bytes] | None:
    """(time, id) of a ``snapshots/`` name, None for a name that is not ours."""
    m = _SNAPSHOT_NAME.match(name.removeprefix(SNAPSHOTS))
    if m is None or not name.startswith(SNAPSHOTS):
        return None
    s = m.group(1)      # by hand: strptime's import (_strptime, calendar, locale) costs more
    when = datetime(int(s[:4]), int(s[4:6]), int(s[6:8]), int(s[9:11]), int(s[11:13]),
                    int(s[13:15]), int(s[15:21]), tzinfo=UTC)
    return when, bytes.fromhex(m.group(2))


# --------------------------------------------------------------------------- JSON files


def encode_json(obj: dict[str, Any]) -> bytes:
    """A small plaintext JSON file (config, key file), zero-padded."""
    return pad(json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n")


def decode_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.rstrip(b"\0"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptRepository(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise CorruptRepository(f"{what} is not a JSON object")
    return obj


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise CorruptRepository(f"{what} is not base64") from None


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC 2020 sizes (bytes) and normalization level; the gear seed is secret and lives
    in the key material.  Level 2 (the paper's pick) narrows the sizes around the average
    (mean ~1.15 MiB, 99% under 2.5 MiB), so a 4 KiB write rewrites about 1 MiB, rarely 4."""

    min: int = 256 << 10
    avg: int = 1 << 20
    max: int = 4 << 20
    nc: int = 2


@dataclass(frozen=True, slots=True)
class Config:
    """The repository's public parameters (file ``config``, plaintext JSON)."""

    repo_id: str
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = 16 << 20
    created: str = ""
    ids: str = BLAKE3              # how chunk and pack ids are made (``CONFIG_IDS``)

    def encode(self) -> bytes:
        version = next(v for v, ids in CONFIG_IDS.items() if ids == self.ids)
        return encode_json({
            "format": "pipeline-backup", "version": version, "repo_id": self.repo_id,
            "created": self.created, "pack_size": self.pack_size,
            "chunker": {"algorithm": "fastcdc2020", "min": self.chunker.min,
                        "avg": self.chunker.avg, "max": self.chunker.max,
                        "normalized_chunking": self.chunker.nc},
            "cipher": "aes-256-gcm", "chunk_id": self.ids, "compression": "zstd",
        })

    @classmethod
    def decode(cls, data: bytes) -> Config:
        obj = decode_json(data, "config")
        if obj.get("format") != "pipeline-backup":
            raise CorruptRepository("config is not a pipeline backup repository's")
        version = obj.get("version")     # a JSON integer: a list or object is unhashable
        if type(version) is not int or version not in CONFIG_IDS:
            raise CorruptRepository(f"config version {version!r} is not one of "
                                    f"{', '.join(map(str, CONFIG_IDS))}; a newer pipeline "
                                    "wrote this repository, upgrade pipeline")
        ids = CONFIG_IDS[version]
        if obj.get("chunk_id", ids) != ids:
            raise CorruptRepository(f"config's chunk_id {obj.get('chunk_id')!r} is not its "
                                    f"version's ({ids}): the config was altered; put back the "
                                    "repository's own config file")
        try:
            ch = obj["chunker"]
            params = ChunkerParams(_whole(ch["min"]), _whole(ch["avg"]), _whole(ch["max"]),
                                   _whole(ch["normalized_chunking"]))
            config = cls(repo_id=obj["repo_id"], chunker=params,
                         pack_size=_whole(obj["pack_size"]), created=str(obj.get("created", "")),
                         ids=ids)
        except (KeyError, TypeError, ValueError):
            raise CorruptRepository("config lacks chunker or pack_size fields") from None
        config.check()
        return config

    def check(self) -> None:
        """The config is plaintext, so anyone who can write to the storage can edit it: each
        field within what a backup could have written, or one line (not a traceback from the
        chunker, nor a whole file read as one chunk, nor a pack held whole in memory)."""
        if not isinstance(self.repo_id, str) or not re.fullmatch(r"[0-9a-f]{32}", self.repo_id):
            raise CorruptRepository("config's repo_id is not 32 hex digits: the config was "
                                    "altered; put back the repository's own config file")
        c = self.chunker
        for name, value, (low, high) in (("min", c.min, CHUNK_MIN), ("avg", c.avg, CHUNK_AVG),
                                          ("max", c.max, CHUNK_MAX),
                                          ("normalized_chunking", c.nc, (0, 3)),
                                          ("pack_size", self.pack_size, PACK_SIZE)):
            if not low <= value <= high:
                raise CorruptRepository(f"config's {name} {value} is outside {low}..{high}: "
                                        "the config was altered; put back the repository's "
                                        "own config file")
        if not c.min <= c.avg <= c.max:
            raise CorruptRepository(f"config's chunker sizes are not min <= avg <= max "
                                    f"({c.min}, {c.avg}, {c.max}): the config was altered; "
                                    "put back the repository's own config file")


# What FastCDC 2020 accepts (its MINIMUM/AVERAGE/MAXIMUM bounds), and packs from 64 KiB (the
# tests' smallest) to 128 MiB (restic's largest): one pack is held whole while it is built.
CHUNK_MIN = (64, 1 << 20)
CHUNK_AVG = (256, 4 << 20)
CHUNK_MAX = (1 << 10, 16 << 20)
PACK_SIZE = (64 << 10, 128 << 20)


def _whole(value: object) -> int:
    """A JSON integer (not a float, a string or a bool that int() would take)."""
    if type(value) is not int:
        raise TypeError(value)
    return value


# --------------------------------------------------------------------------- packs


class PackEntry(NamedTuple):
    """One blob of a pack: where it lies and what it holds."""

    kind: int
    id: bytes
    offset: int
    length: int       # sealed bytes
    raw_len: int      # plaintext bytes of the chunk


def encode_pack_header(entries: Sequence[PackEntry]) -> bytes:
    """Plaintext of the pack header (the caller seals it)."""
    out = bytearray(_U32.pack(len(entries)))
    for e in entries:
        out += _PACK_ENTRY.pack(e.kind, e.id, e.offset, e.length, e.raw_len)
    return bytes(out)


def decode_pack_header(plain: bytes) -> list[PackEntry]:
    if len(plain) < 4:
        raise CorruptRepository("pack header is truncated")
    (count,) = _U32.unpack_from(plain)
    if len(plain) != 4 + count * _PACK_ENTRY.size:
        raise CorruptRepository(f"pack header says {count} entries but holds {len(plain)} bytes")
    out = []
    for i in range(count):
        kind, cid, off, length, raw = _PACK_ENTRY.unpack_from(plain, 4 + i * _PACK_ENTRY.size)
        if kind not in KINDS:
            raise CorruptRepository(f"pack header entry {i}: unknown kind {kind}")
        out.append(PackEntry(kind, cid, off, length, raw))
    return out


def pack_parts(blobs: Sequence[bytes], sealed_header: bytes) -> list[bytes]:
    """blobs | sealed header | zero pad | trailer: a multiple of 512 bytes, as the parts
    in order (hashed and written as they are: never joined into one copy)."""
    size = sum(len(b) for b in blobs)
    trailer = _TRAILER.pack(PACK_MAGIC, VERSION, 0, len(sealed_header), size, 0)
    used = size + len(sealed_header) + TRAILER_LEN
    return [*blobs, sealed_header, bytes(-used % ALIGN), trailer]


def encode_pack(blobs: Sequence[bytes], sealed_header: bytes) -> bytes:
    """The same pack as one buffer (a copy: for tests and tools, not the backup)."""
    return b"".join(pack_parts(blobs, sealed_header))


def decode_pack_trailer(pack: bytes) -> tuple[int, int]:
    """(header_offset, header_len) from a whole pack (or its last 32 bytes at the right place)."""
    if len(pack) < TRAILER_LEN:
        raise CorruptRepository("pack is shorter than its trailer")
    magic, version, _, hlen, hoff, _ = _TRAILER.unpack_from(pack, len(pack) - TRAILER_LEN)
    if magic != PACK_MAGIC:
        raise CorruptRepository("pack trailer has no PLBKPACK magic")
    if version != VERSION:
        raise CorruptRepository(f"pack version {version} is not {VERSION}; upgrade pipeline")
    if hoff + hlen > len(pack) - TRAILER_LEN:
        raise CorruptRepository("pack trailer points past the end of the pack")
    return hoff, hlen


# --------------------------------------------------------------------------- envelopes


def encode_envelope(magic: bytes, sealed: bytes) -> bytes:
    return pad(_ENVELOPE.pack(magic, VERSION, 0, len(sealed)) + sealed)


def decode_envelope(data: bytes, magic: bytes, what: str) -> bytes:
    """The sealed bytes inside an index or snapshot file."""
    if len(data) < _ENVELOPE.size:
        raise CorruptRepository(f"{what} is truncated")
    got, version, _, n = _ENVELOPE.unpack_from(data)
    if got != magic:
        raise CorruptRepository(f"{what} has magic {got!r}, not {magic!r}")
    if version != VERSION:
        raise CorruptRepository(f"{what} has version {version}, not {VERSION}; upgrade pipeline")
    if _ENVELOPE.size + n > len(data):
        raise CorruptRepository(f"{what} is truncated ({len(data)} bytes, needs "
                                f"{_ENVELOPE.size + n})")
    return data[_ENVELOPE.size:_ENVELOPE.size + n]


# --------------------------------------------------------------------------- index files


class IndexEntry(NamedTuple):
    """Where a chunk is.  A NamedTuple, not a frozen dataclass: an online backup decodes
    every entry of the repository's index before it walks (10,000 of them took 13 ms
    through the dataclass's __init__, 4 ms as tuples)."""

    kind: int
    id: bytes
    pack: bytes       # pack id
    offset: int
    length: int
    raw_len: int


def encode_index(entries: Iterable[IndexEntry]) -> bytes:
    """Plaintext of an index file: the pack table, then the entries (the caller compresses
    and seals it)."""
    packs: dict[bytes, int] = {}
    body = bytearray()
    count = 0
    for e in entries:
        slot = packs.setdefault(e.pack, len(packs))
        body += _INDEX_ENTRY.pack(e.kind, e.id, slot, e.offset, e.length, e.raw_len)
        count += 1
    return (_U32.pack(len(packs)) + b"".join(packs) + _U32.pack(count) + bytes(body))


def decode_index(plain: bytes) -> list[IndexEntry]:
    try:
        (npacks,) = _U32.unpack_from(plain)
        at = 4 + npacks * ID_LEN
        (count,) = _U32.unpack_from(plain, at)     # raises first if the table is cut short
        table = [plain[4 + i * ID_LEN:4 + (i + 1) * ID_LEN] for i in range(npacks)]
        at += 4
    except struct.error:
        raise CorruptRepository("index file is truncated") from None
    if len(plain) != at + count * _INDEX_ENTRY.size:
        raise CorruptRepository(f"index file says {count} entries but holds {len(plain)} bytes")
    body = memoryview(plain)[at:]
    try:
        out = [_new_entry((kind, cid, table[slot], off, length, raw))
               for kind, cid, slot, off, length, raw in _INDEX_ENTRY.iter_unpack(body)]
    except IndexError:          # a slot past the pack table
        _bad_entry(body, npacks)
    if any(e.kind not in KINDS for e in out):
        _bad_entry(body, npacks)
    return out


_new_entry = IndexEntry._make


def _bad_entry(body: memoryview, npacks: int) -> NoReturn:
    """The first entry of ``body`` of no kind or past the pack table, named."""
    for i, (kind, _, slot, *_rest) in enumerate(_INDEX_ENTRY.iter_unpack(body)):
        if kind not in KINDS or slot >= npacks:
            raise CorruptRepository(f"index entry {i}: kind {kind}, pack {slot} of {npacks}")
    raise AssertionError("no bad index entry")  # pragma: no cover


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class Manifest:
    """One backup: when, of what, and the ids of the tree chunks holding its file list."""

    time: str
    hostname: str
    source: str
    tree: tuple[bytes, ...]
    files: int
    dirs: int
    bytes: int
    parent: str | None = None

    def encode(self) -> bytes:
        return json.dumps({
            "version": VERSION, "time": self.time, "hostname": self.hostname,
            "source": self.source, "tree": [t.hex() for t in self.tree], "files": self.files,
            "dirs": self.dirs, "bytes": self.bytes, "parent": self.parent,
        }, sort_keys=True).encode()

    @classmethod
    def decode(cls, plain: bytes) -> Manifest:
        obj = decode_json(plain, "snapshot")
        try:
            return cls(time=str(obj["time"]), hostname=str(obj["hostname"]),
                       source=str(obj["source"]),
                       tree=tuple(check_id(t, "tree chunk") for t in obj["tree"]),
                       files=int(obj["files"]), dirs=int(obj["dirs"]), bytes=int(obj["bytes"]),
                       parent=obj.get("parent"))
        except (KeyError, TypeError, ValueError):
            raise CorruptRepository("snapshot manifest lacks fields") from None


# --------------------------------------------------------------------------- the file tree
#
# JSON Lines, one entry per line, in walk order (depth first, names sorted by bytes).
# Names are str with surrogate escapes for bytes that are not UTF-8 (os.fsdecode), and
# json's ASCII escapes carry those surrogates through unchanged.

Content = list[tuple[bytes | None, int]]
"""A file's bytes in order: (chunk id, length) or (None, length) for a run of zeros."""

Xattrs = list[tuple[str, bytes]]
"""Extended attributes (name, value), sorted by name; POSIX ACLs are two of them."""

TYPES = ("file", "dir", "symlink", "fifo", "chardev", "blockdev")
DEVICES = ("chardev", "blockdev")
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
XATTR_PREFIXES = ("user.", "security.", "trusted.")   # and the two ACL names, no other system.*
XATTR_NAME_MAX = 255            # bytes (Linux XATTR_NAME_MAX)
XATTR_VALUE_MAX = 65536         # bytes (Linux XATTR_SIZE_MAX)
XATTRS_MAX = 1024               # attributes per entry
NAME_MAX = 256                  # a user or group name (bytes)
_ACL_HEADER = 4                 # posix_acl_xattr_header: u32 version, then 8-byte entries
_ACL_ENTRY = 8


def xattr_name_ok(name: str) -> bool:
    """A name this format records: user.*, security.*, trusted.* or a POSIX ACL."""
    if name in (ACL_ACCESS, ACL_DEFAULT):
        return True
    return (name.startswith(XATTR_PREFIXES) and "\0" not in name
            and len(name.encode("utf-8", "surrogateescape")) <= XATTR_NAME_MAX
            and name not in XATTR_PREFIXES)


@dataclass(slots=True)
class Node:
    """One tree entry.  The fields after ``content`` came later (owner, xattrs, links,
    devices): an entry written before them decodes with these defaults, and ``uid`` None
    says the owner was not recorded (restore then leaves the restoring user's)."""

    type: str                       # one of TYPES
    path: str
    mode: int = 0
    mtime_ns: int = 0
    size: int = 0
    ctime_ns: int = 0
    inode: int = 0
    target: str = ""                # symlink target
    content: Content = field(default_factory=list)
    uid: int | None = None
    gid: int | None = None
    user: str = ""                  # the owner's name where the source machine had one
    group: str = ""
    xattrs: Xattrs = field(default_factory=list)
    links: int = 1                  # a file's hard links; with dev + inode when above 1
    dev: int = 0
    rdev: int = 0                   # a device node's device number

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"type": self.type, "path": self.path, "mode": self.mode,
                               "mtime_ns": self.mtime_ns}
        if self.type == "file":
            obj.update(size=self.size, ctime_ns=self.ctime_ns, inode=self.inode,
                       content=[[None if c is None else c.hex(), n] for c, n in self.content])
            if self.links > 1:
                obj.update(links=self.links, dev=self.dev)
        elif self.type == "symlink":
            obj["target"] = self.target
        elif self.type in DEVICES:
            obj["rdev"] = self.rdev
        if self.uid is not None:
            obj.update(uid=self.uid, gid=self.gid)
        if self.user:
            obj["user"] = self.user
        if self.group:
            obj["group"] = self.group
        if self.xattrs:
            obj["xattrs"] = [[k, b64(v)] for k, v in self.xattrs]
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Node:
        try:
            obj = json.loads(line.decode())   # UTF-8 only, and a third faster than from bytes
            node = cls(type=obj["type"], path=_text(obj["path"], 1 << 16, "path"),
                       mode=_int(obj["mode"], 0o7777, "mode"),
                       mtime_ns=_int(obj["mtime_ns"], _I64, "mtime_ns", low=-_I64 - 1))
            if node.type == "file":
                node.size = _int(obj["size"], _I64, "size")
                node.ctime_ns = _int(obj["ctime_ns"], _I64, "ctime_ns", low=-_I64 - 1)
                node.inode = _int(obj["inode"], 2**64 - 1, "inode")
                node.content = [(None if c is None else check_id(c, "chunk"),
                                 _int(n, _I64, "length", low=1)) for c, n in obj["content"]]
                if sum(n for _, n in node.content) != node.size:
                    raise ValueError("content does not add up to the size")
                node.links = _int(obj.get("links", 1), 2**32 - 1, "links", low=1)
                node.dev = _int(obj.get("dev", 0), 2**64 - 1, "dev")
            elif node.type == "symlink":
                node.target = _text(obj["target"], 1 << 16, "target")
            elif node.type in DEVICES:
                node.rdev = _int(obj["rdev"], 2**64 - 1, "rdev")
            elif node.type not in TYPES:
                raise ValueError(f"unknown type {str(node.type)[:20]!r}")
            _decode_meta(node, obj)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptRepository(f"tree entry is damaged ({str(exc)[:200]})") from None
        parts = node.path.split("/")
        if node.path != ROOT and ("" in parts or "." in parts or ".." in parts):
            raise CorruptRepository(f"tree entry path {node.path[:80]!r} escapes the target")
        if node.path == ROOT and node.type != "dir":
            raise CorruptRepository("tree entry '.' is not a directory")
        return node


_I64 = 2**63 - 1


def _int(value: object, high: int, what: str, low: int = 0) -> int:
    """A JSON integer in [low, high]: not a bool, a float or a string."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} {str(value)[:40]!r} is not an integer in [{low}, {high}]")
    return value


def _text(value: object, limit: int, what: str) -> str:
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise ValueError(f"{what} is not a string of at most {limit} characters without NUL")
    return value


def _decode_meta(node: Node, obj: dict[str, Any]) -> None:
    """The owner and the extended attributes, each checked: hostile input."""
    if "uid" in obj or "gid" in obj:
        node.uid = _int(obj["uid"], 2**32 - 1, "uid")
        node.gid = _int(obj["gid"], 2**32 - 1, "gid")
    for key in ("user", "group"):
        name = _text(obj.get(key, ""), NAME_MAX, key)
        if "/" in name or ":" in name or "\n" in name:
            raise ValueError(f"{key} name {name[:40]!r} has '/', ':' or a newline")
        setattr(node, key, name)
    raw = obj.get("xattrs", [])
    if not isinstance(raw, list) or len(raw) > XATTRS_MAX:
        raise ValueError(f"xattrs is not a list of at most {XATTRS_MAX}")
    seen: set[str] = set()
    for pair in raw:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("an xattr is not a [name, value] pair")
        name = _text(pair[0], XATTR_NAME_MAX, "xattr name")
        if not xattr_name_ok(name) or name in seen:
            raise ValueError(f"xattr name {name[:40]!r} is not recorded by this format "
                             "(or twice)")
        seen.add(name)
        value = unb64(_text(pair[1], XATTR_VALUE_MAX * 2, "xattr value"), "xattr value")
        if len(value) > XATTR_VALUE_MAX:
            raise ValueError(f"xattr {name[:40]!r} holds more than {XATTR_VALUE_MAX} bytes")
        if name in (ACL_ACCESS, ACL_DEFAULT) and (
                len(value) < _ACL_HEADER or (len(value) - _ACL_HEADER) % _ACL_ENTRY):
            raise ValueError(f"{name} is not a POSIX ACL ({len(value)} bytes)")
        if name == ACL_DEFAULT and node.type != "dir":
            raise ValueError(f"{name} on a {node.type}, not a directory")
        node.xattrs.append((name, value))


ROOT = "."                      # the source directory itself (its mode and mtime)


def path_key(path: str) -> tuple[bytes, ...]:
    """Walk order as a sort key: the root, then depth first, siblings by name bytes."""
    if path == ROOT:
        return ()
    return tuple(p.encode("utf-8", "surrogateescape") for p in path.split("/"))


TREE_CUT_MASK = 127             # cut after a line whose xxh64 has these bits 0: ~128 lines
TREE_MAX = 1 << 20              # and before a chunk would pass 1 MiB


def cuts_after(line: bytes) -> bool:
    """The cut rule: a chunk ends after this line (or before passing TREE_MAX)."""
    return xxhash.xxh64_intdigest(line) & TREE_CUT_MASK == 0


LineAt = tuple[bytes, int, int]
"""A tree line's place: (its chunk's id, its index in that chunk, the chunk's lines)."""


class TreeCutter:
    """Cuts a stream of tree lines into chunks at content-defined line boundaries, so
    an unchanged stretch of the tree yields the same chunks (and dedups) next time."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def add(self, line: bytes) -> bytes | None:
        """Add one line; returns a finished chunk when the cut rule fires."""
        out = None
        if self._buf and len(self._buf) + len(line) > TREE_MAX:
            out, self._buf = bytes(self._buf), bytearray()
        self._buf += line
        if out is None and xxhash.xxh64_intdigest(line) & TREE_CUT_MASK == 0:
            out, self._buf = bytes(self._buf), bytearray()
        return out

    @property
    def empty(self) -> bool:
        """No line since the last cut: the next line starts a chunk."""
        return not self._buf

    def finish(self) -> bytes | None:
        out, self._buf = (bytes(self._buf) or None), bytearray()
        return out


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Tree lines from tree chunks (a chunk always ends at a line end)."""
    for chunk in chunks:
        if chunk and not chunk.endswith(b"\n"):
            raise CorruptRepository("tree chunk does not end at a line end")
        yield from chunk.splitlines(keepends=True)
