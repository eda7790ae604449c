"""WAImportExport v2 inputs (pipeline/prep/dataset.py) and the attributes they become on a
drive (pipeline/drive/attrs.py, format version 2): round trips, properties, hostile input."""

from __future__ import annotations

import base64
import csv
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.drive import format as fmt
from pipeline.drive.attrs import PROPERTIES, BlobAttrs, Disposition
from pipeline.prep import dataset as ds

HEADER = ",".join(ds.DATASET_COLUMNS)
DHEADER = ",".join(ds.DRIVESET_COLUMNS)


def problems(fn, data, where="f.csv") -> list[str]:
    with pytest.raises(ds.DatasetProblems) as info:
        fn(data, where)
    e = info.value
    assert e.exit_code == 2
    lines = e.problems
    assert all("\n" not in line for line in lines)
    return lines


# --------------------------------------------------------------------------- dataset.csv


def test_dataset_rows_as_waimportexport_writes_them() -> None:
    text = (f"{HEADER}\r\n"
            '"/data/video/","video/",BlockBlob,rename,"None",None\r\n'
            "/data/disk.vhd,vhds/d/disk.vhd,PageBlob,overwrite,/m.xml,/p.xml\r\n"
            '"/data/a b/",$root/,blockblob,No-Overwrite,,\r\n'
            "/data/x/,photos/2020,BlockBlob,,None,None\r\n")
    rows = ds.parse_dataset(text.encode(), "dataset.csv")
    assert [(r.line, r.base_path, r.is_dir, r.container, r.dst) for r in rows] == [
        (2, "/data/video/", True, "video", ""),
        (3, "/data/disk.vhd", False, "vhds", "d/disk.vhd"),
        (4, "/data/a b/", True, "$root", ""),
        (5, "/data/x/", True, "photos", "2020/"),
    ]
    assert [r.blob_type for r in rows] == [fmt.BlobType.BLOCK, fmt.BlobType.PAGE,
                                           fmt.BlobType.BLOCK, fmt.BlobType.BLOCK]
    assert [r.disposition for r in rows] == [Disposition.RENAME, Disposition.OVERWRITE,
                                             Disposition.NO_OVERWRITE, Disposition.RENAME]
    assert (rows[1].metadata_file, rows[1].properties_file) == ("/m.xml", "/p.xml")
    assert rows[0].metadata_file is None and rows[2].properties_file is None
    assert rows[3].blob_for("a/b.jpg") == "2020/a/b.jpg" and rows[1].blob_for() == "d/disk.vhd"


def test_dataset_columns_in_any_order_with_bom() -> None:
    cols = list(reversed(ds.DATASET_COLUMNS))
    text = ",".join(cols) + "\nNone,None,overwrite,PageBlob,c1x/a,/f\n"
    (row,) = ds.parse_dataset(b"\xef\xbb\xbf" + text.encode(), "d.csv")
    assert (row.base_path, row.container, row.dst, row.blob_type) == (
        "/f", "c1x", "a", fmt.BlobType.PAGE)


