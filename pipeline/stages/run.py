"""run_prep(): the one nursery, every channel and limiter — the pipeline's topology.

::

    feeder process: walk + plan (resume), small files read and packed ---> packed
        large files: -> read (x readers, threads) -> raw extents
                     -> pack (x cpu) --------------------------------------> packed
    packed (bundles) -> write: sequential (one drive after another)
                             | parallel (every drive at once)

Every channel is bounded, so memory is arithmetic: ``depth`` raw extents of up
to 1 MiB, ``depth / 4`` bundles of up to ~4 MiB, one call's worth in each
reader and packer, and per writing drive (all of them in parallel fill, one in
sequential) ``WRITER_MEMORY``; ``--memory`` sets ``depth`` from what is left.
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pipeline import credentials, drives, faults, format, journal, luks2
from pipeline.errors import BadInput, OutOfDrives
from pipeline.progress import Stats
from pipeline.session import Session
from pipeline.stages import pack, read, source
from pipeline.stages.write import SEGMENT_PAYLOAD, DriveWriter

MiB = 1 << 20
HELPERS_MEMORY = 48 * MiB  # the feeder process (~26 MiB) and the counting walk (~15 MiB)
# A writing drive holds up to: its open segment, the one being laid out (payload and
# segment), the sealed one, the one being encrypted (plain and cipher) and the one written.
WRITER_MEMORY = 6 * (SEGMENT_PAYLOAD + read.EXTENT_SIZE)
MAX_DEPTH = 40  # raw extents in flight; deeper bought no speed, only memory


@dataclass
class PrepConfig:
    srcdir: Path
    dstdir: str
    jdir: Path
    session_id: str
    drives: list[str]
    drive_size: int | None = None
    yes: bool = False
    blob_type: format.BlobType = format.BlobType.BLOCK
    level: int = 1
    fill: str = "sequential"
    operator_secret: credentials.Secret | None = None
    kdf: luks2.KdfParams = field(default_factory=luks2.KdfParams)
    cpu_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    readers: int = 2
    memory: int = 256 * MiB

    @property
    def depth(self) -> int:
        """Channel depth from the --memory budget (each slot holds up to 1 MiB)."""
        writing = max(1, len(self.drives)) if self.fill == "parallel" else 1
        budget = (self.memory - writing * WRITER_MEMORY - 64 * MiB  # interpreter etc.
                  - HELPERS_MEMORY)
        slots = budget // read.EXTENT_SIZE - self.cpu_threads - self.readers
        return max(2, min(MAX_DEPTH, slots // 2))


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

    def _keyslots(self, password: str) -> list[tuple[bytes, luks2.KdfParams]]:
        slots = [(password.encode(), self.cfg.kdf)]
        if self.cfg.operator_secret is not None:
            slots.append((self.cfg.operator_secret.value, self.cfg.kdf))
        return slots

    def _identity(self, seq: int) -> drives.Identity:
        return drives.Identity(session_id=self.cfg.session_id, job_name="", sequence=seq,
                               dstdir=self.cfg.dstdir, blob_type=self.cfg.blob_type)

    def _format_new(self, path: str, seq: int
                    ) -> tuple[drives.Drive, drives.DriveCipher, journal.Journal]:
        size = self.cfg.drive_size if not Path(path).exists() else None
        drive = drives.prepare_target(path, size=size, staging=self.cfg.srcdir,
                                      confirmed=self.cfg.yes)
        try:
            password = luks2.new_recovery_password()
            volume_uuid = str(uuidlib.uuid4())
            area = drive.size - luks2.DATA_OFFSET
            area -= area % luks2.SECTOR_SIZE
            info = journal.DriveInfo(seq=seq, path=str(Path(path).resolve()), uuid=volume_uuid,
                                     size=drive.size, data_area_size=area, state="formatting")
            session = journal.SessionInfo(
                session_id=self.cfg.session_id, srcdir=str(self.cfg.srcdir),
                dstdir=self.cfg.dstdir, blob_type=int(self.cfg.blob_type),
                level=self.cfg.level, fill=self.cfg.fill)
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
        if not self.queue:
            return None
        item = self.queue.pop(0)
        if isinstance(item, journal.Journal):
            drive, cipher = await trio.to_thread.run_sync(self.reopen, item)
            jrn = item
        else:
            seq, self.next_seq = self.next_seq, self.next_seq + 1  # on the Trio thread
            drive, cipher, jrn = await trio.to_thread.run_sync(self._format_new, item, seq)
            self.journals.append(jrn)
        name = f"drive {jrn.drive.seq}"
        d = self.stats.add_drive(name, jrn.drive.data_area_size, jrn.drive.seq)
        d.state = "open"
        self.stats.current_drive = f"{name} ({jrn.drive.path})"
        return DriveWriter(drive, cipher, jrn, self.cpu, self.stats)


# --------------------------------------------------------------------------
# Stages


async def write_all(rx: trio.MemoryReceiveChannel[pack.Bundle], pool: DrivePool,
                    fill: str, on_full: Callable[[DriveWriter], None]) -> None:
    """Feed the writers; raise OutOfDrives if data is left when every drive is full."""
    spill: deque[pack.PackedExtent] = deque()  # unpacked bundles, shared by the writers
    async with rx:
        if fill == "sequential":
            while (writer := await pool.next_writer()) is not None:
                try:
                    if await writer.run(rx, spill):
                        return
                finally:
                    writer.drive.close()
                on_full(writer)
        else:
            writers: list[DriveWriter] = []

            async def open_one() -> None:
                writer = await pool.next_writer()
                if writer is not None:
                    writers.append(writer)

            async with trio.open_nursery() as formatting:  # every drive at once
                for _ in range(len(pool.queue)):
                    formatting.start_soon(open_one)
            try:
                async with trio.open_nursery() as nursery:
                    for writer in writers:
                        nursery.start_soon(_run_parallel, writer, rx.clone(), spill, on_full)
            finally:
                for writer in writers:
                    writer.drive.close()
        if not spill:
            try:
                await rx.receive()
            except trio.EndOfChannel:
                return  # the last drive filled exactly as the data ended
        raise OutOfDrives("drives full")


async def _run_parallel(writer: DriveWriter, rx: trio.MemoryReceiveChannel[pack.Bundle],
                        spill: deque[pack.PackedExtent],
                        on_full: Callable[[DriveWriter], None]) -> None:
    async with rx:
        if not await writer.run(rx, spill):
            on_full(writer)


async def run_prep(cfg: PrepConfig, session: Session, pool: DrivePool, stats: Stats,
                   on_skip: Callable[[str, str], None],
                   on_changed: Callable[[str, str], None],
                   on_full: Callable[[DriveWriter], None],
                   stop: trio.CancelScope | None = None) -> None:
    """Run the whole pipeline into ``pool``'s drives (the pool keeps drives and passwords).

    Cancelling ``stop`` ends the input side only (Ctrl-C, once): the readers
    close their channels, everything already read is packed, written and
    committed, and the drives are closed cleanly.
    """
    cpu = pool.cpu
    io = trio.CapacityLimiter(cfg.readers)
    depth = cfg.depth
    raw_tx, raw_rx = trio.open_memory_channel[pack.RawExtent](depth)
    # A bundle holds up to ~4 MiB (a worker call's output), a raw extent 1 MiB.
    packed_tx, packed_rx = trio.open_memory_channel[pack.Bundle](max(2, depth // 4))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_source, cfg, session, raw_tx, packed_tx.clone(), io, stats, on_skip,
                           on_changed, stop or trio.CancelScope())
        async with raw_rx, packed_tx:
            for _ in range(cfg.cpu_threads):
                nursery.start_soon(pack.run, raw_rx.clone(), packed_tx.clone(), cpu,
                                   cfg.level, stats)
        nursery.start_soon(write_all, packed_rx, pool, cfg.fill, on_full)


async def _source(cfg: PrepConfig, session: Session, raw_tx: trio.MemorySendChannel,
                  packed_tx: trio.MemorySendChannel, io: trio.CapacityLimiter, stats: Stats,
                  on_skip: Callable[[str, str], None],
                  on_changed: Callable[[str, str], None], stop: trio.CancelScope) -> None:
    """Scan and read, under ``stop``: the part of the pipeline a first Ctrl-C ends."""
    async with raw_tx, packed_tx:  # closed even if ``stop`` was cancelled before run began
        with stop:
            await source.run(str(cfg.srcdir), cfg.level, cfg.readers, session, raw_tx,
                             packed_tx, io, stats, on_skip, on_changed)
