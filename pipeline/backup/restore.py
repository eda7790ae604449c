"""run_restore(): a snapshot back into a directory, byte for byte; the wiring of its stages.

This module claims TARGET (opened once, O_DIRECTORY|O_NOFOLLOW) and opens the nursery
and the channel; the plan is ``backup/stages/plan``, the skeleton, fetch and finish are
``backup/beneath`` (every write relative to its directory's fd, so that whoever can
write TARGET's parent cannot swap a directory for a symlink mid-restore and have root's
files written where it points), and the state they share, the files and their
progress, is one ``beneath.AtFiles`` (a ``files.Files``)::

    tree (thread) -> plan: the needed chunks grouped by pack into ranges of up to 16 MiB
    -> skeleton: marker, dirs, files of several chunks at full size (holes) under
    temporary names -> ranges -> fetch x cpu (thread: one read per range, open + check
    each chunk, pwrite it wherever it belongs; a file's last chunk sets its owner, xattrs,
    mode and times and renames it into place) -> fifos, device nodes, hard links,
    symlinks, marker says "finishing", each directory's owner, xattrs, mode and times
    (deepest first), marker removed, TARGET's own

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

The directories' owners are set last, with the marker still there: before the first
one the marker records ``"phase": "finishing"`` (fsynced).  A run killed then leaves
directories already of their snapshot owners; the same command accepts them when the
marker says so (``check_resumed``) and makes them the restore's again (0700, no default
ACL) before writing the files again.  That is safe because TARGET itself stays 0700 and
the restoring user's (``_own``) until after the marker is removed: nobody else could
enter the tree while its directories had other owners.  The marker is removed before
TARGET's own metadata is set (so that the unlink does not move TARGET's mtime): a kill
in the microseconds between the two leaves every entry restored but TARGET's own mode,
owner and times (still 0700, the restoring user's), and the same command then refuses
TARGET as not empty.  A marker without a phase (an older one) resumes as before: a
directory of another owner there is refused.

Owners are restored as root only (by name where this machine has the name, else by
number); as another user the files are the user's, silently, as with tar.  What
cannot be set (a security.* attribute, a device node as a user, an attribute the
target filesystem refuses) is a warning naming the entry, through ``warn``: the
command's exit code 1, done with warnings.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import stat
from pathlib import Path

import trio

from pipeline import faults
from pipeline.backup import beneath
from pipeline.backup import encoding as fmt
from pipeline.backup.beneath import OPEN_DIR
from pipeline.backup.errors import CorruptRepository, PartialRestore, printable
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.backup.shape import TreeShape, renamed
from pipeline.backup.stages.files import (
    CREATE,
    MARKER,
    TEMP_NAME,
    TEMP_PREFIX,
    fs_path,
    space,
)
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


FINISHING = "finishing"     # the marker's phase once directories get their final owners


def _claim(target: Path, ref: SnapshotRef) -> tuple[int, int, str | None]:
    """Create TARGET if absent, open it once (every write after is relative to this fd:
    ``beneath``) and mark it as an unfinished restore of ``ref`` (locked while this
    restore runs); returns TARGET's fd, the marker's fd and, when an earlier restore of
    the same snapshot left it, its phase ("" before ``FINISHING``), else None."""
    with space(target):
        try:
            parent = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BadInput(f"--target {target}: cannot open {target.parent}: "
                           f"{exc.strerror}; create it first") from None
        try:
            created = False
            try:
                os.mkdir(target.name, 0o700, dir_fd=parent)
                created = True
            except FileExistsError:
                pass
            except OSError as exc:
                if is_no_space(exc):
                    raise
                raise BadInput(f"cannot create --target {target}: {exc.strerror}; make "
                               f"{target.parent} writable or give another --target") from None
            try:
                root = os.open(target.name, OPEN_DIR, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                    raise
                raise BadInput(f"--target {target} exists and is not a directory; give a "
                               "new or empty directory") from None
        finally:
            os.close(parent)
        try:
            _own(target, root, created)
            marker, phase = _mark(target, root, ref)
        except BaseException:
            os.close(root)
            raise
    return root, marker, phase


def _mark(target: Path, root: int, ref: SnapshotRef) -> tuple[int, str | None]:
    """The marker in TARGET (``root``), locked: its fd, and the phase it records when it
    named ``ref`` ("" when it records none: before ``FINISHING``, or an older marker;
    None when it is new)."""
    try:
        fd = os.open(MARKER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=root)
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
        if not old and any(e.name != MARKER for e in os.scandir(root)):
            with contextlib.suppress(OSError):     # an empty marker: this run's, no litter
                os.unlink(MARKER, dir_fd=root)
            raise BadInput(f"--target {target} is not empty; give a new or empty "
                           "directory (restore never overwrites files)")
        phase: str | None = None
        if old:
            try:
                was = json.loads(old)
                had, phase = str(was["snapshot"]), str(was.get("phase", ""))
            except (ValueError, KeyError, TypeError, AttributeError):
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
    return fd, phase


def _mark_finishing(marker: int, ref: SnapshotRef) -> None:
    """Record in the marker (its fd) that directories are about to get their snapshot
    owners, durably before the first does (``check_resumed`` then accepts them)."""
    text = json.dumps({"snapshot": ref.hex, "phase": FINISHING}).encode() + b"\n"
    os.pwrite(marker, text, 0)
    os.ftruncate(marker, len(text))
    os.fsync(marker)


def _own(target: Path, root: int, created: bool) -> None:
    """A TARGET that was there must be this user's, and becomes 0700 until the end
    (``finish`` sets the snapshot's mode): whoever else could write in it could swap a
    directory being restored for a symlink and have the files written where it points.
    One this restore made is accepted whatever owner its filesystem gives it (a FAT
    stick mounted with uid=1000: every file there is that uid's); as root, such a one is
    made root's first where the filesystem lets it (someone who can write the parent may
    have put a directory of theirs there between our mkdir and our open: theirs no
    longer, and ``_mark`` then finds whatever they put in it)."""
    st = os.fstat(root)
    if not created and st.st_uid != os.geteuid():
        raise BadInput(f"--target {target} belongs to uid {st.st_uid}, not to this user: its "
                       "owner could redirect the restore through a symlink; give a new path "
                       "or a directory of yours")
    if created and st.st_uid != os.geteuid() and os.geteuid() == 0:
        with contextlib.suppress(OSError):     # a FAT stick: its one owner stays
            os.fchown(root, 0, -1)
    with contextlib.suppress(OSError):    # a filesystem without modes: nothing to close
        os.fchmod(root, 0o700)


def check_resumed(target: Path, root: int, nodes: list[fmt.Node], finishing: bool) -> None:
    """An unfinished restore's TARGET (``root``), before it is written again: each
    directory of the snapshot already there must be one a restore made (a directory of
    TARGET's owner, not a symlink), else files would be written where the symlink
    points.  Looked up relative to TARGET's fd, parents before children: a symlink is
    found before anything is looked up through it.  ``finishing`` (the marker's phase):
    the run killed was setting the directories' metadata, so one of another owner is
    accepted (TARGET, ours and 0700 throughout, let nobody else in; module docstring)
    and made the restore's again (``_reclaim``)."""
    uid = os.fstat(root).st_uid            # the owner a directory made here gets
    for n in nodes:
        if n.type != "dir" or n.path == fmt.ROOT:
            continue
        try:
            st = os.stat(os.fsencode(n.path), dir_fd=root, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (st.st_uid != uid and not finishing):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else (
                "not a directory" if not stat.S_ISDIR(st.st_mode) else f"uid {st.st_uid}'s")
            raise BadInput(f"--target {target}: {n.path!r} is {what}, not the directory an "
                           "unfinished restore made; something else wrote there: give a new "
                           "--target")
        if finishing:
            _reclaim(root, os.fsencode(n.path), uid)


def _reclaim(root: int, rel: bytes, uid: int) -> None:
    """Directory ``rel`` (under TARGET's fd ``root``; its parents reclaimed already) as
    the skeleton makes one: ``uid``'s, 0700 (as a user: one set 0500 is written in
    again), no default ACL (the files written in it again would inherit one the
    snapshot does not give them; ``finish`` sets it again).  Through an O_PATH fd of it
    (no read permission needed), as ``beneath.set_meta_node``; what a filesystem cannot
    change is left to ``beneath.Dirs``, which warns of a directory not TARGET's owner's."""
    fd = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
    try:
        at = f"/proc/self/fd/{fd}"
        if os.fstat(fd).st_uid != uid:
            with contextlib.suppress(OSError):
                os.chown(at, uid, -1)
        with contextlib.suppress(OSError):        # a filesystem without modes
            os.chmod(at, 0o700)
        with contextlib.suppress(OSError):        # none there, or no ACLs here
            os.removexattr(at, "system.posix_acl_default")
    finally:
        os.close(fd)


def fitting(target: Path, root_fd: int, ref: SnapshotRef, nodes: list[fmt.Node],
            warn: Warn | None) -> list[fmt.Node]:
    """The entries TARGET's filesystem can hold: each other one is a warning naming it
    and why, and is left out with all under it (the rest is restored): a name longer
    than the filesystem allows (a source on another filesystem), a path past PATH_MAX
    under this --target (a shorter one may fit it), a file larger than the filesystem
    holds (a FAT stick; a size no backup wrote)."""
    root = os.fsencode(target)
    name_max = os.fpathconf(root_fd, "PC_NAME_MAX")
    path_max = os.fpathconf(root_fd, "PC_PATH_MAX")
    temp = len(f"{TEMP_PREFIX}{ref.hex[:12]}-{len(nodes)}")
    too_big = _too_big(target, root_fd, ref, nodes)
    kept: list[fmt.Node] = []
    under: tuple[bytes, ...] | None = None          # a directory left out: its entries too
    for n in nodes:
        key = fmt.path_key(n.path)
        if under is not None and key[:len(under)] == under:
            continue
        under = None
        path = fs_path(root, n.path)
        name = os.path.basename(path)
        longest = max(len(path), len(os.path.dirname(path)) + 1 + temp)
        if n.path == fmt.ROOT:
            why = None
        elif n.path == MARKER:          # renamed over the marker, then removed with it
            why = "restore keeps this name for its own marker (an unfinished restore's, " \
                  "backed up)"
        elif len(name) > name_max:
            why = f"its name is {len(name)} bytes, more than {name_max}, the most --target's " \
                  "filesystem allows"
        elif longest >= path_max:
            why = f"its path under --target would be {longest} bytes, more than the system " \
                  f"allows ({path_max - 1}); a shorter --target may hold it"
        elif n.type == "file" and n.size in too_big:
            why = f"{n.size} bytes, more than one file on --target's filesystem can hold"
        else:
            why = None
        if why is None:
            kept.append(n)
            continue
        if n.type == "dir":
            under = key
            why += " (nor anything in it)"
        if warn is not None:
            trio.from_thread.run_sync(warn, f"{printable(n.path[:300])}: not restored: {why}")
    return kept


def _too_big(target: Path, root: int, ref: SnapshotRef, nodes: list[fmt.Node]) -> set[int]:
    """The file sizes TARGET's filesystem refuses (EFBIG), tried on a temporary file as
    sparse files, largest first, down to the first that fits: none but the largest is
    tried unless it is refused."""
    sizes = sorted({n.size for n in nodes if n.type == "file" and n.size > 0}, reverse=True)
    if not sizes:
        return set()
    probe = f"{TEMP_PREFIX}{ref.hex[:12]}-{len(nodes)}"
    refused: set[int] = set()
    with space(target):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe, dir_fd=root)
        fd = os.open(probe, CREATE, 0o600, dir_fd=root)
        try:
            for size in sizes:
                try:
                    os.ftruncate(fd, size)
                except OSError as exc:
                    if exc.errno not in (errno.EFBIG, errno.EINVAL):
                        raise
                    refused.add(size)
                    continue
                break
        finally:
            os.close(fd)
            os.unlink(probe, dir_fd=root)
    return refused


async def run_restore(repo: Repository, ref: SnapshotRef, target: Path, stats: Stats,
                      threads: int, warn: Warn | None = None) -> fmt.Manifest:
    """Restore ``ref`` into ``target``; see the module docstring.  Raises PartialRestore
    (after restoring every other file) when some files could not be restored; ``warn``
    gets each warning (on the Trio thread) as it comes."""
    target = check_target(target)
    manifest = await trio.to_thread.run_sync(repo.manifest, ref)
    why = renamed(ref, manifest)
    if why is not None:
        raise CorruptRepository(f"snapshot {ref.hex[:16]}: {why}; nothing restored: give "
                                "--snapshot ID of the one you want (`pipeline snapshots`)")
    nodes = await trio.to_thread.run_sync(lambda: list(repo.tree(manifest)))
    check_shape(nodes, ref)
    root, fd, phase = await trio.to_thread.run_sync(_claim, target, ref)
    resuming = phase is not None
    files: beneath.AtFiles | None = None
    try:
        if resuming:
            await trio.to_thread.run_sync(check_resumed, target, root, nodes,
                                          phase == FINISHING)
        nodes = await trio.to_thread.run_sync(fitting, target, root, ref, nodes, warn)
        files = beneath.AtFiles(target, ref, nodes, warn, root)
        stats.files_total = len(files.files) + len(files.links)
        stats.bytes_total = sum(f.node.size for f in files.files)
        ranges = await trio.to_thread.run_sync(plan, repo, files)
        await trio.to_thread.run_sync(beneath.skeleton, files, resuming)
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
                    nursery.start_soon(beneath.fetch_all, rx.clone(), repo, files, cpu, stats)
        await trio.to_thread.run_sync(beneath.finish, files,
                                      functools.partial(_mark_finishing, fd, ref))
        faults.reached("restore_finished")
        moved = await trio.to_thread.run_sync(_moved, target, root)
        if moved is not None and warn is not None:
            warn(moved)
    except BaseException:
        if files is not None:
            files.abandon()
        raise
    finally:
        os.close(fd)
        os.close(root)
    stats.files_done = files.files_done
    failed = files.failed()
    if failed:
        raise PartialRestore(
            f"{len(failed)} of {stats.files_total} files could not be restored from snapshot "
            f"{ref.hex[:16]} (damaged or missing chunks; each is named above); the other "
            f"{files.files_done} are in {target}", failed, files.files_done)
    return manifest


def _moved(target: Path, root: int) -> str | None:
    """Whether --target still names the directory restored into (``root``), else where
    that directory is now: whoever can write TARGET's parent may have moved it meanwhile
    (nothing was written through what they put in its place)."""
    st = os.fstat(root)
    try:
        now = os.lstat(target)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return None
    except OSError:
        pass
    try:
        where = printable(os.readlink(f"/proc/self/fd/{root}"))
    except OSError:
        where = "unknown (no /proc)"
    return (f"--target {printable(str(target))} was moved or replaced while the restore ran "
            f"(whoever can write {printable(str(target.parent))} can do that): nothing was "
            f"written through what is there now; the directory restored into is at {where}")


async def _feed(ranges: list[Range], tx: trio.MemorySendChannel[Range]) -> None:
    """The plan's ranges into the channel, in order; closes ``tx``."""
    async with tx:
        for rng in ranges:
            await tx.send(rng)
