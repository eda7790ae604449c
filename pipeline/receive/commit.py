"""Stage: commit every blob of a drive whose cells all imported drives now cover; and
the import's own record of what it writes (``OnDrive``).

A blob becomes visible only here, complete, and the copy log says so: ``ok``, or
``unvouched`` from a drive that cannot vouch for itself.

What the import writes, and how far it got, is kept in the plan's scratch database
(``receive.state``), not a Python object per file: ``todo`` (the files this import
writes: their decided blob, disposition note, stored-extent count, zero cells),
what each file's extents gave (its cells, damage, committed by the uploaders: the same
row, updated in place) and ``others`` (the other drives' markers, read a chunk at a time).  A
``FileOnDrive`` is made for a file when the extract stage reads its first extent and
written back once all of them are through (``OnDrive.stored``), so the import holds
the files of the windows in flight, whatever the drive's file count.  The database is
scratch: crash safety is the markers' (``markers.py``), as before.
"""

from __future__ import annotations

import json
import threading
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline import faults
from pipeline.drive import format
from pipeline.receive import disposition, markers, state
from pipeline.receive.copylog import CopyLog
from pipeline.receive.markers import marker_name
from pipeline.storage.base import Storage

COMMIT_BATCH = 256  # blobs committed per storage thread call
COMMITTERS = 4  # commit batches in flight at once (each a storage thread call), unless
# the store says how many of its calls at once help (``writers``: a local account, 1)


_ascii = json.encoder.encode_basestring_ascii  # a JSON string as json.dumps writes it


def cells_of(size: int) -> list[int]:
    return list(format.grid(size))


@dataclass(slots=True)
class FileOnDrive:
    """One file of the drive as the import goes: cells delivered, zero, damaged."""

    entry: format.FileEntry
    cells: set[int] = field(default_factory=set)
    zero: frozenset[int] = frozenset()  # shared while empty: a set a file cost 216 B each
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)  # offset -> (status, why)
    note: dict[str, str] | None = None  # the copy log's disposition fields (a dataset's file)
    committed: bool = False  # by the uploaders, as soon as its last cell was written
    md5: Any = None  # a dataset file's Content-MD5 as its parts go (disposition.md5_feed)
    here: bool | None = None  # every cell on this drive, stored or zero (OnDrive.all_here)


def whole_here(fd: FileOnDrive) -> bool:
    """Every cell of the file delivered or zero by this drive alone, none damaged: it can
    be committed at once, no other drive's marker needed.  Cheap (counts) until the last
    cell, for the uploaders call it after every part."""
    n = format.grid_cells(fd.entry.size)
    return (not fd.bad and not fd.committed and len(fd.cells) + len(fd.zero) >= n
            and len(fd.cells | fd.zero) == n)


def copy_of(session_id: str, file_id: int) -> str:
    """The copy a file's parts and commit name (``Storage.write_part``): the same on
    every drive of the session and every run, another for another session or file, so a
    part staged long ago and expired is never filled from an older copy of the blob."""
    return f"{session_id}/{file_id}"


def commit_files(store: Storage, container: str, btype: format.BlobType,
                 fds: list[FileOnDrive], session_id: str,
                 other_zero: dict[int, set[int]] | None = None) -> None:
    """Commit these files' blobs (runs in a storage thread); ``other_zero``: zero cells
    other drives' markers add."""
    for fd in fds:
        f = fd.entry
        zeros = fd.zero | other_zero[f.file_id] if other_zero and f.file_id in other_zero \
            else fd.zero
        c, b, t = disposition.where(f, container, btype)  # a dataset's file: its own
        store.commit(c, b, t, f.size, sorted(zeros), copy=copy_of(session_id, f.file_id))
        if f.attrs is not None:
            store.set_attributes(c, b, t, f.attrs.metadata, disposition.properties_of(fd))



