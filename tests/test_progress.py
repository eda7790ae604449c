"""Progress counters and renderers: fake clocks, captured streams, no sleeping."""

from __future__ import annotations

import io
import itertools
import json
import sys
import threading
from typing import Any

import pytest
import trio
from rich.console import Console

from pipeline import progress
from pipeline.progress import (
    JsonRenderer,
    QuietRenderer,
    Renderer,
    Stats,
    TtyRenderer,
    format_summary,
    make_renderer,
    ticker,
)

MB = 1_000_000
MiB = 1 << 20


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_stats(clock: FakeClock, **kw: Any) -> Stats:
    return Stats(clock=clock, timer=clock, **kw)


def busy_run(clock: FakeClock) -> Stats:
    """A finished run: 4 files, 100 MB in 10 s on two drives."""
    stats = make_stats(clock, files_total=4, bytes_total=100 * MB)
    stats.add_drive("sdb", capacity=64 * MiB, seq=1).used = 64 * MiB
    stats.drives["sdb"].state = "full"
    stats.add_drive("sdc", capacity=128 * MiB, seq=2).used = 16 * MiB
    stats.current_drive = "sdc"
    for stage, sec in (("read", 2.0), ("pack", 15.0)):
        with stats.timed(stage):
            clock.advance(sec / 2)
        with stats.timed(stage):
            pass
    clock.now = stats.started + 10.0
    stats.files_done, stats.bytes_read, stats.extents = 4, 100 * MB, 100
    stats.bytes_stored, stats.bytes_written, stats.zero_bytes = 40 * MB, 41 * MB, 20 * MB
    stats.raw_stored = 60 * MB  # one fifth of what was read did not fit on the drives
    stats.busy["read"], stats.busy["pack"] = 2.0, 15.0
    return stats


# --------------------------------------------------------------------------- Stats


def test_counters_and_snapshot_are_plain_json(clock: FakeClock) -> None:
    stats = busy_run(clock)
    snap = stats.statistics()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["files_done"] == 4 and snap["bytes_read"] == 100 * MB
    assert snap["bytes_stored"] == 40 * MB and snap["bytes_written"] == 41 * MB
    assert snap["elapsed_s"] == 10.0
    assert snap["bytes_per_s"] == 10 * MB
    assert snap["eta_s"] == 0.0
    assert snap["current_drive"] == "sdc"
    assert [d["name"] for d in snap["drives"]] == ["sdb", "sdc"]
    assert snap["drives"][0] == {"name": "sdb", "seq": 1, "capacity": 64 * MiB,
                                 "used": 64 * MiB, "state": "full"}
    assert snap["busy_s"] == {"read": 2.0, "pack": 15.0}


def test_add_drive_returns_the_known_drive(clock: FakeClock) -> None:
    stats = make_stats(clock)
    first = stats.add_drive("sdb", capacity=100)
    assert stats.add_drive("sdb", capacity=999) is first
    first.used += 25
    assert first.fill() == 0.25
    assert stats.add_drive("img", capacity=0).fill() is None


def test_timed_accumulates_per_stage_even_on_error(clock: FakeClock) -> None:
    stats = make_stats(clock)
    with stats.timed("pack"):
        clock.advance(1.5)
    with stats.timed("pack"):
        clock.advance(0.5)
    with pytest.raises(RuntimeError), stats.timed("write"):
        clock.advance(0.25)
        raise RuntimeError("EIO")
    assert stats.busy == {"pack": 2.0, "write": 0.25}


def test_timed_from_worker_threads_loses_nothing() -> None:
    local = threading.local()

    def timer() -> float:  # per-thread ticks: every block lasts exactly 1.0
        local.n = getattr(local, "n", 0) + 1
        return float(local.n)

    stats = Stats(timer=timer)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a racy += would lose updates
    try:
        def work() -> None:
            for _ in range(20_000):
                with stats.timed("pack"):
                    pass

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert stats.busy["pack"] == 80_000.0


def test_timed_uses_perf_counter_by_default() -> None:
    stats = Stats()
    with stats.timed("journal"):
        sum(range(1000))
    assert stats.busy["journal"] >= 0.0


