"""Walk a source tree into snapshot nodes, and read files into content-defined chunks.

Sync and free of trio: the backup stages run these in worker threads.  The walk
is depth first with each directory's names sorted by bytes, the order of
``format.path_key``, so the previous snapshot's tree can be merged against it
in one pass (``ParentTree``) whatever the number of files.  Names that are not
UTF-8 are kept (surrogate escapes), since a backup must not refuse a file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import itertools
import os
import pwd
import queue
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import faults
from pipeline.backup import encoding as fmt
from pipeline.backup.stages.messages import Walked
from pipeline.errors import BadInput

if TYPE_CHECKING:
    import pyfastcdc

    from pipeline.backup.cache import TreeCache

Warn = Callable[[str], None]
Deliver = Callable[[bytes | None, bytes | memoryview | None, int], None]
"""``deliver(chunk id, data, length)`` for each piece read; id and data are None for zeros."""

_SPECIAL = ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"))
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def check_source(source: Path) -> Path:
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise BadInput(f"--source {source} does not exist; give the directory to back up"
                       ) from None
    except OSError as exc:
        raise BadInput(f"--source {source}: {exc.strerror}; fix it or give another directory"
                       ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"--source {source} is not a directory; give the directory to back up")
    return source.resolve()


Seen = tuple[str, bytes, os.stat_result]
"""An entry as ``scan`` found it: its path in the snapshot, its path on disk, its lstat."""


def walk(root: Path, warn: Warn) -> Iterator[fmt.Node]:
    """``root`` itself (path "."), then every directory, regular file, symlink, fifo and
    device node under it, each with its owner, extended attributes (ACLs among them) and,
    for a file of several hard links, its device and link count.

    Entries that vanish or cannot be read are reported through ``warn`` and left out;
    sockets too (a socket is a live endpoint, not data: restic skips them as well).
    """
    for rel, full, st in scan(root, warn):
        node = make_node(rel, full, st, warn)
        if node is not None:
            yield node


def scan(root: Path, warn: Warn) -> Iterator[Seen]:
    """``walk``'s entries before any node is made of them: the root (its ``stat``), then
    each entry under it with its ``lstat``, in walk order.  ``matched`` makes a node only
    of an entry that differs from its parent's, and lists the xattrs of a file only if
    its ctime moved (or the parent's were not listed by this user)."""
    broot = os.fsencode(root)
    try:
        st = os.stat(broot)
    except FileNotFoundError:   # gone since check_source: the user's to see, not a bug
        raise BadInput(f"--source {root}: vanished before it was read; check it and run "
                       "the backup again") from None
    yield fmt.ROOT, broot, st
    stack: list[tuple[bytes, str, Iterator[bytes]]] = [(broot, "", iter(_names(broot, "", warn)))]
    while stack:
        dirpath, prefix, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        full = dirpath + b"/" + name      # os.path.join's checks cost 10% of a no-change walk
        rel = prefix + name.decode(_FS_ENCODING, _FS_ERRORS)     # os.fsdecode, inline
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            warn(f"{rel}: vanished during the backup; skipped")
            continue
        except OSError as exc:
            warn(f"{rel}: cannot stat ({exc.strerror}); skipped")
            continue
        yield rel, full, st
        if st.st_mode & 0o170000 == stat.S_IFDIR:
            stack.append((full, rel + "/", iter(_names(full, rel, warn))))


def make_node(rel: str, full: bytes, st: os.stat_result, warn: Warn,
              xattrs: fmt.Xattrs | None = None, xwarn: Warn | None = None
              ) -> fmt.Node | None:
    """The node of a ``scan`` entry, or None (reported) for what is not backed up.
    ``xattrs``: read already (``matched``), so not again (nor their warnings);
    ``xwarn``: where a failure to read them is reported, if not ``warn``."""
    if rel == fmt.ROOT:      # the source itself, followed if a link (check_source: a dir)
        node: fmt.Node | None = fmt.Node("dir", rel, st.st_mode & 0o7777, st.st_mtime_ns)
    else:
        node = _node(rel, full, st, warn)
    if node is None:
        return None
    return meta(node, full, st, warn, read_xattrs(full, rel, xwarn or warn)
                if xattrs is None else xattrs)


def _node(rel: str, full: bytes, st: os.stat_result, warn: Warn) -> fmt.Node | None:
    """The entry ``rel`` as lstat saw it, or None (reported) for what is not backed up."""
    mode = st.st_mode
    perm = mode & 0o7777                  # stat.S_IMODE, S_IFMT: one call each fewer
    kind = mode & 0o170000
    if kind == stat.S_IFDIR:
        return fmt.Node("dir", rel, perm, st.st_mtime_ns)
    if kind == stat.S_IFREG:
        return fmt.Node("file", rel, perm, st.st_mtime_ns, st.st_size, st.st_ctime_ns,
                        st.st_ino)
    if kind == stat.S_IFLNK:
        try:
            target = os.fsdecode(os.readlink(full))
        except OSError as exc:
            warn(f"{rel}: cannot read the link ({exc.strerror}); skipped")
            return None
        return fmt.Node("symlink", rel, perm, st.st_mtime_ns, target=target)
    special = next((k for test, k in _SPECIAL if test(mode)), None)
    if special is None:
        warn(f"{rel}: {'socket' if stat.S_ISSOCK(mode) else 'special file'}, not backed up")
        return None
    return fmt.Node(special, rel, perm, st.st_mtime_ns, rdev=st.st_rdev)


def meta(node: fmt.Node, full: bytes, st: os.stat_result, warn: Warn,
         xattrs: fmt.Xattrs | None = None) -> fmt.Node:
    """``node`` with its owner (ids and names), xattrs (``xattrs`` if read already) and,
    for a hard-linked file, the identity its links share; an attribute that cannot be
    read is reported, not fatal."""
    node.uid, node.gid = st.st_uid, st.st_gid
    node.user, node.group = user_name(st.st_uid), group_name(st.st_gid)
    if node.type == "file" and st.st_nlink > 1:
        node.links, node.dev = st.st_nlink, st.st_dev
    node.xattrs = read_xattrs(full, node.path, warn) if xattrs is None else xattrs
    return node


def read_xattrs(full: bytes, rel: str, warn: Warn) -> fmt.Xattrs:
    """The attributes this format records (``encoding.xattr_name_ok``), sorted by name.
    Others, system.* but the ACLs, are the filesystem's own and are not restorable."""
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_XATTRS and exc.errno != errno.ENOENT:
            warn(f"{rel}: cannot list extended attributes ({exc.strerror}); backed up "
                 "without them")
        return []
    if not names:                      # most entries
        return []
    out: fmt.Xattrs = []
    for name in sorted(n for n in names if fmt.xattr_name_ok(n)):
        try:
            value = os.getxattr(full, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOENT):   # removed meanwhile: fine
                warn(f"{rel}: cannot read extended attribute {name} ({exc.strerror}); "
                     "backed up without it")
            continue
        out.append((name, value))
    return out


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The user name of ``uid`` on this machine, "" where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


@functools.lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return ""


def _names(path: bytes, rel: str, warn: Warn) -> list[bytes]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it)
    except FileNotFoundError:
        if rel:
            warn(f"{rel}: vanished during the backup; skipped")
            return []
        raise BadInput(f"--source {os.fsdecode(path)}: vanished before it was read; check "
                       "it and run the backup again") from None
    except OSError as exc:
        if not rel:
            raise BadInput(f"--source {os.fsdecode(path)}: cannot list it ({exc.strerror})"
                           ) from None
        warn(f"{rel}: cannot list the directory ({exc.strerror}); skipped")
        return []


