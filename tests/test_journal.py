"""The journal's closing index: streamed out of SQLite, the same as encoding it whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.drive.format import SECTOR, Codec, Extent, FileEntry


def test_index_segment_streams_what_encode_index_would(tmp_path: Path) -> None:
    session = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 30, 1 << 30)
    jrn = journal.Journal.create(tmp_path / "j.journal", session, drive, "pw")
    names = ["a.txt", "ünïcödé/ファイル.bin", "emoji-\U0001f4be.log", "x" * 300]
    files = [FileEntry(i, name, "v/" + name, 5000, 1_700_000_000 + i, 0o100644)
             for i, name in enumerate(names * 40, 1)]
    extents: list[tuple[Extent, bytes]] = []
    for f in files:
        extents.append((Extent(f.file_id, 0, 4096, Codec.ZSTD, 50,
                               f.file_id.to_bytes(16, "big"), 0), bytes([f.file_id % 256]) * 50))
        extents.append((Extent(f.file_id, 4096, 904, Codec.ZERO, 0, bytes(16), 0), b""))
    blob, records, encoded = fmt.layout_data_segment(files, extents, 0, SECTOR)
    header = fmt.decode_segment_header(blob, SECTOR, 0)
    end = header.end
    jrn.commit([(header, records, encoded)], end, 1)
    jrn.supersede([3])  # a superseded file and its extents are not in the index

    blob = jrn.index_segment(1, end)
    listed = [*jrn.files(), *jrn.extents()]
    assert all(r.file_id != 3 for r in listed)
    assert list(fmt.decode_segment(blob, end).records) == listed
    assert fmt.decode_segment(blob, end) == fmt.decode_segment(
        fmt.encode_index(listed, 1, end), end)
    jrn.close()


def test_commit_inserts_any_number_of_rows(tmp_path: Path) -> None:
    """Rows go in several to a statement; counts around the statement size all land."""
    session = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 30, 1 << 30)
    jrn = journal.Journal.create(tmp_path / "j.journal", session, drive, "pw")
    offset, seq, next_id = SECTOR, 0, 1
    for n in (0, 1, 63, 64, 65, 130):
        files = [FileEntry(i, f"f{i}", f"v/f{i}", 10, i, 0o100644)
                 for i in range(next_id, next_id + n)]
        extents = [(Extent(f.file_id, 0, 10, Codec.RAW, 10, bytes(16), 0), b"x" * 10)
                   for f in files]
        blob, records, encoded = fmt.layout_data_segment(files, extents, seq, offset)
        header = fmt.decode_segment_header(blob, offset, seq)
        jrn.commit([(header, records, encoded)], header.end, seq + 1)
        offset, seq, next_id = header.end, seq + 1, next_id + n
        assert [f.file_id for f in jrn.files()] == list(range(1, next_id))
        assert len(list(jrn.extents())) == next_id - 1
        assert [s[0] for s in jrn.segments()] == list(range(seq))
    jrn.close()


def _one_segment(jrn: journal.Journal, n: int = 5) -> int:
    files = [FileEntry(i, f"d/f{i}", f"v/d/f{i}", 100, i, 0o100644) for i in range(1, n + 1)]
    extents = [(Extent(f.file_id, 0, 100, Codec.RAW, 100, bytes(16), 0), b"y" * 100)
               for f in files]
    blob, records, encoded = fmt.layout_data_segment(files, extents, 0, SECTOR)
    assert b"".join(encoded) == fmt.encode_records(records)  # one encoding per record
    header = fmt.decode_segment_header(blob, SECTOR, 0)
    jrn.commit([(header, records, encoded)], header.end, 1)
    return header.end


def test_schema_1_journal_is_migrated_on_open(tmp_path: Path) -> None:
    """A journal written before rows kept their encodings opens, and lists the same index."""
    session = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 30, 1 << 30)
    path = tmp_path / "j.journal"
    jrn = journal.Journal.create(path, session, drive, "pw")
    end = _one_segment(jrn)
    want = jrn.index_segment(1, end)
    jrn.close()
    db = sqlite3.connect(path)  # back to schema 1: no rec columns
    db.execute("ALTER TABLE files DROP COLUMN rec")
    db.execute("ALTER TABLE extents DROP COLUMN rec")
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.commit()
    db.close()
    with journal.Journal.open(path) as again:
        assert again.index_segment(1, end) == want
    with journal.Journal.open(path) as third:  # migrated once, for good
        assert third.index_segment(1, end) == want


def test_index_refuses_rows_that_break_its_rules(tmp_path: Path) -> None:
    session = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 30, 1 << 30)
    jrn = journal.Journal.create(tmp_path / "j.journal", session, drive, "pw")
    end = _one_segment(jrn)
    with pytest.raises(ValueError, match="segments before the index"):
        jrn.index_segment(1, SECTOR + fmt.HEADER_SIZE + 50)  # an index over stored data
    jrn._db.execute("UPDATE files SET size=50 WHERE file_id=2")
    with pytest.raises(ValueError, match="file 2 .* does not fit its file"):
        jrn.index_segment(1, end)
    jrn._db.execute("UPDATE files SET size=100 WHERE file_id=2")
    jrn._db.execute("DELETE FROM files WHERE file_id=3")
    with pytest.raises(ValueError, match="extent of file 3"):
        jrn.index_segment(1, end)
    jrn.close()


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 127, 128, 200, 1000])
def test_insert_in_few_distinct_statements(n: int) -> None:
    """Every row lands once, in order, through at most seven statement shapes (64, 32, ...
    1 rows): one per possible remainder would bloat sqlite3's statement cache."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b)")
    shapes: set[str] = set()
    db.set_trace_callback(lambda sql: shapes.add(sql.split(" VALUES ")[1].count("(")))
    rows = [(i, f"r{i}") for i in range(n)]
    journal._insert(db, "INSERT INTO t VALUES", rows)
    assert db.execute("SELECT a, b FROM t ORDER BY rowid").fetchall() == rows
    assert shapes <= {64, 32, 16, 8, 4, 2, 1}