def test_rate_overall_and_recent(clock: FakeClock) -> None:
    stats = make_stats(clock, bytes_total=1000 * MB)
    assert stats.rate() == 0.0 and stats.recent_rate() == 0.0  # no time has passed
    for _ in range(100):  # 10 s at 10 MB/s, sampled at 10 Hz
        clock.advance(0.1)
        stats.bytes_read += MB
        stats.recent_rate()
    assert stats.rate() == pytest.approx(10 * MB)
    assert stats.recent_rate() == pytest.approx(10 * MB)
    for _ in range(60):  # then 6 s at 1 MB/s: the recent rate follows, the overall lags
        clock.advance(0.1)
        stats.bytes_read += MB // 10
        stats.recent_rate()
    assert stats.recent_rate() == pytest.approx(1 * MB, rel=0.05)
    assert stats.rate() == pytest.approx(106 * MB / 16)
    assert len(stats._samples) <= progress._SAMPLES + 2


def test_recent_rate_without_samples_in_between(clock: FakeClock) -> None:
    stats = make_stats(clock)
    clock.advance(2.0)
    stats.bytes_read = 4 * MB
    assert stats.recent_rate() == pytest.approx(2 * MB)  # since start: window not yet full


def test_eta(clock: FakeClock) -> None:
    stats = make_stats(clock)
    clock.advance(1)
    stats.bytes_read = 10 * MB
    assert stats.eta() is None  # bytes_total unknown
    stats.bytes_total = 100 * MB
    assert stats.eta(rate=0.0) is None
    assert stats.eta(rate=10 * MB) == pytest.approx(9.0)
    assert stats.eta() == pytest.approx(9.0)  # recent rate: 10 MB in 1 s
    stats.skipped_bytes = 40 * MB  # resume: skipped bytes count as done, but cost no time
    assert stats.bytes_done == 50 * MB
    assert stats.eta(rate=10 * MB) == pytest.approx(5.0)
    stats.bytes_read = 70 * MB
    assert stats.eta() == 0.0


# --------------------------------------------------------------------------- summary


def test_format_summary(clock: FakeClock) -> None:
    stats = busy_run(clock)
    lines = format_summary(stats)
    text = "\n".join(lines)
    assert "10.0 MB/s" in text  # decimal MB/s
    assert "95.4 MiB" in text  # 100e6 bytes read, binary units
    assert "4 of 4 files" in text
    # the ratio of the stored extents' payload to their own raw bytes (40 of 60 MB), not to
    # everything read (80 MB non-zero: part of it was cut off by a full drive)
    assert "57.2 MiB of data compressed to 38.1 MiB (67%)" in text
    assert "zeros    19.1 MiB" in text and "resumed" not in text
    assert any("sdb" in ln and "64.0 MiB of 64.0 MiB (100%)" in ln and "full" in ln
               for ln in lines)
    assert any("sdc" in ln and "(12%)" in ln and "open" in ln for ln in lines)
    assert "busy" not in text  # the per-stage table is for tuning: --verbose
    assert format_summary(stats.statistics()) == lines  # a summary event's fields work too
    verbose = format_summary(stats, verbose=True)
    busy = {ln.split()[0]: ln.split()[-1] for ln in verbose
            if ln.startswith("  ") and " s " in ln}
    assert busy == {"pack": "150%", "read": "20%"}
    stats.skipped_bytes = 5 * MB
    assert any(ln.startswith("resumed  4.8 MiB already on the drives")
               for ln in format_summary(stats))


def test_format_summary_shows_only_drive_sizes(clock: FakeClock) -> None:
    snap = busy_run(clock).statistics()
    snap["drives"] = [{"seq": 1, "path": "/dev/sdb", "used": 10, "capacity": 0,
                       "state": "closed", "recovery_password": "111111-222222"}]
    text = "\n".join(format_summary(snap))
    assert "/dev/sdb" in text and "closed" in text
    assert "111111" not in text


def test_format_summary_of_an_empty_run(clock: FakeClock) -> None:
    lines = format_summary(make_stats(clock))
    assert lines and all(isinstance(ln, str) for ln in lines)


# --------------------------------------------------------------------------- JSON


def json_lines(out: str) -> list[dict[str, Any]]:
    lines = out.splitlines()
    objs = [json.loads(line) for line in lines]
    for obj in objs:
        assert isinstance(obj["type"], str) and obj["type"] in progress.EVENT_TYPES
        assert isinstance(obj["t"], float) and obj["t"] >= 0
    return objs


