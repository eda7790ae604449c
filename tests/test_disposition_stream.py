"""A dataset's file attributes read back from the journal a batch of records at a time
(``disposition.with_attrs``, issue 18: memory flat in file count): the same entries as the
closing index built and decoded whole, which it replaced, in a fraction of the memory."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.drive.attrs import BlobAttrs, Disposition
from pipeline.drive.format import SECTOR, Codec, Extent, FileEntry
from pipeline.receive import disposition

N = 30_000


def _journal(tmp_path: Path, n: int) -> journal.Journal:
    """``n`` tiny files in segments of 1,000, two of three with a dataset's attributes, one
    superseded."""
    info = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 40, 1 << 40)
    jrn = journal.Journal.create(tmp_path / "j.journal", info, drive, "pw")
    rng = random.Random(n)
    kinds = [BlobAttrs(1, Disposition.OVERWRITE, (("owner", "ops"),), ()),
             BlobAttrs(2, Disposition.RENAME, (), (("Content-Type", "text/plain"),))]
    offset, seq = SECTOR, 0
    for first in range(1, n + 1, 1000):
        files = [FileEntry(i, f"d{i % 89}/{rng.random()}.txt", f"cont{i % 3}/v/f{i}", 512, i,
                           0o100644, kinds[i % 3] if i % 3 < 2 else None)
                 for i in range(first, min(n + 1, first + 1000))]
        extents = [(Extent(f.file_id, 0, 512, Codec.RAW, 512, rng.randbytes(16), 0),
                    rng.randbytes(512)) for f in files]
        blob, records, encoded = fmt.layout_data_segment(files, extents, seq, offset)
        header = fmt.decode_segment_header(blob, offset, seq)
        jrn.commit([(header, records, encoded)], header.end, seq + 1)
        offset, seq = header.end, seq + 1
    jrn.supersede([3])
    return jrn


def _whole(jrn: journal.Journal, files: dict[int, FileEntry]) -> dict[int, FileEntry]:
    """What with_attrs did before: the closing index built whole, then decoded whole."""
    offset = fmt.trailer_offset(jrn.drive.data_area_size)
    index = fmt.decode_segment(jrn.index_segment(0, offset), offset)
    full = {f.file_id: f for f in index.files}
    return {fid: full.get(fid, f) for fid, f in files.items()}


def _above(call) -> tuple[object, int]:
    """What ``call`` returns, and the most it held at once beyond what it returns."""
    tracemalloc.start()
    try:
        got = call()
        kept, peak = tracemalloc.get_traced_memory()
        return got, peak - kept
    finally:
        tracemalloc.stop()


def test_attrs_from_the_journal_a_batch_at_a_time(tmp_path: Path) -> None:
    jrn = _journal(tmp_path, N)
    try:
        files = {f.file_id: f for f in jrn.files(include_superseded=True)}
        assert all(f.attrs is None for f in files.values())  # the table's columns: no attrs
        got, streamed = _above(lambda: disposition.with_attrs(jrn, files))
        want, whole = _above(lambda: _whole(jrn, files))
        assert got == want and list(got) == list(want)
        assert sum(f.attrs is not None for f in got.values()) == 2 * N // 3 - 1
        assert got[3] is files[3]  # superseded: not in the index, kept as given
        assert got[6].attrs == BlobAttrs(1, Disposition.OVERWRITE, (("owner", "ops"),), ())
        # Beyond the entries returned: a batch of records (~0.6 MiB at 10,000, 30,000 and
        # 100,000 files), where the whole index held every file's and extent's record and
        # the segment's bytes (4.6, 14.0, 47.5 MiB).
        assert streamed < 2 << 20 < 10 << 20 < whole, (streamed, whole)
        assert disposition.with_attrs(jrn, {}) == {}
    finally:
        jrn.close()
