"""The repository's locks, as restic's ``locks/``: who uses the repository now.

Every run that opens a repository writes one lock file ``locks/<random id>``
(sealed like an index file: the host and command are nobody else's business)
naming its host, pid, start and refresh time, and whether it is exclusive.
``backup``, ``restore`` and ``check`` hold shared locks; ``forget`` and ``prune``,
which delete, hold an exclusive one.  A shared lock conflicts only with an
exclusive one, an exclusive one with any other.

Why concurrent backups need no more than a shared lock: a backup only adds files,
each under a name no other run can pick (packs and index files are named by the
hash of their bytes, which hold random nonces; a snapshot by its time and
hash), and a snapshot is written last, after every pack and index file it needs.
Two backups may both store the same new chunk: the repository then names two
copies, either of which reads back, and ``prune`` drops the spare.  Only a
deleting run could take a chunk away from under a backup that is about to name
it, and that run needs the exclusive lock.

Taking a lock is write, then look again: a run writes its lock, lists the locks,
and backs off (deletes its own) if a conflicting one is there, so that two runs
starting at once never both go on.  A lock is refreshed every ``REFRESH`` seconds
(a Trio task while a command runs, else lazily by the repository's own calls); one
older than ``STALE``, or one of this host whose process is gone (a kill -9), is
stale and removed with a warning.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.backup import crypto as crypto_mod
from pipeline.backup.backend import Backend
from pipeline.backup.errors import CorruptRepository, RepositoryLocked, printable
from pipeline.errors import BadInput, Caution

LOCKS = "locks/"
LOCK_MAGIC = b"PLBKLOCK"
REFRESH = 300.0         # seconds between refreshes (restic: 5 minutes)
STALE = 1800.0          # a lock not refreshed for this long is stale (restic: 30 minutes)
RETRY = 2.0             # seconds between tries while waiting for a lock


@dataclass(frozen=True, slots=True)
class LockInfo:
    """One lock file as read back."""

    name: str
    host: str
    pid: int
    time: datetime
    exclusive: bool
    command: str

    def describe(self, now: datetime | None = None) -> str:
        age = ((now or datetime.now(UTC)) - self.time).total_seconds()
        kind = "an exclusive" if self.exclusive else "a shared"
        what = f" ({shown(self.command)})" if self.command else ""
        when = (f"refreshed {int(age)} s ago" if age >= 0 else
                f"its time {int(-age)} s ahead of this host's clock")
        return f"{kind} lock by PID {self.pid} on {shown(self.host)}{what}, {when}"

    def stale(self, now: datetime, host: str, alive: Callable[[int], bool]) -> str | None:
        """Why this lock is stale, or None while its holder may still run.  One dated
        more than ``STALE`` ahead is too: else a crash on a host whose clock is wrong
        (or a lock so written) would hold the repository until that date."""
        age = (now - self.time).total_seconds()
        if age > STALE:
            return f"not refreshed for {int(age)} s"
        if age < -STALE:
            return f"dated {int(-age)} s in the future (a wrong clock on its host)"
        if self.host == host and not alive(self.pid):
            return f"process {self.pid} on this host is gone"
        return None


def shown(text: str) -> str:
    """A lock's host or command as printed: at most 100 characters, control characters
    escaped (a lock file is the repository's: a newline or an escape sequence in it must
    not reach the terminal as such)."""
    return printable(text[:100])


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts: not waited for yet).
    0, negative and huge numbers are no process's (kill would signal a group, or fail)."""
    if not 0 < pid < 1 << 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process: it exists
        return True
    return True


def read_locks(backend: Backend, cr: crypto_mod.Crypto) -> list[LockInfo]:
    """Every lock file there is; one that cannot be read is a CorruptRepository naming it."""
    out = []
    for name in backend.list(LOCKS):
        data = backend.get(name)
        if data is None:        # released meanwhile
            continue
        try:
            plain = cr.open_file(LOCK_MAGIC, data, name)
        except CorruptRepository:
            # Not written with this repository's key: no run of it holds this, and
            # refusing every command for it would let anyone who can write to the storage
            # stop the backups.
            warnings.warn(Caution(f"ignored {name} of {backend.name}: not a lock of this "
                                  "repository (it does not decrypt with its key); remove it "
                                  "from the storage"), stacklevel=2)
            continue
        try:
            obj = json.loads(plain)
            when = datetime.fromisoformat(obj["time"])
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            pid = obj["pid"]
            if type(pid) is not int:
                raise TypeError("pid")
            out.append(LockInfo(name, str(obj["host"]), pid, when, bool(obj["exclusive"]),
                                str(obj.get("command", ""))))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CorruptRepository(f"lock file {name} lacks fields; if no other pipeline "
                                    "uses this repository, delete it") from None
    return out