def test_json_lines_on_stdout_in_order(clock: FakeClock,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    stats = make_stats(clock, bytes_total=10 * MB)
    r = JsonRenderer(clock=clock)
    clock.advance(3.0)
    r.start("prep", staging="/data", drives=["a.img", "b.img"])
    for _ in range(5):
        clock.advance(0.5)
        stats.bytes_read += MB
        r.update(stats)
    r.event("drive_full", drive="a.img", next="b.img")
    r.event("warning", message="skipped /data/x: permission denied", path="/data/x")
    r.event("summary", **stats.statistics())
    r.event("exit", code=0, message="done")
    r.close()
    out, err = capsys.readouterr()
    assert err == ""
    objs = json_lines(out)
    types = [o["type"] for o in objs]
    assert types == ["start"] + ["progress"] * 5 + ["drive_full", "warning", "summary", "exit"]
    assert objs[0] == {"type": "start", "t": 0.0, "title": "prep", "staging": "/data",
                       "drives": ["a.img", "b.img"]}
    assert [o["t"] for o in objs[1:6]] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert objs[5]["bytes_read"] == 5 * MB and objs[5]["bytes_total"] == 10 * MB
    assert objs[5]["bytes_per_s_recent"] > 0 and "drives" in objs[5]
    assert objs[-1] == {"type": "exit", "t": 2.5, "code": 0, "message": "done"}
    assert out.endswith("\n") and len(out.splitlines()) == len(objs)


def test_json_progress_is_rate_limited(clock: FakeClock,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    stats = make_stats(clock)
    r = JsonRenderer(clock=clock, interval=0.5)
    r.start("prep")
    for _ in range(40):  # 5 s of updates at 8 Hz -> one progress line per 0.5 s
        r.update(stats)
        clock.advance(0.125)
    r.update(stats, force=True)  # the last one, forced
    r.event("warning", message="w")  # events are never rate-limited
    r.event("warning", message="w")
    objs = json_lines(capsys.readouterr().out)
    progress_t = [o["t"] for o in objs if o["type"] == "progress"]
    assert progress_t == [0.5 * i for i in range(10)] + [5.0]
    assert [o["type"] for o in objs][-2:] == ["warning", "warning"]


def test_json_fields_cannot_override_type_or_t(clock: FakeClock) -> None:
    buf = io.StringIO()
    r = JsonRenderer(stream=buf, clock=clock)
    r.event("warning", t="x", path=progress)  # odd values are stringified, not fatal
    obj = json.loads(buf.getvalue())
    assert obj["type"] == "warning" and obj["t"] == 0.0 and isinstance(obj["path"], str)


def test_json_survives_a_closed_pipe(clock: FakeClock) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    r = JsonRenderer(stream=Broken(), clock=clock)
    r.start("prep")
    r.update(make_stats(clock))
    r.close()  # nothing raised: the data path does not die with the reader


# --------------------------------------------------------------------------- TTY


def tty_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=160, color_system=None), buf


def test_tty_bar_shows_rate_files_and_drive(clock: FakeClock,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    console, buf = tty_console()
    stats = make_stats(clock, files_total=4, bytes_total=100 * MB)
    stats.add_drive("sdb-seed1", capacity=1000 * MiB, seq=1).used = 250 * MiB
    stats.current_drive = "sdb-seed1"
    with TtyRenderer(console=console) as r:
        r.start("prep [staging]")
        for _ in range(20):
            clock.advance(0.1)
            stats.bytes_read += MB
            r.update(stats)
        stats.files_done = 2
        r.update(stats)
        r.event("warning", message="skipped /data/x: permission denied")
        r.event("drive_full", drive="sdb-seed1")
    text = buf.getvalue()
    assert "MB/s" in text and "10.0 MB/s" in text
    assert "sdb-seed1 25% full" in text
    assert "2/4 files" in text
    assert "prep [staging]" in text  # no markup interpretation of titles
    assert "warning: skipped /data/x: permission denied" in text
    assert "drive_full: drive sdb-seed1 is full" in text
    assert "ETA" in text
    out, err = capsys.readouterr()
    assert out == ""


def test_tty_current_drive_with_detail(clock: FakeClock) -> None:
    console, buf = tty_console()
    stats = make_stats(clock)
    stats.add_drive("drive 1", capacity=100, seq=1).used = 100
    stats.add_drive("drive 12", capacity=100, seq=12).used = 50
    stats.current_drive = "drive 12 (/dev/sdc)"
    with TtyRenderer(console=console) as r:
        r.update(stats)
        stats.current_drive = "spare (not registered)"
        r.update(stats)
    assert "drive 12 (/dev/sdc) 50% full" in buf.getvalue()
    assert "spare (not registered)" in buf.getvalue()


def test_tty_unknown_total_and_summary(clock: FakeClock,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    console, buf = tty_console()
    stats = make_stats(clock)  # bytes_total = 0: unknown; no drive yet
    r = TtyRenderer(console=console)
    r.update(stats)  # before start(): starts itself
    clock.advance(1)
    stats.bytes_read = 3 * MiB
    r.update(stats)
    r.event("summary", **busy_run(clock).statistics())
    r.close()
    r.close()
    r.update(stats)  # after close: ignored
    text = buf.getvalue()
    assert "3.0 MiB" in text and "--:--" in text
    assert "4 of 4 files" in text and "compressed to" in text and "busy" not in text
    assert capsys.readouterr().out == ""


def test_tty_warning_colour_stays_on_its_line(clock: FakeClock) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system="standard")
    stats = make_stats(clock, bytes_total=10 * MB)
    with TtyRenderer(console=console) as r:
        r.start("prep")
        r.update(stats)
        r.event("warning", message="slow drive")
        r.update(stats)
    yellow = "\x1b[33m"
    assert yellow + "warning: slow drive" in buf.getvalue()
    assert buf.getvalue().count(yellow) == 1  # the bar under it is not painted yellow


def test_tty_default_console_is_stderr() -> None:
    r = TtyRenderer()
    assert r.console.stderr is True
    r.close()


# --------------------------------------------------------------------------- quiet


def test_quiet_prints_only_warnings_and_errors(clock: FakeClock,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    r = QuietRenderer()
    r.start("prep", staging="/data")
    r.update(make_stats(clock))
    r.event("drive_full", drive="sdb")
    r.event("warning", message="skipped x")
    r.event("error", message="EIO on sdb", drive="sdb")
    r.event("summary", files_done=1)
    r.event("exit", code=0)
    r.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["warning: skipped x", "error: EIO on sdb drive=sdb"]


# --------------------------------------------------------------------------- choice


def test_make_renderer_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(make_renderer(True, True)) is JsonRenderer
    assert type(make_renderer(True, False)) is JsonRenderer
    tty = make_renderer(False, True)
    assert type(tty) is TtyRenderer
    tty.close()
    assert type(make_renderer(False, False)) is QuietRenderer

    class FakeStderr(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stderr", FakeStderr(True))
    tty = make_renderer(False)
    assert type(tty) is TtyRenderer
    tty.close()
    monkeypatch.setattr("sys.stderr", FakeStderr(False))
    assert type(make_renderer(False)) is QuietRenderer
    monkeypatch.setattr("sys.stderr", None)
    assert type(make_renderer(False)) is QuietRenderer
    assert all(isinstance(make_renderer(j, t), Renderer) for j in (0, 1) for t in (0, 1))


# --------------------------------------------------------------------------- ticker


class CountingRenderer(Renderer):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def update(self, stats: Stats, *, force: bool = False) -> None:
        self.seen.append(stats.bytes_read)


async def test_ticker_updates_until_cancelled(autojump_clock: trio.abc.Clock) -> None:
    stats = Stats(clock=trio.current_time)
    renderer = CountingRenderer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, stats, renderer, 0.1)
        for _ in range(10):  # the "data path": bumps counters, never awaits the renderer
            await trio.sleep(0.25)
            stats.bytes_read += MB
        nursery.cancel_scope.cancel()
    assert 20 <= len(renderer.seen) <= 26
    assert renderer.seen == sorted(renderer.seen) and renderer.seen[-1] >= 9 * MB
    count = len(renderer.seen)
    await trio.sleep(1)
    assert len(renderer.seen) == count  # stopped for good


async def test_ticker_drives_json_rate_limit(autojump_clock: trio.abc.Clock) -> None:
    buf = io.StringIO()
    stats = Stats(clock=trio.current_time)
    renderer = JsonRenderer(stream=buf, clock=trio.current_time, interval=0.5)
    renderer.start("prep")
    with trio.move_on_after(5.05):
        await ticker(stats, renderer)  # 10 Hz ticks, at most 2 lines a second
    times = [o["t"] for o in json_lines(buf.getvalue()) if o["type"] == "progress"]
    assert 9 <= len(times) <= 10
    assert all(b - a >= 0.5 - 1e-6 for a, b in itertools.pairwise(times))
