"""Backup's tree stage: read batches back in walk order, into tree chunks (JSON Lines).

The readers finish batches out of order; ``Tree`` keeps those that came early (at most
``window`` of them, the walk's ``ahead`` semaphore, released here) and encodes every
node in walk order, so that a snapshot's tree is the same whatever the timing.  It owns
the snapshot's totals and the list of tree chunk ids the manifest names.  While nothing
needs reading, ``archive.walk_inline`` feeds it directly (``add``, ``keep``), before any
Trio run; ``run`` goes on from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import Repository
from pipeline.backup.stages.messages import Chunk, ReadBatch
from pipeline.progress import Stats

if TYPE_CHECKING:       # the inline walk (archive.walk_inline) uses Tree before any Trio run
    import trio

    from pipeline.backup.cache import TreeCache


@dataclass(slots=True)
class Kept:
    """A parent's tree chunk kept whole: its id, lines and their nodes."""

    cid: bytes
    lines: list[bytes]
    nodes: list[fmt.Node]


Cut = bytes | Kept
"""A finished tree chunk: its bytes, or a parent's kept whole."""


class Tree:
    """The snapshot's tree as it is cut, and its totals (files, dirs, bytes)."""

    def __init__(self, repo: Repository, stats: Stats, cache: TreeCache | None = None) -> None:
        self.repo, self.stats, self.cache = repo, stats, cache
        self._cut: list[fmt.Node] = []      # with a cache: the nodes of lines not named yet
        self.ids: list[bytes] = []          # tree chunks, in order: the manifest's tree
        self.new: list[Chunk] = []          # new tree chunks cut inline, not sent yet
        self.new_bytes = 0
        self.cutter = fmt.TreeCutter()
        self._held: Kept | None = None      # a parent's chunk coming back line by line
        self.files = 0
        self.dirs = 0
        self.bytes = 0

    def add(self, node: fmt.Node, line: bytes | None, at: fmt.LineAt | None = None
            ) -> Sequence[Cut]:
        """Count ``node`` and cut its line (the parent's as is, else encoded): the tree
        chunks finished, usually none.

        A parent's chunk whose lines all come back, in order, from a cut on (``at``: the
        inline walk's) is the chunk this cutter would cut, by the same rule from the same
        state: it is taken whole (``Kept``), its lines neither hashed nor joined, its id
        the parent's (checked when read), not computed again.  Held lines that turn out
        otherwise go through the cutter as they came."""
        self._count(node)
        if line is not None and at is not None:
            cid, i, n = at
            held = self._held
            if held is not None and held.cid == cid and len(held.lines) == i:
                held.lines.append(line)
                held.nodes.append(node)
            elif held is None and i == 0 and self.cutter.empty:
                held = self._held = Kept(cid, [line], [node])
            else:
                return self._release() + self._add(node, line)
            if len(held.lines) < n:
                return ()
            if fmt.cuts_after(line):
                self._held = None
                return (held,)
            return self._release()
        if self._held is not None:
            return self._release() + self._add(node, line)
        return self._add(node, line)

    def _add(self, node: fmt.Node, line: bytes | None) -> tuple[Cut, ...]:
        if self.cache is not None:
            self._cut.append(node)
        chunk = self.cutter.add(node.encode() if line is None else line)
        return () if chunk is None else (chunk,)

    def _release(self) -> tuple[Cut, ...]:
        """The held lines through the cutter (a parent's chunk cut as this tree cuts
        yields none)."""
        held, self._held = self._held, None
        if held is None:
            return ()
        return tuple(c for node, line in zip(held.nodes, held.lines, strict=True)
                     for c in self._add(node, line))

    def finish(self) -> Sequence[Cut]:
        """The chunks left at the end of the walk."""
        cuts = self._release()
        last = self.cutter.finish()
        return cuts if last is None else (*cuts, last)

    def name(self, chunk: Cut) -> Chunk | None:
        """Name a finished chunk in the manifest's list: the Chunk to store when new."""
        if isinstance(chunk, Kept):
            cid = chunk.cid
            self.ids.append(cid)
            if self.cache is not None and self._to_cache(cid):
                self.cache.put(cid, b"".join(chunk.lines), chunk.nodes, listed=True)
            if not self.repo.claim(cid):       # in the index, as a parent's chunk is
                return None
            return Chunk(fmt.KIND_TREE, cid, b"".join(chunk.lines))
        cid = self.repo.crypto.chunk_id(chunk)
        self.ids.append(cid)
        if self.cache is not None:        # the next backup's parent: cached as written
            n = chunk.count(b"\n")
            nodes, self._cut = self._cut[:n], self._cut[n:]
            if self._to_cache(cid):
                self.cache.put(cid, chunk, nodes, listed=True)
        return Chunk(fmt.KIND_TREE, cid, chunk) if self.repo.claim(cid) else None

    def _to_cache(self, cid: bytes) -> bool:
        """Whether to write a chunk this run walked to the cache: not there yet, or there
        without this user's listing of its xattrs, which this run's walk made (each entry
        listed, or taken unlisted from a chunk listed so: ``walk.matched``)."""
        cache = self.cache
        assert cache is not None
        return cid not in cache.known or (cid not in cache.listed
                                          and not cache.xattrs_failed)

    def keep(self, chunks: Sequence[Cut]) -> None:
        """Inline (no channel yet): a new chunk waits in ``new`` for ``run`` to send it."""
        for chunk in chunks:
            new = self.name(chunk)
            if new is not None:
                self.new.append(new)
                self.new_bytes += len(new.data)

    async def run(self, rx: trio.MemoryReceiveChannel[ReadBatch],
                  out: trio.MemorySendChannel[list[Chunk]], ahead: trio.Semaphore) -> None:
        """Every batch on ``rx`` into tree chunks, the new ones to ``out`` (first those
        cut inline); closes both.  ``ahead``: released for each batch taken."""
        waiting: dict[int, ReadBatch] = {}
        next_seq = 0
        async with rx, out:
            if self.new:
                new, self.new = self.new, []
                await out.send(new)
            async for batch in rx:
                waiting[batch.seq] = batch
                while next_seq in waiting:           # the tree keeps walk order
                    ready = waiting.pop(next_seq)
                    next_seq += 1
                    ahead.release()
                    with self.stats.timed("tree"):     # encoding, not the waits to send
                        cut = [c for n, line in zip(ready.nodes, ready.lines, strict=True)
                               for c in self.add(n, line)]   # as its parent's: its line
                    for chunk in cut:
                        await self._emit(chunk, out)
            for chunk in self.finish():
                await self._emit(chunk, out)
        if self.cache is not None and self.cache.written:
            self.cache.clean()

    def _count(self, n: fmt.Node) -> None:
        if n.type == "file":
            self.files += 1
            self.bytes += n.size
        elif n.type == "dir" and n.path != fmt.ROOT:
            self.dirs += 1

    async def _emit(self, chunk: Cut,
                    out: trio.MemorySendChannel[list[Chunk]]) -> None:
        new = self.name(chunk)
        if new is not None:
            await out.send([new])
