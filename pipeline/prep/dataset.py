"""WAImportExport v2's input files, parsed: dataset.csv, driveset.csv, metadata and properties.

Pure and sans-I/O: text or bytes in, rows out (``datasetio`` reads the files and checks
them against the file system).  Everything here is hostile until checked, and a
problem is one line naming the file, its line and the column (``path:LINE: Column:
why``); a file's problems are gathered, not just its first, and raised together as
one ``DatasetProblems`` (exit 2), so an operator fixes them in one pass.

dataset.csv::

    BasePath,DstBlobPathOrPrefix,BlobType,Disposition,MetadataFile,PropertiesFile
    "/data/video/","video/",BlockBlob,rename,"None",None
    /data/disk.vhd,vhds/disk.vhd,PageBlob,overwrite,/data/meta.xml,/data/props.xml

A BasePath ending in ``/`` is a directory (every file below it goes under the prefix
``container/vdir/``), any other a single file (exactly that blob); ``$root/`` is the
root container.  driveset.csv's first column is a block device or image file path
here, never a Windows drive letter.

Metadata and properties files are XML.  They are parsed by expat with the document
type declaration refused outright, so no entity (internal, external or parameter) is
ever defined or expanded: a billion-laughs file or one that names ``file:///etc/shadow``
is one line ("declares a DTD"), not memory or a read.  Nothing else in the format
needs a DTD; this is what defusedxml's ``forbid_dtd`` does, in thirty lines and no
dependency.
"""

from __future__ import annotations

import csv
import io
import re
import xml.parsers.expat
from dataclasses import dataclass

from pipeline import names
from pipeline.drive.attrs import (
    PROPERTIES,
    READ_ONLY_PROPERTIES,
    Disposition,
    metadata_problem,
    property_problem,
)
from pipeline.drive.format import BlobType
from pipeline.errors import BadInput, InvalidRecoveryPassword
from pipeline.volume import luks2

__all__ = ["DATASET_COLUMNS", "DRIVESET_COLUMNS", "ROOT_CONTAINER", "DatasetProblems",
           "DatasetRow", "DrivesetRow", "key_note", "parse_dataset", "parse_driveset",
           "parse_metadata", "parse_properties"]

DATASET_COLUMNS = ("BasePath", "DstBlobPathOrPrefix", "BlobType", "Disposition",
                   "MetadataFile", "PropertiesFile")
DRIVESET_COLUMNS = ("DriveLetter", "FormatOption", "SilentOrPromptOnFormat", "Encryption",
                    "ExistingBitLockerKey")
ROOT_CONTAINER = names.ROOT_CONTAINER
MAX_INPUT_BYTES = 64 << 20  # a CSV or XML file larger than this is not one of these
MAX_ROWS = 100_000
_BLOB_TYPES = {"blockblob": BlobType.BLOCK, "pageblob": BlobType.PAGE}
_DISPOSITIONS = {d.word: d for d in Disposition}
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:?[\\/]?\Z|[A-Za-z]:[\\/]")


class DatasetProblems(BadInput):
    """{}"""

    def __init__(self, where: str, problems: list[str]) -> None:
        n = len(problems)
        head = problems[0] if n == 1 else (f"{where}: {n} problems (each on a line above); "
                                           "fix them and run the same command again")
        super().__init__(head)
        self.problems = problems

    def details(self) -> list[str]:
        return self.problems if len(self.problems) > 1 else []


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """One dataset.csv row, checked: where from, to which container and name, how."""

    line: int
    base_path: str
    is_dir: bool
    container: str
    dst: str  # a directory row's virtual directory ("" or "a/b/"); a file row's blob name
    blob_type: BlobType
    disposition: Disposition
    metadata_file: str | None
    properties_file: str | None

    def blob_for(self, rel: str = "") -> str:
        """The blob name (under ``container``) of the file at ``rel`` below a directory row."""
        return self.dst + rel if self.is_dir else self.dst


@dataclass(frozen=True, slots=True)
class DrivesetRow:
    line: int
    path: str
    format: bool  # FormatOption: Format (True) or AlreadyFormatted
    silent: bool  # SilentOrPromptOnFormat: SilentMode (True) or PromptOnFormat
    encrypt: bool  # Encryption: Encrypt (True) or AlreadyEncrypted
    existing_key: str  # ExistingBitLockerKey, with AlreadyEncrypted only

    def __repr__(self) -> str:  # the key is a secret: never in a log or a traceback
        return (f"DrivesetRow(line={self.line}, path={self.path!r}, format={self.format}, "
                f"silent={self.silent}, encrypt={self.encrypt}, existing_key=<hidden>)")


