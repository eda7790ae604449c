"""Walk the staging tree and list the regular files to seed; reads no file data.

Sync and free of trio: prep's feeder process runs it, and so do the count
(``python -m pipeline.prep.scan``), preview and the page-blob pre-check.  The walk
is depth-first with each directory's entries sorted by their name bytes, so two
runs over the same tree list the same files in the same order (``--resume`` and
the journal rely on that).  Only the directories on the current path are held in
memory, each as a sorted list of names, never the whole tree: millions of files
cost no more than the largest directory.

Names are bytes on Linux, and every path we keep becomes a blob name: one that
``names.blob_for`` refuses (not UTF-8, a control character, a backslash, too
long with the virtual directory, ...) is skipped and reported through
``on_skip`` with the reason, and so is a directory no file name beneath could
fix (once, not per file).  Skipping here, before a byte is written, is what
keeps a drive importable: import refuses a drive holding such a name.  The
path handed to ``on_skip`` for a name that is not UTF-8 is surrogate-escaped
(``os.fsdecode``); ``names.show`` prints it.  Symbolic links are never followed
and, like fifos, sockets and devices, are skipped and reported through
``on_skip``.  Paths are opened
whole, so Linux's PATH_MAX (4096 with the NUL) keeps every relative path
within ``format.MAX_NAME_BYTES``; a deeper tree is ``BadInput`` (name too
long) at the directory that overflows.

A cluster worker walks only its shard, ``[lo, hi)`` of that order (paths compared as
tuples of their components' bytes): on the way down to ``lo`` each directory's earlier
names are dropped before anything is stat'ed or listed, and on the path to ``hi`` its
later ones, so a worker lists the directories on those two paths plus those its range
holds, never the whole tree.  Without bounds the walk is prep's, unchanged.
"""

from __future__ import annotations

import bisect
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline import names
from pipeline.errors import BadInput

__all__ = ["SkipCallback", "SourceFile", "scan", "totals"]

SkipCallback = Callable[[str, str], None]
"""``on_skip(relpath, reason)``: told about every entry that is not seeded."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One regular file under the staging root, as ``lstat`` saw it during the scan."""

    path: str
    """Relative POSIX path under the root ("dir a/ü.txt"): a valid blob name (names.blob_for)."""
    size: int
    mtime_ns: int
    mode: int
    """Permission bits only: ``st_mode & 0o7777``."""


