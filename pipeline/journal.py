"""One SQLite journal per drive: what is on the drive, and what is committed.

WAImportExport's rule: exactly one journal per drive, never stored on that
drive.  The journal holds the recovery password, so it is created mode 0600
(SQLite gives its -wal and -shm files the same mode).

A row exists only once its bytes are on the drive *and* fdatasync'd: the
writer syncs the drive, then calls :meth:`Journal.commit` with the records of
the synced segments and the new end of the log, in one transaction.  So the
journal is the commit watermark; anything on the drive past ``log_offset`` is
an uncommitted tail that ``--resume`` overwrites.

No trio here: the writer calls these methods in a worker thread, one thread
at a time per journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import IO

import xxhash

from pipeline import atomic
from pipeline.drive import format
from pipeline.errors import BadInput, InvalidRecoveryPassword, NoSpace, is_no_space

SCHEMA_VERSION = 2  # 2: each record's encoded bytes (rec), from which the index is built
SUFFIX = ".journal"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    file_id INTEGER PRIMARY KEY, path TEXT NOT NULL, blob TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
    superseded INTEGER NOT NULL DEFAULT 0, rec BLOB NOT NULL);
CREATE TABLE extents (
    file_id INTEGER NOT NULL, offset INTEGER NOT NULL, raw_len INTEGER NOT NULL,
    codec INTEGER NOT NULL, stored_len INTEGER NOT NULL, xxh3 BLOB NOT NULL,
    location INTEGER NOT NULL, segment INTEGER NOT NULL, rec BLOB NOT NULL,
    PRIMARY KEY (file_id, offset)) WITHOUT ROWID;
CREATE TABLE segments (
    seq INTEGER PRIMARY KEY, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    kind INTEGER NOT NULL);
"""


_ROWS_PER_STATEMENT = 64

SyncedSegment = tuple[format.SegmentHeader, list[format.Record], list[bytes]]
"""A synced DATA segment for ``Journal.commit``: header, records, each record's encoding."""


def _insert(db: sqlite3.Connection, head: str, rows: list[tuple[object, ...]]) -> None:
    """INSERT ``rows`` several to a statement.

    executemany steps once per row, and every step releases and retakes the GIL:
    with 30,000 small files a run, the retakes queued behind the Trio thread and
    cost more than the inserts.  One statement of 64 rows steps once.  The rest
    go in statements of 32, 16, ... 1 rows: a statement for every possible
    remainder would fill sqlite3's statement cache with up to 63 variants per
    table and connection, megabytes that grew with the run.
    """
    if not rows:
        return
    one = "(" + ",".join("?" * len(rows[0])) + ")"
    pos, n = 0, _ROWS_PER_STATEMENT
    while pos < len(rows):
        count = (len(rows) - pos) // n
        if count:
            sql = f"{head} {','.join([one] * n)}"
            db.executemany(sql, (tuple(chain.from_iterable(rows[i:i + n]))
                                 for i in range(pos, pos + count * n, n)))
            pos += count * n
        n //= 2


# Errors SQLite reports when the journal's filesystem is full: SQLITE_FULL for the database
# and its WAL; growing the -shm index is an I/O error (SQLite does not say which errno).
_SHM_GROW_FAILED = getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)


