"""Reading a prepared drive back: unlock, superblock, trailer + index, segments.

Shared by ``verify`` and the importer.  Synchronous: callers run it in worker
threads.  Reads are large and sequential (several segments per read), and a
damaged segment is reported, never decoded into wrong data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline import drives, format, luks2

READ_CHUNK = 16 << 20  # bytes per read when walking segments


@dataclass
class OpenedDrive:
    drive: drives.Drive
    volume: luks2.Volume
    cipher: drives.DriveCipher
    keyslot: int
    superblock: format.Superblock

    def close(self) -> None:
        self.drive.close()

    def __enter__(self) -> OpenedDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_drive(path: str, secret: bytes, what: str = "recovery password") -> OpenedDrive:
    """Open read-only, unlock with ``secret``, decrypt and check the superblock."""
    drive = drives.open_drive(path)
    try:
        volume = drives.read_volume(drive)
        slot, key = drives.unlock(drive, volume, secret, what)
        cipher = drives.DriveCipher.for_volume(volume, key)
        sb = drives.read_superblock(drive, cipher)
        if sb.volume_uuid != volume.uuid:
            raise format.CorruptRecord(f"{path}: superblock belongs to volume {sb.volume_uuid}, "
                                       f"not {volume.uuid}")
        if sb.data_area_size > cipher.data_area_size(drive.size):
            raise format.CorruptRecord(f"{path}: the drive is smaller than its superblock says "
                                       "(truncated image?)")
        return OpenedDrive(drive, volume, cipher, slot, sb)
    except BaseException:
        drive.close()
        raise


def read_index(od: OpenedDrive) -> tuple[format.Trailer, format.Segment]:
    """The closing index, via the trailer; CorruptRecord if either is missing or damaged."""
    sb = od.superblock
    tr_off = format.trailer_offset(sb.data_area_size)
    trailer = format.decode_trailer(od.cipher.read(od.drive, tr_off, format.SECTOR), sb)
    blob = od.cipher.read(od.drive, trailer.index_offset, trailer.index_length)
    return trailer, format.decode_index(blob, trailer)


def read_segments(od: OpenedDrive, wanted: Iterable[tuple[int, int, int]]
                  ) -> Iterator[tuple[int, format.Segment | None, format.CorruptRecord | None]]:
    """Decode segments given as (seq, offset, length), reading neighbours together.

    Yields (seq, segment, error).  When only the payload is damaged, the
    segment comes with its records (whose checksums held) and the error, so
    each extent's own xxh3-128 can tell which are hit; when the header or
    records are damaged, segment is None.
    """
    batch: list[tuple[int, int, int]] = []

    def flush() -> Iterator[tuple[int, format.Segment | None, format.CorruptRecord | None]]:
        start = batch[0][1]
        end = batch[-1][1] + batch[-1][2]
        data = memoryview(od.cipher.read(od.drive, start, end - start))
        for seq, offset, length in batch:
            blob = data[offset - start:offset - start + length]
            try:
                yield seq, format.decode_segment(blob, offset, seq), None
            except format.CorruptRecord as exc:
                try:
                    salvaged = format.decode_segment(blob, offset, seq, check_payload=False)
                except format.CorruptRecord:
                    salvaged = None
                yield seq, salvaged, exc

    for seq, offset, length in wanted:
        if batch and (offset != batch[-1][1] + batch[-1][2]
                      or offset + length - batch[0][1] > READ_CHUNK):
            yield from flush()
            batch = []
        batch.append((seq, offset, length))
    if batch:
        yield from flush()


def scan_log(od: OpenedDrive) -> tuple[dict[int, format.FileEntry], list[format.Extent]]:
    """Recover the records of a drive that was never closed, by walking its segments.

    Stops at the first block that is not the next segment (the uncommitted
    tail) or at a damaged one; what was read before stands.
    """
    files: dict[int, format.FileEntry] = {}
    extents: list[format.Extent] = []
    decoder = format.SegmentDecoder(scan=True)
    offset, end = format.SECTOR, format.trailer_offset(od.superblock.data_area_size)
    while offset < end and not decoder.ended:
        size = min(READ_CHUNK, end - offset)
        decoder.receive_data(od.cipher.read(od.drive, offset, size))
        offset += size
        if offset >= end:
            decoder.receive_data(b"")
        try:
            while True:
                seg = decoder.next_segment()
                if seg is format.NEED_DATA or seg is format.END:
                    break
                if seg.kind is format.SegmentKind.INDEX:
                    decoder.receive_data(b"")
                    return files, extents
                files.update((f.file_id, f) for f in seg.files)
                extents.extend(seg.extents)
        except format.CorruptRecord:
            break
    return files, extents