_SCHEMA = """
CREATE TABLE IF NOT EXISTS todo (file_id INTEGER PRIMARY KEY, n INTEGER NOT NULL,
                                 blob TEXT, note TEXT, stored INTEGER NOT NULL DEFAULT 0,
                                 zero BLOB, cells BLOB, bad TEXT,
                                 committed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS todo_n ON todo (n);
CREATE TABLE IF NOT EXISTS others (seq INTEGER NOT NULL, file_id INTEGER NOT NULL,
                                   blob TEXT NOT NULL, cells TEXT NOT NULL, zero TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS others_blob ON others (blob);
CREATE INDEX IF NOT EXISTS others_id ON others (file_id);
CREATE INDEX IF NOT EXISTS extents_file ON extents (file_id);
"""

# The columns a FileOnDrive is made of: the file's, then todo's.
_FD_COLS = ("f.file_id, f.path, coalesce(t.blob, f.blob), f.size, f.mtime_ns, f.mode, "
            "f.attrs, t.note, t.stored, t.zero, t.cells, t.bad, t.committed")
_FD_FROM = "todo t JOIN files f ON f.file_id = t.file_id"
PREFETCH = 256  # files made live by one query (a page of those ``stored`` handed out)
SWEEP = 4096  # extents handed to extract between looks for files whose extents are through
ROUND = 4 * COMMIT_BATCH * COMMITTERS  # files decided, committed and logged at a time


def _pack(cells: Iterable[int]) -> bytes:
    """Cell offsets as the database holds them: u64s, packed (cheaper than JSON to
    write at every sweep and read at every load)."""
    return array("Q", sorted(cells)).tobytes()


def _fd(row: tuple[Any, ...]) -> tuple[FileOnDrive, int]:
    """A FileOnDrive from ``_FD_COLS``, and its stored extents' count."""
    note, stored, zero, cells, bad, committed = row[7:]
    entry = state.entry(row[:7])
    got = set(array("Q", cells)) if cells else set()
    fd = FileOnDrive(entry, got, frozenset(array("Q", zero)) if zero else frozenset(),
                     {int(k): (v[0], v[1]) for k, v in json.loads(bad).items()} if bad else {},
                     json.loads(note) if note else None, bool(committed),
                     False if got else None)  # a digest of parts gone: read the blob back
    return fd, stored