Entry = tuple[fmt.Node, bytes, fmt.LineAt]
"""A parent's tree entry: the node, its line, where the line lies (``repo.tree_chunks``)."""


class ParentTree:
    """The previous snapshot's entries (each with its tree line), looked up in walk order
    in one forward pass."""

    def __init__(self, chunks: Iterator[list[Entry]] | None) -> None:
        self._entries = None if chunks is None else itertools.chain.from_iterable(chunks)
        self._cur: Entry | None = None
        self._advance()

    def _advance(self) -> None:
        self._cur = next(self._entries, None) if self._entries is not None else None

    def find(self, path: str) -> Entry | None:
        """The parent's entry for ``path`` and its line, or None; the walk asks for each
        path once, in walk order, so an entry found is passed.  Where the trees agree (the
        parent's next entry is this path) no sort key is computed."""
        cur = self._cur
        if cur is not None and cur[0].path == path:     # most: _advance, inline
            self._cur = next(self._entries, None)        # type: ignore[arg-type]
            return cur
        key = fmt.path_key(path)
        while cur is not None and fmt.path_key(cur[0].path) < key:
            self._advance()
            cur = self._cur
        if cur is None or cur[0].path != path:
            return None
        self._advance()
        return cur


def unchanged(node: fmt.Node, old: fmt.Node | None) -> bool:
    """Same content as last time: reuse its chunks without reading the file.

    restic's rule (size, mtime, ctime and inode all equal), with one exception: a
    ctime that moved while size, mtime and inode did not is explained, and the content
    trusted, when the metadata changed too (chmod, chown, setfattr, setfacl, a new hard
    link all move the ctime); an unexplained ctime change reads the file again.  The
    node itself is always the walk's, so the new metadata is what the snapshot holds."""
    if (old is None or old.type != "file" or old.size != node.size
            or old.mtime_ns != node.mtime_ns or old.inode != node.inode):
        return False
    if old.ctime_ns == node.ctime_ns:
        return True
    return old.uid is not None and _meta_key(old) != _meta_key(node)


