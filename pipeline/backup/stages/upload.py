"""Backup's upload stage: packs to the backend, then the index files naming them.

Several tasks (``uploaders``) share one ``Upload``, which owns the count of packs
stored.  A pack enters the index only once it is stored, and an index file is written
once ``repo.packed`` says one is due, so that no index names a pack the backend lacks.
"""

from __future__ import annotations

import trio

from pipeline.backup.repo import Pack, Repository
from pipeline.progress import Stats


class Upload:
    """The upload tasks' shared state: the packs stored so far."""

    def __init__(self, repo: Repository, net: trio.CapacityLimiter, stats: Stats) -> None:
        self.repo, self.net, self.stats = repo, net, stats
        self.packs = 0

    def _put(self, pack: Pack) -> None:
        """In a worker thread: store one pack (its time: ``busy["upload"]``)."""
        with self.stats.timed("upload"):
            self.repo.backend.put(pack.name, pack.parts)   # as parts: never joined

    async def run(self, rx: trio.MemoryReceiveChannel[Pack]) -> None:
        """One upload task: each pack from ``rx`` stored, then indexed; closes ``rx``."""
        repo = self.repo
        async with rx:
            async for pack in rx:
                await trio.to_thread.run_sync(self._put, pack, limiter=self.net)
                self.stats.bytes_written += pack.size
                self.packs += 1
                batch = repo.packed(pack)      # indexed only once the pack is stored
                if batch:
                    sent = await trio.to_thread.run_sync(repo.write_index, batch,
                                                         limiter=self.net)
                    self.stats.bytes_written += sent  # after the await: other uploaders add
