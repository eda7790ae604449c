"""verify_drive(): read a drive back and check every extent against its journal; the wiring.

::

    plan (a thread: the journal's segments, and the sha256 of the closing index prep wrote)
    | rows (a thread: the cursor over the journal's extent rows, in log order)
    | unlock (a thread: LUKS2, superblock, the drive's closing index read), at once
      -> index compared by digest (decoded only when it differs)
      -> read (a thread of the drive's own: up to 16 MiB and 4,096 extents of neighbouring
         segments, one pread, the next window's bytes asked of the device first, and the
         journal's rows for them: nothing held per file beyond the window)
         -> Window -> check x N (cpu threads: decrypt, decode segments, decompress,
            xxh3-128)
            -> Checked -> report (one task: merges windows in any order)

Everything found goes into the report (nothing is raised for damage): the files
whose extents do not check, and the drive-level problems (a damaged superblock,
closing index or keyslot, a cut image), so that one run names all of it.  Nothing
here prints: warnings (a damaged LUKS2 header copy read past) go into the report
for the command to show.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from pipeline import journal
from pipeline.drive import format
from pipeline.errors import BadInput, IntegrityError
from pipeline.receive import check
from pipeline.receive import reader as driveread

WINDOWS_DEPTH = 0  # a window read waits for a free checker: 16 MiB held per thread, no more
WINDOW_EXTENTS = 4096  # ... and at most this many of the journal's extents (or one segment)


@dataclass
class DriveReport:
    seq: int
    path: str
    files: int = 0
    extents: int = 0
    raw_bytes: int = 0
    damaged: dict[str, str] = field(default_factory=dict)  # path -> first reason
    problems: list[str] = field(default_factory=list)  # drive-level findings
    warnings: list[str] = field(default_factory=list)  # read past, nothing lost

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


@dataclass(frozen=True)
class _Plan:
    """What the journal says the drive holds, but its extents: those are read from the
    journal a window at a time, beside the drive's segments (``_Rows``)."""

    files: int  # live files
    segments: list[tuple[int, int, int]]  # (seq, offset, length) of every DATA segment
    index: bytes | None  # rotated xxh3-128 of the closing index as the journal's rows encode
    # it (None: not closed, or unknown): its digest, not its bytes (~50 B a file)
    index_sha256: bytes | None = None  # or the sha256 prep recorded as it wrote the index

    def same_index(self, on_drive: tuple[format.Trailer, bytes, bytes]) -> bool:
        """Is the drive's closing index (``reader.index_digest``) the journal's?"""
        if self.index_sha256 is not None:
            return on_drive[2] == self.index_sha256
        return on_drive[1] == self.index


def _plan(jrn: journal.Journal) -> _Plan:
    """Read from the journal in a thread of its own, while the drive is unlocked.

    The index prep wrote is known by the sha256 it recorded in the same transaction that
    closed the drive (``set_state``), from the rows as they were then; rows have changed
    since only if a file was superseded, which marks the index stale.  So while it is not
    stale, that digest stands for the rows: the index is not encoded again (~0.2 s at
    20,000 files).  Stale, or a journal without it: the rows are encoded and digested."""
    info = jrn.drive
    index, sha256 = None, None
    if info.state in ("closed", "full"):
        if info.index_sha256 and not info.index_stale:
            sha256 = bytes.fromhex(info.index_sha256)
        else:
            try:
                index = jrn.index_digest(info.log_seq, info.index_offset)
            except ValueError:  # records the index could not hold: the drive's is decoded
                index = None
    return _Plan(jrn.live_totals()[0], jrn.segments(), index, sha256)