def _meta_key(n: fmt.Node) -> tuple[object, ...]:
    return (n.mode, n.uid, n.gid, n.xattrs, n.links)


def as_before(old: fmt.Node, st: os.stat_result, xattrs: fmt.Xattrs) -> bool:
    """Whether the node ``make_node`` would make of a directory, or of a file of one link,
    (``st``, ``xattrs``) equals the parent's ``old`` (the entry at its path,
    ``ParentTree.find``'s) in every field, its content taken
    from ``old`` (unchanged by restic's rule: size, mtime, ctime and inode equal): what
    ``matched`` tests as ``node == old``, without making the node.  The fields each kind
    leaves at their defaults must be so in ``old`` too."""
    if st.st_mode & 0o170000 == stat.S_IFREG:
        if (old.type != "file" or old.size != st.st_size or old.ctime_ns != st.st_ctime_ns
                or old.inode != st.st_ino or old.links != 1 or old.dev != 0):
            return False
    elif (old.type != "dir" or old.size != 0 or old.ctime_ns != 0 or old.inode != 0
            or old.content or old.links != 1 or old.dev != 0):
        return False
    return (old.mode == st.st_mode & 0o7777 and old.mtime_ns == st.st_mtime_ns
            and old.uid == st.st_uid and old.gid == st.st_gid and old.target == ""
            and old.rdev == 0 and old.user == user_name(st.st_uid)
            and old.group == group_name(st.st_gid) and old.xattrs == xattrs)


def matched(source: Path, parent: Iterator[list[Entry]] | None, warn: Warn,
            seen: Iterator[Seen] | None = None, cache: TreeCache | None = None
            ) -> Iterator[Walked]:
    """Every entry of ``source`` in walk order, matched against ``parent`` (the parent
    snapshot's tree, read lazily as this is consumed): a file unchanged since then takes
    its chunk list (``reuse``), as does a new link to a hard-linked file so taken; an entry
    equal to the parent's in every field carries its tree line.  Consumed inline by
    ``archive.walk_inline`` while nothing needs reading, then by the walk stage's thread.
    ``seen``: ``scan(source)``'s entries as a ``WalkAhead`` delivers them, if one runs.

    A directory or a file of one link equal to the parent's entry (``as_before``) is
    the parent's node itself: no node is made of it (most of a no-change walk's time
    was making and comparing them); any other entry is made a node and compared.

    A file whose ctime has not moved keeps its parent's xattrs unlisted (a third of the
    walk's syscalls) where ``cache`` says this user's walk listed that parent chunk's
    (``TreeCache.listed``; one listed by another user, root without CAP_SYS_ADMIN, or
    decoded from the repository, shows what that one could see): on Linux every xattr
    change (setxattr, removexattr, an ACL) moves the file's ctime, which no caller can
    set back, so an unmoved ctime is an unchanged list (as restic's rule trusts it for
    the content, within the clock's tick).  A failure to list or read one marks the
    run's cache entries not listed (``xattrs_failed``), so the next run lists again.
    Directories, whose ctime the format does not keep, are always listed."""
    listed = cache.listed if cache is not None else set()

    def xwarn(message: str) -> None:
        if cache is not None:
            cache.xattrs_failed = True
        warn(message)

    old = ParentTree(parent)
    linked: dict[tuple[int, int], fmt.Node] = {}   # hard-linked files taken from the parent
    for rel, full, st in scan(source, warn) if seen is None else seen:
        found = old.find(rel)
        xattrs = None
        if found is not None:
            kind = st.st_mode & 0o170000
            if kind == stat.S_IFDIR or (kind == stat.S_IFREG and st.st_nlink == 1):
                same = found[0]
                if (kind == stat.S_IFREG and same.ctime_ns == st.st_ctime_ns
                        and found[2][0] in listed):
                    xattrs = same.xattrs             # unchanged, as its ctime says
                else:
                    xattrs = read_xattrs(full, rel, xwarn)
                if as_before(same, st, xattrs):
                    yield Walked(same, kind == stat.S_IFREG, found[1], found[2])
                    continue
        node = make_node(rel, full, st, warn, xattrs, xwarn)
        if node is None:
            continue
        reuse = False
        same, line, at = found if found is not None else (None, None, None)
        if node.type == "file":
            prev = same
            if node.links > 1 and not unchanged(node, prev):
                prev = linked.get((node.dev, node.inode))
            if unchanged(node, prev):
                assert prev is not None
                node.content, reuse = prev.content, True
                if node.links > 1:
                    linked.setdefault((node.dev, node.inode), node)
        if node == same:
            yield Walked(node, reuse, line, at)
        else:
            yield Walked(node, reuse)