@pytest.mark.parametrize(("text", "expected"), [
    ("BasePath,DstBlobPathOrPrefix\n/a/,c1x/\n",
     ["f.csv:1: missing column BlobType", "f.csv:1: missing column Disposition",
      "f.csv:1: missing column MetadataFile", "f.csv:1: missing column PropertiesFile"]),
    (f"{HEADER},Extra\n", ["f.csv:1: unknown column 'Extra'"]),
    (f"{HEADER}\n/a/,c1x/,Blob,rename,None,None\n",
     ["f.csv:2: BlobType: 'Blob' is not BlockBlob or PageBlob"]),
    (f"{HEADER}\n/a/,c1x/,BlockBlob,keep,None,None\n",
     ["f.csv:2: Disposition: 'keep' is not rename, no-overwrite or overwrite"]),
    (f"{HEADER}\nC:\\data\\,c1x/,BlockBlob,rename,None,None\n",
     ["f.csv:2: BasePath: 'C:\\\\data\\\\' is a Windows path"]),
    (f"{HEADER}\ndata/,c1x/,BlockBlob,rename,None,None\n",
     ["f.csv:2: BasePath: 'data/' is relative"]),
    (f"{HEADER}\n/a/,Video/,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: container 'Video'"]),
    (f"{HEADER}\n/a/,c1x/../x/,BlockBlob,rename,None,None\n", ["f.csv:2: DstBlobPathOrPrefix:"]),
    (f"{HEADER}\n/a,c1x/d/,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: 'c1x/d/' is a virtual directory, but BasePath is a file"]),
    (f"{HEADER}\n/a,c1x,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: 'c1x' names no container"]),
    (f"{HEADER}\n/a/,c1x/,BlockBlob,rename,meta.xml,None\n",
     ["f.csv:2: MetadataFile: 'meta.xml' is not an absolute path"]),
    (f"{HEADER}\n/a/,c1x/,BlockBlob,rename,None\n", ["f.csv:2: 5 fields, the header has 6"]),
    (f'{HEADER}\n"/a/,c1x/,BlockBlob,rename,None,None\n', ["f.csv:2: unexpected end of data"]),
    (f"{HEADER}\n/a,c1x/b,BlockBlob,rename,None,None\n/b,c1x/b,PageBlob,rename,None,None\n",
     ["f.csv:3: DstBlobPathOrPrefix: 'c1x/b' is line 2's too"]),
    (f"{HEADER}\n/a/,c1x/v/,BlockBlob,rename,None,None\n/b/,c1x/v,BlockBlob,rename,None,None\n",
     ["f.csv:3: DstBlobPathOrPrefix: 'c1x/v/' is line 2's too"]),
    (f"{HEADER}\n/a/,$root/v/,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: the root container ($root) has no virtual directories"]),
    (f"{HEADER}\n/a,$root/v/x,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: a blob in the root container ($root) has no '/'"]),
    (f"{HEADER}\n/a/,$roots/,BlockBlob,rename,None,None\n",
     ["f.csv:2: DstBlobPathOrPrefix: container '$roots'"]),
    (f"{HEADER}\n", ["f.csv: no rows below the header"]),
    ("", ["f.csv:1: the file is empty"]),
])
def test_dataset_problems_name_line_and_column(text: str, expected: list[str]) -> None:
    got = problems(ds.parse_dataset, text.encode())
    assert len(got) == len(expected), got
    for line, want in zip(got, expected, strict=True):
        assert line.startswith(want), (line, want)


def test_dataset_every_problem_of_a_file_at_once() -> None:
    text = (f"{HEADER}\n/a/,c1x/,Blob,keep,None,None\n/b/,C/,BlockBlob,rename,x,None\n")
    got = problems(ds.parse_dataset, text.encode())
    assert [g.split(":")[1] + ":" + g.split(":")[2].strip() for g in got] == [
        "2:BlobType", "2:Disposition", "3:DstBlobPathOrPrefix", "3:MetadataFile"]
    with pytest.raises(ds.DatasetProblems) as info:
        ds.parse_dataset(text.encode(), "f.csv")
    assert str(info.value) == ("f.csv: 4 problems (each on a line above); fix them and run "
                               "the same command again")
    assert info.value.details() == got


def test_dataset_not_utf8_is_one_line() -> None:
    assert problems(ds.parse_dataset, HEADER.encode() + b"\n/\xff/,c1x/,,,,\n") == [
        "f.csv:2: byte 79 is not UTF-8; save the file as UTF-8"]


_name = st.text(st.sampled_from("abcxyz019 -_.é"), min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s not in (".", "..") and not s.endswith("."))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(
    st.lists(_name, min_size=1, max_size=3), st.booleans(),
    st.sampled_from(["c1x", "data-2", "$root"]), st.lists(_name, max_size=2),
    st.sampled_from(list(fmt.BlobType)), st.sampled_from(list(Disposition)),
    st.sampled_from([None, "/m e.xml"]), st.sampled_from([None, '/p,"q".xml'])),
    min_size=1, max_size=6))
