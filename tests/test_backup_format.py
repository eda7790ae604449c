"""The backup repository's byte layout and crypto, without files (backup.encoding, crypto)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.backup import crypto
from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.walk import ParentTree
from tests.conftest import FAST_ARGON

KEYS = crypto.MasterKeys(enc_key=bytes(range(32)), id_key=bytes(range(32, 64)), chunker_seed=5)

ids = st.binary(min_size=32, max_size=32)
entries = st.builds(fmt.IndexEntry, st.sampled_from(fmt.KINDS), ids, ids,
                    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


def test_every_file_is_a_multiple_of_512() -> None:
    cr = crypto.Crypto(KEYS)
    assert len(fmt.pad(b"")) == 0
    for n in (1, 511, 512, 513, 5000):
        assert len(fmt.pad(b"x" * n)) % 512 == 0
    assert len(fmt.Config("ab" * 16).encode()) % 512 == 0
    assert len(cr.seal_file(fmt.INDEX_MAGIC, b"y" * 777)) % 512 == 0
    b = bytes(1000)
    assert len(fmt.encode_pack([b, b"x"], cr.seal(b"hdr", b"a"))) % 512 == 0


@given(st.lists(entries, max_size=30))
def test_index_round_trip(es: list[fmt.IndexEntry]) -> None:
    assert fmt.decode_index(fmt.encode_index(es)) == es


@given(st.lists(entries, min_size=1, max_size=30), st.data())
def test_an_index_entry_of_no_kind_or_past_the_pack_table_is_named(
        es: list[fmt.IndexEntry], data: st.DataObject) -> None:
    plain = bytearray(fmt.encode_index(es))
    packs = int.from_bytes(plain[:4], "little")
    i = data.draw(st.integers(0, len(es) - 1))
    at = 4 + packs * 32 + 4 + i * 49
    if data.draw(st.booleans()):
        plain[at] = data.draw(st.integers(0, 255).filter(lambda k: k not in fmt.KINDS))
    else:
        plain[at + 33:at + 37] = data.draw(st.integers(packs, 2**32 - 1)).to_bytes(4, "little")
    with pytest.raises(CorruptRepository, match=f"index entry {i}: "):
        fmt.decode_index(bytes(plain))


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_decoders_raise_only_corrupt_repository(data: bytes) -> None:
    """Any bytes parse or raise CorruptRepository, never IndexError or struct.error."""
    cr = crypto.Crypto(KEYS)
    for fn in (fmt.decode_index, fmt.decode_pack_header, fmt.decode_pack_trailer,
               lambda d: fmt.decode_envelope(d, fmt.INDEX_MAGIC, "index"),
               lambda d: cr.open_file(fmt.SNAPSHOT_MAGIC, d, "snapshot"),
               lambda d: fmt.Config.decode(d), fmt.Node.decode, fmt.Manifest.decode,
               lambda d: cr.open_chunk(fmt.KIND_DATA, bytes(32), d, 10)):
        with contextlib.suppress(CorruptRepository):
            fn(data)


def test_a_chunk_sealed_from_a_view_is_the_chunk_sealed_from_bytes() -> None:
    """The reader hands views of one read (cut_buf); what is sealed, compressed or raw,
    opens to the same bytes as from a copy."""
    cr = crypto.Crypto(KEYS)
    whole = b"x" * 200_000 + os.urandom(100_000)
    for view in (memoryview(whole)[5:150_005], memoryview(whole)[200_000:]):
        cid = cr.chunk_id(view)
        nonce, ct = cr.seal_chunk(fmt.KIND_DATA, cid, view, 1)
        assert cr.open_chunk(fmt.KIND_DATA, cid, nonce + ct, len(view)) == bytes(view)
        raw = len(nonce) + len(ct) == len(view) + fmt.SEAL_OVERHEAD
        assert raw == (view[0] != ord("x"))      # the random part stored raw, the rest not


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=1 << 16), st.integers(0, 6), st.sampled_from([1, 3]))
def test_a_chunk_at_each_level_opens_to_its_bytes(data: bytes, copies: int, level: int) -> None:
    """Level 1's own zstd parameters (crypto._FAST) make standard frames: a chunk sealed at
    1 or 3, compressible (copies) or not, opens to its bytes, and a plain zstd decoder
    reads the frame (its content size declared, as open_chunk requires)."""
    import zstandard

    cr = crypto.Crypto(KEYS)
    raw = data * copies + data
    if not raw:
        return
    cid = cr.chunk_id(raw)
    nonce, ct = cr.seal_chunk(fmt.KIND_DATA, cid, raw, level)
    assert cr.open_chunk(fmt.KIND_DATA, cid, nonce + ct, len(raw)) == raw
    frame = crypto._compress(raw, level)
    assert zstandard.get_frame_parameters(frame).content_size == len(raw)
    assert zstandard.ZstdDecompressor().decompress(frame) == raw


def test_pack_round_trip_and_trailer() -> None:
    cr = crypto.Crypto(KEYS)
    chunks = [os.urandom(n) for n in (1, 1000, 70000)] + [b"a" * 100000]
    blobs: list[bytes] = []
    pes = []
    at = 0
    for c in chunks:
        cid = cr.chunk_id(c)
        nonce, ct = cr.seal_chunk(fmt.KIND_DATA, cid, c, 1)
        pes.append(fmt.PackEntry(fmt.KIND_DATA, cid, at, len(nonce) + len(ct), len(c)))
        blobs += [nonce, ct]
        at += len(nonce) + len(ct)
    pack = fmt.encode_pack(blobs, cr.seal(fmt.encode_pack_header(pes), crypto.PACK_HEADER_AAD))
    hoff, hlen = fmt.decode_pack_trailer(pack)
    header = fmt.decode_pack_header(cr.open(pack[hoff:hoff + hlen], crypto.PACK_HEADER_AAD, "h"))
    assert header == pes
    for e, c in zip(header, chunks, strict=True):
        assert cr.open_chunk(e.kind, e.id, pack[e.offset:e.offset + e.length], e.raw_len) == c
    # the compressible chunk was compressed, the random ones stored raw
    assert pes[-1].length < 1000 and pes[1].length == 1000 + fmt.SEAL_OVERHEAD
    # a chunk moved under another id, or flipped, does not open
    e0, e1 = header[0], header[1]
    with pytest.raises(CorruptRepository):
        cr.open_chunk(e1.kind, e1.id, pack[e0.offset:e0.offset + e0.length], e1.raw_len)
    bad = bytearray(pack)
    bad[e1.offset + 20] ^= 1
    with pytest.raises(CorruptRepository):
        cr.open_chunk(e1.kind, e1.id, bad[e1.offset:e1.offset + e1.length], e1.raw_len)


def test_chunk_ids_are_keyed() -> None:
    other = crypto.Crypto(crypto.MasterKeys.generate())
    cr = crypto.Crypto(KEYS)
    assert cr.chunk_id(b"data") != other.chunk_id(b"data")
    assert cr.chunk_id(b"data") == cr.chunk_id(b"data")


def test_key_file_opens_only_with_its_passphrase() -> None:
    keys = crypto.MasterKeys.generate()
    data = crypto.make_key_file(keys, b"secret words", "r" * 32, FAST_ARGON, "now")
    assert len(data) % 512 == 0
    assert b"secret words" not in data and keys.enc_key not in data
    assert crypto.open_key_file(data, b"secret words", "r" * 32) == keys
    assert crypto.open_key_file(data, b"secret word", "r" * 32) is None
    with pytest.raises(CorruptRepository, match="is not the one its key files were made for"):
        crypto.open_key_file(data, b"secret words", "x" * 32)          # another repository's
    moved = data.replace(b'"repo_id": "' + b"r" * 32, b'"repo_id": "' + b"x" * 32)
    assert moved != data                         # its plaintext repo_id edited too: the AAD holds
    assert crypto.open_key_file(moved, b"secret words", "x" * 32) is None
    assert "enc_key" not in repr(keys) and repr(crypto.Crypto(keys)) == "Crypto(<keys>)"


def test_snapshot_names_sort_oldest_first() -> None:
    times = [datetime(2026, 1, d, 12, 0, 0, 5, tzinfo=UTC) for d in (3, 1, 2)]
    names = [fmt.snapshot_name(t, bytes([i]) * 32) for i, t in enumerate(times)]
    parsed = [fmt.parse_snapshot_name(n) for n in sorted(names)]
    assert [p[0] for p in parsed if p] == sorted(times)
    assert fmt.parse_snapshot_name("snapshots/junk") is None


def test_tree_nodes_round_trip_odd_names() -> None:
    weird = os.fsdecode(b"caf\xe9-\xff.bin")          # not UTF-8: kept as surrogate escapes
    for node in (fmt.Node("file", "dir/ü日本 x.txt", 0o640, 123, 10, 5, 7, content=[
                     (b"a" * 32, 4), (None, 6)]),
                 fmt.Node("file", weird, 0o600, 1, 0, 1, 1),
                 fmt.Node("symlink", "l", 0o777, 9, target="../t"),
                 fmt.Node("dir", fmt.ROOT, 0o755, 3)):
        assert fmt.Node.decode(node.encode()) == node
        assert node.encode().count(b"\n") == 1
    for path in ("../x", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(CorruptRepository):
            fmt.Node.decode(fmt.Node("dir", path, 0o755, 1).encode())


def test_walk_order_key() -> None:
    paths = ["b", ".", "a/z", "a", "-x", "a/b/c", "a.b"]
    assert sorted(paths, key=fmt.path_key) == [".", "-x", "a", "a/b/c", "a/z", "a.b", "b"]


def test_tree_cutter_resyncs_after_a_change() -> None:
    lines = [fmt.Node("file", f"d/f{i:05d}", 0o644, i, i, i, i).encode() for i in range(3000)]

    def cut(ls: list[bytes]) -> list[bytes]:
        c = fmt.TreeCutter()
        out = [x for x in (c.add(line) for line in ls) if x]
        last = c.finish()
        return out + ([last] if last else [])

    a = cut(lines)
    assert b"".join(a) == b"".join(lines) and 5 < len(a) < 200
    b = cut(lines[:10] + [fmt.Node("file", "d/new", 0o644, 1, 1, 1, 1).encode()] + lines[10:])
    assert len(set(a) & set(b)) >= len(a) - 2          # one change touches one chunk
    assert list(fmt.split_lines(a)) == lines


# --------------------------------------------------------------------------- tree metadata

OLD_LINES = [   # tree lines exactly as written before owners, xattrs, links and devices
    b'{"type":"dir","path":".","mode":493,"mtime_ns":1600000000123456784}\n',
    b'{"type":"file","path":"docs/readme.txt","mode":416,"mtime_ns":1600000000123458784,'
    b'"size":30000,"ctime_ns":1733130000000000000,"inode":131074,"content":[["' + b"ab" * 32
    + b'",29000],[null,1000]]}\n',
    b'{"type":"symlink","path":"link","mode":511,"mtime_ns":1600000000123459784,'
    b'"target":"docs/readme.txt"}\n',
]


def test_old_tree_lines_decode_with_defaults_and_encode_the_same() -> None:
    """A repository written before the metadata fields restores as before: no owner
    (restore leaves the restoring user's), no xattrs, one link; and a node without them
    encodes to the very same line, so those trees still dedup."""
    d, f, s = (fmt.Node.decode(line) for line in OLD_LINES)
    assert d == fmt.Node("dir", ".", 0o755, 1600000000123456784)
    assert f == fmt.Node("file", "docs/readme.txt", 0o640, 1600000000123458784, 30000,
                         1733130000000000000, 131074,
                         content=[(bytes.fromhex("ab" * 32), 29000), (None, 1000)])
    assert s == fmt.Node("symlink", "link", 0o777, 1600000000123459784,
                         target="docs/readme.txt")
    for node in (d, f, s):
        assert (node.uid, node.gid, node.user, node.group) == (None, None, "", "")
        assert (node.xattrs, node.links, node.dev, node.rdev) == ([], 1, 0, 0)
    assert [n.encode() for n in (d, f, s)] == OLD_LINES


_names = st.text(st.characters(blacklist_characters="\0/:\n", blacklist_categories=("Cs",)),
                 max_size=12)
_xattr_names = st.one_of(
    st.sampled_from([fmt.ACL_ACCESS]),
    # what os.listxattr can return: text, and undecodable bytes as surrogateescape's
    # \udc80-\udcff (never a lone surrogate outside them: no OS name decodes to one)
    st.builds(lambda p, s: p + s, st.sampled_from(fmt.XATTR_PREFIXES),
              st.text(st.one_of(st.characters(blacklist_characters="\0",
                                              blacklist_categories=("Cs",)),
                                st.sampled_from(["\udc80", "\udcff"])),
                      min_size=1, max_size=20)))
_acl = st.builds(lambda n: b"\x02\0\0\0" + bytes(8 * n), st.integers(0, 5))


@st.composite
def meta_nodes(draw: st.DrawFn) -> fmt.Node:
    kind = draw(st.sampled_from(fmt.TYPES))
    node = fmt.Node(kind, draw(st.sampled_from(["a", "d/ü x", fmt.ROOT if kind == "dir"
                                                else "b"])),
                    draw(st.integers(0, 0o7777)), draw(st.integers(-2**63, 2**63 - 1)))
    if kind == "file":
        node.content = draw(st.lists(st.tuples(st.one_of(st.none(), ids),
                                               st.integers(1, 2**40)), max_size=4))
        node.size = sum(n for _, n in node.content)
        node.ctime_ns, node.inode = draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**64 - 1))
        node.links = draw(st.integers(1, 2**32 - 1))
        node.dev = draw(st.integers(0, 2**64 - 1)) if node.links > 1 else 0
    elif kind == "symlink":
        node.target = draw(st.text(st.characters(blacklist_characters="\0"), max_size=30))
    elif kind in fmt.DEVICES:
        node.rdev = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        node.uid, node.gid = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        node.user, node.group = draw(_names), draw(_names)
    names = draw(st.lists(_xattr_names, unique=True, max_size=6))
    if kind == "dir" and draw(st.booleans()):
        names.append(fmt.ACL_DEFAULT)
    node.xattrs = sorted((n, draw(_acl) if n.startswith("system.") else
                          draw(st.binary(max_size=300))) for n in names)
    return node


@given(meta_nodes())
@settings(max_examples=300)
def test_tree_nodes_with_metadata_round_trip(node: fmt.Node) -> None:
    line = node.encode()
    assert line.count(b"\n") == 1 and fmt.Node.decode(line) == node


def _line(**fields: object) -> bytes:
    base: dict[str, object] = {"type": "file", "path": "f", "mode": 420, "mtime_ns": 1,
                               "size": 0, "ctime_ns": 1, "inode": 1, "content": []}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not _DROP}).encode()


_DROP = object()
_B64 = fmt.b64(b"v")


@pytest.mark.parametrize("fields", [
    {"uid": "5", "gid": 1}, {"uid": 1}, {"uid": True, "gid": 1}, {"uid": -1, "gid": 1},
    {"uid": 2**32, "gid": 1}, {"uid": 1.5, "gid": 1}, {"user": 5}, {"user": "a:b"},
    {"group": "x/y"}, {"user": "n" * 300}, {"user": "a\0"},
    {"mode": 0o10000}, {"mode": -1}, {"mode": "420"},
    {"links": 0}, {"links": 2, "dev": -1}, {"links": "2"},
    {"type": "socket"}, {"type": ["file"]}, {"type": "chardev"},
    {"type": "chardev", "rdev": 2**64}, {"type": "blockdev", "rdev": "7"},
    {"path": 5}, {"path": "a\0b"}, {"type": "symlink", "target": 3},
    {"xattrs": {"user.a": _B64}}, {"xattrs": [["user.a"]]}, {"xattrs": [["user.a", 5]]},
    {"xattrs": [["user.a", "not base64!"]]}, {"xattrs": [["user.a", _B64], ["user.a", _B64]]},
    {"xattrs": [["system.nfs4_acl", _B64]]}, {"xattrs": [["other.a", _B64]]},
    {"xattrs": [["user.", _B64]]}, {"xattrs": [["user." + "x" * 260, _B64]]},
    {"xattrs": [["user.a\0", _B64]]}, {"xattrs": [[5, _B64]]},
    {"xattrs": [["user.big", fmt.b64(bytes(65537))]]},
    {"xattrs": [[f"user.{i}", _B64] for i in range(1025)]},
    {"xattrs": [[fmt.ACL_ACCESS, fmt.b64(b"\x02\0\0\0" + bytes(7))]]},
    {"xattrs": [[fmt.ACL_DEFAULT, fmt.b64(b"\x02\0\0\0")]]},          # on a file
    {"content": _DROP}, {"xattrs": "user.a"}, {"mtime_ns": 2**63}, {"mtime_ns": "1"},
    {"size": 5, "content": [[None, 10], [None, -5]]}, {"size": -1, "content": [[None, -1]]},
    {"inode": -1}, {"ctime_ns": 1.0},
])
def test_hostile_tree_metadata_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(CorruptRepository):
        fmt.Node.decode(_line(**fields))


def test_deeply_nested_tree_line_is_refused() -> None:
    with pytest.raises(CorruptRepository):
        fmt.Node.decode(b"[" * 100_000)


_NAME = st.sampled_from(["a", "b", "a b", "a.b", "A", "é", "z", "日本", "a-"])


@given(st.sets(st.lists(_NAME, min_size=1, max_size=3).map("/".join), max_size=40),
       st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_parent_tree_finds_exactly_the_parents_paths(paths: set[str],
                                                     rnd: random.Random) -> None:
    """The walk asks for paths in walk order; the parent tree answers each with the
    parent's entry and line when the parent had that path, else None (one forward pass)."""
    ordered = sorted(paths | {fmt.ROOT}, key=fmt.path_key)
    old = [p for p in ordered if rnd.random() < 0.7]
    new = [p for p in ordered if rnd.random() < 0.7]
    at = {p: (b"c%d" % (i // 3), i % 3, 3) for i, p in enumerate(old)}
    chunks = [[(fmt.Node("dir", p), p.encode(), at[p]) for p in old[i:i + 3]]
              for i in range(0, len(old), 3)]                 # chunks of three lines
    tree = ParentTree(iter(chunks))
    for p in new:
        found = tree.find(p)
        if p in old:
            assert found == (fmt.Node("dir", p), p.encode(), at[p])
        else:
            assert found is None
