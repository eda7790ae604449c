"""The feeder process: its frames, what it sends for a tree, resume plans, errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pipeline.drive import codec, format
from pipeline.errors import BadInput
from pipeline.prep import feed, feedwire, read, scan, source
from pipeline.prep.feedwire import (
    AlreadyCommitted,
    Changed,
    End,
    InputError,
    Large,
    Message,
    Skipped,
    Small,
    Supersede,
)
from pipeline.prep.pack import Bundle
from pipeline.prep.session import Committed, FileJob, Planner, Session
from pipeline.progress import Stats

MiB = 1 << 20


# --------------------------------------------------------------------------- frames

_row = st.tuples(st.integers(1, 1 << 40), st.text(min_size=1, max_size=20),
                 st.text(min_size=1, max_size=20), st.integers(0, 1 << 20), st.integers(),
                 st.integers(0, 0o7777),
                 st.none() | st.sampled_from([c.value for c in format.Codec]),
                 st.binary(max_size=8), st.binary(max_size=200))
_messages = st.one_of(
    st.builds(Small, st.lists(_row, max_size=5), st.floats(0, 1), st.floats(0, 1)),
    st.builds(Supersede, st.integers(1, 1 << 40)),
    st.builds(AlreadyCommitted, st.integers(0, 1 << 20), st.integers(0, 1 << 40)),
    st.builds(Skipped, st.text(max_size=50), st.text(max_size=50)),
    st.builds(Changed, st.text(max_size=50), st.text(max_size=50)),
    st.builds(InputError, st.text(max_size=50)),
    st.just(End()))


@given(messages=st.lists(_messages, max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10))
def test_frames_round_trip_whatever_the_chunking(messages: list[Message],
                                                 cuts: list[int]) -> None:
    stream = b"".join(feedwire.encode_frame(m) for m in messages)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = feedwire.FrameReader()
    got = []
    for a, b in zip(points, points[1:], strict=False):
        got += reader.feed(stream[a:b])
    reader.eof()
    assert got == messages


def test_stream_cut_inside_a_frame_is_an_error() -> None:
    frame = feedwire.encode_frame(Small([], 0.0, 0.0))
    reader = feedwire.FrameReader()
    assert reader.feed(frame[:-1]) == []
    with pytest.raises(ValueError, match="inside a frame"):
        reader.eof()


def test_absurd_frame_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="broken"):
        feedwire.FrameReader().feed((feedwire.MAX_FRAME + 1).to_bytes(4, "little") + b"x")


# --------------------------------------------------------------------------- what it sends


def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "a/empty": b"",
        "a/text.log": b"line of a log\n" * 300,
        "a/zeros": bytes(5000),
        "b/random": os.urandom(3000),
        "b/one-extent": os.urandom(MiB),
        "big/image.vhd": os.urandom(1000) + bytes(2 * MiB) + b"tail",
        "z/\u00fc name.txt": b"non-ASCII name\n",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "a" / "link").symlink_to("text.log")
    os.mkfifo(root / "b" / "fifo")
    return files


def _plan(root: Path, planner: Planner | None = None) -> feedwire.Plan:
    return feedwire.Plan(str(root), 1, planner or Planner(os.path.join(str(root), ""), "vdir/"))


def _run(plan: feedwire.Plan) -> list[Message]:
    sent: list[Message] = []
    feed.feed(plan, sent.append)
    return sent


def _small_rows(sent: list[Message]) -> dict[str, tuple[Any, ...]]:
    return {row[1]: row for m in sent if isinstance(m, Small) for row in m.rows}


def _of(kind: type, sent: list[Message]) -> list[Any]:
    return [m for m in sent if isinstance(m, kind)]


def test_tree_becomes_small_rows_large_jobs_and_skips(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    sent = _run(_plan(tmp_path))
    assert sent[-1] == End()
    assert set(_of(Skipped, sent)) == {
        Skipped("a/link", "symbolic link (not followed)"), Skipped("b/fifo", "fifo")}
    rows = _small_rows(sent)
    large = [m.job for m in _of(Large, sent)]
    assert sorted(rows) == sorted(p for p, d in files.items() if len(d) <= MiB)
    assert [j.entry.path for j in large] == ["big/image.vhd"]
    e = large[0].entry
    assert (e.blob, e.size, large[0].abspath, large[0].skip) == (
        "vdir/big/image.vhd", len(files[e.path]), str(tmp_path / e.path), frozenset())
    for path, (_, _, blob, size, mtime_ns, mode, c, xxh3, stored, attrs) in rows.items():
        assert attrs is None  # a dataset's files carry their row's (tests/test_waimport*.py)
        st_ = (tmp_path / path).stat()
        assert (blob, size, mtime_ns, mode) == ("vdir/" + path, st_.st_size, st_.st_mtime_ns,
                                                st_.st_mode & 0o7777)
        if not size:
            assert (c, stored) == (None, b"")
            continue
        assert codec.unpack(format.Codec(c), stored, size, xxh3) == files[path]
    assert rows["a/zeros"][6] == format.Codec.ZERO
    assert rows["a/text.log"][6] == format.Codec.ZSTD
    assert rows["b/random"][6] == format.Codec.RAW
    # File ids follow the walk order, from the planner's next id.
    ids = {r[1]: r[0] for r in rows.values()} | {e.path: e.file_id}
    walk = [f.path for f in scan.scan(tmp_path)]
    assert [ids[p] for p in walk] == list(range(1, len(walk) + 1))


def test_batches_are_bounded(tmp_path: Path) -> None:
    n = read.SMALL_BATCH * 2 + 5
    for i in range(n):
        (tmp_path / f"f{i:04d}").write_bytes(b"x" * 100)
    (tmp_path / "g-big1").write_bytes(os.urandom(MiB))  # batches also close on bytes
    for i in range(5):
        (tmp_path / f"h{i}").write_bytes(os.urandom(MiB))
    sent = _run(_plan(tmp_path))
    batches = [m.rows for m in _of(Small, sent)]
    assert sum(map(len, batches)) == n + 6
    assert max(map(len, batches)) == read.SMALL_BATCH
    assert all(sum(r[3] for r in b[:-1]) < read.SMALL_BYTES for b in batches)


def test_reads_one_batch_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch n+1 is opened (its disk reads started) before batch n is read and sent."""
    n = read.SMALL_BATCH * 3 + 5
    for i in range(n):
        (tmp_path / f"f{i:04d}").write_bytes(b"x" * 100)
    events: list[tuple[str, int]] = []
    real = read.Prefetch

    class Recorded(real):  # type: ignore[misc,valid-type]
        def __init__(self, jobs: list[FileJob]) -> None:
            super().__init__(jobs)
            self.n = sum(1 for e in events if e[0] == "open")
            events.append(("open", self.n))

        def read(self) -> list[Any]:
            events.append(("read", self.n))
            return super().read()

    monkeypatch.setattr(read, "Prefetch", Recorded)
    sent = _run(_plan(tmp_path))
    assert sum(len(m.rows) for m in _of(Small, sent)) == n
    assert events == [("open", 0), ("open", 1), ("read", 0), ("open", 2), ("read", 1),
                      ("open", 3), ("read", 2), ("read", 3)]


