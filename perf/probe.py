"""``python -m perf.probe ARGS...``: run ``python -m pipeline ARGS...`` with a Trio probe.

The pipeline is not changed: this wrapper passes a ``trio.abc.Instrument`` to every
``trio.run`` the command makes, and at exit writes one JSON line to stderr (prefix
``perf.probe: ``) saying how the Trio thread spent the run:

- ``io_wait_s``: time the run loop sat in epoll with nothing to run (the Trio thread is
  idle: it waits for worker threads or I/O);
- ``task_s``: time inside task steps, per task function (``by_task``);
- ``steps`` / ``io_waits``: how many task steps and loop wake-ups the run took.

If ``io_wait_s`` is a large share of the wall time while the CPUs are not busy either,
the pipeline is bound by latency (hand-offs between the Trio thread and worker
threads), not by compression, encryption or the disk.
"""

from __future__ import annotations

import atexit
import collections
import json
import sys
import time

import trio


class Probe(trio.abc.Instrument):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.io_wait = 0.0
        self.io_waits = 0
        self.steps = 0
        self.by_task: collections.Counter[str] = collections.Counter()
        self._wait_start = 0.0
        self._step_start = 0.0

    def before_io_wait(self, timeout: float) -> None:
        self._wait_start = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        self.io_wait += time.perf_counter() - self._wait_start
        self.io_waits += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        self._step_start = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.by_task[task.name.rsplit(".", 1)[-1]] += time.perf_counter() - self._step_start

    def report(self) -> dict[str, object]:
        wall = time.perf_counter() - self.t0
        return {"wall_s": round(wall, 3), "io_wait_s": round(self.io_wait, 3),
                "task_s": round(sum(self.by_task.values()), 3), "steps": self.steps,
                "io_waits": self.io_waits,
                "by_task": {k: round(v, 3) for k, v in self.by_task.most_common(8)}}


def main() -> None:
    probe = Probe()
    real_run = trio.run

    def run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("instruments", []).append(probe)
        return real_run(fn, *args, **kwargs)

    trio.run = run  # every `trio.run` in pipeline goes through the module attribute

    @atexit.register
    def _report() -> None:
        print("perf.probe: " + json.dumps(probe.report()), file=sys.stderr)

    from pipeline.cli import main as pipeline_main

    raise SystemExit(pipeline_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
