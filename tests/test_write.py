"""The writer's pacing: a drive takes data at the speed it writes it, not at the
speed prep makes it.

Buffered ``pwrite`` returns at memory speed, so a writer that only waited at its
``fdatasync`` took a commit's worth of data however slow its drive was, and in
parallel fill the slowest drive ended up holding as much as the others and
finished last.  Here one drive is modelled as slow (its page cache drains at a
fixed rate) and parallel fill must give it less.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import journal
from pipeline.drive import format
from pipeline.prep import write
from pipeline.prep.run import DrivePool, PrepConfig, run_prep
from pipeline.prep.session import Session
from pipeline.progress import Stats
from pipeline.volume import drives, luks2

from .conftest import FAST_ARGON
from .drivedata import read_tree, restore

MiB = 1 << 20


class SlowDevice:
    """A device behind one drive's page cache that writes ``rate`` bytes a second.

    ``pwrite`` dirties pages; ``write_behind`` queues them on the device;
    ``wait_written`` and ``sync`` wait for the device clock, like the kernel's
    ``sync_file_range`` and ``fdatasync`` do on a real disk.
    """

    def __init__(self, path: str, rate: float) -> None:
        self.path, self.rate = path, rate
        self.busy_until = time.monotonic()
        self.dirty = 0
        self.done_at: dict[int, float] = {}
        self.written = 0

    def _queue(self, n: int) -> float:
        self.busy_until = max(time.monotonic(), self.busy_until) + n / self.rate
        return self.busy_until

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_pwrite, real_sync = drives.Drive.pwrite, drives.Drive.sync
        real_behind, real_wait = drives.Drive.write_behind, drives.Drive.wait_written
        dev = self

        def pwrite(drive: drives.Drive, data: bytes | memoryview, offset: int) -> None:
            real_pwrite(drive, data, offset)
            if str(drive.path) == dev.path and offset >= luks2.DATA_OFFSET:  # not the format
                dev.dirty += len(data)
                dev.written += len(data)

        def write_behind(drive: drives.Drive, offset: int, length: int) -> None:
            real_behind(drive, offset, length)
            if str(drive.path) == dev.path:
                dev.dirty -= length
                dev.done_at[offset] = dev._queue(length)

        def wait_written(drive: drives.Drive, offset: int, length: int) -> None:
            real_wait(drive, offset, length)
            if str(drive.path) == dev.path:
                time.sleep(max(0.0, dev.done_at.pop(offset) - time.monotonic()))

        def sync(drive: drives.Drive) -> None:
            real_sync(drive)
            if str(drive.path) == dev.path:
                until, dev.dirty = dev._queue(dev.dirty), 0
                time.sleep(max(0.0, until - time.monotonic()))

        monkeypatch.setattr(drives.Drive, "pwrite", pwrite)
        monkeypatch.setattr(drives.Drive, "write_behind", write_behind)
        monkeypatch.setattr(drives.Drive, "wait_written", wait_written)
        monkeypatch.setattr(drives.Drive, "sync", sync)


@settings(max_examples=500, deadline=None)
@given(capacity=st.integers(0, 1 << 34), offset=st.integers(4096, 1 << 33),
       seg_records=st.integers(0, 1 << 21), seg_payload=st.integers(0, 8 << 20),
       index_records=st.integers(0, 1 << 30), near=st.integers(-(16 << 20), 16 << 20))
def test_can_take_any_fast_path_agrees(capacity: int, offset: int, seg_records: int,
                                       seg_payload: int, index_records: int, near: int) -> None:
    """The shortcut never says yes where the exact sum says no (or the other way round)."""
    st_ = write.LogSpace(capacity=capacity, offset=offset, seq=0, index_records=index_records,
                           seg_records=seg_records, seg_payload=seg_payload)
    exact = st_._end_with(write._MAX_RECORDS, format.CELL)
    for cap in (capacity, exact + near, exact, exact - 1):
        st_.capacity = cap
        assert st_.can_take_any() == (exact <= cap)


def test_sync_file_range_is_there() -> None:
    """Linux and glibc: without it a slow drive is paced only at commits (this test says so)."""
    assert drives._sync_file_range is not None


def test_write_behind_and_wait_on_an_image_file(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    path.write_bytes(bytes(4 * MiB))
    with drives.open_drive(path, writable=True) as drive:
        data = os.urandom(2 * MiB)
        drive.pwrite(data, MiB)
        drive.write_behind(MiB, len(data))
        drive.wait_written(MiB, len(data))
        drive.sync()
        assert drive.pread(len(data), MiB) == data


def test_parallel_fill_gives_a_slow_drive_less(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Small segments and window, so the test's slow drive writes a few seconds at most.
    monkeypatch.setattr(write, "SEGMENT_PAYLOAD", 256 << 10)
    monkeypatch.setattr(write, "WRITE_BEHIND", 1 * MiB)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(32):  # incompressible: every MiB read is a MiB written
        (src / f"f{i:02}.bin").write_bytes(os.urandom(MiB))
    paths = [str(tmp_path / f"d{k}.img") for k in range(3)]
    slow = SlowDevice(paths[0], rate=1 * MiB)
    slow.patch(monkeypatch)
    cfg = PrepConfig(srcdir=src, dstdir="seed-test/vdir/", jdir=tmp_path / "j",
                     session_id="pace-1", drives=paths, drive_size=64 * MiB, yes=True,
                     fill="parallel", kdf=FAST_ARGON)
    cfg.jdir.mkdir(mode=0o700)
    journals: list[journal.Journal] = []
    stats = Stats()

    async def main() -> None:
        pool = DrivePool(cfg, journals, trio.CapacityLimiter(2), stats)
        await run_prep(cfg, Session(cfg.srcdir, cfg.dstdir, journals), pool, stats,
                       on_skip=lambda *a: None, on_changed=lambda *a: None,
                       on_full=lambda w: None)

    trio.run(main)
    held = {j.drive.path: j.drive.payload_bytes for j in journals}
    passwords = [(j.drive.path, j.recovery_password) for j in journals]
    for j in journals:
        j.close()
    fast = [held[p] for p in paths[1:]]
    assert sum(held.values()) >= 32 * MiB
    # Unpaced, the slow drive took a full share (~1/3) before its first fdatasync.
    assert held[paths[0]] < 0.6 * min(fast), held
    assert restore(passwords) == read_tree(src)
