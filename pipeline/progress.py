"""Progress: counters the stages bump, and renderers that show them.

Progress never blocks the data (STYLE.md §3).  Stages bump plain attributes on
one `Stats` object from the Trio thread: no locks and no awaits, because all
tasks share that thread.  A `ticker` task calls `renderer.update(stats)` about
10 times a second.  Rendering is synchronous and cheap, and no stage ever waits
for it.

Streams (STYLE.md §5): the TTY bar and human lines go to stderr.  Only
`--json` writes to stdout, as JSON Lines.  This module knows no stage and sees
no secrets: a renderer shows only the fields it is given.

Units: rates are decimal megabytes per second (1e6, as in `perf/`); sizes are
binary (KiB/MiB/GiB).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeVar

from pipeline.errors import PipelineError, printable, worst

if TYPE_CHECKING:  # rich is imported when a bar is drawn: --json and quiet runs start faster
    from rich.console import Console

Clock = Callable[[], float]

RECENT_WINDOW = 5.0  # seconds behind the "recent" rate
_SAMPLES = 50  # at most this many rate samples per window
_BUSY_LOCK = threading.Lock()  # uncontended: ~50 ns per timed block of >= 1 MiB of work
EVENT_TYPES = ("start", "progress", "drive_full", "drive", "blob", "note", "job", "warning",
               "error", "summary", "exit")


# --------------------------------------------------------------------------- counters


@dataclass
class DriveStats:
    """One target drive as the bar and the summary show it; its writer (stages/write.py)
    moves `used` as segments land, the drive pool sets it from the journal on resume."""

    name: str
    seq: int = 0
    capacity: int = 0  # bytes; 0 = unknown
    used: int = 0  # bytes written to this drive
    state: str = "open"  # "open", "full" or "closed"

    def fill(self) -> float | None:
        """Used share of the capacity, or None when the capacity is unknown."""
        return self.used / self.capacity if self.capacity > 0 else None

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, "seq": self.seq, "capacity": self.capacity,
                "used": self.used, "state": self.state}


class _Timed:
    """Adds the time spent inside `with` to one busy bucket, even when the body raises."""

    __slots__ = ("_stats", "_stage", "_t0")

    def __init__(self, stats: Stats, stage: str) -> None:
        self._stats = stats
        self._stage = stage
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = self._stats.timer()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stats.add_busy(self._stage, self._stats.timer() - self._t0)


@dataclass
class Stats:
    """Counters for one run, bumped in place by the stages on the Trio thread.

    `clock` (monotonic) measures the run; `timer` (perf_counter) measures busy
    time.  Tests inject fakes for both, so nothing has to sleep.
    """

    files_total: int = 0  # from the pre-scan
    bytes_total: int = 0  # from the pre-scan; 0 = unknown
    files_done: int = 0
    bytes_read: int = 0  # raw bytes consumed from staging, holes included
    bytes_stored: int = 0  # compressed payload written to drives
    raw_stored: int = 0  # what that payload holds, uncompressed (zero extents not counted)
    bytes_written: int = 0  # everything written to drives: payload, headers, padding
    extents: int = 0
    zero_bytes: int = 0  # all-zero extents and holes: recorded, not stored
    skipped_bytes: int = 0  # already committed by an earlier run (--resume)
    unchanged_bytes: int = 0  # backup: files as the parent snapshot has them, not read again
    current_drive: str = ""
    drives: dict[str, DriveStats] = field(default_factory=dict)
    busy: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    clock: Clock = field(default=time.monotonic, repr=False, compare=False)
    timer: Clock = field(default=time.perf_counter, repr=False, compare=False)
    started: float = field(init=False)
    _samples: deque[tuple[float, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._samples = deque([(self.started, self.bytes_read)])

    def add_drive(self, name: str, capacity: int = 0, seq: int = 0) -> DriveStats:
        """Register a drive (or return the known one) so the bar and summary can show it."""
        drive = self.drives.get(name)
        if drive is None:
            drive = self.drives[name] = DriveStats(name=name, seq=seq, capacity=capacity)
        return drive

    def timed(self, stage: str) -> _Timed:
        """`with stats.timed("pack"):` adds the block's wall time to `busy[stage]`.

        Sync on purpose: a block around an await would count the waiting too.
        Safe inside worker threads (the one counter guarded by a lock).  Workers
        in parallel add up, so a stage can be busy for more than 100% of wall.
        """
        return _Timed(self, stage)

    def add_busy(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` of work done elsewhere (a worker thread, the feeder process)."""
        with _BUSY_LOCK:  # pack times itself inside worker threads; += is not atomic
            self.busy[stage] = self.busy.get(stage, 0.0) + seconds

    @property
    def bytes_done(self) -> int:
        """Bytes of the staging total that are dealt with: read now, or skipped on resume."""
        return self.bytes_read + self.skipped_bytes + self.unchanged_bytes

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.started)

    def rate(self) -> float:
        """Bytes read per second over the whole run (skipped bytes cost no time)."""
        elapsed = self.elapsed()
        return self.bytes_read / elapsed if elapsed > 0 else 0.0

    def recent_rate(self, window: float = RECENT_WINDOW) -> float:
        """Bytes read per second over about the last `window` seconds.

        Stages only bump counters, so this method takes the samples itself; the
        ticker calls it often enough.  At most ~50 samples are kept per window.
        """
        now, done = self.clock(), self.bytes_read
        samples = self._samples
        if now - samples[-1][0] >= window / _SAMPLES:
            samples.append((now, done))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        t0, b0 = samples[0]
        if now - t0 <= 0:
            return self.rate()
        return max(0.0, (done - b0) / (now - t0))

    def eta(self, rate: float | None = None) -> float | None:
        """Seconds left at `rate` (default: the recent rate); None while unknown."""
        if self.bytes_total <= 0:
            return None
        left = self.bytes_total - self.bytes_done
        if left <= 0:
            return 0.0
        if rate is None:
            rate = self.recent_rate()
        return left / rate if rate > 0 else None

    def statistics(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot, the fields of a `progress` event (trio's naming)."""
        recent = self.recent_rate()
        eta = self.eta(recent)
        return {
            "files_total": self.files_total,
            "files_done": self.files_done,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
            "bytes_stored": self.bytes_stored,
            "raw_stored": self.raw_stored,
            "bytes_written": self.bytes_written,
            "extents": self.extents,
            "zero_bytes": self.zero_bytes,
            "skipped_bytes": self.skipped_bytes,
            "unchanged_bytes": self.unchanged_bytes,
            "elapsed_s": round(self.elapsed(), 3),
            "bytes_per_s": round(self.rate(), 1),
            "bytes_per_s_recent": round(recent, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "current_drive": self.current_drive,
            "drives": [d.snapshot() for d in sorted(self.drives.values(), key=lambda d: d.seq)],
            "busy_s": {stage: round(sec, 3) for stage, sec in self.busy.items()},
        }


# --------------------------------------------------------------------------- formatting


def format_size(n: float) -> str:
    """Binary units, as drive sizes are usually read: 1536 -> '1.5 KiB'."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            break
    return f"{n:.1f} {unit}"


def format_rate(bytes_per_s: float) -> str:
    """Decimal MB/s, the unit of the perf harness and of the DESIGN numbers."""
    return f"{bytes_per_s / 1e6:.1f} MB/s"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def format_summary(stats: Stats | Mapping[str, Any], *, verbose: bool = False) -> list[str]:
    """Human end-of-run lines from a `Stats` or its `statistics()` snapshot.

    Takes the snapshot too, so a `summary` event can be rendered from its fields.
    Every figure is what its label says: "compressed to N%" is stored payload over
    the raw bytes of the same extents (not over everything read: data read but cut
    off by a full drive is not in the payload).  The per-stage busy table is for
    tuning, shown with ``verbose``.  Recovery passwords are printed by the caller;
    this never sees them.
    """
    s = stats.statistics() if isinstance(stats, Stats) else stats
    wall = float(s.get("elapsed_s") or 0.0)
    read, zero = int(s.get("bytes_read", 0)), int(s.get("zero_bytes", 0))
    stored, skipped = int(s.get("bytes_stored", 0)), int(s.get("skipped_bytes", 0))
    raw = int(s.get("raw_stored", 0))
    files = f"{s.get('files_done', 0)}"
    if s.get("files_total"):
        files += f" of {s['files_total']}"
    lines = [
        f"read     {format_size(read)} in {files} files, {format_duration(wall)} wall, "
        f"{format_rate(float(s.get('bytes_per_s') or 0.0))}"]
    if raw:  # prep: backup says what it sent in its own line
        lines.append(f"stored   {format_size(raw)} of data compressed to {format_size(stored)} "
                     f"({_percent(stored, raw)}), {format_size(int(s.get('bytes_written', 0)))}"
                     f" written to drives, {s['extents']} extents")
    unchanged = int(s.get("unchanged_bytes", 0))
    if unchanged:
        lines.append(f"unchanged {format_size(unchanged)} in files as the last snapshot holds "
                     "them: not read again")
    if zero:
        lines.append(f"zeros    {format_size(zero)} of holes and zero runs: recorded, not stored")
    if skipped:
        lines.append(f"resumed  {format_size(skipped)} already on the drives from an earlier "
                     "run of this session")
    drives = s.get("drives") or []
    if drives:
        lines.append("drives")
        names = [str(d.get("name") or d.get("path") or "") for d in drives]
        width = max(len(n) for n in names)
        for d, name in zip(drives, names, strict=True):  # only these fields: never a password
            cap, used = int(d.get("capacity", 0)), int(d.get("used", 0))
            of = f" of {format_size(cap)} ({_percent(used, cap)})" if cap else ""
            lines.append(f"  #{d.get('seq', 0):<3} {name:<{width}}  "
                         f"{format_size(used)}{of}  {d.get('state', '')}")
    busy = s.get("busy_s") or {}
    if busy and verbose:
        lines.append("busy     time per stage, % of wall (over 100% = workers in parallel)")
        width = max(len(stage) for stage in busy)
        for stage, sec in sorted(busy.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {stage:<{width}}  {sec:8.2f} s  {_percent(sec, wall):>5}")
    return lines


def describe_event(type: str, fields: Mapping[str, Any]) -> str:
    """One human line for an event: its `message`, else its fields as key=value; a file
    name's newline or escape sequence escaped (it must neither split the line nor reach
    the terminal)."""
    if type == "drive_full" and "seq" in fields:  # said as a person would, not as fields
        return (f"drive {fields['seq']} ({fields.get('path', '?')}) is full")
    if "message" in fields:
        text = str(fields["message"])
        rest = {k: v for k, v in fields.items() if k != "message"}
    elif type == "drive_full" and "drive" in fields:
        text = f"drive {fields['drive']} is full"
        rest = {k: v for k, v in fields.items() if k != "drive"}
    else:
        text, rest = "", dict(fields)
    extra = " ".join(f"{k}={v}" for k, v in rest.items())
    return printable(f"{type}: " + " ".join(filter(None, (text, extra))))   # one line, always


# --------------------------------------------------------------------------- renderers


class Renderer:
    """The interface every renderer has; the base renders nothing.

    All methods are sync and cheap: the ticker calls `update` on the Trio thread.
    """

    def start(self, title: str, **fields: Any) -> None:
        """Begin the display (a run's title and its parameters)."""

    def update(self, stats: Stats, *, force: bool = False) -> None:
        """Show the counters; renderers may rate-limit unless `force` (e.g. the last one)."""

    def event(self, type: str, /, **fields: Any) -> None:
        """Something that happened once: drive_full, warning, error, summary, exit."""

    def close(self) -> None:
        """End the display; safe to call twice."""

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class JsonRenderer(Renderer):
    """JSON Lines on stdout for `--json`: one object per line, `type` and `t` first.

    `t` is seconds since `start()`.  `progress` lines carry `Stats.statistics()`
    and come at most every `interval` seconds whatever the caller does.  Fields
    may be added later, never renamed or removed (STYLE.md §5).
    """

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.5,
                 clock: Clock = time.monotonic) -> None:
        self._stream = stream  # None = sys.stdout at write time (pytest's capsys swaps it)
        self.interval = interval
        self._clock = clock
        self._t0 = clock()
        self._last_progress: float | None = None
        self._broken = False

    def _write(self, type: str, fields: Mapping[str, Any]) -> None:
        if self._broken:
            return
        obj: dict[str, Any] = {"type": type, "t": round(self._clock() - self._t0, 3)}
        obj.update((k, v) for k, v in fields.items() if k not in obj)
        line = json.dumps(obj, default=str, separators=(",", ":"))
        stream = self._stream or sys.stdout
        try:
            stream.write(line + "\n")
            stream.flush()
        except BrokenPipeError:
            self._broken = True  # the reader went away; the data must go on regardless

    def start(self, title: str, **fields: Any) -> None:
        self._t0 = self._clock()
        self._last_progress = None
        self._write("start", {"title": title, **fields})

    def update(self, stats: Stats, *, force: bool = False) -> None:
        now = self._clock()
        if (not force and self._last_progress is not None
                and now - self._last_progress < self.interval):
            return
        self._last_progress = now
        self._write("progress", stats.statistics())

    def event(self, type: str, /, **fields: Any) -> None:
        self._write(type, fields)

    def close(self) -> None:
        if self._broken:
            return
        try:
            (self._stream or sys.stdout).flush()
        except (BrokenPipeError, ValueError):
            self._broken = True


class QuietRenderer(Renderer):
    """Warnings and errors as plain lines on stderr; used when stderr is no TTY and no --json."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream  # None = sys.stderr at write time

    def event(self, type: str, /, **fields: Any) -> None:
        if type in ("warning", "error"):
            stream = self._stream or sys.stderr
            stream.write(describe_event(type, fields) + "\n")
            stream.flush()


def _current(stats: Stats) -> DriveStats | None:
    """The drive `current_drive` names: its key, or a key plus detail ("drive 2 (/dev/sdc)")."""
    cur = stats.current_drive
    drive = stats.drives.get(cur)
    if drive is None:
        named = [d for d in stats.drives.values() if cur.startswith(d.name + " ")]
        drive = max(named, key=lambda d: len(d.name), default=None)
    return drive


_EVENT_STYLES = {"warning": "yellow", "error": "bold red", "drive_full": "cyan"}


class TtyRenderer(Renderer):
    """A rich progress bar on stderr: bytes, files, recent MB/s, ETA, current drive.

    Refreshed only by `update()` (auto_refresh off): no rich thread, and the
    display changes at the ticker's pace.  stdout is not redirected, so it stays
    the user's.  Events are printed above the bar.
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = console if console is not None else Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=self.console, auto_refresh=False, transient=False,
            redirect_stdout=False, redirect_stderr=True,
        )
        self._task: Any = None
        self._closed = False

    def start(self, title: str, **fields: Any) -> None:
        if self._task is None:
            self._task = self._progress.add_task(title, total=None, info="starting")
            self._progress.start()
        else:
            self._progress.update(self._task, description=title)

    def update(self, stats: Stats, *, force: bool = False) -> None:
        if self._closed:
            return
        if self._task is None:
            self.start("prep")
        total = stats.bytes_total if stats.bytes_total > 0 else None  # None = pulsing bar
        done = stats.bytes_done if total is None else min(stats.bytes_done, total)
        self._progress.update(self._task, total=total, completed=done, info=self._info(stats))
        self._progress.refresh()

    @staticmethod
    def _info(stats: Stats) -> str:
        rate = stats.recent_rate()
        size = format_size(stats.bytes_done)
        if stats.bytes_total > 0:
            size += f" / {format_size(stats.bytes_total)}"
        files = f"{stats.files_done}"
        if stats.files_total:
            files += f"/{stats.files_total}"
        parts = [size, f"{files} files", format_rate(rate),
                 f"ETA {format_duration(stats.eta(rate))}"]
        if stats.current_drive:
            drive = _current(stats)
            text = stats.current_drive
            if drive is not None:
                fill = drive.fill()
                text += f" {fill:.0%} full" if fill is not None else f" {format_size(drive.used)}"
            parts.append(text)
        return "  ".join(parts)

    def event(self, type: str, /, **fields: Any) -> None:
        if type == "summary":
            lines = format_summary(fields) if "bytes_read" in fields else [
                describe_event(type, fields)]
        else:
            lines = [describe_event(type, fields)]
        from rich.text import Text

        style = _EVENT_STYLES.get(type, "")
        for line in lines:  # styled Text, not print(style=): that would colour the bar too
            self.console.print(Text(line, style=style), highlight=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._progress.stop()


def make_renderer(json_mode: bool, stream_is_tty: bool | None = None) -> Renderer:
    """JSON for --json, a bar on a terminal, else only warnings/errors (STYLE.md §5)."""
    if json_mode:
        return JsonRenderer()
    if stream_is_tty is None:
        try:
            stream_is_tty = bool(sys.stderr and sys.stderr.isatty())
        except (AttributeError, ValueError):  # stderr replaced or closed
            stream_is_tty = False
    return TtyRenderer() if stream_is_tty else QuietRenderer()


async def ticker(stats: Stats, renderer: Renderer, interval: float = 0.1) -> None:
    """Render `stats` every `interval` seconds until cancelled; the data never waits for it."""
    import trio  # here: a command that never starts Trio (a no-change backup) skips its import

    while True:
        await trio.sleep(interval)
        renderer.update(stats)


T = TypeVar("T")


async def with_progress(renderer: Renderer, stats: Stats,
                        fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` with the ticker beside it; on a PipelineError, emit the `exit` event
    (--json) before cli.py prints the one-line error; on any error, stop the bar (a live
    bar left running would garble the terminal)."""
    import trio

    box: list[T] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, stats, renderer)
            try:
                box.append(await fn())
            finally:
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        first = worst(exc)  # the error cli.py reports, so the `exit` event matches it
        if isinstance(first, PipelineError):
            renderer.event("exit", code=first.exit_code, message=str(first))
        renderer.close()
        raise
    return box[0]