def _text(data: bytes | str, where: str) -> str:
    if isinstance(data, str):
        return data
    if len(data) > MAX_INPUT_BYTES:
        raise DatasetProblems(where, [f"{where}: it is {len(data)} bytes; these files are "
                                      f"at most {MAX_INPUT_BYTES}"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetProblems(where, [f"{where}:{line}: byte {e.start} is not UTF-8; save "
                                      "the file as UTF-8"]) from None


def _table(data: bytes | str, where: str, columns: tuple[str, ...]
           ) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """(line, {column: stripped value}) of each non-blank row, and the header's problems."""
    reader = csv.reader(io.StringIO(_text(data, where), newline=""), strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    start = 0  # the line before the row being read
    try:
        header = next(reader, None)
        if header is None:
            return [], [f"{where}:1: the file is empty; its first line is the header "
                        f"{','.join(columns)}"]
        got = [h.strip() for h in header]
        want = {c.lower(): c for c in columns}
        missing = [c for c in columns if c.lower() not in {g.lower() for g in got}]
        unknown = [g for g in got if g.lower() not in want]
        problems = [f"{where}:1: missing column {c}" for c in missing]
        problems += [f"{where}:1: unknown column {names.show(u)} (the columns are "
                     f"{','.join(columns)})" for u in unknown]
        if problems:
            return [], problems
        order = [want[g.lower()] for g in got]
        start = reader.line_num
        for fields in reader:
            line, start = start + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(rows) >= MAX_ROWS:
                return rows, [f"{where}:{line}: more than {MAX_ROWS} rows"]
            if len(fields) != len(order):
                problems.append(f"{where}:{line}: {len(fields)} fields, the header has "
                                f"{len(order)}")
                continue
            rows.append((line, {c: f.strip() for c, f in zip(order, fields, strict=True)}))
    except csv.Error as e:
        problems.append(f"{where}:{start + 1}: {e} (a quoted field is not closed?)")
    return rows, problems


def _optional_file(value: str) -> str | None:
    return None if value.lower() in ("", "none") else value


def _dataset_row(line: int, r: dict[str, str], at: str) -> tuple[DatasetRow | None, list[str]]:
    problems: list[str] = []
    base = r["BasePath"]
    if not base:
        problems.append(f"{at}: BasePath: empty; give a directory (ending in '/') or a file")
    elif _WINDOWS_DRIVE.match(base) or "\\" in base:
        problems.append(f"{at}: BasePath: {names.show(base)} is a Windows path; give the "
                        "Linux path of the directory (ending in '/') or file")
    elif not base.startswith("/"):
        problems.append(f"{at}: BasePath: {names.show(base)} is relative; give an absolute "
                        "path")
    is_dir = base.endswith(("/", "\\"))  # a Windows directory too: one complaint, not two
    dst = r["DstBlobPathOrPrefix"].replace("\\", "/") if r["DstBlobPathOrPrefix"] else ""
    container, sep, rest = dst.partition("/")
    why = None
    if not dst or not sep:
        why = ("empty; give container/virtual/dir/" if not dst else
               f"{names.show(dst)} names no container; give container/...")
    elif container != ROOT_CONTAINER and names.container_problem(container):
        why = (f"container {names.show(container)}: {names.container_problem(container)}; "
               "or $root for the root container")
    elif is_dir and container == ROOT_CONTAINER and rest.strip("/"):
        why = "the root container ($root) has no virtual directories; give $root/ alone"
    elif is_dir:
        rest = rest if not rest or rest.endswith("/") else rest + "/"
        try:
            names.check_vdir(rest)
        except BadInput as e:
            why = str(e)
    elif dst.endswith("/"):
        why = (f"{names.show(dst)} is a virtual directory, but BasePath is a file; end "
               "BasePath with '/' for a directory, or give the blob's full name")
    else:
        why = names.blob_problem(rest) or names.root_blob_problem(container, rest)
    if why is not None:
        problems.append(f"{at}: DstBlobPathOrPrefix: {why}")
    btype = _BLOB_TYPES.get(r["BlobType"].lower() or "blockblob")
    if btype is None:
        problems.append(f"{at}: BlobType: {names.show(r['BlobType'])} is not BlockBlob or "
                        "PageBlob")
    disp = _DISPOSITIONS.get(r["Disposition"].lower() or "rename")
    if disp is None:
        problems.append(f"{at}: Disposition: {names.show(r['Disposition'])} is not rename, "
                        "no-overwrite or overwrite")
    for col in ("MetadataFile", "PropertiesFile"):
        v = _optional_file(r[col])
        if v is not None and not v.startswith("/"):
            problems.append(f"{at}: {col}: {names.show(v)} is not an absolute path (or None)")
    if problems:
        return None, problems
    return DatasetRow(line, base, is_dir, container, rest, btype, disp,  # type: ignore[arg-type]
                      _optional_file(r["MetadataFile"]),
                      _optional_file(r["PropertiesFile"])), []


def parse_dataset(data: bytes | str, where: str) -> list[DatasetRow]:
    """dataset.csv's rows; DatasetProblems with a line per problem (header, each field,
    two rows writing one blob).  What needs the file system (BasePath exists, one source
    file twice) is ``datasetio``'s."""
    table, problems = _table(data, where, DATASET_COLUMNS)
    rows: list[DatasetRow] = []
    for line, r in table:
        row, more = _dataset_row(line, r, f"{where}:{line}")
        problems += more
        if row is not None:
            rows.append(row)
    if not table and not problems:
        problems.append(f"{where}: no rows below the header; add one per directory or file")
    problems += _overlap_problems(rows, where)
    if problems:
        raise DatasetProblems(where, problems)
    return rows


def _overlap_problems(rows: list[DatasetRow], where: str) -> list[str]:
    """Rows that certainly write one blob twice: two files to one name, or two directories
    to one prefix.  Nested prefixes are ``datasetio``'s (it looks for real collisions)."""
    problems = []
    seen: dict[tuple[bool, str, str], DatasetRow] = {}
    for row in rows:
        key = (row.is_dir, row.container, row.dst)
        first = seen.setdefault(key, row)
        if first is not row:
            problems.append(f"{where}:{row.line}: DstBlobPathOrPrefix: "
                            f"{names.show(row.container + '/' + row.dst)} is line "
                            f"{first.line}'s too; two rows would write the same blob(s)")
    return problems


def _driveset_row(line: int, r: dict[str, str], at: str) -> tuple[DrivesetRow | None, list[str]]:
    problems: list[str] = []
    path = r["DriveLetter"]
    if not path:
        problems.append(f"{at}: DriveLetter: empty; give the drive's block device or image "
                        "file path")
    elif _WINDOWS_DRIVE.match(path):
        problems.append(f"{at}: DriveLetter: {names.show(path)} is a Windows drive letter; "
                        "give the drive's block device (/dev/sdX) or image file path")
    choices = {"FormatOption": ("Format", "AlreadyFormatted"),
               "SilentOrPromptOnFormat": ("SilentMode", "PromptOnFormat"),
               "Encryption": ("Encrypt", "AlreadyEncrypted")}
    got: dict[str, bool] = {}
    for col, (yes, no) in choices.items():
        v = r[col].lower()
        if v not in (yes.lower(), no.lower()):
            problems.append(f"{at}: {col}: {names.show(r[col])} is not {yes} or {no}")
        got[col] = v == yes.lower()
    key = r["ExistingBitLockerKey"]
    if not problems:
        if not got["Encryption"] and not key:
            problems.append(f"{at}: ExistingBitLockerKey: empty; an AlreadyEncrypted drive "
                            "needs its volume's recovery password or passphrase")
        elif got["Encryption"] and key:
            problems.append(f"{at}: ExistingBitLockerKey: given for a drive to Encrypt; "
                            "leave it empty, or say AlreadyEncrypted")
        elif got["FormatOption"] and not got["Encryption"]:
            problems.append(f"{at}: FormatOption: Format would destroy the AlreadyEncrypted "
                            "volume; say AlreadyFormatted")
        elif not got["FormatOption"] and got["Encryption"]:
            problems.append(f"{at}: FormatOption: AlreadyFormatted needs AlreadyEncrypted "
                            "(an existing LUKS2 volume); a drive pipeline encrypts is "
                            "formatted by it: say Format")
    if problems:
        return None, problems
    return DrivesetRow(line, path, got["FormatOption"], got["SilentOrPromptOnFormat"],
                       got["Encryption"], key), []


def key_note(row: DrivesetRow, where: str) -> str | None:
    """What an AlreadyEncrypted row's key that is no recovery password means: the drive
    is prepared and imports with it, but no import job can list it (a job's
    ``bitLockerKey`` is a recovery password), and adding one after prep would change
    the header the job's ``driveHeaderHash`` pins.  Said before the drive is written."""
    if row.encrypt:
        return None
    try:
        if luks2.parse_recovery_password(row.existing_key) == row.existing_key:
            return None
    except InvalidRecoveryPassword:
        pass
    return (f"{where}:{row.line}: ExistingBitLockerKey: not a recovery password (48 digits "
            "in 8 groups of 6): the drive imports with its journal or --passphrase-file, but "
            "journal export and jobs create cannot list it in an import job; to ship it with "
            "a job, give the volume a recovery password first (cryptsetup luksAddKey) and "
            "name that here")


def parse_driveset(data: bytes | str, where: str) -> list[DrivesetRow]:
    """driveset.csv's rows; DatasetProblems with a line per problem.  A drive listed twice
    is a problem too."""
    table, problems = _table(data, where, DRIVESET_COLUMNS)
    rows: list[DrivesetRow] = []
    seen: dict[str, int] = {}
    for line, r in table:
        row, more = _driveset_row(line, r, f"{where}:{line}")
        problems += more
        if row is None:
            continue
        if row.path in seen:
            problems.append(f"{where}:{line}: DriveLetter: {names.show(row.path)} is line "
                            f"{seen[row.path]}'s too")
            continue
        seen[row.path] = line
        rows.append(row)
    if not table and not problems:
        problems.append(f"{where}: no rows below the header; add one per drive")
    if problems:
        raise DatasetProblems(where, problems)
    return rows


# --------------------------------------------------------------------------- XML


def _xml_elements(data: bytes, where: str, root: str
                  ) -> tuple[list[tuple[int, str, str]], list[str]]:
    """The root's child elements as (line, name, text); no DTD, attribute or nesting."""
    if len(data) > MAX_INPUT_BYTES:
        return [], [f"{where}: it is {len(data)} bytes; at most {MAX_INPUT_BYTES}"]
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    out: list[tuple[int, str, str]] = []
    problems: list[str] = []
    stack: list[str] = []
    text: list[str] = []

    class Refused(Exception):
        pass

    def refuse(*_: object) -> None:
        raise Refused("it declares a DTD or an entity, which these files never need")

    def start(name: str, attrs: dict[str, str]) -> None:
        line = parser.CurrentLineNumber
        if not stack and name != root:  # another kind of file: its elements say no more
            raise Refused(f"the root element is <{name}>, not <{root}>")
        if len(stack) == 2:
            problems.append(f"{where}:{line}: <{name}> inside <{stack[-1]}>: "
                            "values are plain text")
        elif attrs:
            problems.append(f"{where}:{line}: <{name}> has attributes; none are read")
        stack.append(name)
        text.clear()

    def end(name: str) -> None:
        if len(stack) == 2:
            out.append((parser.CurrentLineNumber, name, "".join(text)))
        stack.pop()
        text.clear()

    def chars(data: str) -> None:
        if len(stack) == 1 and data.strip():
            problems.append(f"{where}:{parser.CurrentLineNumber}: text directly inside "
                            f"<{root}>; put each value in an element")
        text.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except Refused as e:
        return [], [f"{where}:{parser.CurrentLineNumber}: {e}"]
    except xml.parsers.expat.ExpatError as e:
        return [], [f"{where}:{e.lineno}: not well-formed XML "
                    f"({xml.parsers.expat.errors.messages[e.code]})"]
    return out, problems


def parse_metadata(data: bytes, where: str) -> tuple[tuple[str, str], ...]:
    """``<Metadata><name>value</name>...</Metadata>``: the pairs in file order, held to
    Azure's rules (``drive.attrs``); DatasetProblems with a line per problem."""
    elements, problems = _xml_elements(data, where, "Metadata")
    pairs: list[tuple[str, str]] = []
    for line, name, value in elements:
        why = metadata_problem(((name, value),))
        if why is None and name.lower() in {n.lower() for n, _ in pairs}:
            why = f"metadata name {name!r} is given twice (names are case-insensitive)"
        if why is not None:
            problems.append(f"{where}:{line}: {why}")
        else:
            pairs.append((name, value))
    if not problems:
        why = metadata_problem(tuple(pairs))  # the total size
        if why is not None:
            problems.append(f"{where}: {why}")
    if problems:
        raise DatasetProblems(where, problems)
    return tuple(pairs)


def parse_properties(data: bytes, where: str
                     ) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """``<Properties><Content-Type>...</Content-Type>...</Properties>``: (the settable
    properties in ``PROPERTIES`` order, notes on the read-only ones it ignores);
    DatasetProblems with a line per problem."""
    elements, problems = _xml_elements(data, where, "Properties")
    got: dict[str, str] = {}
    notes: list[str] = []
    canon = {p.lower(): p for p in PROPERTIES + READ_ONLY_PROPERTIES}
    for line, raw_name, value in elements:
        name = canon.get(raw_name.lower(), raw_name)
        value = value.strip()
        if name in READ_ONLY_PROPERTIES:
            notes.append(f"{where}:{line}: {name} is set by the service; ignored")
            continue
        why = property_problem(name, value)
        if why is None and name in got:
            why = f"{name} is given twice"
        if why is not None:
            problems.append(f"{where}:{line}: {why}")
        else:
            got[name] = value
    if problems:
        raise DatasetProblems(where, problems)
    return tuple((p, got[p]) for p in PROPERTIES if p in got), notes
