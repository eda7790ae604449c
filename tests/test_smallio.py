"""Small files read in batches (open all, WILLNEED, then read): the same answers as one by one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.drive import codec, format
from pipeline.errors import BadInput
from pipeline.prep import read, smallio
from pipeline.prep.session import FileJob


def test_available_on_linux_glibc() -> None:
    """CI runs on Linux: the batched path must be there, not silently replaced."""
    assert smallio.AVAILABLE


def _files(tmp_path: Path) -> list[Path]:
    out = []
    for name, data in [("empty", b""), ("one", b"x"), ("text", b"hello\n" * 500),
                       ("zeros", bytes(3000)), ("mixed", os.urandom(700) + bytes(900))]:
        p = tmp_path / name
        p.write_bytes(data)
        out.append(p)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.seek(200_000)
        f.write(b"end")
    out.append(sparse)
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_batch_matches_os(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    before = _open_fds()
    got = smallio.read_batch([(str(p), p.stat().st_size) for p in paths], read._OPEN_FLAGS)
    assert _open_fds() == before
    for p, one in zip(paths, got, strict=True):
        st_ = p.stat()
        assert isinstance(one, smallio.Opened)
        assert (one.data, one.mode, one.size, one.mtime_ns) == (
            p.read_bytes(), st_.st_mode, st_.st_size, st_.st_mtime_ns)


def test_open_batch_then_read_is_read_batch(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    files = [(str(p), p.stat().st_size) for p in paths]
    before = _open_fds()
    batch = smallio.open_batch(files, read._OPEN_FLAGS)
    assert _open_fds() == before + len(paths)  # held open between the two steps
    got = batch.read()
    assert _open_fds() == before
    assert [(o.data, o.size) for o in got] == [  # type: ignore[union-attr]
        (o.data, o.size) for o in smallio.read_batch(files, read._OPEN_FLAGS)]


def test_open_batch_closed_unread_leaks_nothing(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    before = _open_fds()
    batch = smallio.open_batch([(str(p), p.stat().st_size) for p in paths], read._OPEN_FLAGS)
    batch.close()
    batch.close()  # twice is harmless
    assert _open_fds() == before


def test_read_batch_asks_one_byte_more(tmp_path: Path) -> None:
    """A file that grew since the scan shows it: the read is not cut at the old size."""
    p = tmp_path / "grew"
    p.write_bytes(b"abcdef")
    [one] = smallio.read_batch([(str(p), 3)], read._OPEN_FLAGS)
    assert isinstance(one, smallio.Opened) and one.data == b"abcd" and one.size == 6


def _jobs(paths: list[Path], sizes: list[int] | None = None,
          mtimes: list[int] | None = None) -> list[FileJob]:
    jobs = []
    for i, p in enumerate(paths):
        st_ = os.lstat(p) if os.path.lexists(p) else None
        size = sizes[i] if sizes else (st_.st_size if st_ else 5)
        mtime = mtimes[i] if mtimes else (st_.st_mtime_ns if st_ else 0)
        entry = format.FileEntry(i + 1, p.name, "v/" + p.name, size, mtime, 0o644)
        jobs.append(FileJob(entry, str(p)))
    return jobs


def _both(jobs: list[FileJob], monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    fast = read.read_many(jobs)
    with monkeypatch.context() as m:
        m.setattr(smallio, "AVAILABLE", False)
        slow = read.read_many(jobs)
    return fast, slow


def _same(fast: list, slow: list) -> None:
    assert [type(x) for x in fast] == [type(x) for x in slow]
    assert [str(x) if isinstance(x, Exception) else x for x in fast] == [
        str(x) if isinstance(x, Exception) else x for x in slow]


def test_read_many_same_results_as_os(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _files(tmp_path)
    fast, slow = _both(_jobs(paths), monkeypatch)
    _same(fast, slow)
    assert fast[0] is None and fast[3] is None  # empty and all-zero files store nothing
    assert fast[2] == b"hello\n" * 500


def test_read_many_changes_since_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a file can change between scan and read is FileChanged, worded the same."""
    grown, touched, gone, linked, fifo = (tmp_path / n for n in
                                          ("grown", "touched", "gone", "linked", "fifo"))
    grown.write_bytes(b"12345678")
    touched.write_bytes(b"abc")
    linked.symlink_to(touched)
    os.mkfifo(fifo)
    paths = [grown, touched, gone, linked, fifo]
    st_t = touched.stat()
    jobs = _jobs(paths, sizes=[4, 3, 5, 3, 0],
                 mtimes=[grown.stat().st_mtime_ns, st_t.st_mtime_ns - 1, 0, 0, 0])
    before = _open_fds()
    fast, slow = _both(jobs, monkeypatch)
    assert _open_fds() == before
    _same(fast, slow)
    assert all(isinstance(x, read.FileChanged) for x in fast)
    assert "size 4 became 8" in str(fast[0])
    assert "modification time" in str(fast[1])
    assert "disappeared" in str(fast[2])
    assert "symbolic link" in str(fast[3])
    assert "no longer a regular file" in str(fast[4])


def _fake_open(refuse: int, only_with_noatime: bool = False):  # type: ignore[no-untyped-def]
    real = smallio._open
    calls: list[int] = []

    def fake(path: bytes, flags: int) -> int:
        calls.append(flags)
        if not only_with_noatime or flags & os.O_NOATIME:
            raise OSError(refuse, os.strerror(refuse), path)
        return real(path, flags)
    return fake, calls


def test_permission_denied_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    fake, _ = _fake_open(errno.EACCES)
    monkeypatch.setattr(smallio, "_open", fake)
    [got] = smallio.read_batch([(str(p), 1)], read._OPEN_FLAGS)
    assert isinstance(got, smallio.Failed) and got.op == "open"
    with pytest.raises(BadInput, match="permission denied; grant read access"):
        read.read_many(_jobs([p]))


def test_noatime_refused_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel allows O_NOATIME only to the owner: EPERM retries without it."""
    p = tmp_path / "theirs"
    p.write_bytes(b"data")
    fake, calls = _fake_open(errno.EPERM, only_with_noatime=True)
    monkeypatch.setattr(smallio, "_open", fake)
    assert read.read_many(_jobs([p])) == [b"data"]
    assert [bool(f & os.O_NOATIME) for f in calls] == [True, False]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=5000),
                          st.integers(1, 5000).map(bytes),
                          st.binary(min_size=1, max_size=40).map(lambda b: b * 200)),
                max_size=20),
       st.sampled_from([1, 3, 19]))
def test_pack_many_is_pack_of_each(raws: list[bytes], level: int) -> None:
    assert codec.pack_many(raws, level) == [codec.pack(r, level) for r in raws]


def test_pack_many_refuses_empty() -> None:
    with pytest.raises(ValueError):
        codec.pack_many([b"x", b""])
