"""Restore's writes under TARGET, each relative to its directory's fd: no path walked again.

A restore running as root writes into --target while someone else may be able to write
the directory above it (or, on a filesystem that ignores modes, one inside it).  Between
our mkdir of TARGET/dir and our open of TARGET/dir/file they can rename TARGET away and
put in its place a directory of theirs holding ``dir -> /etc``: a restore that walks the
path again writes root's files there.  So restore opens TARGET once (``restore._claim``:
O_DIRECTORY|O_NOFOLLOW) and does everything else here, relative to an fd:

- each directory made with mkdir(dir_fd=parent) and opened O_DIRECTORY|O_NOFOLLOW from
  its parent's fd, then checked (a directory of TARGET's owner); ``Dirs`` keeps a few
  fds (an LRU, pinned while in use) and opens an evicted one again a component at a time
  from its nearest open ancestor, where it must be the inode it was when made;
- each file created (O_CREAT|O_EXCL|O_NOFOLLOW) and written through its directory's fd,
  its owner, attributes, mode and times set through its own fd, renamed with renameat;
- fifos, device nodes (mknodat), hard links (linkat, no symlink followed), symlinks
  (symlinkat) made and set relative to their directory's fd (``*at`` with
  AT_SYMLINK_NOFOLLOW; attributes through ``/proc/self/fd/N/name``); each directory's
  own metadata through its fd, deepest first, TARGET's after the marker is removed.

A directory found replaced (a symlink, not a directory, another owner's, another inode)
is a warning naming it; nothing is written under it, and the rest restores (exit 1).

The stages here are restore's skeleton, fetch and finish; ``stages/files.Files`` keeps
the state, ``stages/plan`` the plan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import trio

from pipeline import faults
from pipeline.backup import encoding as fmt
from pipeline.backup.errors import CorruptRepository, printable
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.backup.stages.files import (
    CREATE,
    MARKER,
    TEMP_NAME,
    WRITE,
    Files,
    Link,
    RestoreFile,
    fs_path,
    owner,
    space,
)
from pipeline.backup.stages.plan import Range
from pipeline.backup.walk import Warn
from pipeline.progress import Stats

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
KEEP = 256      # directory fds kept open beyond those in use (a soft limit is 1024)


def fd_room() -> int:
    """The directory fds to keep at most: KEEP, or a quarter of the soft RLIMIT_NOFILE
    when that is lower (`ulimit -n 256`: the fetch threads' files, the packs, the
    marker and Trio need the rest)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return KEEP
    return min(KEEP, max(8, soft // 4))

_KIND = {"fifo": (stat.S_IFIFO, "fifo"), "chardev": (stat.S_IFCHR, "character device"),
         "blockdev": (stat.S_IFBLK, "block device")}


class Replaced(Exception):
    """A directory under TARGET is not the one this restore made (``why``: what it is)."""

    def __init__(self, rel: bytes, why: str) -> None:
        super().__init__(rel, why)
        self.rel, self.why = rel, why


class Dirs:
    """TARGET's directories by path relative to it (b"" is TARGET): made, opened, pinned.

    Thread-safe: the fetch threads pin the directories of the files they write."""

    def __init__(self, root: int) -> None:
        self.root = root
        st = os.fstat(root)
        self.uid = st.st_uid              # the owner a directory made here gets
        self._lock = threading.Lock()
        self._open: OrderedDict[bytes, list[int]] = OrderedDict()   # rel -> [fd, users]
        self.made: dict[bytes, tuple[int, int]] = {b"": (st.st_dev, st.st_ino)}
        self.room = fd_room()

    def make(self, rel: bytes) -> int:
        """Make directory ``rel`` (0700; one there already is kept) in its parent, open it
        and check it; returns its fd, pinned.  Replaced: not the directory made."""
        parent, name = os.path.split(rel)
        pfd = self.pin(parent)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = self._open_at(pfd, name, rel)
        finally:
            self.unpin(parent)
        st = os.fstat(fd)
        if st.st_uid != self.uid:
            os.close(fd)
            raise Replaced(rel, f"a directory of uid {st.st_uid}'s")
        with self._lock:
            self.made[rel] = (st.st_dev, st.st_ino)
            self._open[rel] = [fd, 1]
            self._trim()
        return fd

    def pin(self, rel: bytes) -> int:
        """The fd of directory ``rel`` (made before), kept open until ``unpin``."""
        if not rel:
            return self.root
        with self._lock:
            entry = self._open.get(rel)
            if entry is None:
                entry = self._reopen(rel)
            else:
                self._open.move_to_end(rel)
            entry[1] += 1
            self._trim()
            return entry[0]

    def unpin(self, rel: bytes) -> None:
        if not rel:
            return
        with self._lock:
            self._open[rel][1] -= 1
            self._trim()

    def close(self) -> None:
        """Every directory fd but TARGET's (the caller's)."""
        with self._lock:
            for fd, _users in self._open.values():
                os.close(fd)
            self._open.clear()

    def _reopen(self, rel: bytes) -> list[int]:
        """Open ``rel`` from its nearest open ancestor, a component at a time, each the
        inode it was when made (called under the lock; a miss is rare in tree order)."""
        parts = rel.split(b"/")
        i = len(parts) - 1
        while i > 0 and b"/".join(parts[:i]) not in self._open:
            i -= 1
        at = b"/".join(parts[:i])
        entry: list[int] = [self.root, 0] if not at else self._open[at]
        for k in range(i, len(parts)):
            sub = b"/".join(parts[:k + 1])
            entry[1] += 1                 # the parent stays open while its child opens
            try:
                fd = self._open_at(entry[0], parts[k], sub)
            finally:
                entry[1] -= 1
            st = os.fstat(fd)
            if self.made.get(sub) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise Replaced(sub, "another directory than the one restore made")
            entry = self._open[sub] = [fd, 1]     # kept while the rest is trimmed: a
            self._trim()                          # deep path opens one fd at a time
            entry[1] -= 1
        return entry

    def _open_at(self, pfd: int, name: bytes, rel: bytes) -> int:
        try:
            return os.open(name, OPEN_DIR, dir_fd=pfd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                raise
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise Replaced(rel, "gone") from None
        raise Replaced(rel, "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory")

    def _trim(self) -> None:
        """Close the least recently used fds not in use, down to KEEP (``fd_room``)."""
        keep = min(KEEP, self.room)
        if len(self._open) <= keep:
            return
        for rel in [r for r, (_fd, users) in self._open.items() if not users]:
            os.close(self._open.pop(rel)[0])
            if len(self._open) <= keep:
                return


class AtFiles(Files):
    """``Files`` whose every write goes through ``dirs`` (see the module docstring)."""

    def __init__(self, target: Path, ref: SnapshotRef, nodes: list[fmt.Node],
                 warn: Warn | None, target_fd: int) -> None:
        super().__init__(target, ref, nodes, warn)
        self.dirs = Dirs(target_fd)
        self.cut = len(self.root) + 1
        self.gone: set[bytes] = set()                     # directories found replaced
        self.skipped: set[RestoreFile | Link] = set()     # files under them

    def split(self, path: bytes) -> tuple[bytes, bytes]:
        """A path under TARGET (``fs_path``, ``temp``) as (its directory, its name)."""
        return os.path.split(path[self.cut:])

    def replaced(self, exc: Replaced) -> None:
        """Directory ``exc.rel`` is not the one restore made: one warning naming it, and
        nothing more written under it."""
        with self.lock:
            if exc.rel in self.gone:
                return
            self.gone.add(exc.rel)
            under = exc.rel + b"/"
            for x in (*self.files, *self.links):
                rel = self.split(x.final)[0]
                if rel == exc.rel or rel.startswith(under):
                    self.skipped.add(x)
        self.warn(f"{printable(os.fsdecode(exc.rel))}: not restored: it was replaced while "
                  f"the restore ran ({exc.why}); nothing was written through it (nor "
                  "anything in it)")

    def under_gone(self, rel: bytes) -> bool:
        """Is ``rel`` (a directory) one found replaced, or under one?"""
        if not self.gone:
            return False
        while rel:
            if rel in self.gone:
                return True
            rel = os.path.dirname(rel)
        return False

    def pin(self, rel: bytes) -> int | None:
        """``dirs.pin``, or None (warned) when the directory was replaced."""
        if self.under_gone(rel):
            return None
        try:
            return self.dirs.pin(rel)
        except Replaced as exc:
            self.replaced(exc)
            return None

    # -- regular files ------------------------------------------------------------------

    def put(self, f: RestoreFile, raw: bytes | memoryview, off: int) -> int:
        """One chunk of ``f`` written at ``off`` (unless ``f`` failed or is skipped) and
        counted down; the last one settles ``f``.  Returns the bytes written."""
        rel, tmp = self.split(f.tmp)
        dfd = self.pin(rel)
        fd = -1
        written = 0
        try:
            if dfd is not None and f.first is None and f not in self.skipped:
                with space(self.target, f.final):
                    fd = (os.open(tmp, CREATE, 0o600, dir_fd=dfd) if f.whole
                          else self._reopen(dfd, tmp, f))
                    if fd >= 0:
                        done = 0
                        while done < len(raw):
                            done += os.pwrite(fd, raw[done:], off + done)
                        written = len(raw)
            with self.lock:
                f.left -= 1
                last = f.left == 0
            if last:
                with space(self.target, f.final):
                    self._settle(f, dfd, fd)
        finally:
            if fd >= 0:
                os.close(fd)
            if dfd is not None:
                self.dirs.unpin(rel)
        return written

    def settle(self, f: RestoreFile) -> None:
        """``Files.step``'s (a chunk given up): the same as ``_settle``, by the dir's fd."""
        rel = self.split(f.tmp)[0]
        dfd = self.pin(rel)
        try:
            self._settle(f, dfd, -1)
        finally:
            if dfd is not None:
                self.dirs.unpin(rel)

    def _settle(self, f: RestoreFile, dfd: int | None, fd: int) -> None:
        """Into place when every chunk is in (metadata through ``fd``), else removed."""
        if dfd is None or f in self.skipped:
            f.done = True
            return
        tmp = self.split(f.tmp)[1]
        if f.first is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
        else:
            own = fd < 0
            if own:
                fd = self._reopen(dfd, tmp, f)
                if fd < 0:
                    f.done = True
                    return
            try:
                self.set_meta_fd(fd, f.node)
            finally:
                if own:
                    os.close(fd)
            os.rename(tmp, self.split(f.final)[1], src_dir_fd=dfd, dst_dir_fd=dfd)
            with self.lock:
                self.files_done += 1
        f.done = True

    def _reopen(self, dfd: int, tmp: bytes, f: RestoreFile) -> int:
        """``f``'s temporary file ``tmp`` in ``dfd`` opened again by name, if it is the
        one the skeleton made (a regular file of TARGET's owner, one link); else -1:
        whoever can write its directory put another there (a hard link to a file
        outside): ``f`` is skipped and warned, that name removed (the name only), and
        nothing is written through it."""
        fd = os.open(tmp, WRITE, dir_fd=dfd)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == self.dirs.uid:
            return fd
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        with self.lock:
            first = f not in self.skipped
            self.skipped.add(f)
        if first:
            self.warn(f"{printable(f.node.path)}: not restored: its temporary file was "
                      "replaced while the restore ran; nothing was written through it")
        return -1

    def set_meta_fd(self, fd: int | str, n: fmt.Node) -> None:
        """Owner, extended attributes (the ACLs among them), mode, then times, in that
        order, through the entry's own fd: chown clears setuid bits, and a chmod after the
        ACL keeps its mask.  The owner only as root (a user keeps their own, as tar does);
        what cannot be set is a warning naming the entry.  ``fd``: the entry's fd, or a
        path that leads to its inode whatever its name is now (``set_meta_node``)."""
        if n.uid is not None and self.is_root:
            uid, gid = owner(n)
            try:
                os.chown(fd, uid, gid)
            except OSError as exc:
                self._unset(exc, f"{n.path}: owner {uid}:{gid} not restored ({exc.strerror})")
        for name, value in n.xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                self._unset(exc, f"{n.path}: extended attribute {name} not restored "
                                 f"({exc.strerror})")
        os.chmod(fd, n.mode)
        os.utime(fd, ns=(n.mtime_ns, n.mtime_ns))

    def set_meta_symlink(self, dfd: int, name: bytes, n: fmt.Node) -> None:
        """The same for symlink ``name`` in directory ``dfd``, never following it
        (attributes through /proc/self/fd/DFD/NAME, not followed); a symlink has no mode
        of its own, and a filesystem may not keep its times."""
        if n.uid is not None and self.is_root:
            uid, gid = owner(n)
            try:
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                self._unset(exc, f"{n.path}: owner {uid}:{gid} not restored ({exc.strerror})")
        if n.xattrs:
            at = f"/proc/self/fd/{dfd}/".encode() + name
            for key, value in n.xattrs:
                try:
                    os.setxattr(at, key, value, follow_symlinks=False)
                except OSError as exc:
                    self._unset(exc, f"{n.path}: extended attribute {key} not restored "
                                     f"({exc.strerror})")
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(name, ns=(n.mtime_ns, n.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def set_meta_node(self, pfd: int, n: fmt.Node) -> None:
        """The same for a fifo or device node by its own O_PATH fd ``pfd`` (which takes no
        fchown or fchmod): through /proc/self/fd/PFD, which leads to that inode whatever
        its name is now."""
        self.set_meta_fd(f"/proc/self/fd/{pfd}", n)

    def link(self, ln: Link) -> bool:
        """``ln`` made a hard link of its leader (linkat, both by their directory's fd)."""
        leader = ln.leader
        if leader in self.skipped and ln not in self.skipped:
            self.warn(f"{printable(ln.node.path)}: not restored: a hard link of "
                      f"{printable(leader.node.path)}, which was not restored (see above)")
        if leader.first is not None or not leader.done or leader in self.skipped \
                or ln in self.skipped:
            return False
        lrel, lname = self.split(leader.final)
        rel, tmp = self.split(ln.tmp)
        lfd = self.pin(lrel)
        if lfd is None:
            return False
        try:
            dfd = self.pin(rel)
            if dfd is None:
                return False
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                os.link(lname, tmp, src_dir_fd=lfd, dst_dir_fd=dfd, follow_symlinks=False)
                os.rename(tmp, self.split(ln.final)[1], src_dir_fd=dfd, dst_dir_fd=dfd)
                with contextlib.suppress(FileNotFoundError):  # a link onto itself: kept
                    os.unlink(tmp, dir_fd=dfd)
            finally:
                self.dirs.unpin(rel)
        finally:
            self.dirs.unpin(lrel)
        with self.lock:
            self.files_done += 1
        return True

    def abandon(self) -> None:
        """After a fatal error: the temporary files of the files not finished removed."""
        for x in (*(f for f in self.files if not f.done), *self.links):
            rel, tmp = self.split(x.tmp)
            with contextlib.suppress(OSError, Replaced):
                if self.under_gone(rel):
                    continue
                dfd = self.dirs.pin(rel)
                try:
                    os.unlink(tmp, dir_fd=dfd)
                finally:
                    self.dirs.unpin(rel)
        self.dirs.close()


# -- the stages ---------------------------------------------------------------------------

def skeleton(files: AtFiles, resuming: bool) -> None:
    """Directories (0700 until the end), then every file of several chunks or with holes
    at its size under its temporary name; files without chunks are finished here.
    ``resuming``: clear the temporary files an interrupted restore left."""
    dirs = files.dirs
    with space(files.target):
        if resuming:
            clear_temps(dirs.root)
        for n in files.nodes:
            if n.type == "dir" and n.path != fmt.ROOT:
                _make(files, fs_path(files.root, n.path)[files.cut:], resuming)
        for f in files.files:
            rel, tmp = files.split(f.tmp)
            if rel not in dirs.made and not files.under_gone(rel):
                _make(files, rel, resuming)           # a directory the walk could not list
            if f.done or f.whole or f in files.skipped:
                continue
            dfd = files.pin(rel)
            if dfd is None:
                continue
            try:
                fd = os.open(tmp, CREATE, 0o600, dir_fd=dfd)
                try:
                    os.ftruncate(fd, f.node.size)
                    if f.left == 0:
                        files._settle(f, dfd, fd)
                finally:
                    os.close(fd)
            finally:
                dirs.unpin(rel)


def _make(files: AtFiles, rel: bytes, resuming: bool) -> None:
    """Directory ``rel`` and any of its parents not made yet; a replaced one warned."""
    parent = os.path.dirname(rel)
    if parent and parent not in files.dirs.made:
        _make(files, parent, resuming)
    if files.under_gone(rel) or rel in files.dirs.made:
        return
    try:
        fd = files.dirs.make(rel)
    except Replaced as exc:
        files.replaced(exc)
        return
    try:
        if resuming:
            clear_temps(fd)
    finally:
        files.dirs.unpin(rel)


def clear_temps(dfd: int) -> None:
    """Temporary files an interrupted restore left in directory ``dfd``."""
    with os.scandir(dfd) as it:
        stale = [e.name for e in it if TEMP_NAME.match(os.fsencode(e.name))
                 and not e.is_dir(follow_symlinks=False)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)


async def fetch_all(rx: trio.MemoryReceiveChannel[Range], repo: Repository,
                    files: AtFiles, cpu: trio.CapacityLimiter, stats: Stats) -> None:
    """One fetch task: every range from ``rx`` in a worker thread; closes ``rx``."""
    async with rx:
        async for rng in rx:
            # not `stats.bytes_read += await ...`: that reads the counter before the await
            # and stores after it, losing what the other fetch tasks added meanwhile
            written = await trio.to_thread.run_sync(fetch, repo, files, rng, limiter=cpu)
            stats.bytes_read += written
            stats.extents += len(rng.entries)
            stats.files_done = files.files_done


def fetch(repo: Repository, files: AtFiles, rng: Range) -> int:
    """Read one range of a pack, check each chunk, write it to every place it belongs;
    returns the bytes written.  A chunk that cannot be read or checked fails the files
    that hold it."""
    name = fmt.pack_name(rng.pack)
    try:
        data = repo.backend.read(name, rng.start, rng.end - rng.start)
    except CorruptRepository as exc:          # the pack is missing
        for e in rng.entries:
            files.lost(e.id, str(exc.args[0]))
        return 0
    view = memoryview(data)
    written = 0
    for e in rng.entries:
        at = e.offset - rng.start
        if at + e.length > len(data):
            files.lost(e.id, f"{name} is shorter than its index says (truncated)")
            continue
        try:
            raw = repo.crypto.open_chunk(e.kind, e.id, view[at:at + e.length], e.raw_len)
        except CorruptRepository as exc:
            files.lost(e.id, f"{exc.args[0]} in {name}")
            continue
        for f, off, _n in files.where[e.id]:
            written += files.put(f, raw, off)
    return written


def finish(files: AtFiles, finishing: Callable[[], None]) -> None:
    """Special files and hard links, symlinks last (nothing is written through them), then
    each directory's metadata through its fd, deepest first (so that setting one does not
    move its parent's times, and no directory is opened through one whose owner and mode
    are already the snapshot's), the marker removed, TARGET's own last (the unlink would
    move its mtime).  ``finishing`` is called before the first directory is set (restore
    records the phase in the marker: a run killed from there on is resumed although its
    directories have other owners; ``restore``'s module docstring)."""
    with space(files.target):
        for i, n in enumerate(files.nodes):
            if n.type in ("fifo", *fmt.DEVICES):
                _entry(files, n, i)
        for ln in files.links:
            files.link(ln)
        for i, n in enumerate(files.nodes):
            if n.type == "symlink":
                _entry(files, n, i)
        finishing()
        dirs = sorted((n for n in files.nodes if n.type == "dir" and n.path != fmt.ROOT),
                      key=lambda n: -n.path.count("/"))
        for n in dirs:
            rel = fs_path(files.root, n.path)[files.cut:]
            fd = files.pin(rel)
            if fd is None:
                continue
            try:
                files.set_meta_fd(fd, n)
            finally:
                files.dirs.unpin(rel)
            faults.reached("restore_dir_meta")     # tests: a kill -9 amid the directories
        with contextlib.suppress(FileNotFoundError):
            os.unlink(MARKER, dir_fd=files.dirs.root)
        for n in files.nodes:
            if n.type == "dir" and n.path == fmt.ROOT:
                files.set_meta_fd(files.dirs.root, n)
    files.dirs.close()


def _entry(files: AtFiles, n: fmt.Node, i: int) -> None:
    """A fifo, device node or symlink made under its temporary name, set, and renamed
    into place, all by its directory's fd; a node this user may not make (a device
    node, unless root) is a warning naming it."""
    rel, tmp = files.split(files.temp(n, i))
    dfd = files.pin(rel)
    if dfd is None:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        if n.type == "symlink":
            os.symlink(os.fsencode(n.target), tmp, dir_fd=dfd)
            files.set_meta_symlink(dfd, tmp, n)
        else:
            kind, what = _KIND[n.type]
            try:
                os.mknod(tmp, kind | 0o600, n.rdev, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                dev = f" {os.major(n.rdev)}:{os.minor(n.rdev)}" if n.type != "fifo" else ""
                need = " (making device nodes needs root)" if exc.errno == errno.EPERM else ""
                files.warn(f"{n.path}: {what}{dev} not restored: {exc.strerror}{need}")
                return
            pfd = _made(files, dfd, tmp, n, kind, what)
            if pfd < 0:
                return
            try:
                files.set_meta_node(pfd, n)
            finally:
                os.close(pfd)
        os.rename(tmp, files.split(fs_path(files.root, n.path))[1], src_dir_fd=dfd,
                  dst_dir_fd=dfd)
    finally:
        files.dirs.unpin(rel)


def _made(files: AtFiles, dfd: int, tmp: bytes, n: fmt.Node, kind: int, what: str) -> int:
    """An O_PATH fd of ``tmp`` in ``dfd`` if it is still the node just made (its type,
    TARGET's owner, one link), else -1: whoever can write the directory may have put a
    hard link to a file outside there (then a warning naming the entry, its name
    removed, nothing set through it)."""
    pfd = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    st = os.fstat(pfd)
    if stat.S_IFMT(st.st_mode) == kind and st.st_nlink == 1 and st.st_uid == files.dirs.uid:
        return pfd
    os.close(pfd)
    with contextlib.suppress(FileNotFoundError):        # its name only
        os.unlink(tmp, dir_fd=dfd)
    files.warn(f"{printable(n.path)}: {what} not restored: it was replaced while the "
               "restore ran; nothing was set through it")
    return -1


__all__ = ["AtFiles", "Dirs", "Replaced", "fetch_all", "finish", "skeleton"]
