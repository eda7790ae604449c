"""A directory standing in for a storage account: the embedded default.

Layout under ROOT::

    ROOT/CONTAINER/BLOB                        committed blobs ('/' in a name = subdirectories)
    ROOT/.pipeline-partial/CONTAINER/BLOB      blobs being assembled: sparse, ``size`` bytes
    ROOT/.pipeline-partial/.put/               temporary files of put()
    ROOT/.pipeline-attrs/CONTAINER/BLOB        a blob's metadata and properties (JSON)

No container name starts with '.', so the partial tree never collides with a
container.  Zero cells are holes.  write_part() and commit() are not synced
one by one: sync() makes everything so far durable with one syncfs, and the
importer calls it before it records delivered parts or a finished drive.
Commit is a rename, so a crash leaves either the old blob or the new one;
put() (markers, logs) is durable by itself.  The only shared state is the file system, so any number
of threads (or processes) may call in at once.  Unlike Azure, a file system
cannot hold both a blob ``a`` and a blob ``a/b``; that pair is refused.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence

from pipeline import atomic, faults
from pipeline.drive.blob import BlobType
from pipeline.errors import BadInput, filesystem_of, is_no_space
from pipeline.storage.base import (
    CELL,
    GET_LIMIT,
    BlobInfo,
    BlobTooLarge,
    InvalidName,
    PartsMissing,
    StorageUnavailable,
    cells_of,
    check_blob_name,
    check_container_name,
    check_part,
    md5_of,
)

PARTIAL = ".pipeline-partial"
ATTRS = ".pipeline-attrs"  # blobs' metadata and properties: ATTRS/CONTAINER/BLOB, JSON
PUT_TMP = ".put"
# Private, whatever the umask: an account holds customers' data and backup repositories
# (keys, packs, snapshots); who else may read it is the operator's call (chmod, ACLs).
FILE_MODE = 0o600
DIR_MODE = 0o700
NAME_MAX = 255
PATH_MAX = 4096
_UNAVAILABLE = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTCONN, errno.ESTALE, errno.EFBIG}


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _LIBC.syncfs  # noqa: B018 - present on Linux (glibc 2.14+)
except (OSError, AttributeError):
    _LIBC = None


_FALLOC_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


if _LIBC is not None:
    _LIBC.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def _zero(fd: int, cells: Sequence[int], size: int) -> None:
    """Make these grid cells of a ``size``-byte file read as zeros: one hole punched per run
    of adjacent cells (nearly free where it is a hole already; a sparse image has millions
    of such cells), zeros written where the file system cannot punch."""
    runs: list[list[int]] = []
    for offset in sorted(cells):
        end = min(offset + CELL, size)
        if runs and runs[-1][1] == offset:
            runs[-1][1] = end
        elif offset < end:
            runs.append([offset, end])
    for start, end in runs:
        if _LIBC is not None and _LIBC.fallocate(fd, _FALLOC_PUNCH, start, end - start) == 0:
            continue
        for offset in range(start, end, CELL):
            os.pwrite(fd, bytes(min(CELL, end - offset)), offset)


def _copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from ``src`` to ``dst``, in the kernel where it can (a reflink
    on XFS or btrfs); the file's zero cells are zeroed by commit."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, done)
            if n == 0:
                break
            done += n
    except OSError:  # a file system or kernel without it
        pass
    while done < size:
        chunk = os.pread(src, min(CELL, size - done), done)
        if not chunk:
            break
        done += os.pwrite(dst, chunk, done)
    if done < size:
        os.ftruncate(dst, size)


def _umask() -> int:
    """The process's umask (read at import, before any thread: setting it is the only way)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _umask()
_FCHMOD = bool(FILE_MODE & _UMASK)  # a umask that would take bits FILE_MODE wants
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
_DIRECT_ALIGN = 4096  # O_DIRECT wants offsets, lengths and the buffer aligned to blocks
_DIRECT_MIN = 256 << 10  # smaller parts go through the page cache
_thread = threading.local()