def _full(exc: BaseException, path: Path) -> bool:
    """Whether ``exc`` means the filesystem holding the journal ``path`` is full."""
    if not isinstance(exc, sqlite3.Error):
        return is_no_space(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    if code != _SHM_GROW_FAILED:
        return False
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (64 << 10)  # less than the -shm grows by: full


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already.

    On SQLITE_FULL (and some I/O errors) SQLite rolls the whole transaction back by
    itself, and a ROLLBACK then fails with 'no transaction is active', hiding the real
    error.  In WAL mode a transaction whose commit frame was never written does not
    count, so the journal stays as it was whichever way it ended.
    """
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # the error that got us here says more
            db.execute("ROLLBACK")


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: give every row its record's encoding (one transaction)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE files ADD COLUMN rec BLOB")
        db.execute("ALTER TABLE extents ADD COLUMN rec BLOB")
        rows = db.execute("SELECT file_id, path, blob, size, mtime_ns, mode FROM files")
        db.executemany("UPDATE files SET rec=? WHERE file_id=?",
                       [(format.encode_records([format.FileEntry(*r)]), r[0]) for r in rows])
        rows = db.execute("SELECT file_id, offset, raw_len, codec, stored_len, xxh3, location "
                          "FROM extents")
        db.executemany(
            "UPDATE extents SET rec=? WHERE file_id=? AND offset=?",
            [(format.encode_records([format.Extent(r[0], r[1], r[2], format.Codec(r[3]), r[4],
                                                   bytes(r[5]), r[6])]), r[0], r[1])
             for r in rows])
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


@dataclass(frozen=True)
class SessionInfo:
    """The prep session this drive belongs to (the same in every journal of it)."""

    session_id: str
    srcdir: str
    dstdir: str
    blob_type: int
    level: int
    fill: str  # "sequential" or "parallel"


@dataclass
class DriveInfo:
    """This drive, and where its committed log ends."""

    seq: int
    path: str
    uuid: str
    size: int
    data_area_size: int
    state: str = "open"  # open | full | closed | void
    log_offset: int = format.SECTOR  # next segment goes here
    log_seq: int = 0  # next segment sequence number
    payload_bytes: int = 0
    index_offset: int = 0
    index_length: int = 0
    header_sha256: str = ""  # of the LUKS2 primary header as formatted: driveHeaderHash
    index_sha256: str = ""  # of the closing index segment (plaintext): manifestHash
    # A file this closed drive's index lists was superseded since (its staging copy changed
    # and --resume wrote it again elsewhere): the index on the drive must be written again.
    index_stale: bool = False
    # Several copy sessions on one drive (format version 3).  This session's log starts at
    # first_offset: 4096 when it is the drive's first session, else its SESSION segment,
    # written where the previous session's INDEX ends; nothing before it is ours to write.
    first_offset: int = format.SECTOR
    host_session: str = ""  # a later session: the drive's first session (its superblock's)
    host_seq: int = 0  # ... and the drive's number in that session (the trailer's drive_seq)
    session_no: int = 1  # this session's place on the drive: 1, 2, ...
    # A later session: the trailer the drive had before it began (the previous sessions'),
    # as Trailer fields; written back whenever this session's index is to be replaced.
    base_trailer: dict | None = None
    prev_index_sha256: str = ""  # a later session: of the previous session's INDEX (hex)

    @property
    def continued(self) -> bool:
        """A later session on a drive an earlier session already holds."""
        return self.first_offset != format.SECTOR

    @property
    def data_offset(self) -> int:
        """Where this session's DATA segments begin: after its one-sector SESSION segment."""
        return self.first_offset + format.SECTOR if self.continued else format.SECTOR


def _unlink_db(path: Path) -> None:
    """Remove an SQLite database and the WAL and index files beside it."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)


def rotated_digest(blocks: Iterable[bytes]) -> bytes:
    """xxh3-128 of a segment's bytes from ``HEADER_SIZE`` on, then of its first
    ``HEADER_SIZE``: equal for two segments of one length exactly when their bytes are.
    The header comes last because an encoder knows it last (``Journal.index_digest``)."""
    h, head = xxhash.xxh3_128(), b""
    for block in blocks:
        if len(head) < format.HEADER_SIZE:
            cut = format.HEADER_SIZE - len(head)
            head, block = head + block[:cut], block[cut:]
        h.update(block)
    h.update(head)
    return h.digest()


class IndexFile:
    """A closing INDEX segment spooled by ``Journal.index_file``: ``length`` bytes, read
    back in order by ``blocks`` (each a multiple of SECTOR: ready to encrypt)."""

    BLOCK = 1 << 20

    def __init__(self, head: bytes, spool: IO[bytes], length: int) -> None:
        self.head, self._spool, self.length = head, spool, length

    def blocks(self) -> Iterator[bytes]:
        self._spool.seek(0)
        block = self.head + self._spool.read(self.BLOCK - len(self.head))
        while block:
            yield block
            block = self._spool.read(self.BLOCK)

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> IndexFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def journal_path(jdir: str | os.PathLike[str], session_id: str, seq: int) -> Path:
    return Path(jdir) / f"{session_id}-drive{seq:02d}{SUFFIX}"


class Journal:
    """A drive's journal.  Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path, self._db = path, db
        # One connection, used from worker threads: the writer's commits and the planner's
        # supersede() must not interleave inside one transaction.
        self._lock = threading.Lock()
        self.session = SessionInfo(**self._meta("session"))
        self.drive = DriveInfo(**self._meta("drive"))

    # -- opening -------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @classmethod
    def create(cls, path: str | os.PathLike[str], session: SessionInfo, drive: DriveInfo,
               recovery_password: str) -> Journal:
        """Build the journal under a temporary name, then rename it into place: a crash
        leaves either no journal or a complete one, never an empty file."""
        path = Path(path)
        if path.exists():
            raise BadInput(f"journal {path} already exists; use --resume to continue its "
                           "session or pick another --journal-dir")
        tmp = path.with_name(path.name + ".new")
        _unlink_db(tmp)  # left by a crash (or a full disk) during an earlier create
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError as exc:
            if is_no_space(exc):
                raise NoSpace(path, f"journal {path}") from None
            raise BadInput(f"cannot create journal {path}: {exc.strerror}") from None
        os.close(fd)
        try:
            db = cls._connect(tmp)
            try:
                db.execute("BEGIN")
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                rows = [("schema", str(SCHEMA_VERSION)),
                        ("session", json.dumps(asdict(session))),
                        ("drive", json.dumps(asdict(drive))),
                        ("recovery_password", recovery_password)]
                db.executemany("INSERT INTO meta VALUES (?, ?)", rows)
                db.execute("COMMIT")
                # Everything in the main file, or the link below names a file without it.
                busy, wal, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy or wal or done:
                    raise sqlite3.OperationalError(f"checkpoint of {tmp} left frames in its WAL")
            except BaseException:
                _rollback(db)
                raise
            finally:
                db.close()
            try:
                os.link(tmp, path)  # atomic; fails if another process created it meanwhile
            except FileExistsError:
                raise BadInput(f"journal {path} already exists; use --resume to continue its "
                               "session or pick another --journal-dir") from None
            finally:
                _unlink_db(tmp)
            atomic.fsync_dir(path.parent)
            return cls(path, cls._connect(path))  # a complete journal, even if this fails
        except BaseException as exc:
            _unlink_db(tmp)
            if _full(exc, path):
                raise NoSpace(path, f"journal {path}") from None
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"journal {path} does not exist")
        try:
            db = cls._connect(path)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:  # opening a WAL journal writes its -shm
            if _full(exc, path):
                raise NoSpace(path, f"journal {path}") from None
            raise BadInput(f"{path} is not a pipeline journal (not an SQLite database)") from None
        version = int(row[0]) if row else 0
        if version == 1:
            try:
                _migrate_v1(db)
            except sqlite3.Error as exc:
                db.close()
                if _full(exc, path):
                    raise NoSpace(path, f"journal {path}") from None
                raise
        elif version != SCHEMA_VERSION:
            db.close()
            raise BadInput(f"{path}: unsupported journal schema; use the pipeline that made it")
        return cls(path, db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> dict:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0])

    @property
    def recovery_password(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key='recovery_password'"
                                ).fetchone()[0]

    # -- writing -------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, all or nothing, under the lock.

        If it does not commit, ``self.drive`` is put back as it was, so that the copy
        in memory never runs ahead of the row (nor the watermark ahead of the drive);
        a full filesystem is :class:`NoSpace` naming it, for the user to fix, not a bug.
        """
        with self._lock:
            before, db = asdict(self.drive), self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                _rollback(db)
                for key, value in before.items():
                    setattr(self.drive, key, value)
                if _full(exc, self.path):
                    raise NoSpace(self.path, f"journal {self.path}") from None
                raise

    def _save_drive(self) -> None:
        self._db.execute("UPDATE meta SET value=? WHERE key='drive'",
                         (json.dumps(asdict(self.drive)),))

    def commit(self, segments: Iterable[SyncedSegment], log_offset: int, log_seq: int) -> None:
        """Record synced DATA segments and move the watermark, atomically.

        Each segment comes with its records and their encodings, as
        ``format.layout_data_segment`` made them; the closing index reuses those.
        """
        with self._transaction() as db:
            self._commit(db, segments, log_offset, log_seq)

    def _commit(self, db: sqlite3.Connection, segments: Iterable[SyncedSegment], log_offset: int,
                log_seq: int) -> None:
        payload = 0
        seg_rows, file_rows, ext_rows = [], [], []
        file_type = format.FileEntry
        for header, records, encoded in segments:
            seg_rows.append((header.seq, header.offset, header.total_len, int(header.kind)))
            payload += header.payload_len
            for rec, enc in zip(records, encoded, strict=True):
                if type(rec) is file_type:
                    file_rows.append((rec.file_id, rec.path, rec.blob, rec.size,
                                      rec.mtime_ns, rec.mode, enc))
                else:
                    ext_rows.append((rec.file_id, rec.offset, rec.raw_len, int(rec.codec),
                                     rec.stored_len, rec.xxh3, rec.location, header.seq, enc))
        _insert(db, "INSERT INTO segments VALUES", seg_rows)
        _insert(db, "INSERT OR IGNORE INTO files "
                "(file_id, path, blob, size, mtime_ns, mode, rec) VALUES", file_rows)
        _insert(db, "INSERT OR REPLACE INTO extents VALUES", ext_rows)
        self.drive.log_offset, self.drive.log_seq = log_offset, log_seq
        self.drive.payload_bytes += payload
        self._save_drive()

    def set_state(self, state: str, *, index_offset: int = 0, index_length: int = 0,
                  index_sha256: str = "") -> None:
        with self._transaction():
            self.drive.state = state
            self.drive.index_offset, self.drive.index_length = index_offset, index_length
            self.drive.index_sha256 = index_sha256
            self.drive.index_stale = False  # a new index is written, or will be at close
            self._save_drive()
        if state in ("closed", "full"):  # done with its rows: let its page cache go,
            with self._lock:  # or each drive's stays for the run
                self._db.execute("PRAGMA shrink_memory")

    def supersede(self, file_ids: Iterable[int]) -> None:
        """Mark files whose staging copy changed: their records here are stale."""
        ids = [(i,) for i in file_ids]
        if ids:
            with self._transaction() as db:
                db.executemany("UPDATE files SET superseded=1 WHERE file_id=?", ids)
                if self.drive.state in ("closed", "full"):  # its index on the drive lists them
                    self.drive.index_stale = True
                    self._save_drive()

    def set_skipped(self, skipped: Iterable[tuple[str, str]]) -> None:
        """Record the staging entries the latest run did not copy, as (path, reason).

        A session fact every journal keeps, so that any one of them tells the
        receiving site what is missing and why.  A meta row, so journals made
        before it need no migration (no row: nothing was recorded).  A path that
        is not UTF-8 is surrogate-escaped; ``json.dumps`` keeps it as ``\\udcXX``.
        """
        value = json.dumps([[path, reason] for path, reason in skipped])
        with self._transaction() as db:  # a full disk: NoSpace, not a traceback
            db.execute("INSERT OR REPLACE INTO meta VALUES ('skipped', ?)", (value,))

    def skipped(self) -> list[tuple[str, str]]:
        """What :meth:`set_skipped` last recorded: (path, reason) of each entry not copied."""
        row = self._db.execute("SELECT value FROM meta WHERE key='skipped'").fetchone()
        return [(path, reason) for path, reason in json.loads(row[0])] if row else []

    # -- reading -------------------------------------------------------------

    def files(self, include_superseded: bool = False) -> Iterator[format.FileEntry]:
        """The drive's files, in file-id order."""
        sql = "SELECT file_id, path, blob, size, mtime_ns, mode FROM files"
        if not include_superseded:
            sql += " WHERE superseded=0"
        for row in self._db.execute(sql + " ORDER BY file_id"):
            yield format.FileEntry(*row)

    def file_records(self, batch: int = 4096) -> Iterator[list[bytes]]:
        """The encodings of the files not superseded (as the closing index holds them), in
        file-id order, ``batch`` at a time: what ``stream_index`` puts first."""
        rows = self._db.execute("SELECT rec FROM files WHERE superseded=0 ORDER BY file_id")
        while got := rows.fetchmany(batch):
            yield [r[0] for r in got]

    def stream_index(self, seq: int, offset: int, out: Callable[[bytes], object]) -> bytes:
        """Encode the drive's closing INDEX segment out of the journal, a window at a time.

        ``out`` gets the segment's bytes after its header, in order, as the
        encoder makes them (``format.IndexStream``); the header (``HEADER_SIZE``
        bytes, which hold the stored length and digest) is returned at the end.
        The rows keep each record's encoding, so the index is their concatenation
        (files by id, then extents in log order): nothing is decoded or encoded
        again, and memory stays O(window) however many files the drive holds.
        The index's cross-record rules are checked here in SQL instead of record
        by record.
        """
        with self._lock:  # no supersede() between counting the records and listing them
            self._check_index_rows(offset)
            enc = format.IndexStream(seq, offset, self.index_records_len(),
                                     self.drive.data_offset)
            for sql in ("SELECT rec FROM files WHERE superseded=0 ORDER BY file_id",
                        "SELECT e.rec FROM extents e JOIN files f ON f.file_id = e.file_id "
                        "WHERE f.superseded=0 ORDER BY e.location, e.file_id, e.offset"):
                rows = self._db.execute(sql)
                while batch := rows.fetchmany(4096):
                    piece = enc.add_encoded([r[0] for r in batch])
                    if piece:
                        out(piece)
            head, tail = enc.end()
            out(tail)
            return head

    def index_segment(self, seq: int, offset: int) -> bytes:
        """The closing INDEX segment whole (tests, small drives); ``index_file`` and
        ``index_digest`` do not hold it."""
        pieces: list[bytes] = []
        head = self.stream_index(seq, offset, pieces.append)
        return b"".join((head, *pieces))

    def index_file(self, seq: int, offset: int) -> IndexFile:
        """The closing INDEX segment spooled to an unnamed 0600 file beside the journal
        (its header is known only at the end, and the drive and its sha256 want it
        first): ``IndexFile.blocks`` gives it out in order, a block at a time."""
        spool: IO[bytes] | None = None
        try:
            spool = tempfile.TemporaryFile(dir=self.path.parent)  # noqa: SIM115 (IndexFile closes it)
            head = self.stream_index(seq, offset, spool.write)
            size = spool.tell()
        except BaseException as e:
            if spool is not None:
                spool.close()
            if is_no_space(e):      # the OSError names no file: say which filesystem is full
                raise NoSpace(self.path.parent, f"the closing index beside {self.path}") from e
            raise
        return IndexFile(head, spool, len(head) + size)

    def index_digest(self, seq: int, offset: int) -> bytes:
        """``rotated_digest`` of the closing INDEX segment, made as it is encoded (verify
        compares it with the drive's without holding either)."""
        h = xxhash.xxh3_128()
        head = self.stream_index(seq, offset, h.update)
        h.update(head)
        return h.digest()

    def _check_index_rows(self, offset: int) -> None:
        """What ``format.IndexEncoder.add`` checks per record, over the rows: a caller bug
        (ValueError) if an extent has no file, runs past its file, or is stored outside
        the segments before the index at ``offset``."""
        row = self._db.execute(
            "SELECT e.file_id, e.offset, e.raw_len, e.location, e.stored_len, f.size "
            "FROM extents e LEFT JOIN files f ON f.file_id = e.file_id "
            "WHERE f.file_id IS NULL OR (f.superseded=0 AND (e.offset + e.raw_len > f.size "
            "OR (e.codec != ? AND (e.location < ? OR e.location + e.stored_len > ?)))) LIMIT 1",
            (int(format.Codec.ZERO), self.drive.data_offset + format.HEADER_SIZE, offset)
        ).fetchone()
        if row is not None:
            fid, off, raw, loc, stored, size = row
            raise ValueError(f"journal {self.path}: extent of file {fid} at [{off}, +{raw}) "
                             f"stored at [{loc}, +{stored}) does not fit its file (size {size}) "
                             f"or the segments before the index at {offset}")

    def trailer(self, index_offset: int, index_length: int, segment_count: int) -> bytes:
        """The trailer sector that closes this session with its index at ``index_offset``:
        version 1 on a drive of one session, version 2 (pointing at this session's
        SESSION segment, counting the sessions) on a later session's."""
        info = self.drive
        if not info.continued:
            return format.encode_trailer(format.Trailer(
                drive_seq=info.seq, data_area_size=info.data_area_size,
                index_offset=index_offset, index_length=index_length,
                segment_count=segment_count, payload_bytes=info.payload_bytes))
        return format.encode_trailer(format.Trailer(
            drive_seq=info.host_seq, data_area_size=info.data_area_size,
            index_offset=index_offset, index_length=index_length, segment_count=segment_count,
            payload_bytes=info.payload_bytes, version=2, session_offset=info.first_offset,
            sessions=info.session_no))

    def base_trailer(self) -> bytes:
        """What the trailer sector holds while this session is open: nothing (zeros) on a
        drive's first session; on a later one, the previous sessions' trailer, so they
        stay readable through it while this one is written."""
        info = self.drive
        if info.base_trailer is None:
            return bytes(format.SECTOR)
        return format.encode_trailer(format.Trailer(**info.base_trailer))

    def index_records_len(self) -> int:
        """Encoded size of the records the closing index lists: the rows' stored encodings."""
        (files,) = self._db.execute(
            "SELECT coalesce(sum(length(rec)), 0) FROM files WHERE superseded=0").fetchone()
        (extents,) = self._db.execute(
            "SELECT coalesce(sum(length(e.rec)), 0) FROM extents e "
            "JOIN files f ON f.file_id = e.file_id WHERE f.superseded=0").fetchone()
        return files + extents

    def superseded_ids(self) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT file_id FROM files WHERE superseded=1")}

    def extents(self, include_superseded: bool = False) -> Iterator[format.Extent]:
        """The drive's extents in log order."""
        sql = ("SELECT e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3, "
               "e.location FROM extents e")
        if not include_superseded:
            sql += " JOIN files f ON f.file_id = e.file_id WHERE f.superseded=0"
        for row in self._db.execute(sql + " ORDER BY e.location, e.file_id, e.offset"):
            yield format.Extent(row[0], row[1], row[2], format.Codec(row[3]), row[4],
                                bytes(row[5]), row[6])

    def extents_with_segment(self) -> Iterator[tuple[format.Extent, int]]:
        """Every extent (superseded too) with the sequence number of its segment."""
        for row in self._db.execute(
                "SELECT file_id, offset, raw_len, codec, stored_len, xxh3, location, segment "
                "FROM extents ORDER BY segment, location"):
            yield (format.Extent(row[0], row[1], row[2], format.Codec(row[3]), row[4],
                                 bytes(row[5]), row[6]), row[7])

    def live_file_ids(self) -> list[int]:
        """The live files' ids, in order: no record objects (verify's plan)."""
        return [r[0] for r in self._db.execute(
            "SELECT file_id FROM files WHERE superseded=0 ORDER BY file_id")]

    def live_extent_rows(self) -> Iterator[tuple[int, format.ExtentRow]]:
        """(segment seq, extent row) of every live file's extent, in log order.

        Plain values (``format.ExtentRow``), not ``Extent`` objects: the rows were
        checked as records when prep committed them, and verify only compares what
        the drive holds with them.  Fetched a batch at a time.
        """
        rows = self._db.execute(
            "SELECT e.segment, e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3, "
            "e.location FROM extents e JOIN files f ON f.file_id = e.file_id "
            "WHERE f.superseded=0 ORDER BY e.segment, e.location")
        while batch := rows.fetchmany(4096):
            for seg, *row in batch:
                yield seg, tuple(row)  # type: ignore[misc]

    def segments(self) -> list[tuple[int, int, int]]:
        """(seq, offset, length) of every committed DATA segment, in log order."""
        return list(self._db.execute("SELECT seq, offset, length FROM segments ORDER BY seq"))

    def live_totals(self) -> tuple[int, int]:
        """(files, raw bytes of their extents) of the live files: what verify and import
        will go through, for a progress bar's totals (one SQL pass, no record objects)."""
        files = self._db.execute("SELECT count(*) FROM files WHERE superseded=0").fetchone()[0]
        raw = self._db.execute(
            "SELECT coalesce(sum(e.raw_len), 0) FROM extents e JOIN files f USING (file_id) "
            "WHERE f.superseded=0").fetchone()[0]
        return files, raw

    def counts(self) -> dict[str, int]:
        files = self._db.execute("SELECT count(*) FROM files WHERE superseded=0").fetchone()[0]
        ext, raw = self._db.execute("SELECT count(*), coalesce(sum(raw_len), 0) FROM extents"
                                    ).fetchone()
        return {"files": files, "extents": ext, "raw_bytes": raw,
                "payload_bytes": self.drive.payload_bytes}


