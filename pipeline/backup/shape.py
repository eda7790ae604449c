"""TreeShape: is a snapshot's file tree one a restore can lay out inside its target?

A backup writes the tree in walk order: the source directory '.' first, then every
entry depth first, names sorted by bytes, each under a directory entry written before
it.  A tree that is not so (a repository written by someone holding the key, or a bug)
could make restore write outside --target: an entry under a symlink entry (``a`` a
symlink to /etc, then ``a/x``) is created through that symlink, and a name given twice
(a directory, then a symlink of the same name) swaps what lies there.  ``restore``
refuses such a tree before writing anything; ``check`` names the snapshot.

Streaming and small: only the chain of directories above the current entry is kept
(the tree is in order, so a name given twice is one not after its predecessor).

``renamed``: a snapshot file's name holds its time, unsealed, so that names sort without
the key; anyone who can write to the storage could copy an old snapshot under a newer
name and have "the latest" restore old data.  The sealed manifest holds the same time.
"""

from __future__ import annotations

from datetime import datetime

from pipeline.backup import encoding as fmt
from pipeline.backup.repo import SnapshotRef


def renamed(ref: SnapshotRef, manifest: fmt.Manifest) -> str | None:
    """Why the file of ``ref`` is not the snapshot its name says, or None."""
    if not manifest.time:            # written without one: nothing to compare
        return None
    try:
        taken = datetime.fromisoformat(manifest.time)
    except ValueError:
        return f"its time {manifest.time[:40]!r} is not a time"
    if taken.tzinfo is not None and taken == ref.time:
        return None
    return (f"its name says {ref.time.isoformat()} but it was taken at {manifest.time[:40]} "
            f"(an older snapshot copied under a newer name: remove {ref.name})")


class TreeShape:
    """Feed every entry in tree order to ``add``: the first problem, or None."""

    def __init__(self) -> None:
        self._entries = 0
        self._last: tuple[bytes, ...] | None = None
        self._dirs: list[tuple[bytes, ...]] = []     # directories above the last entry

    def add(self, node: fmt.Node) -> str | None:
        """None while the tree is well formed so far, else why not (naming the entry)."""
        self._entries += 1
        if node.path == fmt.ROOT:
            if self._entries != 1:
                return "'.' (the source directory) is not the tree's first entry"
            return None
        key = fmt.path_key(node.path)
        if self._last is not None and key <= self._last:
            return (f"entry {node.path[:200]!r} is named twice or out of order (after "
                    f"{b'/'.join(self._last).decode('utf-8', 'replace')[:200]!r})")
        self._last = key
        parent = key[:-1]
        while self._dirs and self._dirs[-1] != parent:
            self._dirs.pop()
        if parent and not self._dirs:
            return (f"entry {node.path[:200]!r} lies under "
                    f"{b'/'.join(parent).decode('utf-8', 'replace')[:200]!r}, which is not a "
                    "directory of the snapshot (a symlink or file there would lead outside "
                    "--target)")
        if node.type == "dir":
            self._dirs.append(key)
        return None
