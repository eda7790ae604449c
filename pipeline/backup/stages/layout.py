"""Restore's layout, before and after the fetch: the skeleton, then the finish.

Before: directories (0700 until the end) and every file of several chunks or with
holes at its full size under its temporary name, so that the fetch threads only
``pwrite``; zero runs are never written, so sparse files come back sparse.  After:
fifos and device nodes, the hard links of files restored, symlinks (last, so nothing
is written through them), the marker removed, then each directory's own metadata
(owner, xattrs and ACLs, mode, times), once nothing more is written inside it: a
default ACL set earlier would leak into the files restored under it.  Both are sync:
call them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from pipeline.backup import encoding as fmt
from pipeline.backup.stages.files import CREATE, MARKER, TEMP_NAME, Files, fs_path, space


def skeleton(files: Files, resuming: bool) -> None:
    """Directories, and every file of several chunks or with holes at its size under its
    temporary name; files without chunks are finished here.  ``resuming``: clear the
    temporary files an interrupted restore left."""
    with space(files.target):
        made: set[bytes] = set()
        for n in files.nodes:
            if n.type == "dir":
                p = fs_path(files.root, n.path)
                os.makedirs(p, 0o700, exist_ok=True)
                made.add(p)
                if resuming:
                    clear_temps(p)
        for f in files.files:
            parent = os.path.dirname(f.final)
            if parent not in made:              # a directory the walk could not list
                os.makedirs(parent, 0o700, exist_ok=True)
                made.add(parent)
                if resuming:
                    clear_temps(parent)
            if f.done or f.whole:
                continue
            fd = os.open(f.tmp, CREATE, 0o600)
            try:
                os.ftruncate(fd, f.node.size)
            finally:
                os.close(fd)
            if f.left == 0:
                files.settle(f)


def finish(files: Files) -> None:
    """Special files and hard links, symlinks last (nothing is written through them), the
    marker removed, then each directory's metadata, deepest first so that setting one
    does not move its parent's times."""
    with space(files.target):
        for i, n in enumerate(files.nodes):
            if n.type in ("fifo", *fmt.DEVICES):
                _special(files, n, files.temp(n, i))
        for ln in files.links:
            files.link(ln)
        for i, n in enumerate(files.nodes):
            if n.type != "symlink":
                continue
            tmp = files.temp(n, i)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.fsencode(n.target), tmp)
            files.set_meta(tmp, n)
            os.rename(tmp, fs_path(files.root, n.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(files.root, MARKER.encode()))
        dirs = sorted((n for n in files.nodes if n.type == "dir" and n.path != fmt.ROOT),
                      key=lambda n: -n.path.count("/"))
        dirs += [n for n in files.nodes if n.type == "dir" and n.path == fmt.ROOT]
        for n in dirs:
            files.set_meta(fs_path(files.root, n.path), n)


_KIND = {"fifo": (stat.S_IFIFO, "fifo"), "chardev": (stat.S_IFCHR, "character device"),
         "blockdev": (stat.S_IFBLK, "block device")}


def _special(files: Files, n: fmt.Node, tmp: bytes) -> None:
    """A fifo or device node made under its temporary name, then renamed into place; one
    this user may not make (a device node, unless root) is a warning naming it."""
    kind, what = _KIND[n.type]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.mknod(tmp, kind | 0o600, n.rdev)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        dev = f" {os.major(n.rdev)}:{os.minor(n.rdev)}" if n.type != "fifo" else ""
        need = " (making device nodes needs root)" if exc.errno == errno.EPERM else ""
        files.warn(f"{n.path}: {what}{dev} not restored: {exc.strerror}{need}")
        return
    files.set_meta(tmp, n)
    os.rename(tmp, fs_path(files.root, n.path))


def clear_temps(directory: bytes) -> None:
    """Temporary files an interrupted restore left in ``directory``."""
    with os.scandir(directory) as it:
        stale = [e.path for e in it if TEMP_NAME.match(e.name) and not e.is_dir(
            follow_symlinks=False)]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