def _direct_buffer(n: int) -> memoryview:
    """A page-aligned buffer of at least ``n`` bytes, this thread's own (anonymous mmap)."""
    buf: mmap.mmap | None = getattr(_thread, "buf", None)
    if buf is None or len(buf) < n:
        buf = _thread.buf = mmap.mmap(-1, max(n, CELL))
    return memoryview(buf)


@functools.lru_cache(maxsize=64)
def _checked_container(container: str) -> None:
    check_container_name(container)  # InvalidName if not


def _check_names(container: str, blob: str | None) -> None:
    """The container and blob names checked (InvalidName if not).

    Once per name and call: an import names each of tens of thousands of blobs once or
    twice, so a cache of names missed (its upkeep cost more than the rules), and the
    segment lengths are counted only for a name longer than NAME_MAX bytes in all.
    """
    _checked_container(container)
    if blob is None:
        return
    check_blob_name(blob)
    if len(blob) > NAME_MAX // 4 and len(blob.encode()) > NAME_MAX and any(
            len(seg.encode()) > NAME_MAX for seg in blob.split("/")):
        raise InvalidName("blob", blob, f"a path segment is longer than {NAME_MAX} "
                          "bytes, which the local file system refuses")


class LocalStorage:
    """Blobs as files under one directory (see the module docstring)."""

    # The importer's writers and committers: measured on 2 cores, more threads doing small
    # calls only hand the GIL to each other (futex wake-ups were a quarter of the CPU and
    # commits took 1.3 s with one thread, 3.8 s with two, 9.3 s with four, for 30,000 files).
    writers = 1

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.name = self.root
        self._dirs: set[str] = set()  # folders made or seen by write_part/commit (_ensure_dir)

    # -- paths ------------------------------------------------------------------------------

    def _path(self, container: str, blob: str | None = None, *, partial: bool = False) -> str:
        _check_names(container, blob)
        # A checked name has no empty, '.' or '..' segment: plain concatenation is the join.
        top = f"{self.root}/{PARTIAL}/{container}" if partial else f"{self.root}/{container}"
        path = top if blob is None else f"{top}/{blob}"
        if len(os.fsencode(path)) + len(PARTIAL) + 2 >= PATH_MAX:
            raise InvalidName("blob", blob or container, "the path is too long for the local "
                              "file system")
        return path

    def _clash(self, container: str, blob: str) -> BadInput:
        return BadInput(f"{self.root}: blob {container}/{blob} clashes with a blob named like "
                        "one of its parent directories (a file system cannot hold both 'a' "
                        "and 'a/b'); import into Azure or another container")

    def _makedirs(self, path: str, durable: bool = True) -> None:
        """mkdir -p with DIR_MODE whatever the umask; concurrent creators both succeed.

        ``durable=False`` leaves the new directories' entries to the next ``sync()``
        (one syncfs covers them): parts and commits are durable only from there anyway,
        and an fsync of the parent per new directory cost an import of many small files
        in many folders a second in 2,000 fsyncs.
        """
        if os.path.isdir(path):
            return
        if path == self.root:
            raise self._missing()
        parent = os.path.dirname(path)
        self._makedirs(parent, durable)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None
            return
        os.chmod(path, DIR_MODE)
        if durable:
            atomic.fsync_dir(parent)

    def _ensure_dir(self, path: str) -> None:
        """``_makedirs(path, durable=False)``, once per folder and instance: an import of
        many small files asks for each folder hundreds of times (a stat each)."""
        if path not in self._dirs:
            self._makedirs(path, durable=False)
            self._dirs.add(path)

    @contextlib.contextmanager
    def _writing(self, container: str, blob: str) -> Iterator[None]:
        """Name/directory clashes are bad input; a full, failing or read-only disk is
        'unavailable' (exit 6: fix it and run again), never a traceback."""
        try:
            yield
        except OSError as exc:
            raise self._failed(exc, container, blob) from None

    def _failed(self, exc: OSError, container: str, blob: str) -> Exception:
        """What ``_writing`` raises for ``exc`` (``exc`` itself if it is none of those)."""
        if isinstance(exc, (NotADirectoryError, IsADirectoryError)):
            return self._clash(container, blob)
        if is_no_space(exc):  # which filesystem: the account may be a directory on /
            return StorageUnavailable(self.root, f"no space left on {filesystem_of(self.root)}",
                                      "free space there")
        if exc.errno in _UNAVAILABLE:
            return StorageUnavailable(self.root, exc.strerror or str(exc),
                                      "free space or fix the directory")
        return exc

    # -- Storage ----------------------------------------------------------------------------

    def _missing(self) -> BadInput:
        return BadInput(f"storage directory {self.root} does not exist; create it "
                        f"(mkdir -p {self.root}) or give another --to")

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise self._missing()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BadInput(f"storage directory {self.root} is not writable; fix its "
                           "permissions or give another --to")
        with self._writing(PARTIAL, PUT_TMP):
            self._makedirs(os.path.join(self.root, PARTIAL, PUT_TMP))

    def ensure_container(self, container: str) -> None:
        path = self._path(container)
        with self._writing(container, ""):
            self._makedirs(path)

    def write_part(self, container: str, blob: str, blob_type: BlobType, size: int, offset: int,
                   data: bytes, *, copy: str | None = None) -> None:
        """``copy`` is not needed here: a partial never expires, so every cell a drive's
        marker says was delivered is still in it, over whatever a seeding copy of an
        older blob (``_open_partial``) put there."""
        self._write_part(container, blob, blob_type, size, offset, data, keep=True)

    def write_own_part(self, container: str, blob: str, blob_type: BlobType, size: int,
                       offset: int, data: bytes) -> None:
        """``write_part`` of a blob whose every cell the caller writes or zeroes before it
        commits it (the importer: a file whole on the drive): a new partial starts sparse,
        not as a copy of a blob committed with this size (``_open_partial``), whose bytes
        those cells all replace.  Re-importing a session over an account holding same-size
        versions of its files copied each multi-part file's old blob first."""
        self._write_part(container, blob, blob_type, size, offset, data, keep=False)

    def _write_part(self, container: str, blob: str, blob_type: BlobType, size: int,
                    offset: int, data: bytes, keep: bool) -> None:
        check_part(blob_type, size, offset, data)
        path = self._path(container, blob, partial=True)
        with self._writing(container, blob):
            fd = self._open_partial(path, size, whole=offset == 0 and len(data) == size,
                                    final=self._path(container, blob) if keep else None)
            try:
                view = memoryview(data).cast("B")
                done = self._write_direct(fd, view, offset)
                while done < len(view):
                    done += os.pwrite(fd, view[done:], offset + done)
            finally:
                os.close(fd)

    # False once the file system refused O_TMPFILE; linking one in goes through /proc.
    _tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

    def write_whole(self, container: str, blob: str, blob_type: BlobType, data: bytes) -> None:
        """``write_part`` of the whole blob then ``commit``, in one call: the bytes go into
        an unnamed file (``O_TMPFILE``) that is linked in under the blob's name once
        written, so a crash leaves the old blob or the new one whole, as a commit does.

        Why: a small file imported as a part then a commit took six system calls and two
        names (create the partial, chmod, write, close, stat, rename); this takes four
        (open, write, link, close), and no partial name is ever made.
        """
        size = len(data)
        check_part(blob_type, size, 0, data)
        if not self._tmpfile:
            self.write_part(container, blob, blob_type, size, 0, data)
            self.commit(container, blob, blob_type, size, ())
            return
        final = self._path(container, blob)
        folder = final[:final.rindex("/")]
        # Written out rather than ``with self._writing``: this runs once per small file
        # (the generator-based context manager was ~1.5 us of each ~30 us of Python).
        try:
            if folder not in self._dirs:
                self._ensure_dir(folder)  # sync() makes it durable, as commits
            try:
                fd = os.open(folder, _TMPFILE_FLAGS, FILE_MODE)
            except FileNotFoundError:  # its folder removed since _ensure_dir saw it
                self._dirs.discard(folder)
                self._ensure_dir(folder)
                fd = os.open(folder, _TMPFILE_FLAGS, FILE_MODE)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                LocalStorage._tmpfile = False  # a file system without O_TMPFILE
                self.write_whole(container, blob, blob_type, data)
                return
            try:
                if _FCHMOD:
                    os.fchmod(fd, FILE_MODE)  # the umask does not decide
                if size >= _DIRECT_MIN:
                    view = memoryview(data).cast("B")
                    done = self._write_direct(fd, view, 0)
                    while done < size:
                        done += os.pwrite(fd, view[done:], done)
                else:
                    done = os.pwrite(fd, data, 0)
                    if done < size:
                        view = memoryview(data).cast("B")
                        while done < size:
                            done += os.pwrite(fd, view[done:], done)
                faults.reached("before_whole_link")
                self._link(fd, final)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(exc, container, blob) from None

    def _link(self, fd: int, final: str) -> None:
        """Name the unnamed file ``fd`` ``final``, replacing a blob there (linked under a
        temporary name, then renamed over it: a link cannot replace)."""
        src = f"/proc/self/fd/{fd}"
        # A dir fd given, os.link calls linkat(..., AT_SYMLINK_FOLLOW), which links the
        # file the /proc entry names; without one it calls link(), which would link the
        # /proc symlink itself (EXDEV).  The path is absolute: the dir fd is not used.
        try:
            os.link(src, final, src_dir_fd=fd, follow_symlinks=True)
            return
        except FileExistsError:
            pass
        link = functools.partial(os.link, src_dir_fd=fd, follow_symlinks=True)
        tmpdir = f"{self.root}/{PARTIAL}/{PUT_TMP}"
        self._ensure_dir(tmpdir)
        tmp = f"{tmpdir}/{secrets.token_hex(16)}"
        link(src, tmp)
        try:
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # Large parts past the page cache (O_DIRECT): off.  With one writer thread, a direct
    # write blocks it until the disk has the part, and every small file behind it waits;
    # buffered, the kernel writes back while the writer goes on (the syncs behind the
    # uploaders, then the one before the marker, make it durable).  Cold, fresh ext4,
    # interleaved: synthetic 1 GiB (30,034 files) faster in 6 of 6 rounds (e.g. 15.0 ->
    # 9.7 s), real 2 GiB 2 of 3 and a tie (median 15.2 -> 12.3 s).  It paid when the
    # page cache had to be reclaimed for each write (warm runs, before the single
    # writer); set True to have it (False again once a file system refuses O_DIRECT).
    _direct = False

    def _write_direct(self, fd: int, view: memoryview, offset: int) -> int:
        """Write the whole 4 KiB blocks of a large part past the page cache (O_DIRECT);
        return how many bytes were written (the caller writes the rest, buffered).

        Why: an import writes every raw byte once and never reads it back; buffered,
        each page must first be taken from the page cache (reclaiming the data the
        drive was read into) and is written out again by the next ``sync()``, which
        then waits for all of it.  Direct, the disk takes the bytes as they come and
        ``sync()`` has only metadata left.  Through one aligned buffer per thread.
        """
        n = len(view) - len(view) % _DIRECT_ALIGN
        if not self._direct or n < _DIRECT_MIN or offset % _DIRECT_ALIGN:
            return 0
        buf = _direct_buffer(n)
        buf[:n] = view[:n]
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            done = 0
            while done < n:
                done += os.pwrite(fd, buf[done:n], offset + done)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            LocalStorage._direct = False  # a file system without O_DIRECT (tmpfs, some FUSE)
            return 0
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return n

    def _open_partial(self, path: str, size: int, whole: bool = False,
                      final: str | None = None) -> int:
        """Open (creating, sparse, ``size`` bytes) the partial file; ``whole``: the part
        about to be written is the whole file, so the write itself sets its size.

        A new partial of a blob ``final`` committed with this size starts as its copy:
        the cells not written again keep the committed bytes, as an Azure block blob's
        committed blocks stand in for blocks not staged again.  An import killed after it
        committed a file that spans drives, then run again, delivers only this drive's
        cells; a sparse new partial committed over the blob made the other drives'
        cells zeros (logged "ok").  Cells delivered or zero are written or zeroed anyway."""
        folder = os.path.dirname(path)
        self._ensure_dir(folder)  # sync() makes parts durable
        if final is not None and not whole:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                self._seed(path, final, size)
            else:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
                return fd
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags, FILE_MODE)
            except FileNotFoundError:  # its folder removed since _ensure_dir saw it
                self._dirs.discard(folder)
                self._ensure_dir(folder)
                fd = os.open(path, flags, FILE_MODE)
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        else:
            os.fchmod(fd, FILE_MODE)
            if not whole:
                os.ftruncate(fd, size)
            return fd
        if os.fstat(fd).st_size != size:   # racing creator, or a size change: last size wins
            os.ftruncate(fd, size)
        return fd

    def _seed(self, path: str, final: str, size: int) -> None:
        """Make the partial ``path`` a copy of the committed blob ``final`` if that is a
        file of ``size`` bytes (copied aside, then linked in: a thread that made the
        partial meanwhile, and wrote into it, keeps its own)."""
        try:
            src = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return
            tmpdir = os.path.join(self.root, PARTIAL, PUT_TMP)
            self._ensure_dir(tmpdir)
            tmp = os.path.join(tmpdir, secrets.token_hex(16))
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                _copy(src, dst, size)
            finally:
                os.close(dst)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        finally:
            os.close(src)

    def commit(self, container: str, blob: str, blob_type: BlobType, size: int,
               zero_offsets: Sequence[int], *, copy: str | None = None) -> None:
        partial = self._path(container, blob, partial=True)
        final = self._path(container, blob)
        with self._writing(container, blob):
            self._ensure_dir(os.path.dirname(final))  # sync() makes commits durable
            try:
                if zero_offsets:
                    fd = os.open(partial, os.O_RDWR | os.O_CLOEXEC)
                elif os.stat(partial).st_size == size:  # nothing to zero: no open needed
                    fd = -1
                else:
                    fd = os.open(partial, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if self.size(container, blob) == size:
                    return                          # committed already: idempotent
                zeros = set(zero_offsets)
                missing = [o for o in cells_of(size) if o not in zeros]
                if missing:
                    raise PartsMissing(self.root, f"{container}/{blob}", missing) from None
                self._replace(final, b"", size)     # all zeros: one sparse file
                return
            if fd >= 0:
                try:
                    if os.fstat(fd).st_size != size:
                        os.ftruncate(fd, size)
                    _zero(fd, zero_offsets, size)  # an older copy's bytes there are not the file's
                finally:
                    os.close(fd)
            try:
                os.replace(partial, final)
            except FileNotFoundError:               # another thread committed it just now
                if self.size(container, blob) != size:
                    raise
                return

    def sync(self) -> None:
        """Make every part and commit so far durable: one syncfs of the account's file
        system instead of an fsync per part, file and directory (measured: per-part fsyncs
        held import to 39 MB/s)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _LIBC is None or _LIBC.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def delete(self, container: str, blob: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._path(container, blob))

    def discard(self, container: str, blob: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._path(container, blob, partial=True))

    def size(self, container: str, blob: str) -> int | None:
        try:
            st = os.stat(self._path(container, blob))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def read(self, container: str, blob: str, offset: int, length: int) -> bytes:
        """Raises FileNotFoundError when the blob is absent."""
        path = self._path(container, blob)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except (NotADirectoryError, IsADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "no such blob", path) from None
        with f:
            chunks = []
            while length > 0:
                got = os.pread(f.fileno(), length, offset)
                if not got:
                    break
                chunks.append(got)
                offset += len(got)
                length -= len(got)
            return b"".join(chunks)

    def put(self, container: str, blob: str, data: bytes) -> None:
        final = self._path(container, blob)
        with self._writing(container, blob):
            self._makedirs(os.path.dirname(final))
            self._replace(final, data, len(data))

    def get(self, container: str, blob: str, limit: int = GET_LIMIT) -> bytes | None:
        """Only a regular file is a blob (as ``size`` and ``list`` say): a FIFO put at its
        name would block the open and the read for ever, /dev/zero never ends."""
        path = self._path(container, blob)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):    # a directory, a FIFO, a device
            os.close(fd)
            return None
        with open(fd, "rb") as f:
            if st.st_size > limit:
                raise BlobTooLarge(self.name, f"{container}/{blob}", st.st_size, limit)
            data = f.read(limit + 1)
        if len(data) > limit:               # it grew since the fstat
            raise BlobTooLarge(self.name, f"{container}/{blob}", len(data), limit)
        return data

    def list(self, container: str, prefix: str = "") -> builtins.list[str]:
        top = self._path(container)
        out: builtins.list[str] = []

        def walk(path: str, rel: str) -> None:
            try:
                entries = builtins.list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                return
            for e in entries:
                name = rel + e.name
                if e.is_dir(follow_symlinks=False):
                    sub = name + "/"
                    if sub.startswith(prefix) or prefix.startswith(sub):
                        walk(e.path, sub)
                elif e.is_file() and name.startswith(prefix):
                    out.append(name)

        walk(top, "")
        return sorted(out)

    # -- blob attributes (WAImportExport's metadata and properties) ------------------------

    def _attrs_path(self, container: str, blob: str) -> str:
        """``ROOT/.pipeline-attrs/CONTAINER/BLOB``: a tree shaped like the blobs', so any
        blob name that fits the one fits the other."""
        return f"{self.root}/{ATTRS}/{self._path(container, blob)[len(self.root) + 1:]}"

    def set_attributes(self, container: str, blob: str, blob_type: BlobType,
                       metadata: Sequence[tuple[str, str]],
                       properties: Sequence[tuple[str, str]]) -> None:
        """Kept beside the blob as JSON (the form docs/FORMAT.md gives): ``{"blob_type":
        "BlockBlob"|"PageBlob", "metadata": {name: value}, "properties": {name: value}}``,
        Content-MD5 always among the properties."""
        size = self.size(container, blob)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, "no such blob", f"{container}/{blob}")
        props = dict(properties)
        if "Content-MD5" not in props:
            props["Content-MD5"] = md5_of(
                lambda offset, n: self.read(container, blob, offset, n), size)
        data = json.dumps({"blob_type": "PageBlob" if blob_type is BlobType.PAGE
                           else "BlockBlob", "metadata": dict(metadata), "properties": props},
                          indent=1).encode()
        final = self._attrs_path(container, blob)
        self._ensure_dir(os.path.dirname(final))
        # Renamed into place like a commit, and like a commit made durable by sync() (the
        # importer's syncfs before its marker), not by an fsync per blob.
        tmp = os.path.join(self.root, PARTIAL, PUT_TMP, secrets.token_hex(16))
        self._ensure_dir(os.path.dirname(tmp))
        with open(tmp, "xb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
        os.replace(tmp, final)

    def get_attributes(self, container: str, blob: str) -> BlobInfo | None:
        """The blob's attributes; one without any (no dataset row gave it) has none."""
        path = self._path(container, blob)
        if self.size(container, blob) is None:
            return None
        try:
            with open(self._attrs_path(container, blob), "rb") as f:
                doc = json.loads(f.read(1 << 20))
        except (FileNotFoundError, NotADirectoryError):
            doc = {"metadata": {}, "properties": {}}
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: its attributes file is unreadable ({exc}); import the "
                           "drive again to write it anew") from None
        btype = BlobType.PAGE if doc.get("blob_type") == "PageBlob" else BlobType.BLOCK
        return BlobInfo(btype, dict(doc.get("metadata", {})), dict(doc.get("properties", {})))

    # -- helpers ----------------------------------------------------------------------------

    def _replace(self, final: str, data: bytes, size: int) -> None:
        """Write a temporary file (``size`` bytes, ``data`` first), fsync, rename into place."""
        tmpdir = os.path.join(self.root, PARTIAL, PUT_TMP)
        self._makedirs(tmpdir)
        tmp = os.path.join(tmpdir, secrets.token_hex(16))
        atomic.replace_file(tmp, final, data, FILE_MODE, size)


