"""A path the walk saw as a regular file, swapped for a device node before it is read:
neither the read-ahead nor the reader opens the device (opening one can act: a tape
rewinds), they skip it with the reader's one warning.  Whether the device was opened is
seen by inotify's IN_OPEN on the node (an O_PATH open makes no event: it runs no
driver's open), checked to work first by an open of our own.  mknod needs root: the test
fails loudly without it."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from pipeline.backup import encoding as fmt
from pipeline.backup import walk
from pipeline.backup.openfile import open_regular
from pipeline.backup.stages import readahead
from pipeline.backup.stages.messages import NodeBatch

IN_OPEN = 0x20
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Opens:
    """inotify IN_OPEN events on one path, read without blocking."""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert _libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN) >= 0

    def count(self) -> int:
        n = 0
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            at = 0
            while at < len(data):
                _, mask, _, name_len = struct.unpack_from("iIII", data, at)
                n += bool(mask & IN_OPEN)
                at += 16 + name_len

    def close(self) -> None:
        os.close(self.fd)


def _swapped(tmp_path: Path) -> tuple[Path, fmt.Node]:
    """A tree of one file, walked, then the file replaced by /dev/null's device numbers."""
    assert os.geteuid() == 0, "this test needs root (mknod a character device)"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"data" * 100)
    node = list(walk.walk(src, lambda m: None))[1]
    assert (node.path, node.type) == ("a", "file")
    (src / "a").unlink()
    os.mknod(src / "a", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return src, node


def test_a_device_swapped_in_after_the_walk_is_never_opened(tmp_path: Path) -> None:
    src, node = _swapped(tmp_path)
    opens = _Opens(src / "a")
    try:
        os.close(os.open(src / "a", os.O_RDONLY))       # the watch sees an open
        assert opens.count() == 1
        asked = readahead.ask(str(src), NodeBatch(0, [walk.Walked(node, False)]))
        warned: list[str] = []
        reader = walk.FileReader(fmt.ChunkerParams(min=256, avg=1024, max=4096), 0,
                                 lambda b: bytes(32))
        done = reader.read(src / "a", node, lambda *a: None, warned.append)
        assert (asked, done, warned) == (0, False, ["a: no longer a regular file; skipped"])
        assert opens.count() == 0                       # neither opened the device
    finally:
        opens.close()


def test_open_regular_opens_the_file_it_checked(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"content")
    opened = open_regular(f)
    assert opened is not None
    fd, st = opened
    try:
        assert os.read(fd, 100) == b"content"
        assert (st.st_ino, st.st_size) == (os.stat(f).st_ino, 7)
        assert os.fstat(fd).st_ino == st.st_ino
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "x"
    if kind == "symlink":
        (tmp_path / "target").write_bytes(b"t")
        os.symlink(tmp_path / "target", p)              # not followed, even to a file
    elif kind == "fifo":
        os.mkfifo(p)                                    # no writer: an open would wait
    else:
        p.mkdir()
    assert open_regular(p) is None


def test_open_regular_raises_what_open_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "gone")
    f = tmp_path / "secret"
    f.write_bytes(b"s")
    f.chmod(0)
    pid = os.fork()
    if pid == 0:                                        # as nobody: no read permission
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                open_regular(f)
            except PermissionError as exc:
                code = 0 if exc.errno == errno.EACCES else 2
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
