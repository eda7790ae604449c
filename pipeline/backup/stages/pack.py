"""Backup's pack stage: sealed chunks gathered into packs of ``pack_size`` (16 MiB).

One task, so packs fill one at a time; finishing a pack (its sealed header, its hash)
runs in a worker thread behind the CPU limiter.
"""

from __future__ import annotations

import trio

from pipeline.backup.crypto import Crypto
from pipeline.backup.repo import Pack, PackBuilder
from pipeline.backup.stages.messages import SealedChunk


async def run(rx: trio.MemoryReceiveChannel[list[SealedChunk]],
              out: trio.MemorySendChannel[Pack], crypto: Crypto, pack_size: int,
              cpu: trio.CapacityLimiter) -> None:
    """Sealed chunks from ``rx`` into packs on ``out``, the last one partial; closes both."""
    builder = PackBuilder(pack_size)
    async with rx, out:
        async for batch in rx:
            for s in batch:
                builder.add(s.kind, s.id, s.sealed, s.raw_len)
                if builder.full:
                    await out.send(await trio.to_thread.run_sync(builder.finish, crypto,
                                                                 limiter=cpu))
        if builder.entries:
            await out.send(await trio.to_thread.run_sync(builder.finish, crypto, limiter=cpu))