def session_journals(jdir: str | os.PathLike[str], session_id: str | None = None, *,
                     below: bool = False) -> list[Journal]:
    """Every journal in ``jdir`` (of one session, if given), ordered by drive number.
    ``below``: also in the folders under it (diskprep keeps one folder per job), when
    ``jdir`` itself holds none."""
    jdir = Path(jdir)
    if not jdir.is_dir():
        raise BadInput(f"journal directory {jdir} does not exist")
    paths = sorted(jdir.glob(f"*{SUFFIX}"))
    if below and not paths:
        paths = sorted(jdir.rglob(f"*{SUFFIX}"))
    out = []
    for path in paths:
        j = Journal.open(path)
        if session_id is None or j.session.session_id == session_id:
            out.append(j)
        else:
            j.close()
    return sorted(out, key=lambda j: j.drive.seq)


def one_session(jdir: str | os.PathLike[str], session_id: str | None) -> list[Journal]:
    """The journals of exactly one session: the one named, or the only one in ``jdir``."""
    journals = session_journals(jdir, session_id)
    if not journals:
        raise BadInput(f"no journals in {jdir}"
                       + (f" for session {session_id}" if session_id else "")
                       + "; check --journal-dir")
    sessions = {j.session.session_id for j in journals}
    if len(sessions) > 1:
        for j in journals:
            j.close()
        raise BadInput(f"{jdir} holds several sessions ({', '.join(sorted(sessions))}); "
                       "pick one with --session-id")
    return journals


