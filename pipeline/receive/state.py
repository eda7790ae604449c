"""A drive's records for the import, held in a scratch SQLite database, not in Python objects.

The journal, the closing index or a walk of the log gives the records; they are copied
here once (in batches) and read back a row at a time: by ``check_plan`` (its rules as
SQL and one streaming pass), by the extract stage (extents in drive order) and by the
commit.  A dict of ``FileEntry`` and the extents as columns held ~470 B a file (470 MB
at 1,000,000 files); here the import holds a cursor's batch and SQLite's page cache
(``CACHE_KIB``), whatever the file count.

The database is SQLite's own temporary database (``sqlite3.connect("")``: a file under
``$TMPDIR`` that SQLite deletes when the plan is closed or the process ends), private to
the process: nothing in it outlives the import, so crash safety is the markers' alone,
as before.  Numbers are u64 on a drive and i64 in SQLite: stored as their two's
complement (``_i64``), compared in Python.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from pipeline.drive import format

CACHE_KIB = 8192  # SQLite's page cache for a plan (the rest stays in its temporary file)
BATCH = 4096  # rows inserted or fetched per call

_SCHEMA = """
CREATE TABLE files (n INTEGER PRIMARY KEY, file_id INTEGER NOT NULL, path TEXT NOT NULL,
                    blob TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                    mode INTEGER NOT NULL, attrs BLOB, superseded INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX files_id ON files (file_id);
CREATE TABLE extents (n INTEGER PRIMARY KEY, file_id INTEGER NOT NULL, off INTEGER NOT NULL,
                      raw_len INTEGER NOT NULL, codec INTEGER NOT NULL,
                      stored_len INTEGER NOT NULL, xxh3 BLOB NOT NULL,
                      location INTEGER NOT NULL);
CREATE TABLE rejected (file_id INTEGER PRIMARY KEY, status TEXT NOT NULL, why TEXT NOT NULL);
"""

_U64 = 1 << 64


def i64(v: int) -> int:
    """A u64 as SQLite stores it (two's complement)."""
    return v - _U64 if v >= 1 << 63 else v


def u64(v: int) -> int:
    return v + _U64 if v < 0 else v


GC_YOUNG = 50_000  # allocations between young collections while a drive imports
_gc_lock = threading.Lock()
_gc_users = [0, 0]  # imports running in this process, gen-0 threshold before the first


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the cyclic GC's gen-0 threshold (700) to GC_YOUNG while a drive is planned
    and imported.

    Why: an import of 30,000 small files allocates millions of short-lived tuples (rows,
    extents, parts) and ran ~630 collections, 4 of them full, ~0.35-0.45 s of GIL-held
    time (gc.callbacks); at GC_YOUNG, one.  Nothing an import makes relies on cycles
    being freed early.  Restored when the last import of the process ends (threads of a
    cluster worker may import several drives at once)."""
    with _gc_lock:
        if _gc_users[0] == 0:
            _gc_users[1] = gc.get_threshold()[0]
            t = gc.get_threshold()
            gc.set_threshold(max(t[0], GC_YOUNG), *t[1:])
        _gc_users[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users[0] -= 1
            if _gc_users[0] == 0:
                t = gc.get_threshold()
                gc.set_threshold(_gc_users[1], *t[1:])


class PlanDB:
    """The scratch database of one drive's plan (one connection, shared by threads:
    sqlite3 serialises its calls)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        # One transaction for the database's life, never committed: nothing in it outlives
        # the process.  In autocommit every statement was a transaction of its own, whose
        # commit wrote its pages out: 100,000 files inserted 0.71 -> 0.16 s (executemany).
        self.db.execute("BEGIN")
        self.script(_SCHEMA)
        self.lock = threading.Lock()  # one writer at a time (check_plan's updates)
        self.sorted = True  # extents inserted in drive order (by_location needs no sort)
        self._last_loc = -1

    def close(self) -> None:
        self.db.close()

    def script(self, sql: str) -> None:
        """Run ``;``-separated statements in the open transaction (``executescript``
        would commit it first)."""
        for stmt in sql.split(";"):
            if stmt.strip():
                self.db.execute(stmt)

    def add_files(self, files: Iterable[format.FileEntry]) -> None:
        """Insert in batches; a file id listed again replaces the earlier record (a dict's
        rule, which the plan's sources followed)."""
        batch: list[tuple[Any, ...]] = []
        sql = ("INSERT OR REPLACE INTO files (file_id, path, blob, size, mtime_ns, mode, attrs) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)")
        for f in files:
            batch.append((i64(f.file_id), f.path, f.blob, i64(f.size), f.mtime_ns,
                          f.mode, None if f.attrs is None else pickle.dumps(f.attrs)))
            if len(batch) >= BATCH:
                self.db.executemany(sql, batch)
                batch.clear()
        if batch:
            self.db.executemany(sql, batch)

    def add_extents(self, extents: Iterable[format.Extent]) -> None:
        batch: list[tuple[Any, ...]] = []
        sql = ("INSERT INTO extents (file_id, off, raw_len, codec, stored_len, xxh3, location) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)")
        for e in extents:
            if e.location < self._last_loc:
                self.sorted = False
            self._last_loc = e.location
            batch.append((i64(e.file_id), i64(e.offset), i64(e.raw_len), e.codec.value,
                          i64(e.stored_len), e.xxh3, i64(e.location)))
            if len(batch) >= BATCH:
                self.db.executemany(sql, batch)
                batch.clear()
        if batch:
            self.db.executemany(sql, batch)

    def duplicate_blobs(self) -> Iterator[list[int]]:
        """The file ids (ascending) of each blob more than one current file names."""
        for (ids,) in self.rows("SELECT group_concat(file_id) FROM files WHERE superseded=0 "
                                "GROUP BY blob HAVING count(*) > 1"):
            yield sorted(u64(int(x)) for x in ids.split(","))

    def supersede(self, fids: Iterable[int]) -> None:
        self.db.executemany("UPDATE files SET superseded=1 WHERE file_id=?",
                            ((i64(f),) for f in fids))

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """A query's rows, fetched a batch at a time."""
        cur = self.db.execute(sql, args)
        while batch := cur.fetchmany(BATCH):
            yield from batch


_FILE_COLS = "file_id, path, blob, size, mtime_ns, mode, attrs"


# Records made from rows without ``__post_init__``'s checks: each row was copied from a
# checked record (``add_files``, ``add_extents``) into this process's private database,
# and is read back up to four times (check_plan, extract, the commit): a FileEntry made
# this way took 0.4 µs, through its checks 1.2 µs (timeit).
_new = object.__new__
_FE = format.FileEntry
_EX = format.Extent
(_fe_id, _fe_path, _fe_blob, _fe_size, _fe_mtime, _fe_mode, _fe_attrs) = (
    _FE.__dict__[n].__set__ for n in ("file_id", "path", "blob", "size", "mtime_ns", "mode",
                                      "attrs"))
(_ex_id, _ex_off, _ex_raw, _ex_codec, _ex_stored, _ex_xxh, _ex_loc) = (
    _EX.__dict__[n].__set__ for n in ("file_id", "offset", "raw_len", "codec", "stored_len",
                                      "xxh3", "location"))
_CODEC = {c.value: c for c in format.Codec}


def entry(row: tuple[Any, ...]) -> format.FileEntry:
    fid, path, blob, size, mtime_ns, mode, attrs = row
    f = _new(_FE)
    _fe_id(f, fid + _U64 if fid < 0 else fid)
    _fe_path(f, path)
    _fe_blob(f, blob)
    _fe_size(f, size + _U64 if size < 0 else size)
    _fe_mtime(f, mtime_ns)  # signed
    _fe_mode(f, mode)
    _fe_attrs(f, None if attrs is None else pickle.loads(attrs))
    return f


def extent(row: tuple[Any, ...]) -> format.Extent:
    fid, off, raw, codec, stored, xxh, loc = row
    e = _new(_EX)
    _ex_id(e, fid + _U64 if fid < 0 else fid)
    _ex_off(e, off + _U64 if off < 0 else off)
    _ex_raw(e, raw + _U64 if raw < 0 else raw)
    _ex_codec(e, _CODEC[codec])
    _ex_stored(e, stored + _U64 if stored < 0 else stored)
    _ex_xxh(e, xxh if type(xxh) is bytes else bytes(xxh))
    _ex_loc(e, loc + _U64 if loc < 0 else loc)
    return e


class Files(Mapping[int, format.FileEntry]):
    """File id -> record, of the plan's files (``superseded`` False) or of the older copies
    a walk of the log found rewritten (True), in the order the source listed them."""

    def __init__(self, pdb: PlanDB, superseded: bool = False) -> None:
        self._pdb, self._flag = pdb, int(superseded)

    def __getitem__(self, fid: int) -> format.FileEntry:
        row = self._pdb.db.execute(f"SELECT {_FILE_COLS} FROM files WHERE file_id=? AND "
                                   "superseded=?", (i64(fid), self._flag)).fetchone()
        if row is None:
            raise KeyError(fid)
        return entry(row)

    def __contains__(self, fid: object) -> bool:
        return isinstance(fid, int) and self._pdb.db.execute(
            "SELECT 1 FROM files WHERE file_id=? AND superseded=?",
            (i64(fid), self._flag)).fetchone() is not None

    def __len__(self) -> int:
        return self._pdb.db.execute("SELECT count(*) FROM files WHERE superseded=?",
                                    (self._flag,)).fetchone()[0]

    def __iter__(self) -> Iterator[int]:
        for (fid,) in self._pdb.rows("SELECT file_id FROM files WHERE superseded=? ORDER BY n",
                                     (self._flag,)):
            yield u64(fid)

    def values(self) -> Iterator[format.FileEntry]:  # type: ignore[override]
        for row in self._pdb.rows(f"SELECT {_FILE_COLS} FROM files WHERE superseded=? "
                                  "ORDER BY n", (self._flag,)):
            yield entry(row)

    def items(self) -> Iterator[tuple[int, format.FileEntry]]:  # type: ignore[override]
        for f in self.values():
            yield f.file_id, f

    def plain_accepted(self) -> Iterator[tuple[str, str, int]]:
        """(path, blob, size) of each file neither rejected nor a dataset's (no attrs): one
        query, no record made (``check_names``)."""
        for path, blob, size in self._pdb.rows(
                "SELECT path, blob, size FROM files WHERE superseded=? AND attrs IS NULL AND "
                "file_id NOT IN (SELECT file_id FROM rejected) ORDER BY n", (self._flag,)):
            yield path, blob, u64(size)


class Rejected(MutableMapping[int, tuple[str, str]]):
    """File id -> (status, why) of the files listed that must not be imported."""

    def __init__(self, pdb: PlanDB) -> None:
        self._pdb = pdb

    def __getitem__(self, fid: int) -> tuple[str, str]:
        row = self._pdb.db.execute("SELECT status, why FROM rejected WHERE file_id=?",
                                   (i64(fid),)).fetchone()
        if row is None:
            raise KeyError(fid)
        return row[0], row[1]

    def __contains__(self, fid: object) -> bool:
        return isinstance(fid, int) and self._pdb.db.execute(
            "SELECT 1 FROM rejected WHERE file_id=?", (i64(fid),)).fetchone() is not None

    def __setitem__(self, fid: int, value: tuple[str, str]) -> None:
        self._pdb.db.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?)",
                             (i64(fid), *value))

    def __delitem__(self, fid: int) -> None:
        self._pdb.db.execute("DELETE FROM rejected WHERE file_id=?", (i64(fid),))

    def __len__(self) -> int:
        return self._pdb.db.execute("SELECT count(*) FROM rejected").fetchone()[0]

    def __iter__(self) -> Iterator[int]:
        for (fid,) in self._pdb.rows("SELECT file_id FROM rejected ORDER BY file_id"):
            yield u64(fid)

    def add_first(self, found: Iterable[tuple[int, str, str]]) -> None:
        """Reject each file for the first reason found, unless it is rejected already."""
        self._pdb.db.executemany("INSERT OR IGNORE INTO rejected VALUES (?, ?, ?)",
                                 ((i64(f), s, w) for f, s, w in found))


