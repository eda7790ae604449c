"""What is on a drive, before a byte moves: its records, and what must not be imported.

From the journal when there is one, else the closing index, else a walk of the log
(then the drive cannot vouch for completeness).  ``check_plan`` applies the journal's
rules to whatever the records came from.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import overload

from pipeline import journal, names
from pipeline.drive import format
from pipeline.errors import BadInput, IntegrityError, Refused
from pipeline.receive import disposition, state
from pipeline.receive import reader as driveread
from pipeline.receive.markers import STATE_CONTAINER
from pipeline.storage import base as storage_base


class Extents(Sequence[format.Extent]):
    """A drive's extents as columns: five 64-bit arrays, a byte of codec and the 16-byte
    digests end to end, ~57 B an extent where an ``Extent`` object with its own int and
    bytes objects held ~256 B (tracemalloc, ``perf.planmem``).  An ``Extent`` is made
    (and checked again) each time one is read, and dropped by whoever is done with it."""

    __slots__ = ("_codec", "_fid", "_loc", "_off", "_raw", "_stored", "_xxh")

    def __init__(self, extents: Iterable[format.Extent] = ()) -> None:
        self._fid, self._off, self._raw = array("Q"), array("Q"), array("Q")
        self._stored, self._loc = array("Q"), array("Q")
        self._codec, self._xxh = bytearray(), bytearray()
        for e in extents:
            self.append(e)

    def append(self, e: format.Extent) -> None:
        self._fid.append(e.file_id)
        self._off.append(e.offset)
        self._raw.append(e.raw_len)
        self._stored.append(e.stored_len)
        self._loc.append(e.location)
        self._codec.append(e.codec.value)
        self._xxh += e.xxh3  # always 16 bytes: the Extent checked it

    def __len__(self) -> int:
        return len(self._fid)

    def _at(self, i: int) -> format.Extent:
        return format.Extent(self._fid[i], self._off[i], self._raw[i],
                             format.Codec(self._codec[i]), self._stored[i],
                             bytes(self._xxh[16 * i:16 * i + 16]), self._loc[i])

    @overload
    def __getitem__(self, i: int) -> format.Extent: ...
    @overload
    def __getitem__(self, i: slice) -> list[format.Extent]: ...
    def __getitem__(self, i: int | slice) -> format.Extent | list[format.Extent]:
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._at(i)

    def __iter__(self) -> Iterator[format.Extent]:
        return (self._at(i) for i in range(len(self)))

    def by_location(self) -> Iterator[format.Extent]:
        """In drive order (the journal's and the index's already are: then no sort)."""
        loc = self._loc
        if all(loc[i] <= loc[i + 1] for i in range(len(loc) - 1)):
            return iter(self)
        return (self._at(i) for i in sorted(range(len(loc)), key=loc.__getitem__))


class DrivePlan:
    """The records of one drive, from its journal or its closing index (or, failing both,
    a walk of its log), with what could not be vouched for.

    Held in a scratch SQLite database (``receive.state``), not as objects: ``files``,
    ``extents``, ``rejected`` and ``superseded`` read it a row at a time.  Records given
    as a dict and a list (tests, a walk of the log) are copied into it."""

    def __init__(self, superblock: format.Superblock,
                 files: Mapping[int, format.FileEntry] | Iterable[format.FileEntry],
                 extents: Iterable[format.Extent], source: str, *,
                 rejected: Mapping[int, tuple[str, str]] | None = None,
                 damage: list[str] | None = None, incomplete: str = "",
                 db: state.PlanDB | None = None) -> None:
        self.superblock = superblock
        self.source = source  # "journal", "index" or "log scan"
        self.damage = damage if damage is not None else []  # named on the terminal and log
        self.incomplete = incomplete  # why the drive cannot vouch it holds every file it should
        self.checked = False  # check_plan ran: a file breaking the name rules is rejected
        self.db = db if db is not None else state.PlanDB()
        if files is not None:
            self.db.add_files(files.values() if isinstance(files, Mapping) else files)
        if extents is not None:
            self.db.add_extents(extents)
        self.files = state.Files(self.db)
        # Older copies of a file rewritten on this drive (log scan): never imported.
        self.superseded = state.Files(self.db, superseded=True)
        self.extents = state.StoredExtents(self.db)
        # Files the drive lists but that must not be imported: file id -> (status, why).
        self.rejected = state.Rejected(self.db)
        self.rejected.update(rejected or {})

    @property
    def container(self) -> str:
        return self.superblock.dstdir.split("/", 1)[0]

    def close(self) -> None:
        """Drop the scratch database (SQLite deletes its file)."""
        self.db.close()


def plan_drive(od: driveread.UnlockedDrive, jrn: journal.Journal | None) -> DrivePlan:
    with state.fewer_collections():  # a row, a record, a tuple per file: all short-lived
        return _plan_drive(od, jrn)


def _plan_drive(od: driveread.UnlockedDrive, jrn: journal.Journal | None) -> DrivePlan:
    sb = od.superblock
    storage_base.check_container_name(sb.dstdir.split("/", 1)[0])
    if sb.dstdir.split("/", 1)[0] == STATE_CONTAINER:
        raise IntegrityError(f"{od.drive.path}: the superblock names container "
                             f"{STATE_CONTAINER}, which holds the importer's own state; "
                             "a drive prepared by pipeline never does")
    if jrn is not None:
        info = jrn.drive
        if (sb.session_id, sb.drive_seq, sb.volume_uuid) != (
                jrn.session.session_id, info.seq, info.uuid):
            raise Refused(f"{od.drive.path} is drive {sb.drive_seq} of session {sb.session_id}, "
                          f"not drive {info.seq} of {jrn.session.session_id}; pass the journal "
                          "directory of its own session")
        # A version-2 drive's attributes are in the records' bytes: decoded from the
        # closing index the journal would write (held while read); else streamed.
        files = jrn.files() if sb.version < format.ATTRS_VERSION else \
            disposition.journal_attrs(jrn, sb, {f.file_id: f for f in jrn.files()})
        plan = DrivePlan(sb, files, jrn.extents(), "journal")
    else:
        try:
            _, index = driveread.read_index(od)
        except (IntegrityError, OSError) as exc:
            # No intact closing index (prep crashed before closing the drive, or damage):
            # walk the log, and say the drive cannot vouch for what is not on it.
            scan = driveread.scan_log(od)
            if not scan.files:
                raise IntegrityError(
                    f"{od.drive.path}: neither the closing index ({exc}) nor any segment "
                    f"could be read ({scan.end_reason}); import it with its journal "
                    "(--journal-dir)") from None
            plan = DrivePlan(sb, scan.files, scan.extents, "log scan", damage=scan.damage)
            plan.incomplete = (
                f"no intact closing index ({exc}); its records were recovered by walking "
                f"the log ({scan.segments} segment(s), ended by {scan.end_reason}), so files "
                "prep had not yet written, or recorded only past the damage, cannot be named")
        else:
            plan = DrivePlan(sb, index.files, index.extents, "index")
            del index
    if od.superblock_damage:
        plan.damage.append(f"{od.superblock_damage}; the journal's record of it stands in")
    if od.truncated_at is not None:
        plan.damage.append(f"the drive ends {od.truncated_at} bytes into its "
                           f"{sb.data_area_size}-byte data area (a truncated image?); extents "
                           "past the cut are reported missing")
    check_plan(plan)
    return plan


def check_plan(plan: DrivePlan) -> None:
    """Apply the journal's rules to whatever the records came from, before any byte moves.

    - Every blob is the session's virtual directory + the file's path: a record
      naming anything else (another directory, the importer's own state) is damage.
    - One version of a blob: a file rewritten on this drive by ``prep --resume``
      (its staging copy changed) appears twice in the log, and only the newest
      file id stands, as in the journal; older copies are never written anywhere.
      A closing index or journal never lists a blob twice, so there it is damage.
    - Every extent lies on the file's 1 MiB grid, inside the file and the drive.

    Streamed over the plan's database: a pass over the files, the duplicates found by
    SQL, the extents that may break the grid rules found by SQL and judged here.
    """
    sb = plan.superblock
    vdir = sb.dstdir.partition("/")[2]
    limit = format.trailer_offset(sb.data_area_size)
    page = sb.blob_type is format.BlobType.PAGE
    found: list[tuple[int, str, str]] = []
    for fid, f in plan.files.items():
        why = _file_problem(f, sb, vdir, page)
        if why is not None:
            found.append((fid, *why))
            if len(found) >= state.BATCH:
                plan.rejected.update((k, (st, w)) for k, st, w in found)
                found.clear()
    plan.rejected.update((k, (st, w)) for k, st, w in found)
    for fids in plan.db.duplicate_blobs():
        if plan.source == "log scan":
            plan.db.supersede(fids[:-1])
        else:
            for fid in fids:
                plan.rejected[fid] = ("corrupt", f"the drive's {plan.source} lists this blob "
                                      f"{len(fids)} times (file ids {fids}); importing neither")
    plan.rejected.add_first(_extent_problems(plan, limit))
    plan.extents.keep_current()  # a superseded copy's, or an unlisted file's: nothing to write
    plan.checked = True  # every file's name and size held to the rules (``check_names``)


def _file_problem(f: format.FileEntry, sb: format.Superblock, vdir: str, page: bool
                  ) -> tuple[str, str] | None:
    """(status, why) a file must not be imported, or None (``check_plan``'s first rule)."""
    if f.attrs is not None:  # a dataset's file (version 2): its own container and type
        why = disposition.attrs_problem(f, sb)
        return None if why is None else ("corrupt", why)
    if f.blob != vdir + f.path:
        return ("corrupt", f"recorded as blob {names.show(f.blob)}, not "
                f"{names.show(vdir + f.path)} (the session's directory + its path)")
    bad_name = names.blob_problem(f.blob)
    if bad_name is not None:  # a drive prepared before prep applied the name rules
        return ("missing", f"its name cannot be a blob name ({bad_name}); rename it in "
                "staging and send it again: pipeline repair")
    if f.size > storage_base.MAX_BLOB_SIZE[sb.blob_type]:
        return ("corrupt", f"size {f.size} exceeds the largest {sb.blob_type.name.lower()} "
                f"blob Azure holds ({storage_base.MAX_BLOB_SIZE[sb.blob_type]} bytes)")
    page_why = names.page_blob_problem(f.size) if page else None
    if page_why is not None:
        return ("missing", page_why)
    return None


def _extent_problems(plan: DrivePlan, limit: int) -> Iterator[tuple[int, str, str]]:
    """(file id, "corrupt", why) of each extent off the grid, past its file or outside the
    drive's log, in the source's order (the first one a file has is what it is named for)."""
    for e, size in plan.extents.suspects(limit):
        why = ""
        if e.offset % format.CELL or e.raw_len > format.CELL or e.offset + e.raw_len > size:
            why = (f"extent [{e.offset}, +{e.raw_len}) is off the {format.CELL}-byte grid or "
                   f"past the file's {size} bytes")
        elif e.codec is not format.Codec.ZERO and not (
                e.location >= format.SECTOR and e.location + e.stored_len <= limit):
            why = f"extent stored at [{e.location}, +{e.stored_len}) is outside the drive's log"
        if why:
            yield e.file_id, "corrupt", why


def check_names(plan: DrivePlan) -> None:
    """Every container and blob name valid before anything is written: the rules prep
    applied when it skipped the names it could not copy (``pipeline.names``)."""
    names.check_container_name(plan.container)
    if getattr(plan, "checked", False):
        return  # check_plan rejected every file these rules refuse: none is left to raise
    if isinstance(plan.files, state.Files):  # one query, not a lookup a file
        plain: Iterable[tuple[str, str, int]] = plan.files.plain_accepted()
    else:
        plain = ((f.path, f.blob, f.size) for fid, f in plan.files.items()
                 if fid not in plan.rejected and f.attrs is None)
    # A rejected file is named in the copy log; the rest of the drive imports.  A dataset's
    # file (attrs) was held to its rules by check_plan.
    for path, blob, size in plain:
        names.check_blob_name(blob)
        page_why = (names.page_blob_problem(size)
                    if plan.superblock.blob_type is format.BlobType.PAGE else None)
        if page_why is not None:
            raise BadInput(f"{path}: {page_why}")
