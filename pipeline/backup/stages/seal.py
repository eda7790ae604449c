"""Backup's seal stage: chunks compressed (zstd) and encrypted (AES-GCM) in worker threads.

One task per CPU thread, each taking whatever chunks are already waiting (up to
``SEAL_BYTES``) into one thread call: zstd and AES release the GIL inside one large
call, so the threads run in parallel.
"""

from __future__ import annotations

import trio

from pipeline.backup.crypto import Crypto
from pipeline.backup.stages.messages import Chunk, SealedChunk
from pipeline.progress import Stats

SEAL_BYTES = 4 << 20              # chunks a sealing thread takes at once, when waiting


def seal(crypto: Crypto, batch: list[Chunk], level: int, stats: Stats) -> list[SealedChunk]:
    """In a worker thread: seal every chunk of ``batch`` (its time: ``busy["seal"]``)."""
    with stats.timed("seal"):
        return [SealedChunk(c.kind, c.id, crypto.seal_chunk(c.kind, c.id, c.data, level),
                            len(c.data)) for c in batch]


async def run(rx: trio.MemoryReceiveChannel[list[Chunk]],
              out: trio.MemorySendChannel[list[SealedChunk]], crypto: Crypto, level: int,
              cpu: trio.CapacityLimiter, stats: Stats) -> None:
    """One seal task: batches from ``rx`` sealed to ``out``; closes both at the end."""
    async with rx, out:
        async for batch in rx:
            size = sum(len(c.data) for c in batch)
            while size < SEAL_BYTES:               # whatever else is already waiting
                try:
                    more = rx.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch += more
                size += sum(len(c.data) for c in more)
            sealed = await trio.to_thread.run_sync(seal, crypto, batch, level, stats,
                                                   limiter=cpu)
            stats.bytes_stored += sum(len(s.sealed[0]) + len(s.sealed[1]) for s in sealed)
            await out.send(sealed)