class WalkAhead:
    """``scan(root)`` run in a thread from now on, while the caller opens the repository
    (key derivation, index, parent manifest, tree cache): a cold walk waits on the disk
    for every directory and inode, and that wait overlaps the opening instead of
    following it.  ``seen`` hands the entries over in walk order (``nodes``: made nodes),
    and the warnings the walk raised replayed at their places, through the consumer's
    ``warn``; an exception in the thread is raised there.  At most ``DEPTH`` batches of
    ``BATCH`` entries wait (the walk keeps that far ahead of a slow consumer, whatever
    the tree's size).

    Once the consumer starts, the thread hands the walk itself over (``_HANDOVER``): the
    consumer drains what waits, then goes on with the same ``scan`` inline.  Two threads
    walking and matching at once fought over the GIL, one switch per lstat: the warm
    2 GB tree's walk ran at a quarter of its speed alone (about 20 us an entry instead of
    5) and was the no-change backup's critical path.  The thread is joined when ``seen``
    ends or is closed, or by ``close`` (a run that fails first)."""

    BATCH = 256
    DEPTH = 64
    _HANDOVER = "handover"          # a str, as warnings are, but this object itself

    def __init__(self, root: Path) -> None:
        self._queue: queue.Queue[list[Seen | str] | BaseException | str | None] = (
            queue.Queue(self.DEPTH))
        self._stop = threading.Event()
        self._take = False               # the consumer has started: hand the walk over
        self._buf: list[Seen | str] = []     # the batch in hand (the thread's)
        self._warn: Warn = self._buf.append   # scan's warnings: a str in its place, until
                                              # the hand-over (then the consumer's warn)
        self._rest: Iterator[Seen] | None = None      # the walk, once handed over
        self._thread = threading.Thread(target=self._run, args=(root,), name="walk ahead",
                                        daemon=True)
        self._thread.start()

    def _run(self, root: Path) -> None:
        buf = self._buf
        walk = scan(root, lambda message: self._warn(message))
        try:
            for entry in walk:
                buf.append(entry)
                if self._take:
                    self._rest = walk         # not closed: resumed on the consumer's thread
                    if self._put(buf):
                        self._put(self._HANDOVER)
                    return
                if len(buf) >= self.BATCH:
                    batch = buf[:]
                    buf.clear()
                    if not self._put(batch):
                        return
                    faults.reached("walk_ahead_batch")   # tests: a stop while it runs
            if self._put(buf):
                self._put(None)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            self._put(exc)

    def _put(self, item: list[Seen | str] | BaseException | str | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def nodes(self, warn: Warn) -> Iterator[fmt.Node]:
        """``walk``'s nodes, in its order, on the consumer's thread."""
        try:
            for rel, full, st in self.seen(warn):
                node = make_node(rel, full, st, warn)
                if node is not None:
                    yield node
        finally:
            self.close()

    def seen(self, warn: Warn) -> Iterator[Seen]:
        """``scan``'s entries, in its order, on the consumer's thread."""
        self._take = True
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if item is self._HANDOVER:
                    self._thread.join()              # it put this last, and returned
                    self._warn = warn
                    assert self._rest is not None
                    yield from self._rest
                    return
                if isinstance(item, BaseException):
                    raise item
                for x in item:
                    if isinstance(x, str):
                        warn(x)
                    else:
                        yield x
        finally:
            self.close()

    def close(self) -> None:
        """Stop the walk (if it still runs) and join its thread."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
        if self._rest is not None:
            self._rest.close()


# --------------------------------------------------------------------------- reading files


class _Range:
    """``readinto`` over [start, end) of a file, for pyfastcdc's stream chunker."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.end - self.pos)
        if n <= 0:
            return 0
        got = os.preadv(self.fd, [buf[:n]], self.pos)
        self.pos += got
        return got


class FileReader:
    """Reads files into chunks: holes and all-zero chunks become zero runs (no id, never
    stored), every other chunk is named by its keyed hash and handed to ``deliver``."""

    def __init__(self, params: fmt.ChunkerParams, seed: int,
                 chunk_id: Callable[[bytes | memoryview], bytes]) -> None:
        self.params, self.seed, self.chunk_id = params, seed, chunk_id
        self._local = threading.local()

    def _cdc(self) -> pyfastcdc.FastCDC:
        """This thread's chunker: reusable, but not to be shared between threads."""
        cdc: pyfastcdc.FastCDC | None = getattr(self._local, "cdc", None)
        if cdc is None:
            import pyfastcdc  # here: a no-change backup chunks nothing

            p = self.params
            cdc = self._local.cdc = pyfastcdc.FastCDC(
                p.avg, min_size=p.min, max_size=p.max, normalized_chunking=p.nc, seed=self.seed)
        return cdc

    def read(self, path: str | Path, node: fmt.Node, deliver: Deliver, warn: Warn) -> bool:
        """Fill ``node.content`` (and its size/times as read); False if the file is gone.
        Whatever the path is by now, only a regular file is opened (``open_regular``)."""
        from pipeline.backup.openfile import open_regular  # here: no-change runs open none

        try:
            opened = open_regular(path)
        except OSError as exc:
            return self._unreadable(node, exc, warn)
        if opened is None:
            warn(f"{node.path}: no longer a regular file; skipped")
            return False
        fd, st = opened
        try:
            node.size, node.mtime_ns, node.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
            node.inode, node.mode = st.st_ino, stat.S_IMODE(st.st_mode)
            node.content = self._chunks(fd, st, deliver)
            node.size = sum(n for _, n in node.content)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                warn(f"{node.path}: changed while being read; the backup holds it as read, "
                     "run the backup again for a consistent copy")
            return True
        except OSError as exc:
            return self._unreadable(node, exc, warn)
        finally:
            os.close(fd)

    @staticmethod
    def _unreadable(node: fmt.Node, exc: OSError, warn: Warn) -> bool:
        if exc.errno == errno.ENOENT:
            warn(f"{node.path}: vanished during the backup; skipped")
        else:
            warn(f"{node.path}: cannot read ({exc.strerror}); skipped")
        return False

    def _chunks(self, fd: int, st: os.stat_result, deliver: Deliver) -> fmt.Content:
        """Holes are looked for only where ``sparse.may_have_holes`` (2 syscalls a file
        saved on the rest)."""
        from pipeline.sparse import data_ranges, is_zero, may_have_holes  # no-change: unread

        size = st.st_size

        content: fmt.Content = []

        def zeros(n: int) -> None:
            if n <= 0:
                return
            if content and content[-1][0] is None:
                content[-1] = (None, content[-1][1] + n)
            else:
                content.append((None, n))
            deliver(None, None, n)

        pos = 0
        shrunk = False
        for start, end in data_ranges(fd, size) if may_have_holes(st) else [(0, size)]:
            zeros(start - pos)
            pos = start
            pieces: Iterator[bytes | memoryview]
            if end - start <= self.params.min:          # one chunk whatever the data
                pieces = iter((os.pread(fd, end - start, start),))
            elif end - start <= self.params.max:
                # small: one read, and the chunks are views of it (no copy; the bytes are
                # immutable, so a view stays valid for as long as a stage holds it)
                data = os.pread(fd, end - start, start)
                pieces = (data if c.length == len(data) else c.data
                          for c in self._cdc().cut_buf(data))
            else:
                # large: the stream chunker reuses its buffer, so each chunk is copied out
                pieces = (bytes(c.data) for c in self._cdc().cut_stream(_Range(fd, start, end)))
            for piece in pieces:
                if is_zero(piece):
                    zeros(len(piece))
                else:
                    cid = self.chunk_id(piece)
                    content.append((cid, len(piece)))
                    deliver(cid, piece, len(piece))
                pos += len(piece)
            if pos < end:                            # the file shrank under us
                shrunk = True
                break
        if not shrunk:
            zeros(size - pos)                        # a trailing hole
        return content