class Lock:
    """This run's lock on one repository; ``acquire`` it, then ``release`` it (also at exit)."""

    def __init__(self, backend: Backend, cr: crypto_mod.Crypto, exclusive: bool,
                 command: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.backend, self.crypto, self.exclusive, self.command = backend, cr, exclusive, command
        self.name = LOCKS + secrets.token_hex(32)
        self.host = os.uname().nodename     # socket.gethostname(), without socket
        self.held = False
        self.lost = False
        self._clock = clock
        self._refreshed = 0.0
        self._mutex = threading.Lock()
        self.refresher = False      # a Trio task refreshes it

    def _data(self) -> bytes:
        obj = {"host": self.host, "pid": os.getpid(), "exclusive": self.exclusive,
               "time": datetime.now(UTC).isoformat(timespec="microseconds"),
               "command": self.command}
        return self.crypto.seal_file(LOCK_MAGIC, json.dumps(obj).encode())

    def conflicts(self) -> list[LockInfo]:
        """The live locks this one cannot go on beside; stale ones are removed, with a warning."""
        now, out = datetime.now(UTC), []
        for info in read_locks(self.backend, self.crypto):
            if info.name == self.name:
                continue
            why = info.stale(now, self.host, pid_alive)
            if why is not None:
                warnings.warn(Caution(f"removed the stale lock {info.name} of "
                                      f"{self.backend.name}: {info.describe(now)}; {why}"),
                              stacklevel=2)
                self.backend.delete(info.name)
            elif self.exclusive or info.exclusive:
                out.append(info)
        return out

    def acquire(self, wait: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Write this lock, then look again; RepositoryLocked if another run holds a
        conflicting one after ``wait`` seconds."""
        deadline = self._clock() + wait
        while True:
            held = self.conflicts()
            if not held:
                self.backend.put(self.name, self._data())
                held = self.conflicts()
                if not held:
                    self.held, self._refreshed = True, self._clock()
                    atexit.register(self.release)
                    return
                self.backend.delete(self.name)      # both backed off: try again
            left = deadline - self._clock()
            if left <= 0:
                raise RepositoryLocked(self._refusal(held[0]))
            sleep(min(left, RETRY * (0.5 + random.random())))

    def _refusal(self, other: LockInfo) -> str:
        what = "an exclusive lock for " + self.command if self.exclusive else self.command
        return (f"backup repository {self.backend.name} is in use: {other.describe()}; "
                f"{what or 'this run'} cannot go on beside it.  Run this again once it is "
                "done (or give --retry-lock DURATION to wait); a lock left by a crash on "
                f"another host is stale after {int(STALE // 60)} minutes")

    def refresh(self) -> None:
        """Rewrite the lock with the time now; notes ``lost`` if another run removed it."""
        with self._mutex:
            if not self.held:
                return
            if self.backend.get(self.name) is None and not self.lost:
                self.lost = True
                warnings.warn(Caution(f"the lock {self.name} of {self.backend.name} was "
                                      "removed by another run that thought it stale; written "
                                      "again"), stacklevel=2)
            self.backend.put(self.name, self._data())
            self._refreshed = self._clock()

    def maybe_refresh(self) -> None:
        """Refresh when due; cheap otherwise (called by the repository's own operations)."""
        if self.held and self._clock() - self._refreshed >= REFRESH:
            self.refresh()

    def release(self) -> None:
        with self._mutex:
            if not self.held:
                return
            self.held = False
            with contextlib.suppress(Exception):    # at exit, the storage may be gone
                self.backend.delete(self.name)
        atexit.unregister(self.release)


def take(backend: Backend, cr: crypto_mod.Crypto, exclusive: bool, command: str = "",
         wait: float = 0.0) -> Lock | None:
    """A held lock, refreshed by a Trio task when a Trio run is there to host one.  A
    shared lock on a repository this run cannot write (a read-only copy) is skipped with
    a warning, as restic's --no-lock: reading needs no lock."""
    lock = Lock(backend, cr, exclusive, command)
    try:
        lock.acquire(wait)
    except BadInput as exc:
        if exclusive:
            raise
        warnings.warn(Caution(f"no lock taken ({exc}); reading on without one"), stacklevel=2)
        return None
    _start_refresher(lock)
    return lock


def _start_refresher(lock: Lock) -> None:
    """A Trio system task that refreshes ``lock`` until it is released or the run ends;
    from a worker thread (the usual caller: ``trio.to_thread``) through the run's token.
    Without a Trio run (trio not even imported: a no-change backup opens the repository
    before any starts) the refresh is lazy, until ``start_refresher`` in a later run."""
    trio = sys.modules.get("trio")
    if trio is None or not lock.held or lock.refresher:
        return
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        with contextlib.suppress(RuntimeError):    # not in a Trio thread: lazy refresh only
            trio.from_thread.run_sync(trio.lowlevel.spawn_system_task, _refresh_loop, lock)
            lock.refresher = True
        return
    trio.lowlevel.spawn_system_task(_refresh_loop, lock)
    lock.refresher = True


def start_refresher(lock: Lock | None) -> None:
    """From a Trio task: refresh ``lock`` in the background from now on (once)."""
    if lock is not None:
        _start_refresher(lock)


async def _refresh_loop(lock: Lock) -> None:
    import trio

    limiter = trio.CapacityLimiter(1)
    while lock.held:
        await trio.sleep(REFRESH)
        if not lock.held:
            return
        try:
            await trio.to_thread.run_sync(lock.refresh, limiter=limiter)
        except Exception as exc:  # noqa: BLE001 - a system task must not raise; tried again
            warnings.warn(Caution(f"could not refresh the lock on {lock.backend.name}: "
                                  f"{exc}"), stacklevel=1)
