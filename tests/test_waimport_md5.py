"""A dataset file's Content-MD5 from its parts as import writes them
(``disposition.md5_feed`` / ``properties_of``): in order, it is the MD5 of the blob the
commit makes (zero cells included); any other order, or a part missing here, gives none,
and ``set_attributes`` reads the blob back instead.  Never a wrong digest."""

from __future__ import annotations

import base64
import hashlib
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.drive import format as fmt
from pipeline.drive.attrs import BlobAttrs
from pipeline.receive.commit import FileOnDrive
from pipeline.receive.disposition import md5_feed, properties_of

CELL = fmt.CELL


def entry(size: int, props: tuple = ()) -> fmt.FileEntry:
    return fmt.FileEntry(1, "a/f", "cont/f", size, 0, 0o644,
                         attrs=BlobAttrs(blob_type=1, properties=props))


def cells(size: int, zero: set[int], seed: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The file's bytes and its stored parts (one a cell; zero cells are not parts)."""
    data = bytearray()
    parts = []
    for off in fmt.grid(size):
        n = min(CELL, size - off)
        raw = bytes(n) if off in zero else bytes([1 + (seed + off // CELL) % 250]) * n
        data += raw
        if off not in zero:
            parts.append((off, raw))
    return bytes(data), parts


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@settings(max_examples=60, deadline=None)
@given(ncells=st.integers(0, 4), tail=st.integers(0, CELL - 1), zero_mask=st.integers(0, 15),
       order=st.permutations(range(4)), seed=st.integers(0, 250))
def test_in_order_gives_the_blobs_md5_else_none(ncells: int, tail: int, zero_mask: int,
                                                order: list[int], seed: int) -> None:
    size = ncells * CELL + (tail if ncells < 4 else 0)
    zero = {off for k, off in enumerate(fmt.grid(size)) if zero_mask >> k & 1}
    data, parts = cells(size, zero, seed)
    for shuffled in (False, True):
        fd = FileOnDrive(entry(size))
        fd.zero = frozenset(zero)
        seq = parts if not shuffled else [parts[i] for i in order if i < len(parts)]
        for off, raw in seq:
            md5_feed(fd, off, raw)
        got = dict(properties_of(fd)).get("Content-MD5")
        if seq == parts:
            assert got == md5(data)
        else:
            assert got is None  # read back instead
        assert fd.md5 is None  # released


def test_a_part_missing_or_a_given_md5_or_threads() -> None:
    size = 3 * CELL + 10
    data, parts = cells(size, set(), 7)
    fd = FileOnDrive(entry(size))
    for off, raw in parts[:-1]:  # the last part is on another drive
        md5_feed(fd, off, raw)
    assert "Content-MD5" not in dict(properties_of(fd))
    given = (("Content-MD5", md5(b"from the properties file")),)
    fd = FileOnDrive(entry(size, given))
    for off, raw in parts:
        md5_feed(fd, off, raw)
    assert fd.md5 is None and properties_of(fd) == given
    # Uploader threads racing over one file's parts: a digest, if any, is the right one.
    for _ in range(50):
        fd = FileOnDrive(entry(size))
        threads = [threading.Thread(target=md5_feed, args=(fd, off, raw)) for off, raw in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert dict(properties_of(fd)).get("Content-MD5") in (None, md5(data))