class _Rows:
    """The journal's live extent rows (in segment order), handed out a window of segments
    at a time: by the read thread, the only one that uses it (one cursor)."""

    def __init__(self, jrn: journal.Journal) -> None:
        self._rows = jrn.live_extent_rows()
        self._next: tuple[int, format.ExtentRow] | None = next(self._rows, None)
        self.strays: list[check.Key] = []  # rows of a segment the journal does not list
        self._held: tuple[int, list[tuple[check.Key, bytes]]] | None = None

    def take(self, seq: int) -> list[tuple[check.Key, bytes]]:
        """The rows of segment ``seq`` (asked in ascending order), packed; rows of segments
        before it that no window took are strays, missing from the drive."""
        if self._held is not None and self._held[0] == seq:
            got, self._held = self._held[1], None
            return got
        got: list[tuple[check.Key, bytes]] = []
        while self._next is not None and self._next[0] <= seq:
            at, row = self._next
            key = (row[0], row[1])
            if at == seq:
                got.append((key, check.packed(row)))
            else:
                self.strays.append(key)
            self._next = next(self._rows, None)
        return got

    def hold(self, seq: int, rows: list[tuple[check.Key, bytes]]) -> None:
        """Give back what ``take(seq)`` returned, for the next window to take."""
        self._held = (seq, rows)

    def rest(self) -> None:
        """Every row past the last window's segments: strays too."""
        while self._next is not None:
            self.strays.append((self._next[1][0], self._next[1][1]))
            self._next = next(self._rows, None)


@dataclass(frozen=True)
class _Who:
    """The journal's record of the drive, read before the threads start (one connection)."""

    info: journal.DriveInfo
    session_id: str
    password: bytes
    recorded: format.Superblock

    @classmethod
    def of(cls, jrn: journal.Journal) -> _Who:
        return cls(jrn.drive, jrn.session.session_id, jrn.recovery_password.encode(),
                   driveread.recorded_superblock(jrn))


def _open(who: _Who, path: str, report: DriveReport
          ) -> tuple[driveread.UnlockedDrive, tuple[format.Trailer, bytes, bytes] | None]:
    """Unlock the drive and check it as a whole: superblock, size; read its closing index:
    its trailer and digests come back (None: no index to compare)."""
    info = who.info
    od = driveread.unlock_drive(path, who.password, expected_uuid=info.uuid,
                                recorded=who.recorded)
    try:
        if od.superblock_damage:
            report.problems.append(od.superblock_damage)
        if od.truncated_at is not None:
            report.problems.append(f"the drive ends {od.truncated_at} bytes into its "
                                   f"{od.superblock.data_area_size}-byte data area "
                                   "(a truncated image?)")
        report.warnings.extend(od.volume.warnings)  # a damaged header copy, read past
        sb = od.superblock
        if (sb.volume_uuid, sb.session_id, sb.drive_seq) != (
                info.uuid, who.session_id, info.seq):
            raise BadInput(f"{path} is not drive {info.seq} of session "
                           f"{who.session_id}; pass the right --drive")
        if info.state not in ("closed", "full"):
            report.problems.append(f"drive is {info.state}: not closed, it has no index yet; "
                                   "finish prep (--resume) before shipping it")
            return od, None
        try:
            return od, driveread.index_digest(od)  # read again if it differs
        except IntegrityError as exc:
            report.problems.append(f"closing index unreadable: {exc}")
            return od, None
    except BaseException:
        od.close()
        raise


def _index_problem(od: driveread.UnlockedDrive, jrn: journal.Journal) -> str:
    """Why the drive's closing index is not the journal's, or "" (read again and decoded:
    runs in a thread, only when its bytes differ from the journal's: the records, sorted,
    against the journal's rows in the same order)."""
    try:
        index = driveread.read_index(od)[1]
    except IntegrityError as exc:
        return f"closing index unreadable: {exc}"
    on_drive = sorted(check.packed((e.file_id, e.offset, e.raw_len, e.codec.value,
                                    e.stored_len, e.xxh3, e.location))
                      for e in index.extents)
    ids = sorted(f.file_id for f in index.files)
    del index
    rows = sorted(check.packed(row) for _, row in jrn.live_extent_rows())
    if on_drive != rows or ids != jrn.live_file_ids():
        return "the closing index does not match the journal"
    return ""


