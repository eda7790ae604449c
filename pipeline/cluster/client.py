"""The client's side of the cluster: connect, find the pipeline workers, run tasks, progress.

Dask's client runs its own event loop in a thread; the commands run under Trio, so every
blocking call here is made from a worker thread (``trio.to_thread``).  Progress: each task
logs an event on the run's topic every ``events.TICK`` seconds (Dask's structured events,
relayed by the scheduler); ``Progress`` keeps the latest counters of each worker and sums
them into the one ``Stats`` the bar or the --json stream shows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pipeline import errors, progress
from pipeline.cluster import events
from pipeline.cluster.worker import RESOURCE_PREFIX, resource
from pipeline.errors import BadInput, PipelineError

POLL = 0.2  # seconds between looks at the tasks and at who is still connected
LOST_AFTER = 2.0  # a worker missing from the scheduler this long is lost (one look may race)


class WorkerFailed(PipelineError):
    """{}"""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = code


_BY_CODE: dict[int, type[PipelineError]] = {
    errors.EXIT_BAD_INPUT: errors.BadInput, errors.EXIT_OUT_OF_DRIVES: errors.OutOfDrives,
    errors.EXIT_INTEGRITY: errors.IntegrityError, errors.EXIT_REFUSED: errors.Refused,
    errors.EXIT_INCOMPLETE: errors.Incomplete, errors.EXIT_INTERRUPTED: errors.Interrupted,
}


def failed(worker: str, result: dict[str, Any]) -> PipelineError:
    """A task's ``{code, message}`` as the error class of that code, naming the worker."""
    code, message = result["code"], f"worker {worker}: {result['message']}"
    cls = _BY_CODE.get(code)
    return cls(message) if cls else WorkerFailed(code, message)


def raise_worst(results: dict[str, dict[str, Any]]) -> None:
    """Raise the error that decides the exit code, if any task ended with one."""
    found = [failed(name, r) for name, r in sorted(results.items()) if r.get("code")]
    if found:
        raise min(found, key=errors.rank)


@dataclass
class Progress:
    """The latest counters of every worker, summed into ``stats``; events for the renderer."""

    stats: progress.Stats
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def heard(self, event: tuple[float, dict[str, Any]]) -> None:
        """Dask's handler (its loop's thread): keep the message; summing is ``fold``'s."""
        msg = event[1]
        if msg.get("type") == "progress":
            self.latest[msg["pipeline_worker"]] = msg
        else:
            self.events.append(msg)

    def fold(self, renderer: progress.Renderer) -> None:
        s = self.stats
        now = list(self.latest.values())
        for name in ("bytes_read", "bytes_written", "bytes_stored", "zero_bytes", "extents"):
            setattr(s, name, sum(m.get(name, 0) for m in now))
        s.files_done = sum(m.get("files_done", 0) for m in now)  # each walks its own range
        s.drives = {}
        for m in now:
            for d in m.get("drives", []):
                one = s.add_drive(f"drive {d['seq']}", d.get("capacity", 0), d["seq"])
                one.used, one.state = d.get("used", 0), d.get("state", "open")
        s.current_drive = ", ".join(f"{w}" for w in sorted(self.latest))
        while self.events:
            msg = dict(self.events.pop(0))
            kind, msg["worker"] = msg.pop("type"), msg.pop("pipeline_worker")
            renderer.event(kind, **msg)


class Cluster:
    """A connection to the Dask scheduler, and the pipeline workers behind it."""

    def __init__(self, address: str) -> None:
        from distributed import Client

        try:
            self.client = Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BadInput(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                           "(dask scheduler) or check --cluster") from None
        self.address = address
        self.stopping = threading.Event()

    def close(self) -> None:
        self.stopping.set()
        self.client.close()

    def present(self) -> dict[str, str]:
        """Pipeline worker name -> address, of the workers connected now."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {w["name"]: addr for addr, w in info.items()
                if any(r.startswith(RESOURCE_PREFIX) for r in w.get("resources", {}))}

    def workers(self) -> dict[str, dict[str, Any]]:
        """Each pipeline worker's drives (``events.describe``), by name; none is BadInput."""
        present = self.present()
        if not present:
            raise BadInput(f"no pipeline worker is connected to {self.address}; start "
                           "`pipeline worker --scheduler ADDRESS --name NAME --drive ...` on "
                           "each copy machine")
        described = self.client.run(events.describe, workers=list(present.values()))
        return {d["name"]: {**d, "address": addr} for addr, d in described.items()}

    def submit(self, name: str, drives: int, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on worker ``name``, holding all its drives (its resource)."""
        return self.client.submit(fn, *args, resources={resource(name): drives}, pure=False,
                                  retries=0, key=f"pipeline-{fn.__name__}-{name}-"
                                  f"{uuid.uuid4().hex[:8]}")

    def wait(self, futures: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Every task's result by worker name, and the workers lost meanwhile (their tasks
        cancelled: they resume from the journals).  A task that raised (a bug) raises."""
        results: dict[str, Any] = {}
        lost: list[str] = []
        pending = dict(futures)
        missing_since: dict[str, float] = {}
        while pending and not self.stopping.is_set():
            for name, fut in list(pending.items()):
                if fut.done():
                    results[name] = fut.result()
                    del pending[name]
            there, now = self.present(), time.monotonic()
            for name in list(pending):
                if name in there:
                    missing_since.pop(name, None)
                elif now - missing_since.setdefault(name, now) >= LOST_AFTER:
                    pending.pop(name).cancel()
                    lost.append(name)
            time.sleep(POLL)
        return results, lost

    def cancel(self, futures: dict[str, Any]) -> None:
        self.client.cancel(list(futures.values()))


async def run_tasks(cluster: Cluster, futures: dict[str, Any], topic: str,
                    renderer: progress.Renderer, stats: progress.Stats
                    ) -> tuple[dict[str, Any], list[str]]:
    """Wait for ``futures`` (submitted with ``topic``) with the gathered progress shown."""
    watch = Progress(stats)
    cluster.client.subscribe_topic(topic, watch.heard)

    async def show() -> None:
        while True:
            watch.fold(renderer)
            renderer.update(stats)
            await trio.sleep(0.1)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            got = await trio.to_thread.run_sync(cluster.wait, futures, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()
    except BaseException:
        cluster.stopping.set()
        await trio.to_thread.run_sync(cluster.cancel, futures)
        raise
    finally:
        cluster.client.unsubscribe_topic(topic)
    watch.fold(renderer)
    return got


def topic(kind: str, session_id: str) -> str:
    return f"pipeline-{kind}-{session_id}-{uuid.uuid4().hex[:8]}"