def test_dataset_round_trip(rows: list) -> None:
    """Rows written by Python's csv module (quoting where needed) parse to what was meant."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(ds.DATASET_COLUMNS)
    want = []
    seen = set()
    for parts, is_dir, container, vparts, btype, disp, meta, props in rows:
        if container == "$root":  # no virtual directory under the root container
            vparts = []
        base = "/" + "/".join(parts) + ("/" if is_dir else "")
        name = "/".join(vparts + (["" if is_dir else parts[-1]]))
        key = (is_dir, container, name)
        if key in seen:
            continue
        seen.add(key)
        w.writerow([base, f"{container}/{name}", "BlockBlob" if btype == 1 else "PageBlob",
                    disp.word, meta or "None", props or "None"])
        want.append((base, is_dir, container, name, btype, disp, meta, props))
    got = ds.parse_dataset(out.getvalue().encode(), "d.csv")
    assert [(r.base_path, r.is_dir, r.container, r.dst, r.blob_type, r.disposition,
             r.metadata_file, r.properties_file) for r in got] == want


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_dataset_garbage_is_problems_never_a_crash(data: bytes) -> None:
    for fn in (ds.parse_dataset, ds.parse_driveset):
        try:
            fn(HEADER.encode() + b"\n" + data, "g.csv")
            fn(data, "g.csv")
        except ds.DatasetProblems as e:
            assert e.problems and all(p.startswith("g.csv") for p in e.problems)


# --------------------------------------------------------------------------- driveset.csv


def test_driveset_rows() -> None:
    text = (f"{DHEADER}\n/tmp/a.img,Format,SilentMode,Encrypt,\n"
            "/dev/sdb,AlreadyFormatted,PromptOnFormat,AlreadyEncrypted,111111-222222\n")
    a, b = ds.parse_driveset(text, "ds.csv")
    assert (a.path, a.format, a.silent, a.encrypt, a.existing_key) == (
        "/tmp/a.img", True, True, True, "")
    assert (b.path, b.format, b.silent, b.encrypt, b.existing_key) == (
        "/dev/sdb", False, False, False, "111111-222222")
    assert "111111" not in repr(b)  # a secret never in a log or a traceback


@pytest.mark.parametrize(("row", "expected"), [
    ("G,Format,SilentMode,Encrypt,", "DriveLetter: 'G' is a Windows drive letter"),
    ("G:\\,Format,SilentMode,Encrypt,", "DriveLetter: 'G:\\\\' is a Windows drive letter"),
    (",Format,SilentMode,Encrypt,", "DriveLetter: empty"),
    ("/a,Fmt,SilentMode,Encrypt,", "FormatOption: 'Fmt' is not Format or AlreadyFormatted"),
    ("/a,Format,Quiet,Encrypt,", "SilentOrPromptOnFormat: 'Quiet' is not SilentMode"),
    ("/a,Format,SilentMode,Bitlocker,", "Encryption: 'Bitlocker' is not Encrypt"),
    ("/a,AlreadyFormatted,SilentMode,AlreadyEncrypted,", "ExistingBitLockerKey: empty"),
    ("/a,Format,SilentMode,Encrypt,123", "ExistingBitLockerKey: given for a drive to Encrypt"),
    ("/a,Format,SilentMode,AlreadyEncrypted,123", "FormatOption: Format would destroy"),
    ("/a,AlreadyFormatted,SilentMode,Encrypt,", "FormatOption: AlreadyFormatted needs"),
])
def test_driveset_problems(row: str, expected: str) -> None:
    (line,) = problems(ds.parse_driveset, f"{DHEADER}\n{row}\n")
    assert line.startswith(f"f.csv:2: {expected}"), line


def test_driveset_drive_twice() -> None:
    (line,) = problems(ds.parse_driveset, f"{DHEADER}\n/a,Format,SilentMode,Encrypt,\n"
                       "/a,Format,SilentMode,Encrypt,\n")
    assert line == "f.csv:3: DriveLetter: '/a' is line 2's too"


# --------------------------------------------------------------------------- metadata, properties


def test_metadata_and_properties_files() -> None:
    meta = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Metadata>\n'
            b"  <Owner>ops team</Owner>\n  <_dept2>42</_dept2>\n</Metadata>\n")
    assert ds.parse_metadata(meta, "m.xml") == (("Owner", "ops team"), ("_dept2", "42"))
    md5 = base64.b64encode(bytes(range(16))).decode()
    props = (b'<?xml version="1.0"?>\n<Properties>\n<Cache-Control>no-cache</Cache-Control>\n'
             b"<Content-Type>text/plain</Content-Type>\n<Last-Modified>x</Last-Modified>\n"
             b"<Content-MD5>" + md5.encode() + b"</Content-MD5>\n<Etag>1</Etag></Properties>")
    got, notes = ds.parse_properties(props, "p.xml")
    assert got == (("Content-Type", "text/plain"), ("Cache-Control", "no-cache"),
                   ("Content-MD5", md5))
    assert notes == ["p.xml:5: Last-Modified is set by the service; ignored",
                     "p.xml:7: Etag is set by the service; ignored"]


@pytest.mark.parametrize(("xml", "expected"), [
    (b"<Metadata><1x>a</1x></Metadata>", "m.xml:1: not well-formed XML"),
    (b"<Metadata>\n<a-b>a</a-b></Metadata>", "m.xml:2: metadata name 'a-b' is not a valid name"),
    (b"<Metadata><a>x</a>\n<A>y</A></Metadata>", "m.xml:2: metadata name 'A' is given twice"),
    (b"<Metadata><a>\xc3\xa9</a></Metadata>", "m.xml:1: metadata value of 'a' must be printable"),
    (b"<Meta><a>x</a></Meta>", "m.xml:1: the root element is <Meta>, not <Metadata>"),
    (b"<Metadata><a><b>x</b></a></Metadata>", "m.xml:1: <b> inside <a>"),
    (b'<Metadata><a k="v">x</a></Metadata>', "m.xml:1: <a> has attributes"),
    (b"<Metadata>loose<a>x</a></Metadata>", "m.xml:1: text directly inside <Metadata>"),
    (b"<Metadata><pipeline_complete>x</pipeline_complete></Metadata>", "m.xml:1: metadata name "
     "'pipeline_complete' is reserved"),
    (b"<Metadata><a>" + b"x" * 9000 + b"</a></Metadata>", "m.xml:1: metadata is 9001 bytes"),
    (b"<Metadata>", "m.xml:1: not well-formed XML (no element found)"),
], ids=range(11))
def test_metadata_problems(xml: bytes, expected: str) -> None:
    (line,) = problems(ds.parse_metadata, xml, "m.xml")
    assert line.startswith(expected), line


@pytest.mark.parametrize("xml", [
    # billion laughs: never expanded, refused at the declaration
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">'
    b"]><Metadata><a>&lol2;</a></Metadata>",
    # an external entity: never read
    b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><Metadata><a>&x;</a></Metadata>',
    b'<!DOCTYPE m SYSTEM "http://example.invalid/m.dtd"><Metadata/>',
    b'<!DOCTYPE m [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><Metadata/>',
])
def test_xml_with_a_dtd_is_refused_not_expanded(xml: bytes) -> None:
    for fn, where in ((ds.parse_metadata, "m.xml"), (ds.parse_properties, "m.xml")):
        (line,) = problems(fn, xml, where)
        assert "declares a DTD or an entity" in line, line


@pytest.mark.parametrize(("xml", "expected"), [
    (b"<Properties><Content-Typo>x</Content-Typo></Properties>", "p.xml:1: 'Content-Typo' is not"),
    (b"<Properties><Content-MD5>abc</Content-MD5></Properties>", "p.xml:1: Content-MD5 must be"),
    (b"<Properties><Cache-Control>a</Cache-Control><Cache-Control>b</Cache-Control></Properties>",
     "p.xml:1: Cache-Control is given twice"),
    (b"<Properties><Content-Type>\xc3\xa9</Content-Type></Properties>",
     "p.xml:1: Content-Type must be printable ASCII"),
])
def test_properties_problems(xml: bytes, expected: str) -> None:
    (line,) = problems(ds.parse_properties, xml, "p.xml")
    assert line.startswith(expected), line


_mname = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_mname.map(str.lower), _value, max_size=6))
def test_metadata_round_trip(pairs: dict[str, str]) -> None:
    from xml.sax.saxutils import escape
    body = "".join(f"<{n}>{escape(v)}</{n}>" for n, v in pairs.items())
    got = ds.parse_metadata(f"<?xml version='1.0'?><Metadata>{body}</Metadata>".encode(), "m")
    assert got == tuple(pairs.items())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_xml_garbage_is_problems_never_a_crash(data: bytes) -> None:
    for fn in (ds.parse_metadata, ds.parse_properties):
        for blob in (data, b"<Metadata>" + data + b"</Metadata>",
                     b"<Properties>" + data + b"</Properties>"):
            try:
                fn(blob, "x.xml")
            except ds.DatasetProblems as e:
                assert e.problems and all(p.startswith("x.xml") for p in e.problems)


# --------------------------------------------------------------------------- on the drive (v2)

_attrs = st.builds(
    BlobAttrs, st.sampled_from([1, 2]), st.sampled_from(list(Disposition)),
    st.dictionaries(_mname.map(str.lower), _value, max_size=4).map(lambda d: tuple(d.items())),
    st.lists(st.sampled_from(PROPERTIES[:4]), unique=True).map(
        lambda ps: tuple((p, "v " + p) for p in PROPERTIES if p in ps)))


@settings(max_examples=200, deadline=None)
@given(attrs=_attrs, path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF,
                                                 blacklist_characters="/"), min_size=1,
                                    max_size=20).filter(lambda p: p not in (".", "..")))
def test_file_entry_with_attrs_round_trips(attrs: BlobAttrs, path: str) -> None:
    e = fmt.FileEntry(7, path, f"c1x/{path}", 5, 1, 0o644, attrs)
    plain = fmt.FileEntry(8, path + "2", path, 1, 0, 0)
    blob = fmt.encode_records([e, plain])
    assert len(blob) == fmt.record_size(e) + fmt.record_size(plain)
    assert fmt.decode_records(blob) == [e, plain]
    assert fmt.decode_extent_rows(blob) == ([], 2)
    seg = fmt.encode_index([e, plain], seq=0, offset=fmt.SECTOR)
    assert list(fmt.decode_segment(seg, fmt.SECTOR).records) == [e, plain]


def test_attrs_record_bytes_and_damage() -> None:
    a = BlobAttrs(2, Disposition.NO_OVERWRITE, (("k", "v"),), (("Content-Type", "t/p"),))
    raw = fmt.encode_attrs(a)
    assert raw == (struct.pack("<BBH", 2, 2, 1) + b"\x01\x00k\x01\x00v" + b"\x01\x00"
                   + b"\x00\x03\x00t/p")
    assert fmt.decode_attrs(raw) == a
    e = fmt.FileEntry(1, "p", "c1x/p", 1, 0, 0, a)
    rec = fmt.encode_records([e])
    for i in range(len(rec)):  # any flipped byte is damage, never other values
        bad = bytearray(rec)
        bad[i] ^= 0x04
        with pytest.raises(fmt.CorruptRecord):
            fmt.decode_records(bytes(bad))
    for cut in (b"", raw[:3], raw[:-1], raw + b"\0"):
        with pytest.raises(ValueError):
            fmt.decode_attrs(cut)


def test_attrs_rules() -> None:
    with pytest.raises(ValueError, match="container/name"):
        fmt.FileEntry(1, "p", "p", 1, 0, 0, BlobAttrs(1))
    for bad in [dict(blob_type=3), dict(disposition=9), dict(metadata=(("1a", "x"),)),
                dict(properties=(("Etag", "x"),)),
                dict(properties=(("Cache-Control", "a"), ("Content-Type", "b")))]:
        with pytest.raises(ValueError):
            BlobAttrs(**{"blob_type": 1, **bad})


def test_version_1_drives_stay_readable_and_version_2_is_known() -> None:
    sb1 = fmt.Superblock(1, "12345678-1234-1234-1234-123456789abc", "ses1", "", "c1x/", 1, 0,
                         1 << 20)
    assert sb1.version == fmt.FORMAT_VERSION == 1
    assert fmt.decode_superblock(fmt.encode_superblock(sb1)) == sb1
    import dataclasses
    sb2 = dataclasses.replace(sb1, version=fmt.ATTRS_VERSION)
    assert fmt.decode_superblock(fmt.encode_superblock(sb2)).version == 2


def _file_record(body: bytes) -> bytes:
    """A FileEntry record around ``body`` with a valid checksum: what a hostile drive can
    write, since the checksum only says the bytes are the ones written."""
    import xxhash
    head = struct.pack("<BI", 1, len(body)) + body
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_hostile_attrs_are_corrupt_record_only(tail: bytes) -> None:
    """Any bytes after the blob name, checksum intact: attributes or CorruptRecord, and
    attributes only when every rule holds."""
    body = struct.pack("<QQqI", 1, 1, 0, 0) + b"\x01\x00p" + b"\x05\x00c1x/p" + tail
    rec = _file_record(body)
    for decode in (fmt.decode_records, lambda b: fmt.decode_extent_rows(b)[0]):
        try:
            out = decode(rec)
        except fmt.CorruptRecord:
            continue
        if out:
            (e,) = out
            assert (e.attrs is None) == (not tail)
            assert e.attrs is None or fmt.encode_attrs(e.attrs) == tail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from("ab"), min_size=1, max_size=3),
                          st.booleans()), max_size=12))
def test_overlapping_rows_are_every_nested_pair(rows: list) -> None:
    """``datasetio._nested`` (sorted and bisected) finds exactly the pairs comparing every
    row with every other finds."""
    from pipeline.prep.datasetio import Source, _nested
    srcs = [Source(i + 2, "/" + "/".join(parts) + ("/" if d else ""), d, "c1x/x",
                   BlobAttrs(1)) for i, (parts, d) in enumerate(rows)]
    want = {(a.line, b.line) for a in srcs for b in srcs if a is not b and (
        b.base.startswith(a.base) if a.is_dir else (b.base == a.base and b.line > a.line))}
    got = [(a.line, b.line) for a, b in _nested([(s.base, s.is_dir, s) for s in srcs])]
    assert sorted(got) == sorted(want) and len(got) == len(set(got))
