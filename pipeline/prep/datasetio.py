"""A dataset.csv made into prep's sources: its files read, held against the file system.

``dataset`` parses (pure); this reads the CSV and the metadata and properties files
it names, and checks what only the file system can say, all before a drive is
touched: every BasePath exists and is the kind its row says (a directory ends in
``/``), no file is copied by two rows, no two rows write one blob, and every page
blob's file has a page blob's size (``names.page_blob_problem``).  Each problem is a
line naming the row and column (``DatasetProblems``, exit 2).

A file's path on the drive is its absolute path without the leading ``/``
(``/data/video/a.mp4`` -> ``data/video/a.mp4``): unique across rows, stable across
``--resume``.  Its blob is ``container/name`` and its ``BlobAttrs`` the row's.
The checked sources are kept beside the journals (``SESSION.dataset.json``), so
``--resume`` needs neither the CSV nor the XML files again.
"""

from __future__ import annotations

import bisect
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline import atomic, names
from pipeline.drive.attrs import BlobAttrs, Disposition
from pipeline.drive.format import BlobType
from pipeline.errors import BadInput
from pipeline.prep import scan
from pipeline.prep.dataset import (
    MAX_INPUT_BYTES,
    DatasetProblems,
    DatasetRow,
    parse_dataset,
    parse_metadata,
    parse_properties,
)

__all__ = ["Source", "load_dataset", "load_saved", "save", "saved_path", "walk"]

SAVED_SUFFIX = ".dataset.json"


@dataclass(frozen=True, slots=True)
class Source:
    """One dataset row, checked: where its files are, where they go, how."""

    line: int
    base: str  # absolute; a directory's ends in '/'
    is_dir: bool
    blob: str  # "container/" + virtual directory (a directory), "container/name" (a file)
    attrs: BlobAttrs

    @property
    def container(self) -> str:
        return self.blob.partition("/")[0]


def _read(path: str) -> bytes:
    """A CSV or XML file's bytes (at most one more than the parsers take)."""
    try:
        with open(path, "rb") as f:
            return f.read(MAX_INPUT_BYTES + 1)  # more is refused by the parser, named
    except OSError as e:
        raise DatasetProblems(path, [f"{path}: {e.strerror}"]) from None


def _source(row: DatasetRow, where: str, notes: list[str]) -> Source:
    at = f"{where}:{row.line}"
    problems = []
    try:
        st = os.stat(row.base_path)
    except OSError as e:
        raise DatasetProblems(where, [f"{at}: BasePath: {names.show(row.base_path)}: "
                                      f"{e.strerror}; give an existing directory or file"]
                              ) from None
    if row.is_dir and not stat.S_ISDIR(st.st_mode):
        problems.append(f"{at}: BasePath: {names.show(row.base_path)} is not a directory "
                        "(a BasePath ending in '/' is one)")
    if not row.is_dir and not stat.S_ISREG(st.st_mode):
        problems.append(f"{at}: BasePath: {names.show(row.base_path)} is not a regular file; "
                        "end it with '/' for a directory")
    page_why = names.page_blob_problem(st.st_size)
    if not row.is_dir and row.blob_type is BlobType.PAGE and page_why is not None:
        problems.append(f"{at}: BlobType: {names.show(row.base_path)}: {page_why}; "
                        "set BlobType to BlockBlob")
    meta: tuple[tuple[str, str], ...] = ()
    props: tuple[tuple[str, str], ...] = ()
    if row.metadata_file is not None:  # each file's problems, under its column
        try:
            meta = parse_metadata(_read(row.metadata_file), row.metadata_file)
        except DatasetProblems as e:
            problems += [f"{at}: MetadataFile: {p}" for p in e.problems]
    if row.properties_file is not None:
        try:
            props, more = parse_properties(_read(row.properties_file), row.properties_file)
            notes += more
        except DatasetProblems as e:
            problems += [f"{at}: PropertiesFile: {p}" for p in e.problems]
    if problems:
        raise DatasetProblems(where, problems)
    base = os.path.realpath(row.base_path) + ("/" if row.is_dir else "")
    base = base.replace("//", "/")
    return Source(row.line, base, row.is_dir, f"{row.container}/{row.dst}",
                  BlobAttrs(int(row.blob_type), row.disposition, meta, props))


def load_dataset(path: str | os.PathLike[str]) -> tuple[list[Source], list[str]]:
    """(the checked sources of dataset.csv at ``path``, notes on ignored properties).
    DatasetProblems, with a line per problem, unless every row holds."""
    where = os.fspath(path)
    rows = parse_dataset(_read(where), where)
    sources: list[Source] = []
    problems: list[str] = []
    notes: list[str] = []
    for row in rows:
        try:
            sources.append(_source(row, where, notes))
        except DatasetProblems as e:
            problems += e.problems
    if not problems:
        problems = _nested_problems(sources, where)
    if not problems:
        problems = _walk_problems(sources, where)
    if problems:
        raise DatasetProblems(where, problems)
    return sources, notes


MAX_PROBLEMS = 100  # lines of one kind before the rest are left unsaid