class OnDrive(Mapping[int, FileOnDrive]):
    """File id -> FileOnDrive of the drive's files this import writes.

    Backed by the plan's database; the files being written are held (``_live``): made
    by ``stored`` as their first extent goes to extract, written back once
    each of their stored extents was delivered or found damaged, and dropped.  Looking
    up another file makes it live too, so that what is changed in it is kept."""

    def __init__(self, plan: Any) -> None:
        self.plan, self.pdb = plan, plan.db
        self.pdb.script(_SCHEMA)
        self._live: dict[int, FileOnDrive] = {}
        self._stored: dict[int, int] = {}  # a live file's stored extents on this drive
        # One sweep at a time (uploader threads sweep too), and no file made live while one
        # runs: a file dropped but not yet written back would come back without its cells.
        self._sweeping = threading.Lock()
        self._next_sweep = SWEEP
        # The files ``stored`` handed out, in pages of PREFETCH in its order: the first one
        # an uploader looks up makes its whole page live in one query (a query a file was
        # ~15% of the uploader thread's time on small files).  ~100 B a file in flight.
        self._page_of: dict[int, int] = {}
        self._pages: dict[int, list[int]] = {}

    def __getitem__(self, fid: int) -> FileOnDrive:
        fd = self._live.get(fid)
        if fd is None:
            with self._sweeping:  # not while a sweep writes back what it drops
                fd = self._load(fid)
        return fd

    def _load(self, fid: int) -> FileOnDrive:
        """Make ``fid`` live, and the next files ``stored`` handed out (holding the lock)."""
        fd = self._live.get(fid)
        if fd is not None:
            return fd
        want = {fid}
        page = self._page_of.pop(fid, None)
        for other in self._pages.pop(page, ()) if page is not None else ():
            self._page_of.pop(other, None)
            if other not in self._live:
                want.add(other)
        for row in self.pdb.db.execute(
                f"SELECT {_FD_COLS} FROM {_FD_FROM} WHERE t.file_id IN "
                f"({','.join('?' * len(want))})", [state.i64(f) for f in want]):
            got, stored = _fd(row)
            self._live[got.entry.file_id], self._stored[got.entry.file_id] = got, stored
        fd = self._live.get(fid)
        if fd is None:
            raise KeyError(fid)
        if len(self._live) >= self._next_sweep:  # the uploaders outrun the reads at the
            self._sweep(False)  # end: they sweep too, now and then
        return fd

    def all_here(self, fd: FileOnDrive) -> bool:
        """Every cell of the file lies on this drive, stored or zero: this import writes or
        zeroes each one before it commits the file, so nothing of a blob committed before
        is wanted (``LocalStorage.write_own_part``).  A file that spans drives wants it: run
        again after its commit, this drive delivers only its own cells.  Asked of a file
        written in parts; its distinct cells counted once (a log walk may list one twice)."""
        if fd.here is None:
            with self._sweeping:  # the plan's database, as _load
                offs = {state.u64(o) for (o,) in self.pdb.db.execute(
                    "SELECT off FROM extents WHERE file_id=? AND codec != ?",
                    (state.i64(fd.entry.file_id), format.Codec.ZERO.value))}
            fd.here = len(offs | fd.zero) == format.grid_cells(fd.entry.size)
        return fd.here

    def __contains__(self, fid: object) -> bool:
        return isinstance(fid, int) and (fid in self._live or self.pdb.db.execute(
            "SELECT 1 FROM todo WHERE file_id=?", (state.i64(fid),)).fetchone() is not None)

    def __len__(self) -> int:
        return self.pdb.db.execute("SELECT count(*) FROM todo").fetchone()[0]

    def __iter__(self) -> Iterator[int]:
        for (fid,) in self.pdb.rows("SELECT file_id FROM todo ORDER BY n"):
            yield state.u64(fid)

    def pop(self, fid: int) -> FileOnDrive:  # type: ignore[override]
        """Not written after all (disposition: skipped)."""
        fd = self[fid]
        del self._live[fid], self._stored[fid]
        self.pdb.db.execute("DELETE FROM todo WHERE file_id=?", (state.i64(fid),))
        return fd

    def to_commit(self) -> Iterator[FileOnDrive | tuple[str, int, int, str | None]]:
        """Every file written, in the plan's order (``settle`` first): one the uploaders
        committed whole and undamaged (most of a drive of small files) as what its copy
        log line takes (blob, size, file id, note's JSON), no FileOnDrive made; any other
        as a FileOnDrive."""
        for row in self.pdb.rows(f"SELECT {_FD_COLS} FROM {_FD_FROM} ORDER BY t.n"):
            if row[12] and row[11] is None:
                yield row[2], state.u64(row[3]), state.u64(row[0]), row[7]
            else:
                yield _fd(row)[0]

    def rows(self, where: str = "") -> Iterator[FileOnDrive]:
        """Every file written (``where``: an SQL condition on f/t), from the database
        (settled: ``settle`` first), in the plan's order; not made live."""
        for row in self.pdb.rows(f"SELECT {_FD_COLS} FROM {_FD_FROM} "
                                 f"{'WHERE ' + where if where else ''} ORDER BY t.n"):
            yield _fd(row)[0]

    def decide(self, fd: FileOnDrive) -> None:
        """Record a dataset file's decision (its blob, the copy log's note)."""
        self.pdb.db.execute("UPDATE todo SET blob=?, note=? WHERE file_id=?",
                            (fd.entry.blob, json.dumps(fd.note) if fd.note is not None
                             else None, state.i64(fd.entry.file_id)))
        self._live.pop(fd.entry.file_id, None)

    def stored(self) -> Iterator[format.Extent]:
        """The stored (not zero) extents of the files written, in drive order.  A file is
        made live when an uploader (or the damage report) first looks it up, not here:
        the windows read ahead hold tens of thousands of small files' extents.  Every
        SWEEP extents (or more, as many as are live), the files whose extents are all
        through are written back and dropped."""
        order = "e.n" if self.pdb.sorted else "e.location < 0, e.location, e.n"
        since, last, page = 0, None, 0
        for row in self.pdb.rows(
                "SELECT e.file_id, e.off, e.raw_len, e.codec, e.stored_len, e.xxh3, "
                "e.location FROM extents e JOIN todo t ON t.file_id = e.file_id "
                f"WHERE e.codec != ? ORDER BY {order}", (format.Codec.ZERO.value,)):
            e = state.extent(row)
            if e.file_id != last and e.file_id not in self._page_of:
                self._page_of[e.file_id] = page  # before the page: a lookup finds its page
                fids = self._pages.setdefault(page, [])  # (a new list, once an uploader
                fids.append(e.file_id)  # took the page: its later files go one by one)
                if len(fids) >= PREFETCH:
                    page += 1
            last = e.file_id
            yield e
            since += 1
            if since >= SWEEP and since >= len(self._live) // 2:
                self.sweep()
                since = 0

    def sweep(self, final: bool = False) -> None:
        """Write back the live files whose stored extents are all through (``final``:
        every live file: nothing is in flight any more) and drop them.  Any thread: a
        file whose extents are all through changes no more but for ``committed``, and one
        about to be committed is kept."""
        if not self._sweeping.acquire(blocking=final):
            return  # another thread sweeps now
        try:
            self._sweep(final)
        finally:
            self._sweeping.release()

    def _sweep(self, final: bool) -> None:
        out = []
        for fid, fd in list(self._live.items()):
            if not final and self._stored[fid]:  # (none stored: no uploader wants it)
                if len(fd.cells) + len(fd.bad) < self._stored[fid]:
                    continue  # extents still in flight
                if not fd.committed and not fd.bad and len(fd.cells | fd.zero) == \
                        format.grid_cells(fd.entry.size):
                    continue  # whole: an uploader is about to commit it
            out.append((_pack(fd.cells),
                        json.dumps({k: list(v) for k, v in fd.bad.items()}) if fd.bad
                        else None, int(fd.committed), state.i64(fid)))
            del self._live[fid], self._stored[fid]
        self.pdb.db.executemany("UPDATE todo SET cells=?, bad=?, committed=? WHERE file_id=?",
                                out)
        faults.reached("import_after_sweep")  # tests: a kill with files written back
        self._next_sweep = max(SWEEP, 2 * len(self._live))
        if final:
            self._page_of.clear()
            self._pages.clear()

    def settle(self) -> None:
        """Extract is over: every live file written back."""
        self.sweep(final=True)

    def marker_files(self) -> Iterator[dict[str, Any]]:
        """The marker's entry of each file, in order (``settle`` first): made from the
        columns it needs, no FileOnDrive (cells and zero cells are stored sorted)."""
        for fid, path, blob, size, cells, zero, bad in self.pdb.rows(
                "SELECT t.file_id, f.path, coalesce(t.blob, f.blob), f.size, t.cells, t.zero, "
                f"t.bad FROM {_FD_FROM} ORDER BY t.n"):
            yield {"file_id": state.u64(fid), "path": path, "blob": blob, "size": state.u64(size),
                   "cells": array("Q", cells).tolist() if cells else [],
                   "zero": array("Q", zero).tolist() if zero else [],
                   "bad": sorted(int(k) for k in json.loads(bad)) if bad else []}

    def marker_json(self) -> Iterator[str]:
        """``marker_files``, each entry already JSON (``markers.chunks_json`` takes it as
        is): formatted as json.dumps writes the dict, ~1 us a file, not ~7 (30,000 files
        a drive of small files, all after the last part is written)."""
        for fid, path, blob, size, cells, zero, bad in self.pdb.rows(
                "SELECT t.file_id, f.path, coalesce(t.blob, f.blob), f.size, t.cells, t.zero, "
                f"t.bad FROM {_FD_FROM} ORDER BY t.n"):
            bads = sorted(int(k) for k in json.loads(bad)) if bad else ()
            yield (f'{{"file_id": {state.u64(fid)}, "path": {_ascii(path)}, "blob": '
                   f'{_ascii(blob)}, "size": {state.u64(size)}, "cells": '
                   f'[{", ".join(map(str, array("Q", cells))) if cells else ""}], "zero": '
                   f'[{", ".join(map(str, array("Q", zero))) if zero else ""}], "bad": '
                   f'[{", ".join(map(str, bads))}]}}')

    # ------------------------------------------------------------------ other drives

    async def load_others(self, store: Storage, session_id: str, net: trio.CapacityLimiter,
                          skip: str = "") -> None:
        """The session's other markers (but ``skip``) into ``others``, a chunk at a time."""
        db = self.pdb.db
        db.execute("DELETE FROM others")
        async for seq, files in markers.each_marker_chunk(store, session_id, net, skip):
            db.executemany("INSERT INTO others VALUES (?, ?, ?, ?, ?)", (
                (seq, state.i64(f["file_id"]), f["blob"], json.dumps(f["cells"]),
                 json.dumps(f["zero"])) for f in files))
        self._any_others = db.execute("SELECT 1 FROM others LIMIT 1").fetchone() is not None

    def newest(self, blob: str) -> int:
        """The newest file id another imported drive delivered for ``blob`` (0: none)."""
        if not getattr(self, "_any_others", False):
            return 0
        return max((state.u64(r[0]) for r in self.pdb.db.execute(
            "SELECT file_id FROM others WHERE blob=?", (blob,))), default=0)

    def elsewhere(self, fid: int) -> tuple[set[int], set[int], set[int]]:
        """(cells, zero cells, drives) the other drives' markers give file ``fid``."""
        cells: set[int] = set()
        zero: set[int] = set()
        where: set[int] = set()
        if getattr(self, "_any_others", False):
            for seq, c, z in self.pdb.db.execute(
                    "SELECT seq, cells, zero FROM others WHERE file_id=?", (state.i64(fid),)):
                cells.update(json.loads(c))
                zero.update(json.loads(z))
                where.add(seq)
        return cells, zero, where

    def decided(self) -> dict[int, str]:
        """File id -> blob the session's markers recorded, for this drive's dataset files
        (``disposition.resolve``)."""
        return {state.u64(fid): blob for fid, blob in self.pdb.rows(
            "SELECT o.file_id, o.blob FROM others o JOIN todo t ON t.file_id = o.file_id "
            "JOIN files f ON f.file_id = t.file_id WHERE f.attrs IS NOT NULL")}

    def claimed(self) -> set[str]:
        """Every blob the session's markers recorded (``disposition.resolve``)."""
        return {b for (b,) in self.pdb.rows("SELECT DISTINCT blob FROM others")}