_SPECIAL = (
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind(mode: int) -> str:
    for test, name in _SPECIAL:
        if test(mode):
            return name
    return f"special file (mode {stat.S_IFMT(mode):#o})"


def _show(path: bytes) -> str:
    """A printable form of a path for messages; undecodable bytes become \\xNN."""
    return path.decode("utf-8", "backslashreplace")


def _os_error(path: bytes, what: str, e: OSError) -> BadInput:
    if isinstance(e, PermissionError):
        return BadInput(
            f"{_show(path)!r}: cannot {what}: permission denied; "
            "grant read access or remove it from staging"
        )
    return BadInput(
        f"{_show(path)!r}: cannot {what}: {e.strerror or e}; fix it or remove it from staging"
    )


def _list(path: bytes) -> list[bytes]:
    """The names in directory ``path``, sorted by bytes; the scandir handle is closed on return."""
    with os.scandir(path) as it:
        names = [entry.name for entry in it]
    names.sort()
    return names


def _open_root(root: str | os.PathLike[str]) -> bytes:
    broot = os.fsencode(root)
    try:
        st = os.stat(broot)  # the root may be a symlink to a directory: the operator chose it
    except FileNotFoundError:
        raise BadInput(
            f"{_show(broot)!r}: staging directory does not exist; check the path"
        ) from None
    except OSError as e:
        raise _os_error(broot, "open the staging directory", e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{_show(broot)!r}: staging location is not a directory; give a directory")
    return broot


Key = tuple[bytes, ...]


def path_key(path: str) -> Key:
    """``path``'s place in the walk's order: its components' bytes, compared as a tuple."""
    return tuple(os.fsencode(path).split(b"/"))


def scan(root: str | os.PathLike[str], on_skip: SkipCallback | None = None,
         vdir: str = "", lo: str | None = None, hi: str | None = None) -> Iterator[SourceFile]:
    """Every regular file under ``root`` whose blob name (under ``vdir``, the dstdir's
    virtual directory) is valid, depth-first, each level sorted by name bytes; with
    ``lo``/``hi`` only those whose ``path_key`` is in ``[lo, hi)`` (None: unbounded),
    and ``on_skip`` hears only of entries in that range.

    A bad root (missing, not a directory, unreadable) raises ``BadInput`` here,
    before anything starts; the rest is lazy and raises ``BadInput`` at the
    entry that causes it.  An entry that vanishes between listing and ``lstat``
    is skipped with reason "vanished during scan".
    """
    broot = _open_root(root)
    bounds = _Bounds(None if lo is None else path_key(lo), None if hi is None else path_key(hi))
    if bounds.lo is not None and bounds.hi is not None and bounds.lo >= bounds.hi:
        return iter(())
    try:
        top = _list(broot)
    except OSError as e:
        raise _os_error(broot, "list directory", e) from None
    return _walk(broot, top, on_skip, vdir, bounds)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """A walk's range: ``lo`` included, ``hi`` excluded, None: open on that side."""

    lo: Key | None
    hi: Key | None

    def trim(self, names: list[bytes], depth: int, on_lo: bool, on_hi: bool) -> list[bytes]:
        """The sorted ``names`` of a directory at ``depth`` that can hold paths in range:
        on ``lo``'s path the names before its component go, on ``hi``'s those after
        (and its own, when it is ``hi``'s last)."""
        start, end = 0, len(names)
        if on_lo and self.lo is not None:
            start = bisect.bisect_left(names, self.lo[depth])
        if on_hi and self.hi is not None:
            last = depth == len(self.hi) - 1
            cut = bisect.bisect_left if last else bisect.bisect_right
            end = cut(names, self.hi[depth])
        return names if (start, end) == (0, len(names)) else names[start:end]

    def below_lo(self, name: bytes, depth: int) -> bool:
        """Whether entry ``name`` of a directory on ``lo``'s path is a proper prefix of
        ``lo``: before it, only a directory to pass through."""
        return self.lo is not None and depth + 1 < len(self.lo) and name == self.lo[depth]

    def toward_hi(self, name: bytes, depth: int) -> bool:
        """Whether entry ``name`` of a directory on ``hi``'s path is on it too."""
        return self.hi is not None and name == self.hi[depth]


_STAT_BATCH = 256  # names of one directory lstat'ed together


def _lstat_many(paths: list[bytes]) -> list[tuple[int, int, int] | OSError]:
    """(mode, size, mtime_ns) or the OSError, per path.  Plain ``os.lstat``: in the
    single-threaded feeder a GIL-holding batch through libc measured no faster."""
    out: list[tuple[int, int, int] | OSError] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError as e:
            out.append(e)
            continue
        out.append((st.st_mode, st.st_size, st.st_mtime_ns))
    return out


def _entries(dirpath: bytes, names: list[bytes]
             ) -> Iterator[tuple[bytes, bytes, tuple[int, int, int] | OSError]]:
    """(name, full path, lstat result) of each name, lstat'ed a batch at a time."""
    for i in range(0, len(names), _STAT_BATCH):
        chunk = names[i:i + _STAT_BATCH]
        fulls = [os.path.join(dirpath, name) for name in chunk]
        yield from zip(chunk, fulls, _lstat_many(fulls), strict=True)


def _walk(
    broot: bytes, top: list[bytes], on_skip: SkipCallback | None, vdir: str,
    bounds: _Bounds,
) -> Iterator[SourceFile]:
    # One frame per directory on the current path: its relpath prefix, its entries, its
    # depth and whether it lies on lo's and on hi's path (both False when unbounded).
    on_lo, on_hi = bounds.lo is not None, bounds.hi is not None
    stack = [("", _entries(broot, bounds.trim(top, 0, on_lo, on_hi)), 0, on_lo, on_hi)]
    while stack:
        prefix, entries, depth, on_lo, on_hi = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            continue
        name, full, st = item
        passing = on_lo and bounds.below_lo(name, depth)
        if passing and (isinstance(st, OSError) or not stat.S_ISDIR(st[0])):
            continue  # before lo, and no directory holding it: another worker's
        if isinstance(st, OSError):
            if isinstance(st, FileNotFoundError):
                if on_skip is not None:
                    on_skip(prefix + _show(name), "vanished during scan")
                continue
            raise _os_error(full, "stat", st)
        mode, size, mtime_ns = st
        is_dir, is_reg = stat.S_ISDIR(mode), stat.S_ISREG(mode)
        if not (is_dir or is_reg):
            if on_skip is not None:
                reason = "symbolic link (not followed)" if stat.S_ISLNK(mode) else _kind(mode)
                on_skip(prefix + _show(name), reason)
            continue
        try:
            rel = prefix + name.decode("utf-8")
        except UnicodeDecodeError:  # names refuses it below, with the reason
            rel = prefix + name.decode("utf-8", "surrogateescape")
        if is_dir:
            why = names.dir_problem(rel, vdir)
            if why is not None:
                if on_skip is not None and not passing:
                    on_skip(rel + "/", f"no blob name can start with it: {why}; rename it "
                            "(nothing under it is copied)")
                continue
            # _list reads the whole directory and closes it: no descriptor stays open across yields.
            try:
                sub = _list(full)
            except FileNotFoundError:
                if on_skip is not None and not passing:
                    on_skip(rel, "vanished during scan")
                continue
            except OSError as e:
                raise _os_error(full, "list directory", e) from None
            sub_hi = on_hi and bounds.toward_hi(name, depth)
            sub = bounds.trim(sub, depth + 1, passing, sub_hi)
            stack.append((rel + "/", _entries(full, sub), depth + 1, passing, sub_hi))
            continue
        try:
            names.blob_for(rel, vdir)
        except names.InvalidName as e:
            if on_skip is not None:
                on_skip(rel, f"it cannot be a blob name: {e.why}; rename it")
            continue
        yield SourceFile(rel, size, mtime_ns, stat.S_IMODE(mode))


def totals(root: str | os.PathLike[str], on_skip: SkipCallback | None = None) -> tuple[int, int]:
    """(file count, total bytes) of what ``scan`` would yield: the denominator for progress/ETA."""
    count = size = 0
    for f in scan(root, on_skip):
        count += 1
        size += f.size
    return count, size


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.prep.scan ROOT``: print "FILES BYTES" of ``totals(ROOT)``.

    prep counts its work in this separate process so that the walk's lstat
    calls, cold-cache disk reads among them, never hold prep's GIL.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipeline.prep.scan ROOT", file=sys.stderr)
        return 2
    try:
        files, size = totals(args[0])
    except BadInput as e:
        print(e, file=sys.stderr)
        return e.exit_code
    print(files, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