def _is_recovery_password(key: str) -> bool:
    """Whether ``key`` is, as written, a recovery password (what a job's bitLockerKey is)."""
    from pipeline.volume import luks2  # here: the journal's readers need no KDF imported

    try:
        return luks2.parse_recovery_password(key) == key
    except InvalidRecoveryPassword:
        return False


def drive_list(journals: list[Journal]) -> list[dict[str, str]]:
    """The driveList entries; refuses drives that are not closed (nothing to ship yet)."""
    out = []
    for j in journals:
        d = j.drive
        if d.state not in ("closed", "full"):
            raise BadInput(f"drive {d.seq} ({d.path}) is {d.state}, not closed; finish it with "
                           f"pipeline prep --resume --journal-dir {j.path.parent} "
                           f"--session-id {j.session.session_id}")
        if not _is_recovery_password(j.recovery_password):
            raise BadInput(  # an AlreadyEncrypted volume's own key; never echoed (a secret)
                f"drive {d.seq} ({d.path}) opens with the ExistingBitLockerKey of its "
                "driveset, which is not a recovery password (48 digits in 8 groups of 6); an "
                "import job's bitLockerKey must be one: import this drive at the site with "
                "--journal-dir or --passphrase-file, or give such a volume a recovery password "
                "(cryptsetup luksAddKey) before prep and name that in the driveset")
        out.append({
            "driveId": d.uuid,
            "bitLockerKey": j.recovery_password,
            "manifestFile": f"/index@{d.index_offset}+{d.index_length}",
            "manifestHash": d.index_sha256,
            "driveHeaderHash": d.header_sha256,
        })
    return out