async def what_to_write(plan: Any, store: Storage, log: CopyLog, net: trio.CapacityLimiter
                        ) -> OnDrive:
    """The drive's files this import writes; every other one named in the copy log now."""
    sb = plan.superblock
    for fid, f in plan.superseded.items():
        log.blob("skipped", f.blob, "an older copy of the file, rewritten later on this drive "
                 "(its staging copy changed); never written", f.size, file_id=fid)
    on_drive = OnDrive(plan)
    # A newer copy already delivered by another drive: this one must not touch the blob.
    await on_drive.load_others(store, sb.session_id, net)
    db = plan.db.db
    batch: list[tuple[int, int]] = []
    for n, fid, blob, size, status, why in plan.db.rows(
            "SELECT f.n, f.file_id, f.blob, f.size, r.status, r.why FROM files f "
            "LEFT JOIN rejected r ON r.file_id = f.file_id WHERE f.superseded=0 ORDER BY f.n"):
        fid, size = state.u64(fid), state.u64(size)
        if status is not None:
            log.blob(status, blob, why, size, file_id=fid)
        elif on_drive.newest(blob) > fid:
            log.blob("skipped", blob, "superseded by a newer copy of the file on another "
                     "drive; never written", size, file_id=fid)
        else:
            batch.append((state.i64(fid), n))
            if len(batch) >= state.BATCH:
                db.executemany("INSERT INTO todo (file_id, n) VALUES (?, ?)", batch)
                batch.clear()
    db.executemany("INSERT INTO todo (file_id, n) VALUES (?, ?)", batch)
    db.execute("UPDATE todo SET stored = (SELECT count(*) FROM extents e WHERE "
               "e.file_id = todo.file_id AND e.codec != ?)", (format.Codec.ZERO.value,))
    zeros: list[tuple[bytes, int]] = []
    fid, cells = None, set()
    for efid, off, raw in plan.db.rows(
            "SELECT e.file_id, e.off, e.raw_len FROM extents e JOIN todo t ON "
            "t.file_id = e.file_id WHERE e.codec = ? ORDER BY e.file_id",
            (format.Codec.ZERO.value,)):
        if efid != fid and fid is not None:
            zeros.append((_pack(cells), fid))
            cells = set()
        fid = efid
        off, raw = state.u64(off), state.u64(raw)
        cells.update(format.grid(off + raw, off))
    if fid is not None:
        zeros.append((_pack(cells), fid))
    db.executemany("UPDATE todo SET zero=? WHERE file_id=?", zeros)
    return on_drive


