"""The drives of a prep session: formatting new ones, reopening the session's own.

``DrivePool`` hands the write stage one ``DriveWriter`` after another: first
the drives the journals say are still open (or were being formatted when a run
died), then the new ``--drive`` paths in order, each formatted with a fresh
recovery password.  It keeps the journals and passwords for prep's summary.
"""

from __future__ import annotations

import hashlib
import time
import uuid as uuidlib
from pathlib import Path

import trio

from pipeline import faults, journal
from pipeline.drive import format
from pipeline.errors import BadInput, PipelineError
from pipeline.prep.config import PrepConfig
from pipeline.prep.write import DriveWriter, rewrite_index
from pipeline.progress import Stats
from pipeline.volume import drives, luks2

__all__ = ["DrivePool"]


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