class StoredExtents:
    """The plan's extents, in the order the source listed them (the journal's and the
    closing index's: drive order); an ``Extent`` is made as each is read."""

    def __init__(self, pdb: PlanDB) -> None:
        self._pdb = pdb

    def __len__(self) -> int:
        return self._pdb.db.execute("SELECT count(*) FROM extents").fetchone()[0]

    def __iter__(self) -> Iterator[format.Extent]:
        for row in self._pdb.rows("SELECT file_id, off, raw_len, codec, stored_len, xxh3, "
                                  "location FROM extents ORDER BY n"):
            yield extent(row)

    def raw_totals(self) -> tuple[int, int]:
        """(bytes of every extent, bytes of the zero ones): one pass over two columns, no
        ``Extent`` made (two passes of ``Extent``s were ~0.1 s of CPU per 30,000 files)."""
        whole = zero = 0
        z = format.Codec.ZERO.value
        for codec, raw in self._pdb.rows("SELECT codec, raw_len FROM extents"):
            raw = u64(raw)
            whole += raw
            if codec == z:
                zero += raw
        return whole, zero

    def by_location(self) -> Iterator[format.Extent]:
        """In drive order (the journal's and the index's already are: then no sort)."""
        if self._pdb.sorted:
            return iter(self)
        return (extent(row) for row in self._pdb.rows(  # a walk of the log only
            "SELECT file_id, off, raw_len, codec, stored_len, xxh3, location FROM extents "
            "ORDER BY location < 0, location, n"))  # u64 order of the i64s

    def suspects(self, limit: int) -> Iterator[tuple[format.Extent, int]]:
        """Each extent of a listed, current file that may break check_plan's rules (off
        the grid, past its file, outside the log below ``limit``), with the file's size,
        in the source's order: a superset, for the caller to judge exactly (u64 values
        past 2**63 are negative here, so any negative one is a suspect)."""
        for row in self._pdb.rows(
                "SELECT e.file_id, e.off, e.raw_len, e.codec, e.stored_len, e.xxh3, "
                "e.location, f.size FROM extents e JOIN files f ON f.file_id = e.file_id "
                "WHERE f.superseded=0 AND (e.off < 0 OR e.raw_len < 0 OR e.stored_len < 0 "
                "OR e.location < 0 OR f.size < 0 OR e.off % ? != 0 OR e.raw_len > ? "
                "OR e.off + e.raw_len > f.size OR (e.codec != ? AND (e.location < ? "
                "OR e.location + e.stored_len > ?))) ORDER BY e.n",
                (format.CELL, format.CELL, format.Codec.ZERO.value, format.SECTOR, limit)):
            yield extent(row[:7]), u64(row[7])

    def keep_current(self) -> None:
        """Drop the extents of superseded or unlisted files: nothing to write of them."""
        self._pdb.db.execute("DELETE FROM extents WHERE file_id NOT IN "
                             "(SELECT file_id FROM files WHERE superseded=0)")