async def commit_ready(store: Storage, container: str, sb: format.Superblock,
                        on_drive: OnDrive, log: CopyLog, net: trio.CapacityLimiter,
                        vouched: bool = True) -> None:
    """Commit each file of this drive whose cells every imported drive now covers.

    From a drive that cannot vouch for itself (``vouched`` false: its records come
    from a walk of the log), a committed blob is "unvouched", not "ok": every byte
    checks, but a newer copy of the file may lie on another drive, which only the
    closing index (rewritten by prep when that happens) or the journal would say.

    The files go ROUND at a time, from the database: decided, their commits run several
    batches at once, their copy log lines written in order; then the next ROUND.
    """
    done = "ok" if vouched else "unvouched"
    why = "" if vouched else ("every extent checks, but the drive has no intact closing index "
                              "to vouch that this is the newest copy; import the session's "
                              "other drives, or compare with the source (pipeline repair)")
    # The other drives' markers; this drive's own cells are the ones in ``on_drive``.
    await on_drive.load_others(store, sb.session_id, net,
                               skip=marker_name(sb.session_id, sb.drive_seq))
    btype = sb.blob_type
    limit = trio.CapacityLimiter(getattr(store, "writers", COMMITTERS))
    rows = on_drive.to_commit()
    while True:
        fds = [fd for fd, _ in zip(rows, range(ROUND), strict=False)]
        if not fds:
            break
        await _commit_round(store, container, btype, sb.drive_seq, fds, on_drive, log, net,
                            limit, done, why, sb.session_id)
        faults.reached("import_after_commit_round")  # tests: a kill between rounds