async def _start(jrn: journal.Journal, path: str, report: DriveReport
                 ) -> tuple[_Plan, _Rows, driveread.UnlockedDrive]:
    """The journal's plan, its extent rows' cursor and the unlocked drive, each in its own
    thread, at once; then the closing index, byte for byte what prep wrote (decoded only
    when it is not).  The rows' query sorts every extent before its first row (~40 ms
    for 15,000 files): in the event loop's thread it held up everything after it."""
    who = _Who.of(jrn)
    plans: list[_Plan] = []
    cursors: list[_Rows] = []
    opened: list[tuple[driveread.UnlockedDrive, tuple[format.Trailer, bytes, bytes] | None]] = []

    async def plan() -> None:
        plans.append(await trio.to_thread.run_sync(_plan, jrn,
                                                   limiter=trio.CapacityLimiter(1)))

    async def rows() -> None:
        cursors.append(await trio.to_thread.run_sync(_Rows, jrn,
                                                     limiter=trio.CapacityLimiter(1)))

    async def unlock() -> None:
        opened.append(await trio.to_thread.run_sync(_open, who, path, report,
                                                    limiter=trio.CapacityLimiter(1)))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plan)
            nursery.start_soon(rows)
            nursery.start_soon(unlock)
        (od, index), p = opened[0], plans[0]
        if index is not None and not p.same_index(index):
            why = await trio.to_thread.run_sync(_index_problem, od, jrn,
                                                limiter=trio.CapacityLimiter(1))
            if why:
                report.problems.append(why)
    except BaseException:
        for od, _ in opened:
            od.close()
        raise
    return p, cursors[0], od


async def _read(od: driveread.UnlockedDrive, segments: list[tuple[int, int, int]],
                rows: _Rows, tx: trio.MemorySendChannel[check.Window],
                io: trio.CapacityLimiter) -> None:
    """Stage: the drive's segments in log order, a window of neighbours per read, each with
    the journal's rows for it (read in the same thread call)."""
    async with tx:
        pending = collections.deque(segments)
        while pending:
            await tx.send(await trio.to_thread.run_sync(_window, od, pending, rows,
                                                        limiter=io))
        await trio.to_thread.run_sync(rows.rest, limiter=io)


def _window(od: driveread.UnlockedDrive, pending: collections.deque[tuple[int, int, int]],
            rows: _Rows) -> check.Window:
    """The next window, taken from ``pending``: neighbouring segments of at most
    ``reader.READ_CHUNK`` bytes (``reader.batches``' rule) and WINDOW_EXTENTS of the
    journal's rows (a lone segment over either is a window of its own), read (still
    encrypted: the checker decrypts), with those rows.  The count matters on tiny
    files: 16 MiB of them is ~50,000 extents, each a row here and in the check."""
    batch: list[tuple[int, int, int]] = []
    extents: dict[check.Key, bytes] = {}
    by_segment: dict[int, list[check.Key]] = {}
    while pending:
        seq, offset, length = pending[0]
        if batch and (offset != batch[-1][1] + batch[-1][2]
                      or offset + length - batch[0][1] > driveread.READ_CHUNK):
            break
        got = rows.take(seq)
        if batch and len(extents) + len(got) > WINDOW_EXTENTS:
            rows.hold(seq, got)
            break
        batch.append(pending.popleft())
        if got:
            extents.update(got)
            by_segment[seq] = [key for key, _ in got]
    expected = check.Expected(extents, by_segment)
    start, end = batch[0][1], batch[-1][1] + batch[-1][2]
    if pending:  # the device reads the next window while this one is read and checked
        _read_ahead(od, pending[0][1], min(pending[0][1] + driveread.READ_CHUNK,
                                           pending[-1][1] + pending[-1][2]))
    try:
        sealed = od.cipher.read_sealed(od.drive, start, end - start)
    except (IntegrityError, OSError):  # a cut image, a bad sector: only what is hit is lost
        return check.Window(tuple(driveread.read_batch(od, batch)), expected)
    return check.Window((), expected, check.Sealed(od.cipher, start, sealed, tuple(batch)))


