"""run_restore(): a snapshot back into a directory, byte for byte; the wiring of its stages.

This module opens the nursery and the channel; the stages are modules of
``backup/stages/`` (``plan``, ``layout``, ``fetch``), and the state they share, the
files and their progress, is one ``files.Files``::

    tree (thread) -> plan: the needed chunks grouped by pack into ranges of up to 16 MiB
    -> skeleton: marker, dirs, files of several chunks at full size (holes) under
    temporary names -> ranges -> fetch x cpu (thread: one read per range, open + check
    each chunk, pwrite it wherever it belongs; a file's last chunk sets its owner, xattrs,
    mode and times and renames it into place) -> fifos, device nodes, hard links,
    symlinks, marker removed, each directory's owner, xattrs, mode and times

One storage read per range, not per chunk, keeps a restore from Azure fast, and a
chunk used by several files is fetched once.  Zero runs are never written, so
sparse files come back sparse.

Each file is written under a temporary name in its own directory
(``.pipeline-restore-<snapshot>-<n>``) and renamed to its name only once every
chunk of it is written and checked and its mode and mtime are set: whatever stops
a restore, no file under its final name is short.  A damaged or missing chunk
fails only the files that hold it; the restore carries on and then raises
``PartialRestore`` naming them (exit 4).  Until the end TARGET holds a marker
(``.pipeline-restore-unfinished``, naming the snapshot), so that the same command
run again (after a full disk or a kill) accepts that target, clears the temporary
files and writes every file again.  Restoring in place rather than into a sibling
directory renamed at the end also lets TARGET be a mount point.

Owners are restored as root only (by name where this machine has the name, else by
number); as another user the files are the user's, silently, as with tar.  What
cannot be set (a security.* attribute, a device node as a user, an attribute the
target filesystem refuses) is a warning naming the entry, through ``warn``: the
command's exit code 1, done with warnings.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository, PartialRestore
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.backup.shape import TreeShape
from pipeline.backup.stages import fetch, layout
from pipeline.backup.stages.files import MARKER, TEMP_NAME, Files, space
from pipeline.backup.stages.plan import Range, plan
from pipeline.backup.walk import Warn
from pipeline.errors import BadInput, is_no_space
from pipeline.progress import Stats

__all__ = ["MARKER", "TEMP_NAME", "check_target", "run_restore"]


def check_target(target: Path) -> Path:
    """An absent or empty directory (or one an unfinished restore left, see the module
    docstring) whose parent exists; refused before anything is read."""
    target = Path(os.path.abspath(target))
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise BadInput(f"--target {target} exists and is not a directory; give a new or "
                           "empty directory")
        if any(target.iterdir()) and not (target / MARKER).is_file():
            raise BadInput(f"--target {target} is not empty; give a new or empty directory "
                           "(restore never overwrites files)")
    if not target.parent.is_dir():
        raise BadInput(f"--target {target}: {target.parent} does not exist; create it first")
    return target


def check_shape(nodes: list[fmt.Node], ref: SnapshotRef) -> None:
    """Refuse, before anything is written, a tree a restore would lay out through a
    symlink or over a name given twice (``shape``): it could write outside TARGET."""
    shape = TreeShape()
    for node in nodes:
        why = shape.add(node)
        if why is not None:
            raise CorruptRepository(f"snapshot {ref.hex[:16]}: its file tree is malformed: "
                                    f"{why}; nothing restored (run `pipeline check`)")


def _claim(target: Path, ref: SnapshotRef) -> tuple[int, bool]:
    """Create TARGET if absent and mark it as an unfinished restore of ``ref`` (locked
    while this restore runs); returns the marker's fd and whether an earlier restore of
    the same snapshot left it."""
    with space(target):
        try:
            target.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if is_no_space(exc):
                raise
            raise BadInput(f"cannot create --target {target}: {exc.strerror}; make "
                           f"{target.parent} writable or give another --target") from None
        path = target / MARKER
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if is_no_space(exc):
                raise
            raise BadInput(f"cannot write into --target {target}: {exc.strerror}; make it "
                           "writable or give another --target") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadInput(f"another restore is writing into {target}; wait for it or "
                               "give another --target") from None
            old = os.pread(fd, 4096, 0)
            resuming = bool(old)
            if old:
                try:
                    had = str(json.loads(old)["snapshot"])
                except (ValueError, KeyError, TypeError):
                    had = "?"
                if had != ref.hex:
                    raise BadInput(f"--target {target} holds an unfinished restore of snapshot "
                                   f"{had}; run that restore again (--snapshot {had}) or give "
                                   "an empty directory")
            else:
                os.pwrite(fd, json.dumps({"snapshot": ref.hex}).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
    return fd, resuming


async def run_restore(repo: Repository, ref: SnapshotRef, target: Path, stats: Stats,
                      threads: int, warn: Warn | None = None) -> fmt.Manifest:
    """Restore ``ref`` into ``target``; see the module docstring.  Raises PartialRestore
    (after restoring every other file) when some files could not be restored; ``warn``
    gets each warning (on the Trio thread) as it comes."""
    target = check_target(target)
    manifest = await trio.to_thread.run_sync(repo.manifest, ref)
    nodes = await trio.to_thread.run_sync(lambda: list(repo.tree(manifest)))
    check_shape(nodes, ref)
    files = Files(target, ref, nodes, warn)
    stats.files_total = len(files.files) + len(files.links)
    stats.bytes_total = sum(f.node.size for f in files.files)
    ranges = await trio.to_thread.run_sync(plan, repo, files)
    fd, resuming = await trio.to_thread.run_sync(_claim, target, ref)
    try:
        await trio.to_thread.run_sync(layout.skeleton, files, resuming)
        zero = sum(length for f in files.files for cid, length in f.node.content if cid is None)
        stats.zero_bytes = zero
        stats.bytes_read = zero      # zero runs are restored by the skeleton's holes
        stats.files_done = files.files_done
        cpu = trio.CapacityLimiter(threads)
        tx, rx = trio.open_memory_channel[Range](threads)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_feed, ranges, tx)
            async with rx:
                for _ in range(threads):
                    nursery.start_soon(fetch.run, rx.clone(), repo, files, cpu, stats)
        await trio.to_thread.run_sync(layout.finish, files)
    except BaseException:
        files.abandon()
        raise
    finally:
        os.close(fd)
    stats.files_done = files.files_done
    failed = files.failed()
    if failed:
        raise PartialRestore(
            f"{len(failed)} of {stats.files_total} files could not be restored from snapshot "
            f"{ref.hex[:16]} (damaged or missing chunks; each is named above); the other "
            f"{files.files_done} are in {target}", failed, files.files_done)
    return manifest


async def _feed(ranges: list[Range], tx: trio.MemorySendChannel[Range]) -> None:
    """The plan's ranges into the channel, in order; closes ``tx``."""
    async with tx:
        for rng in ranges:
            await tx.send(rng)