async def _commit_round(store: Storage, container: str, btype: format.BlobType, seq: int,
                        fds: list[FileOnDrive | tuple[str, int, int, str | None]],
                        on_drive: OnDrive, log: CopyLog,
                        net: trio.CapacityLimiter, limit: trio.CapacityLimiter, done: str,
                        why: str, session_id: str) -> None:
    """One ROUND of files: the copy log's lines in the order one commit at a time wrote
    them: a line now, or a batch's "ok" lines once the batch is committed; the batches
    are committed several at once, and each one's lines wait for it alone."""
    lines: list[tuple[str, str, str, int, dict] | int] = []
    batches: list[list[FileOnDrive]] = [[]]
    zero: dict[int, set[int]] = {}  # zero cells the other drives add, of the files committed
    for fd in fds:
        if isinstance(fd, tuple):  # whole on this drive: the uploaders committed it already
            blob, size, fid, note = fd
            lines.append((done, blob, why, size,
                          {"file_id": fid, **json.loads(note)} if note else {"file_id": fid}))
            continue
        if fd.committed:  # and damaged after all: named for it
            line = _not_ready(fd, seq, 0, set(), set(), set())
            if line is not None:
                lines.append(line)
                continue
        line = _not_ready(fd, seq, on_drive.newest(fd.entry.blob), *_elsewhere(
            fd, on_drive, zero))
        if line is not None:
            lines.append(line)
            continue
        batches[-1].append(fd)
        if len(batches[-1]) >= COMMIT_BATCH:
            lines.append(len(batches) - 1)
            batches.append([])
    lines.append(len(batches) - 1)
    done_events = [trio.Event() for _ in batches]

    async def committer(k: int) -> None:
        async with limit:
            await trio.to_thread.run_sync(commit_files, store, container, btype, batches[k],
                                          session_id, zero, limiter=net)
        done_events[k].set()

    async with trio.open_nursery() as nursery:
        for k in range(len(batches)):
            nursery.start_soon(committer, k)
        for line in lines:
            if isinstance(line, int):
                await done_events[line].wait()
                for fd in batches[line]:
                    f = fd.entry
                    log.blob(done, f.blob, why, f.size, file_id=f.file_id, **(fd.note or {}))
            else:
                status, blob, reason, size, extra = line
                log.blob(status, blob, reason, size, **extra)


