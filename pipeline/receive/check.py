"""Stage: check a window of segments against the journal, in cpu worker threads.

Each window read back is decrypted (XTS) and each of its segments decoded (header,
records and payload checksums), its
extent records are compared with the journal's, and every extent is decompressed
and its xxh3-128 checked: zstd and xxh3 let go of the GIL, so several windows are
checked at once.  What a window finds comes back as a ``Checked``, in a form the
report can merge in any order: each damage carries the place a sequential walk of
the log would have met it, so a file's first damage is the same whatever finishes
first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

from pipeline.drive import codec, format
from pipeline.receive import reader as driveread
from pipeline.volume import drives

Key = tuple[int, int]  # (file id, offset in the file): one extent
_ROW = struct.Struct("<QQQBQ16sQ")  # format.ExtentRow's fields, in its order


def packed(row: format.ExtentRow) -> bytes:
    """An extent row as 65 bytes: what verify holds per extent (a tuple of seven values
    held ~260 B an extent; ``perf.planmem``).  A row no u64 holds packs as b"" (it
    then differs from every journal row)."""
    try:
        return _ROW.pack(*row)
    except struct.error:
        return b""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the journal says a window's segments hold (live files only), each row
    ``packed``: read from the journal a window at a time, beside the drive's bytes, so
    verify holds no row of the segments not being checked (a dict of the whole drive's
    rows held ~1.2 KB a file, 1.2 GB at 1,000,000 files)."""

    extents: dict[Key, bytes]
    by_segment: dict[int, list[Key]]  # segment seq -> its extents, in log order


@dataclass(frozen=True, slots=True)
class Sealed:
    """Neighbouring segments as one pread returned them, still encrypted: the checker
    decrypts them, not the read thread (XTS was a third of the read thread's time, and
    its AES holds the GIL: in the read thread it held up the next read)."""

    cipher: drives.DriveCipher
    start: int  # data-area offset of the read: the first segment's
    data: bytes
    batch: tuple[tuple[int, int, int], ...]  # (seq, offset, length) of each segment

    def open(self) -> tuple[driveread.RawSegment, ...]:
        """The segments' plaintext (``reader.read_batch``'s result for the same read)."""
        plain = memoryview(self.cipher.decrypt(self.data, self.start))
        at = self.start
        return tuple(driveread.RawSegment(seq, offset, plain[offset - at:offset - at + length])
                     for seq, offset, length in self.batch)


@dataclass(frozen=True, slots=True)
class Window:
    """Neighbouring segments read with one pread, and the journal's rows for them: the
    read stage's message.  ``sealed`` when the read went through (decrypted by
    ``check_window``); else ``segments``, read again one by one, damage named."""

    segments: tuple[driveread.RawSegment, ...]
    expected: Expected = Expected({}, {})
    sealed: Sealed | None = None

    def plain(self) -> tuple[driveread.RawSegment, ...]:
        return self.segments if self.sealed is None else self.sealed.open()


@dataclass(frozen=True, slots=True)
class Damage:
    """One extent that does not check."""

    where: tuple[int, int]  # (segment seq, place in it): the order a walk of the log meets it
    file_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Checked:
    """What one window's check found: the check stage's message to the report."""

    extents: int  # extents that checked
    raw_bytes: int  # ... and their bytes
    missing: tuple[Key, ...]  # the journal's extents of the window its segments lack
    damage: tuple[Damage, ...]


def check_window(window: Window, expected: Expected) -> Checked:
    """Decode every segment of ``window`` and check each extent the journal expects there.

    The window is decrypted here (``Window.plain``); extents stay plain rows
    (``format.ExtentRow``) and are checked where they lie in the decrypted window
    (``codec.check``): the GIL-held work per extent is a tuple compare.
    """
    extents = raw_bytes = 0
    seen: set[Key] = set()
    damage: list[Damage] = []
    want_of = expected.extents.get
    zero = format.Codec.ZERO.value
    for raw in window.plain():
        got = driveread.decode_rows(raw)
        seg = got.segment
        if seg is None:  # header or records damaged: all it should hold is lost
            for i, key in enumerate(expected.by_segment.get(got.seq, ())):
                damage.append(Damage((got.seq, i), key[0], str(got.error)))
                seen.add(key)
            continue
        payload, base = seg.payload, seg.header.payload_offset
        for i, row in enumerate(seg.extents):
            fid, offset, raw_len, codec_id, stored_len, digest, location = row
            key = (fid, offset)
            want = want_of(key)
            if want is None:
                continue  # a superseded file's stale extent
            seen.add(key)
            if packed(row) != want:
                damage.append(Damage((got.seq, i), fid,
                                     f"extent at {offset} differs from the journal"))
                continue
            start = location - base
            try:
                codec.check(codec_id, b"" if codec_id == zero else
                            payload[start:start + stored_len], raw_len, digest)
            except format.CorruptRecord as exc:
                damage.append(Damage((got.seq, i), fid, f"extent at {offset}: {exc}"))
                continue
            extents += 1
            raw_bytes += raw_len
    missing = tuple(sorted(k for k in expected.extents if k not in seen)) \
        if len(seen) < len(expected.extents) else ()
    return Checked(extents, raw_bytes, missing, tuple(damage))


async def run(rx: trio.MemoryReceiveChannel[Window], tx: trio.MemorySendChannel[Checked],
              cpu: trio.CapacityLimiter) -> None:
    """One worker: check windows until the channel ends (each a call in a cpu thread)."""
    async with rx, tx:
        async for window in rx:
            await tx.send(await trio.to_thread.run_sync(check_window, window,
                                                        window.expected, limiter=cpu))
