"""Stage: write checked extents into the storage account as parts of their blobs.

Parts are not visible: a blob appears only when ``commit`` makes it whole.  The
uploaders run storage calls in threads under their own limiter (``net``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from pipeline.drive import format
from pipeline.receive.commit import FileOnDrive
from pipeline.receive.extract import Parts
from pipeline.storage.base import Storage


async def run(rx: trio.MemoryReceiveChannel[Parts], store: Storage, container: str,
              blob_type: format.BlobType, on_drive: dict[int, FileOnDrive],
              net: trio.CapacityLimiter, progress: Callable[[int], None]) -> None:
    """One uploader: take batches until the channel ends; record each cell delivered."""

    def write_parts(parts: Parts) -> None:
        for e, raw in parts.extents:
            f = on_drive[e.file_id].entry
            store.write_part(container, f.blob, blob_type, f.size, e.offset, raw)

    async with rx:
        async for parts in rx:
            await trio.to_thread.run_sync(write_parts, parts, limiter=net)
            size = 0
            for e, raw in parts.extents:
                on_drive[e.file_id].cells.add(e.offset)
                size += len(raw)
            progress(size)
