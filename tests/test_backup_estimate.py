"""backup --offline's estimate: the staging location's space is checked before anything is
written, and file content is sampled only when the answer depends on it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pipeline.backup import offline
from pipeline.errors import BadInput

MiB = 1 << 20


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """8 MiB of text that zstd shrinks several times, 1 MiB that it cannot, and a sparse
    file whose hole is not data."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"backup", b"drive", b"seed"]
    r = random.Random(7)
    for i in range(8):
        (src / "d" / f"text{i}").write_bytes(b" ".join(r.choice(words) for _ in range(190_000))
                                             [:MiB])
    (src / "noise").write_bytes(r.randbytes(MiB))
    with open(src / "sparse", "wb") as f:
        f.truncate(64 * MiB)
        f.write(b"x" * 4096)
    return src


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every os.pread's length, as the estimate reads file content with it."""
    seen: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        seen.append(n)
        return real(fd, n, off)

    monkeypatch.setattr(os, "pread", counting)
    return seen


def test_room_for_the_data_raw_reads_no_content(tree: Path, reads: list[int]) -> None:
    est = offline.estimate(tree, free=1 << 40)
    assert (est.files, est.bytes) == (10, 9 * MiB + 64 * MiB)
    assert est.data_bytes < 9 * MiB + 64 * MiB          # the hole is not data
    assert (est.sampled, est.ratio) == (0, 1.0)
    assert reads == []
    assert est.needed >= est.data_bytes                  # stored raw at worst


def test_near_the_edge_the_sample_decides(tree: Path, reads: list[int]) -> None:
    raw = offline.estimate(tree, free=1 << 40)
    est = offline.estimate(tree, free=raw.needed - 1)   # raw would not fit: sample
    assert est.sampled > 0 and sum(reads) == est.sampled
    assert est.ratio < 0.5                               # 8 of 9 MiB is text
    assert est.needed < raw.needed
    assert (est.files, est.bytes, est.data_bytes) == (raw.files, raw.bytes, raw.data_bytes)
    assert offline.estimate(tree) == est                 # no free given: always sampled


def test_check_space_refuses_what_the_sample_says_will_not_fit(tree: Path, tmp_path: Path
                                                                ) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    free = offline.free_bytes(staging)
    est = offline.estimate(tree, free=free)
    offline.check_space(staging, est)                    # fits: no error
    big = offline.Estimate(est.files, est.bytes, est.data_bytes, MiB, 0.5, free + 1)
    with pytest.raises(BadInput, match=r"needs about .* compressing to 50% in a sample"):
        offline.check_space(staging, big)


def test_a_file_swapped_for_a_fifo_does_not_block(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed as a regular file with holes, a FIFO by the time it is opened (for its holes,
    then for the sample): a blocking open would wait for a writer forever.  The thread is
    only a guard against that hang; no timing is checked."""
    import threading
    from types import SimpleNamespace

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sparse = SimpleNamespace(st_size=1 << 20, st_blocks=8)   # 4 KiB allocated of 1 MiB
    monkeypatch.setattr(offline, "_regular_files", lambda top: iter([(fifo, sparse)]))
    got: list[offline.Estimate] = []
    t = threading.Thread(target=lambda: got.append(offline.estimate(tmp_path)), daemon=True)
    t.start()
    t.join(60)
    assert len(got) == 1 and got[0].files == 1 and got[0].sampled == 0


def test_a_device_swapped_in_is_never_opened(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed as a regular file with holes, a character device (mknod as root) by the time
    it is opened for its holes and for the sample: neither opens the device (inotify's
    IN_OPEN on the node, checked to work first by an open of our own)."""
    import stat
    from types import SimpleNamespace

    from tests.test_backup_open_regular import _Opens

    assert os.geteuid() == 0, "this test needs root (mknod a character device)"
    dev = tmp_path / "dev"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))     # /dev/null's numbers
    sparse = SimpleNamespace(st_size=1 << 20, st_blocks=8)
    monkeypatch.setattr(offline, "_regular_files", lambda top: iter([(dev, sparse)]))
    opens = _Opens(dev)
    try:
        os.close(os.open(dev, os.O_RDONLY))
        assert opens.count() == 1
        est = offline.estimate(tmp_path, free=0)              # free=0: the sample is taken
        assert (est.files, est.sampled) == (1, 0)
        assert opens.count() == 0
    finally:
        opens.close()
