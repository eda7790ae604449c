"""Stage: write checked extents into the storage account as parts of their blobs.

Parts are not visible: a blob appears only when ``commit`` makes it whole.  A file
whose every cell is on this drive is committed here, as soon as its last part is
written (``commit.whole_here``): a crash before the drive's marker leaves it whole,
and importing the drive again writes the same bytes.  Files that continue on other
drives wait for ``commit.commit_ready``.  The uploaders run storage calls in threads
under their own limiter (``net``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from pipeline.drive import format
from pipeline.receive import disposition
from pipeline.receive.commit import FileOnDrive, commit_files, copy_of, whole_here
from pipeline.receive.extract import Parts
from pipeline.storage.base import Storage


async def run(rx: trio.MemoryReceiveChannel[Parts], store: Storage, container: str,
              blob_type: format.BlobType, on_drive: dict[int, FileOnDrive],
              net: trio.CapacityLimiter, progress: Callable[[int], None], session_id: str
              ) -> None:
    """One uploader: take batches until the channel ends; record each cell delivered.

    A file whose one part is the whole file goes in with the store's ``write_whole``
    where it has one (a part and its commit in one call: no partial blob), else as a
    part, committed once whole like any other.  Parts name their copy (``copy_of``).
    """
    whole = getattr(store, "write_whole", None)
    own = getattr(store, "write_own_part", None)  # a file whole on the drive: see local.py

    def write_parts(parts: Parts) -> int:
        """Write the batch, record its cells, commit the files it completes; one storage
        thread call a batch (a second one for the commits cost a hand-off per batch).

        Uploaders run this in several threads at once: a cell is recorded only once
        written, and each uploader checks its file after recording, so the last one
        always sees it whole; two seeing it whole commit it twice, which is harmless
        (a commit is idempotent).  Set and dict operations are atomic under the GIL.
        """
        size = 0
        for e, raw in parts.extents:
            fd = on_drive[e.file_id]
            f = fd.entry
            c, b, t = disposition.where(f, container, blob_type)  # a dataset's file: its own
            if (whole is not None and e.offset == 0 and len(raw) == f.size
                    and not (fd.cells or fd.zero or fd.bad or fd.committed)):
                whole(c, b, t, raw)  # the whole file in this one part: written and committed
                fd.cells.add(e.offset)
                fd.committed = True
                size += len(raw)
                if f.attrs is not None:
                    disposition.md5_feed(fd, e.offset, raw)
                    store.set_attributes(c, b, t, f.attrs.metadata, disposition.properties_of(fd))
                continue
            if own is not None and on_drive.all_here(fd):  # type: ignore[attr-defined]
                own(c, b, t, f.size, e.offset, raw)
            else:
                store.write_part(c, b, t, f.size, e.offset, raw,
                                 copy=copy_of(session_id, e.file_id))
            if f.attrs is not None:
                disposition.md5_feed(fd, e.offset, raw)
            fd.cells.add(e.offset)
            size += len(raw)
            if whole_here(fd):
                fd.committed = True
                commit_files(store, container, blob_type, [fd], session_id)
        return size

    async with rx:
        async for parts in rx:
            progress(await trio.to_thread.run_sync(write_parts, parts, limiter=net))