def test_bad_input_mid_walk_closes_the_batch_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(read.SMALL_BATCH + 3):
        (tmp_path / f"a{i:04d}").write_bytes(b"x")
    real = scan.scan

    def scan_then_fail(root: str, on_skip: Any = None, vdir: str = "", *bounds: Any) -> Any:
        yield from real(root, on_skip, vdir, *bounds)
        raise BadInput("'z': cannot list directory: permission denied")  # as root, chmod won't

    monkeypatch.setattr(scan, "scan", scan_then_fail)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(BadInput, match="permission denied"):
        _run(_plan(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before


def test_names_import_would_refuse_are_skip_messages(tmp_path: Path) -> None:
    """Not UTF-8, a newline, a backslash: each a Skipped(path, reason), and the walk goes on."""
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"z-bad\xff"))
    (tmp_path / "z-bad\xff".encode("latin-1").decode("utf-8", "surrogateescape")
     / "inner").write_bytes(b"x")
    (tmp_path / "a\nb").write_bytes(b"x")
    (tmp_path / "back\\slash").write_bytes(b"x")
    (tmp_path / "ok").write_bytes(b"x")
    sent = _run(_plan(tmp_path))
    skips = sorted(m.path for m in _of(Skipped, sent))
    assert skips == sorted(["a\nb", "back\\slash", os.fsdecode(b"z-bad\xff/")])
    assert [r[1] for m in _of(Small, sent) for r in m.rows] == ["ok"]
    assert sent[-1] == End()