def _nested(items: list[tuple[str, bool, Source]]) -> Iterator[tuple[Source, Source]]:
    """Pairs (a, b) of distinct sources where a is a directory (``True``) whose key is a
    prefix of b's, or a is not and b, a later line, has the same key: sorted once and
    bisected, not every pair compared."""
    items = sorted(items, key=lambda x: (x[0], x[2].line))
    keys = [k for k, _, _ in items]
    for i, (key, is_prefix, a) in enumerate(items):
        j = bisect.bisect_left(keys, key) if is_prefix else i + 1
        while j < len(items) and (keys[j].startswith(key) if is_prefix else keys[j] == key):
            if items[j][2] is not a:
                yield a, items[j][2]
            j += 1


def _nested_problems(sources: list[Source], where: str) -> list[str]:
    """A file under two rows' BasePaths would be copied twice under one drive path."""
    problems = []
    for a, b in _nested([(s.base, s.is_dir, s) for s in sources]):
        if b.base == a.base and b.line < a.line:
            continue  # said once, at the later line
        if a.is_dir:
            problems.append(f"{where}:{b.line}: BasePath: {names.show(b.base)} lies in line "
                            f"{a.line}'s {names.show(a.base)}; its files would be copied "
                            "twice: give each file one row")
        else:
            problems.append(f"{where}:{b.line}: BasePath: {names.show(b.base)} is line "
                            f"{a.line}'s too; give each file one row")
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def walk(sources: list[Source], on_skip: Callable[[str, str], None] | None = None
         ) -> Iterator[tuple[scan.SourceFile, str, BlobAttrs]]:
    """Every file of the dataset: (its SourceFile with the path on the drive, its blob
    ``container/name``, its attributes), row by row, each directory as ``scan`` walks it."""
    for s in sources:
        prefix = s.base.lstrip("/")
        if not s.is_dir:
            try:
                st = os.lstat(s.base)
            except OSError as e:
                raise BadInput(f"{s.base}: {e.strerror}; the dataset's file is gone") from None
            if not stat.S_ISREG(st.st_mode):
                if on_skip is not None:
                    on_skip(prefix, "not a regular file")
                continue
            yield (scan.SourceFile(prefix, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)),
                   s.blob, s.attrs)
            continue
        vdir = s.blob.partition("/")[2]

        def skip(path: str, reason: str, prefix: str = prefix) -> None:
            if on_skip is not None:
                on_skip(prefix + path, reason)

        for f in scan.scan(s.base, skip, vdir):
            why = names.root_blob_problem(s.container, f.path)
            if why is not None:  # a file in a subdirectory of a $root/ row
                skip(f.path, why)
                continue
            yield (scan.SourceFile(prefix + f.path, f.size, f.mtime_ns, f.mode),
                   s.blob + f.path, s.attrs)


def _walk_problems(sources: list[Source], where: str) -> list[str]:
    """Page-blob sizes, and two rows writing one blob (only rows whose destinations nest
    can: only their names are kept)."""
    nested: set[int] = set()
    for a, b in _nested([(s.blob, s.is_dir, s) for s in sources]):
        nested.update((a.line, b.line))
    problems: list[str] = []
    seen: dict[str, int] = {}
    by_line = {s.line: s for s in sources}
    for s in sources:
        check = s.line in nested
        page = s.attrs.blob_type == BlobType.PAGE and s.is_dir
        if not (check or page):
            continue
        for f, blob, _ in walk([s]):
            page_why = names.page_blob_problem(f.size) if page else None
            if page_why is not None:
                problems.append(f"{where}:{s.line}: BlobType: /{f.path}: {page_why}; "
                                "set BlobType to BlockBlob")
            if check:
                first = seen.setdefault(blob, s.line)
                if first != s.line:
                    problems.append(f"{where}:{s.line}: DstBlobPathOrPrefix: /{f.path} would be "
                                    f"blob {names.show(blob)}, which line {first} writes too "
                                    f"({names.show(by_line[first].base)})")
            if len(problems) >= MAX_PROBLEMS:
                return problems
    return problems


# --------------------------------------------------------------------------- kept for --resume


def saved_path(jdir: str | os.PathLike[str], session_id: str) -> Path:
    return Path(jdir) / f"{session_id}{SAVED_SUFFIX}"


def _encode(sources: list[Source]) -> bytes:
    return json.dumps({"version": 1, "sources": [
        {"line": s.line, "base": s.base, "is_dir": s.is_dir, "blob": s.blob,
         "blob_type": int(s.attrs.blob_type), "disposition": s.attrs.disposition.word,
         "metadata": [list(p) for p in s.attrs.metadata],
         "properties": [list(p) for p in s.attrs.properties]} for s in sources]},
        indent=1).encode()


def save(jdir: str | os.PathLike[str], session_id: str, sources: list[Source]) -> None:
    """Keep the checked sources beside the journals (0600: metadata may be private)."""
    data = _encode(sources)
    path = saved_path(jdir, session_id)
    tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    atomic.replace_file(tmp, str(path), data, 0o600, len(data))


def load_saved(jdir: str | os.PathLike[str], session_id: str) -> list[Source] | None:
    """The sources ``save`` kept, None for a session without a dataset."""
    path = saved_path(jdir, session_id)
    try:
        doc = json.loads(path.read_bytes())
        words = {d.word: d for d in Disposition}
        return [Source(s["line"], s["base"], s["is_dir"], s["blob"],
                       BlobAttrs(s["blob_type"], words[s["disposition"]],
                                 tuple(tuple(p) for p in s["metadata"]),
                                 tuple(tuple(p) for p in s["properties"])))
                for s in doc["sources"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: the session's dataset record is unreadable ({e}); restore "
                       "it from a copy of the journal directory") from None