def _elsewhere(fd: FileOnDrive, on_drive: OnDrive, zero: dict[int, set[int]]
               ) -> tuple[set[int], set[int], set[int]]:
    """The other drives' (cells, zero cells, drives) of a file not whole here (none looked
    up for one that is); its zero cells kept for its commit."""
    if not fd.bad and len(fd.cells | fd.zero) == format.grid_cells(fd.entry.size):
        return set(), set(), set()
    cells, z, where = on_drive.elsewhere(fd.entry.file_id)
    if z:
        zero[fd.entry.file_id] = z
    return cells, z, where


def _not_ready(fd: FileOnDrive, seq: int, newest: int, cells: set[int], zero: set[int],
               where: set[int]) -> tuple[str, str, str, int, dict] | None:
    """The copy log's line for a file this drive (``seq``) does not commit (and why), or
    None.  ``newest``: the newest file id other drives delivered for its blob;
    ``cells``, ``zero`` and ``where`` are the other drives' (their markers)."""
    f = fd.entry
    if newest > f.file_id:
        return ("skipped", f.blob, "superseded by a newer copy of the file", f.size, {})
    if fd.bad:
        first = min(fd.bad)
        status, why = fd.bad[first]
        return (status, f.blob, f"extent at {first}: {why}", f.size,
                {"bad_extents": len(fd.bad)})
    grid = format.grid(f.size)
    have = fd.cells | fd.zero  # on the grid, inside the file: check_plan saw to it
    if len(have) == len(grid):
        return None  # the whole file is on this drive: no other drive's marker needed
    have |= cells | zero
    missing = [c for c in grid if c not in have]
    if missing:
        return ("skipped", f.blob, f"continues on another drive ({len(missing)} of "
                f"{len(grid)} extents); completes when that drive is imported",
                f.size, {"drives": sorted(where | {seq})})
    return None