def _read_ahead(od: driveread.UnlockedDrive, lo: int, hi: int) -> None:
    """Ask the device for data-area bytes [lo, hi) now (POSIX_FADV_WILLNEED), not waiting:
    cold, the disk then works while a window is checked (import's ``extract`` does the
    same)."""
    with contextlib.suppress(OSError, AttributeError):  # advice only
        os.posix_fadvise(od.drive.fd, od.cipher.segment_offset + lo, hi - lo,
                         os.POSIX_FADV_WILLNEED)


class _Tally:
    """Stage: the report's side of the checks, order-independent.  Each file keeps the
    damage a walk of the log would have met first, wherever its window was checked."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        self.progress = progress  # raw bytes checked, as each window's are
        self.extents = self.raw_bytes = 0
        self.missing: list[check.Key] = []  # damage only: nothing a file for a sound drive
        self.first: dict[int, check.Damage] = {}  # file id -> its earliest damage

    async def run(self, rx: trio.MemoryReceiveChannel[check.Checked]) -> None:
        async with rx:
            async for got in rx:
                self.extents += got.extents
                self.raw_bytes += got.raw_bytes
                self.progress(got.raw_bytes)
                self.missing.extend(got.missing)
                for d in got.damage:
                    if d.file_id not in self.first or d.where < self.first[d.file_id].where:
                        self.first[d.file_id] = d

    def finish(self, plan: _Plan, names: dict[int, str], report: DriveReport) -> None:
        report.extents, report.raw_bytes = self.extents, self.raw_bytes

        def name(file_id: int) -> str:
            return names.get(file_id, f"file #{file_id}")

        for d in sorted(self.first.values(), key=lambda d: d.where):
            report.damaged.setdefault(name(d.file_id), d.reason)
        for fid, offset in sorted(set(self.missing)):
            report.damaged.setdefault(name(fid), f"extent at {offset} is missing from the drive")
        report.files = plan.files

    def damaged_ids(self) -> set[int]:
        """The files to name (none on a sound drive)."""
        return set(self.first) | {fid for fid, _ in self.missing}


def _names(jrn: journal.Journal, wanted: set[int]) -> dict[int, str]:
    """File id -> path of the ``wanted`` files, superseded ones too: read only when a file
    is to be named, and only theirs kept."""
    return {f.file_id: f.path for f in jrn.files(include_superseded=True)
            if f.file_id in wanted}


async def verify_drive(jrn: journal.Journal, path: str, cpu: trio.CapacityLimiter,
                       workers: int | None = None,
                       progress: Callable[[int], None] = lambda n: None) -> DriveReport:
    """Check one drive; everything found goes into the report (nothing raised for damage).

    ``cpu`` is shared by every drive verified at once; the drive's own reads get a
    thread of their own (its io limiter), so reading one window overlaps checking
    the ones before.  ``workers`` checkers (default: the cpu limiter's tokens).
    ``progress`` hears the raw bytes of each window checked (the progress bar's feed).
    """
    report = DriveReport(jrn.drive.seq, path)
    plan, rows, od = await _start(jrn, path, report)
    tally = _Tally(progress)
    with od:
        async with trio.open_nursery() as nursery:
            win_tx, win_rx = trio.open_memory_channel[check.Window](WINDOWS_DEPTH)
            got_tx, got_rx = trio.open_memory_channel[check.Checked](0)
            nursery.start_soon(_read, od, plan.segments, rows, win_tx, trio.CapacityLimiter(1))
            async with win_rx, got_tx:
                for _ in range(workers or int(cpu.total_tokens)):
                    nursery.start_soon(check.run, win_rx.clone(), got_tx.clone(), cpu)
            nursery.start_soon(tally.run, got_rx)
    tally.missing.extend(rows.strays)
    wanted = tally.damaged_ids()
    names = {} if not wanted else await trio.to_thread.run_sync(
        _names, jrn, wanted, limiter=trio.CapacityLimiter(1))
    tally.finish(plan, names, report)
    return report