def test_resume_plan_skips_supersedes_and_resumes(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    stat = {p: (tmp_path / p).stat() for p in files}
    committed = {
        # wholly on a drive: nothing to send but the count
        "a/text.log": Committed(7, stat["a/text.log"].st_size, stat["a/text.log"].st_mtime_ns,
                                {0}),
        # changed since: superseded, then sent again under a new id
        "b/random": Committed(8, 3000, stat["b/random"].st_mtime_ns - 1, {0}),
        # one of three extents committed: prep reads the rest
        "big/image.vhd": Committed(9, stat["big/image.vhd"].st_size,
                                   stat["big/image.vhd"].st_mtime_ns, {MiB}),
    }
    planner = Planner(os.path.join(str(tmp_path), ""), "vdir/", committed, next_id=20)
    sent = _run(_plan(tmp_path, planner))
    assert AlreadyCommitted(1, len(files["a/text.log"])) in sent
    rows = _small_rows(sent)
    assert "a/text.log" not in rows
    sup = sent.index(Supersede(8))
    assert rows["b/random"][0] >= 20
    assert sup < next(i for i, m in enumerate(sent) if isinstance(m, Small) and any(
        r[1] == "b/random" for r in m.rows))
    [large] = [m.job for m in _of(Large, sent)]
    assert (large.entry.file_id, large.entry.path, large.skip) == (
        9, "big/image.vhd", frozenset({MiB}))


def test_long_resume_walk_reports_as_it_goes(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Over committed files only, the feeder still writes now and then: progress for the
    operator, and a failed write (EPIPE) that ends it if prep is gone."""
    monkeypatch.setattr(feed, "COMMITTED_EVERY", 3)
    committed = {}
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
        st = (tmp_path / f"f{i}").stat()
        committed[f"f{i}"] = Committed(i + 1, i, st.st_mtime_ns, {0})
    planner = Planner(os.path.join(str(tmp_path), ""), "vdir/", committed, next_id=20)
    sent = _run(_plan(tmp_path, planner))
    counts = _of(AlreadyCommitted, sent)
    assert [m.files for m in counts] == [3, 3, 2]
    assert sum(m.size for m in counts) == sum(range(8))
    assert sent[-1] == End()


def test_file_changed_after_the_walk_is_reported_not_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stays").write_bytes(b"same")
    (tmp_path / "moves").write_bytes(b"before")
    real = scan.scan

    def scan_then_change(root: str, on_skip: Any = None, vdir: str = "", *bounds: Any) -> Any:
        for src in real(root, on_skip, vdir, *bounds):
            if src.path == "moves":
                (tmp_path / "moves").write_bytes(b"after, and longer")
            yield src

    monkeypatch.setattr(feed.scan, "scan", scan_then_change)
    sent = _run(_plan(tmp_path))
    [changed] = _of(Changed, sent)
    assert changed.path == "moves" and "size 6 became 17" in changed.message
    assert set(_small_rows(sent)) == {"stays"}


def test_bad_name_does_not_stop_the_walk(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"1")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"bad\xff"))
    sent = _run(_plan(tmp_path))
    assert [m.path for m in _of(Skipped, sent)] == [os.fsdecode(b"bad\xff/")]
    assert _small_rows(sent) and sent[-1] == End()


# --------------------------------------------------------------------------- the process


def _process(plan: feedwire.Plan) -> tuple[int, list[Message]]:
    done = subprocess.run([sys.executable, "-m", "pipeline.prep.feed"],
                          input=pickle.dumps(plan), capture_output=True, check=False)
    reader = feedwire.FrameReader()
    messages = reader.feed(done.stdout)
    reader.eof()
    return done.returncode, messages


def test_process_sends_the_same_as_the_function(tmp_path: Path) -> None:
    _tree(tmp_path)
    code, messages = _process(_plan(tmp_path))
    assert code == 0
    expected = _run(_plan(tmp_path))
    def strip(m: Message) -> Any:  # busy times differ
        return m.rows if isinstance(m, Small) else m

    assert list(map(strip, messages)) == list(map(strip, expected))


def test_process_reports_bad_input_as_a_message(tmp_path: Path) -> None:
    code, messages = _process(_plan(tmp_path / "gone"))
    assert code == BadInput.exit_code
    assert isinstance(messages[-1], InputError) and "does not exist" in messages[-1].message


def test_process_sends_a_non_utf8_name_as_a_skip(tmp_path: Path) -> None:
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff"), "wb") as f:
        f.write(b"x")
    code, messages = _process(_plan(tmp_path))
    assert code == 0 and messages[-1] == End()
    [skip] = _of(Skipped, messages)
    assert os.fsencode(skip.path) == b"bad\xff" and "not valid UTF-8" in skip.reason


def test_process_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """Trio starts the feeder from a worker thread, which exits after 10 s idle; the
    feeder must go on (PR_SET_PDEATHSIG killed it then: its "parent" is that thread)."""
    _tree(tmp_path)
    started: list[tuple[subprocess.Popen[bytes], bytes]] = []

    def spawn() -> None:  # like trio.run_process: start it, talk to it, then go idle
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.prep.feed"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(pickle.dumps(_plan(tmp_path)))
        proc.stdin.close()
        started.append((proc, proc.stdout.read(1)))  # the feeder is well under way

    spawner = threading.Thread(target=spawn)
    spawner.start()
    spawner.join()
    proc, first = started[0]
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert feedwire.FrameReader().feed(first + out)[-1] == End()


def test_process_ends_when_prep_is_killed(tmp_path: Path) -> None:
    """prep killed (SIGKILL: no clean-up) while the feeder waits on a full pipe."""
    for i in range(3000):  # some 3 MiB of frames: more than the pipe holds
        (tmp_path / f"f{i}").write_bytes(os.urandom(1024))
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-m', 'pipeline.prep.feed'], "
        "stdin=subprocess.PIPE, stdout=subprocess.PIPE); "
        "p.stdin.write(sys.stdin.buffer.read()); p.stdin.close(); "
        "print(p.pid, flush=True); time.sleep(600)")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write(pickle.dumps(_plan(tmp_path)))
    parent.stdin.close()
    pid = int(parent.stdout.readline())
    time.sleep(0.5)
    assert _alive(pid), "the feeder should be waiting on its full pipe"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the feeder outlived prep"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_process_imports_neither_trio_nor_numpy() -> None:
    """The feeder starts beside prep and counts against its memory: it stays small."""
    code = ("import sys, pipeline.prep.feed; "
            "print(sorted(m for m in ('trio', 'numpy', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- prep's side


async def _drain(plan: feedwire.Plan, tmp_path: Path) -> tuple[list[Any], list[Any], Stats]:
    session = Session(tmp_path, "c/vdir", [])
    session.planner = plan.planner
    jobs_tx, jobs_rx = trio.open_memory_channel[FileJob](100)
    packed_tx, packed_rx = trio.open_memory_channel[Bundle](100)
    stats = Stats()
    await source.run(plan, session, jobs_tx, packed_tx, trio.CapacityLimiter(1), stats,
                     lambda p, r: None, lambda p, m: None)  # closes both channels
    return ([j async for j in jobs_rx], [b async for b in packed_rx], stats)


async def test_prep_side_builds_bundles_and_jobs(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    jobs, bundles, stats = await _drain(_plan(tmp_path), tmp_path)
    assert [j.entry.path for j in jobs] == ["big/image.vhd"]
    got = {p.file.path: p for b in bundles for p in b}
    assert sorted(got) == sorted(p for p, d in files.items() if len(d) <= MiB)
    for path, item in got.items():
        if item.extent is None:
            assert files[path] == b""
            continue
        assert codec.unpack(item.extent.codec, item.stored, item.extent.raw_len,
                            item.extent.xxh3) == files[path]
    assert stats.files_done == len(got)
    assert stats.bytes_read == sum(len(files[p]) for p in got)
    assert stats.zero_bytes == len(files["a/zeros"])


async def test_feeder_that_dies_is_an_error_not_an_early_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(source.sys, "executable", "false")  # exits 1, sends nothing
    with pytest.raises(source.FeederFailed, match="exit code 1"):
        await _drain(_plan(tmp_path), tmp_path)


async def test_feeder_error_message_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        await _drain(_plan(tmp_path / "gone"), tmp_path)
