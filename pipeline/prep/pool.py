"""The drives of a prep session: formatting new ones, reopening the session's own.

``DrivePool`` hands the write stage one ``DriveWriter`` after another: first
the drives the journals say are still open (or were being formatted when a run
died), then the new ``--drive`` paths in order, each formatted with a fresh
recovery password.  It keeps the journals and passwords for prep's summary.

A drive named ``AlreadyFormatted,...,AlreadyEncrypted,KEY`` in a driveset that
already holds our sessions (closed, with room) is continued: this session
begins after the newest session's INDEX with a SESSION segment (format version
3, docs/FORMAT.md "Version 3: several sessions on one drive"), and writes nothing before
it but sector 0's version, once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
import uuid as uuidlib
from pathlib import Path

import trio

from pipeline import faults, journal
from pipeline.drive import format
from pipeline.errors import BadInput, IntegrityError, PipelineError, Refused
from pipeline.prep.config import PrepConfig
from pipeline.prep.write import DriveWriter, LogSpace, rewrite_index
from pipeline.progress import Stats
from pipeline.volume import drives, luks2, sessions

__all__ = ["DrivePool", "Continuation", "continuation", "later_session"]


@dataclasses.dataclass(frozen=True)
class Continuation:
    """Where a new session goes on a drive our earlier sessions hold (all closed)."""

    superblock: format.Superblock  # sector 0 as it is now
    sessions: list[str]  # the session ids on the drive, oldest first
    first_offset: int  # the new SESSION segment's offset: where the newest INDEX ends
    seq: int  # its sequence number
    prev_first_offset: int  # where the newest session's log starts
    prev_index: tuple[int, int]  # the newest session's INDEX (offset, length)
    prev_index_sha256: str
    trailer: format.Trailer  # the drive's trailer now, put back while the new one is open


def continuation(path: str, drive: drives.Drive, volume: luks2.Volume,
                 cipher: drives.DriveCipher, session_id: str) -> Continuation | None:
    """None when the unlocked volume holds no superblock of ours (a volume to begin anew);
    else where ``session_id`` continues it.  Refused, in one line naming the drive, when
    it cannot: its newest session is not closed, it has no room for one segment more,
    or it holds ``session_id`` already.  A newest session that is ``session_id`` itself
    with nothing after its SESSION segment was begun by a run killed before its journal
    existed: it is begun again at the same place."""
    try:
        sb = drives.read_superblock(drive, cipher)
    except IntegrityError as exc:
        if cipher.read(drive, 0, format.SECTOR).startswith(format.SUPERBLOCK_MAGIC) or \
                _log_begins(drive, cipher):  # sector 0 torn past its magic: the log says ours
            raise Refused(f"{path} holds a pipeline drive whose superblock does not read "
                          f"({exc}); import its sessions with their journals before the "
                          "drive is used again") from None
        return None
    if sb.volume_uuid != volume.uuid:
        return None
    try:
        spans = sessions.find(drive, cipher, sb)
    except (IntegrityError, OSError) as exc:
        raise Refused(f"{path}: holds pipeline sessions whose chain does not read ({exc}); "
                      "import them before this drive is used again") from None
    ids = [s.session_id for s in spans]
    if len(spans) > 1 and spans[-1].session_id == session_id and spans[-1].index is None \
            and _log_is_empty(drive, cipher, spans[-1]):
        spans, ids = spans[:-1], ids[:-1]
    newest = spans[-1]
    if session_id in ids:
        raise Refused(f"{path} already holds session {session_id}; continue it with prep "
                      "--resume, or give this session another --session-id")
    area = sb.data_area_size
    try:
        trailer = format.decode_trailer(
            cipher.read(drive, format.trailer_offset(area), format.SECTOR), sb)
    except IntegrityError:
        trailer = None
    if newest.index is None or trailer is None or (
            trailer.index_offset, trailer.index_length) != newest.index[:2]:
        raise Refused(f"{path}: its newest session {newest.session_id} is not closed; finish "
                      f"it (pipeline prep --resume --session-id {newest.session_id}) before "
                      "another session continues the drive")
    offset, length, index_seq = newest.index
    first = offset + length
    space = LogSpace(capacity=format.trailer_offset(area), offset=first + format.SECTOR,
                     seq=index_seq + 2, index_records=0)
    if not space.can_take_any():
        raise Refused(f"{path}: its sessions ({', '.join(ids)}) leave "
                      f"{drives.human(max(0, format.trailer_offset(area) - first))} free, "
                      "no room for another session; use another drive")
    digest = hashlib.sha256(cipher.read(drive, offset, length)).hexdigest()
    return Continuation(sb, ids, first, index_seq + 1, newest.first_offset, (offset, length),
                        digest, trailer)


def _log_begins(drive: drives.Drive, cipher: drives.DriveCipher) -> bool:
    """A segment of ours at 4096 (session 1's first): the volume holds our drive even when
    sector 0 no longer reads as a superblock at all."""
    try:
        format.decode_segment_header(cipher.read(drive, format.SECTOR, format.SECTOR),
                                     format.SECTOR, 0)
    except (IntegrityError, OSError):
        return False
    return True


def _log_is_empty(drive: drives.Drive, cipher: drives.DriveCipher,
                  span: sessions.SessionSpan) -> bool:
    """No segment follows the session's SESSION segment."""
    at = span.data_offset
    if at + format.SECTOR > format.trailer_offset(span.superblock.data_area_size):
        return True
    try:
        format.decode_segment_header(cipher.read(drive, at, format.SECTOR), at, span.data_seq)
    except IntegrityError:
        return True
    return False


def later_session(drive: drives.Drive, cipher: drives.DriveCipher, info: journal.DriveInfo
                  ) -> bool:
    """Whether a later session begins after this closed drive's index: then this
    session's log may never grow nor its index be rewritten again."""
    if info.state not in ("closed", "full") or not info.index_length:
        return False
    at = info.index_offset + info.index_length
    if at + format.SECTOR > format.trailer_offset(info.data_area_size):
        return False
    try:
        head = format.decode_segment_header(cipher.read(drive, at, format.SECTOR), at,
                                            info.log_seq + 1)
    except IntegrityError:
        return False
    return head.kind is format.SegmentKind.SESSION


class DrivePool:
    """Hands out writers: the session's open drives first, then new ones, in order."""

    def __init__(self, cfg: PrepConfig, journals: list[journal.Journal],
                 cpu: trio.CapacityLimiter, stats: Stats) -> None:
        self.cfg, self.cpu, self.stats = cfg, cpu, stats
        self.journals = journals
        known = {str(Path(j.drive.path).resolve()) for j in journals}
        self.queue: list[journal.Journal | str] = [
            j for j in journals if j.drive.state in ("open", "formatting", "closed")]
        self.queue += [d for d in cfg.drives if str(Path(d).resolve()) not in known]
        self.next_seq = max((j.drive.seq for j in journals), default=0) + 1
        self.passwords: dict[int, str] = {j.drive.seq: j.recovery_password for j in journals}
        for j in journals:
            d = self.stats.add_drive(f"drive {j.drive.seq}", j.drive.data_area_size, j.drive.seq)
            d.used, d.state = j.drive.log_offset, j.drive.state
        # Formatting and reopening threads: parallel fill readies every drive at once.
        self.io = trio.CapacityLimiter(max(1, len(self.queue)))

    def _keyslots(self, password: str) -> list[tuple[bytes, luks2.KdfParams]]:
        slots = [(password.encode(), self.cfg.kdf)]
        if self.cfg.operator_secret is not None:
            slots.append((self.cfg.operator_secret.value, self.cfg.kdf))
        return slots

    def _identity(self, seq: int) -> drives.Identity:
        return drives.Identity(session_id=self.cfg.session_id, job_name="", sequence=seq,
                               dstdir=self.cfg.dstdir, blob_type=self.cfg.blob_type,
                               # a dataset's drive carries per-file attributes: version 2, so a
                               # reader too old for them says so instead of calling them damaged
                               version=format.FORMAT_VERSION if self.cfg.dataset is None
                               else format.ATTRS_VERSION)

    def _session_info(self) -> journal.SessionInfo:
        return journal.SessionInfo(
            session_id=self.cfg.session_id, srcdir=str(self.cfg.srcdir),
            dstdir=self.cfg.dstdir, blob_type=int(self.cfg.blob_type),
            level=self.cfg.level, fill=self.cfg.fill)

    def _open_encrypted(self, path: str, seq: int, key: str
                        ) -> tuple[drives.Drive, drives.DriveCipher, journal.Journal]:
        """An AlreadyEncrypted drive (driveset.csv): its LUKS2 volume, made by us or by
        cryptsetup, opened with its existing key and kept (header, keyslots, volume key);
        only its data area becomes this session's log.  The key is the journal's password,
        so --resume, verify and import open it as they open any drive of ours.  The
        superblock is written before the journal exists, so no crash leaves a journal
        whose "formatting" state would format the volume anew."""
        # Every safety check of a drive to format (in use, attached, the source disk) but
        # "it holds data": its volume is the point.  A dataset's rows were checked at preflight.
        staging = None if self.cfg.dataset is not None else self.cfg.srcdir
        drive = drives.prepare_target(path, staging=staging, confirmed=True)
        try:
            volume = drives.read_volume(drive)
            _, vkey = drives.unlock(drive, volume, key.encode(),
                                    "ExistingBitLockerKey (driveset.csv)")
            cipher = drives.DriveCipher.for_volume(volume, vkey)
            cont = continuation(path, drive, volume, cipher, self.cfg.session_id)
            if cont is not None:  # our earlier sessions: this one goes after them
                jrn = self._continue(path, seq, key, drive, volume, cipher, cont)
                return drive, cipher, jrn
            area = cipher.data_area_size(drive.size)
            sb = format.Superblock(
                drive_seq=seq, volume_uuid=volume.uuid, session_id=self.cfg.session_id,
                job_name="", dstdir=self.cfg.dstdir, blob_type=self.cfg.blob_type,
                created_ns=time.time_ns(), data_area_size=area,
                version=format.ATTRS_VERSION if self.cfg.dataset is not None
                else format.FORMAT_VERSION)
            cipher.write(drive, 0, format.encode_superblock(sb))
            drive.sync()
            info = journal.DriveInfo(seq=seq, path=str(Path(path).resolve()), uuid=volume.uuid,
                                     size=drive.size, data_area_size=area, state="open")
            info.header_sha256 = hashlib.sha256(drive.pread(luks2.HDR_SIZE, 0)).hexdigest()
            jrn = journal.Journal.create(journal.journal_path(
                self.cfg.jdir, self.cfg.session_id, seq), self._session_info(), info, key)
            self.passwords[seq] = key
            return drive, cipher, jrn
        except BaseException:
            drive.close()
            raise

    def _version(self) -> int:
        return format.FORMAT_VERSION if self.cfg.dataset is None else format.ATTRS_VERSION

    def _continue(self, path: str, seq: int, key: str, drive: drives.Drive,
                  volume: luks2.Volume, cipher: drives.DriveCipher, cont: Continuation
                  ) -> journal.Journal:
        """Begin this session on a drive our earlier sessions hold.

        On the drive first, each synced: sector 0 says version 3 (once; session 1's
        version kept beside it), then the SESSION segment where the previous INDEX ends;
        then the journal, "open" from the start.  So every journal of a later session
        has its SESSION segment on the drive (no other session can begin there), and a
        run killed before its journal leaves a SESSION segment with nothing after it,
        which ``continuation`` lets the same session begin again.
        """
        sb = cont.superblock
        if sb.version != format.SESSIONS_VERSION:
            sb = dataclasses.replace(sb, version=format.SESSIONS_VERSION,
                                     first_version=sb.version)
        whole = format.encode_superblock(sb)
        if cipher.read(drive, 0, format.SECTOR) != whole:  # once; or a torn one made whole
            cipher.write(drive, 0, whole)
            drive.sync()
            faults.reached("after_superblock_v3")
        rec = format.SessionRecord(
            session_id=self.cfg.session_id, job_name="", dstdir=self.cfg.dstdir,
            blob_type=self.cfg.blob_type, drive_seq=seq, created_ns=time.time_ns(),
            version=self._version(), prev_first_offset=cont.prev_first_offset,
            prev_index_offset=cont.prev_index[0], prev_index_length=cont.prev_index[1],
            prev_index_sha256=bytes.fromhex(cont.prev_index_sha256))
        blob = format.encode_session_segment(rec, cont.seq, cont.first_offset)
        assert len(blob) == format.SECTOR  # the journal's data_offset counts on it
        cipher.write(drive, cont.first_offset, blob)
        drive.sync()
        faults.reached("after_session_segment")
        info = journal.DriveInfo(
            seq=seq, path=str(Path(path).resolve()), uuid=volume.uuid, size=drive.size,
            data_area_size=sb.data_area_size, state="open",
            log_offset=cont.first_offset + format.SECTOR, log_seq=cont.seq + 1,
            first_offset=cont.first_offset, host_session=sb.session_id,
            host_seq=sb.drive_seq, session_no=len(cont.sessions) + 1,
            base_trailer=dataclasses.asdict(cont.trailer),
            prev_index_sha256=cont.prev_index_sha256)
        info.header_sha256 = hashlib.sha256(drive.pread(luks2.HDR_SIZE, 0)).hexdigest()
        jrn = journal.Journal.create(journal.journal_path(
            self.cfg.jdir, self.cfg.session_id, seq), self._session_info(), info, key)
        self.passwords[seq] = key
        faults.reached("after_journal_create")
        return jrn

    def _format_new(self, path: str, seq: int
                    ) -> tuple[drives.Drive, drives.DriveCipher, journal.Journal]:
        key = self.cfg.existing_keys.get(str(Path(path).resolve()))
        if key is not None:
            return self._open_encrypted(path, seq, key)
        size = self.cfg.drive_size if not Path(path).exists() else None
        # A dataset's srcdir is "/": its rows' BasePaths were each checked at preflight.
        staging = None if self.cfg.dataset is not None else self.cfg.srcdir
        drive = drives.prepare_target(path, size=size, staging=staging, confirmed=self.cfg.yes)
        try:
            password = luks2.new_recovery_password()
            volume_uuid = str(uuidlib.uuid4())
            area = drive.size - luks2.DATA_OFFSET
            area -= area % luks2.SECTOR_SIZE
            info = journal.DriveInfo(seq=seq, path=str(Path(path).resolve()), uuid=volume_uuid,
                                     size=drive.size, data_area_size=area, state="formatting")
            session = self._session_info()
            jrn = journal.Journal.create(journal.journal_path(self.cfg.jdir, session.session_id,
                                                              seq), session, info, password)
            faults.reached("after_journal_create")
            _, cipher = drives.format_drive(drive, self._keyslots(password), self._identity(seq),
                                            uuid=volume_uuid)
            faults.reached("after_format")
            jrn.drive.header_sha256 = hashlib.sha256(drive.pread(luks2.HDR_SIZE, 0)).hexdigest()
            jrn.set_state("open")
            self.passwords[seq] = password
            return drive, cipher, jrn
        except BaseException:
            drive.close()
            raise

    def rewrite_stale_indexes(self) -> list[tuple[journal.DriveInfo, Exception]]:
        """Closed drives whose index lists files superseded since: write it again (see
        ``write.rewrite_index``).  Returns the drives that could not be reached, to do later
        (prep and a cluster worker each name them in their own words)."""
        failed: list[tuple[journal.DriveInfo, Exception]] = []
        for j in self.journals:
            info = j.drive
            if not (info.index_stale and info.state in ("closed", "full")):
                continue
            try:
                drive, cipher = self.reopen(j)
                try:
                    if later_session(drive, cipher, info):
                        raise Refused("a later session continues this drive, so its index "
                                      "stays as written")
                    rewrite_index(drive, cipher, j)
                finally:
                    drive.close()
            except (OSError, PipelineError) as exc:
                failed.append((info, exc))
        return failed

    def reopen(self, jrn: journal.Journal) -> tuple[drives.Drive, drives.DriveCipher]:
        """Open a drive of the session at its recorded path, unlocked, checked to be it."""
        info = jrn.drive
        drive = drives.open_drive(info.path, writable=True)
        try:
            if info.state == "formatting":  # crashed while formatting: nothing was written
                _, cipher = drives.format_drive(drive, self._keyslots(jrn.recovery_password),
                                                self._identity(info.seq), uuid=info.uuid)
                info.header_sha256 = hashlib.sha256(drive.pread(luks2.HDR_SIZE, 0)).hexdigest()
                jrn.set_state("open")
                return drive, cipher
            volume = drives.read_volume(drive)
            if volume.uuid != info.uuid:
                raise BadInput(f"{info.path} is not drive {info.seq} of session "
                               f"{jrn.session.session_id} (its volume is {volume.uuid}, the "
                               f"journal expects {info.uuid}); attach the right drive")
            _, key = drives.unlock(drive, volume, jrn.recovery_password.encode(),
                                   "recovery password")
            return drive, drives.DriveCipher.for_volume(volume, key)
        except BaseException:
            drive.close()
            raise

    async def next_writer(self) -> DriveWriter | None:
        """The next drive, reopened or formatted, as a writer; None when none is left."""
        if not self.queue:
            return None
        item = self.queue.pop(0)
        if isinstance(item, journal.Journal):
            drive, cipher = await trio.to_thread.run_sync(self.reopen, item, limiter=self.io)
            jrn = item
            if await trio.to_thread.run_sync(later_session, drive, cipher, jrn.drive,
                                             limiter=self.io):
                # a later session continues this closed drive: it takes no more of ours
                drive.close()
                if jrn.drive.state != "full":
                    await trio.to_thread.run_sync(functools.partial(
                        jrn.set_state, "full", index_offset=jrn.drive.index_offset,
                        index_length=jrn.drive.index_length,
                        index_sha256=jrn.drive.index_sha256))
                return await self.next_writer()
        else:
            seq, self.next_seq = self.next_seq, self.next_seq + 1  # on the Trio thread
            drive, cipher, jrn = await trio.to_thread.run_sync(self._format_new, item, seq,
                                                               limiter=self.io)
            self.journals.append(jrn)
        name = f"drive {jrn.drive.seq}"
        d = self.stats.add_drive(name, jrn.drive.data_area_size, jrn.drive.seq)
        d.state = "open"
        self.stats.current_drive = f"{name} ({jrn.drive.path})"
        return DriveWriter(drive, cipher, jrn, self.cpu, self.stats)
