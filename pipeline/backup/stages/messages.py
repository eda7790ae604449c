"""What travels on backup's channels: NamedTuples, one per kind of message.

Work crosses between the Trio thread and worker threads in batches (of nodes, of
chunks): one crossing costs ~100 us, which per small file would cost more than the file.
So a channel carries a batch (a list) of these, never one at a time.  NamedTuples, not
frozen dataclasses: one is made per node and per chunk (a no-change backup of 11,000 files
makes 11,000 ``Walked``), and a tuple is made in a third of a frozen dataclass's time; the
classes themselves cost a seventh at import.
"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.backup import encoding as fmt


class Walked(NamedTuple):
    """A node as the walk found it; ``reuse``: its content is the parent snapshot's;
    ``line``: the parent's entry, when it decodes to exactly this node (then the tree
    stage writes that line instead of encoding the node again)."""

    node: fmt.Node
    reuse: bool
    line: bytes | None = None
    at: fmt.LineAt | None = None    # with ``line``: where it lies in the parent's tree chunks


class NodeBatch(NamedTuple):
    """walk -> read: consecutive nodes in walk order, numbered so the tree can reorder."""

    seq: int
    items: list[Walked]


class ReadBatch(NamedTuple):
    """read -> tree: a walk batch once read, less the files that could not be read;
    ``lines[i]``: the parent's line for ``nodes[i]`` when it still holds, else None."""

    seq: int
    nodes: list[fmt.Node]
    lines: list[bytes | None]


class Chunk(NamedTuple):
    """read/tree -> seal: a chunk the repository lacks (claimed), in plain text."""

    kind: int
    id: bytes
    data: bytes | memoryview


class SealedChunk(NamedTuple):
    """seal -> pack: a chunk compressed and encrypted, as (nonce, ciphertext)."""

    kind: int
    id: bytes
    sealed: tuple[bytes, bytes]
    raw_len: int
