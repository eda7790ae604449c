"""Progress for the backup commands: prep's renderers and ticker around one Trio call."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from pipeline import progress
from pipeline.errors import PipelineError, worst

T = TypeVar("T")


async def with_progress(renderer: progress.Renderer, stats: progress.Stats,
                        fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` with the ticker beside it; on a PipelineError, emit the `exit` event
    (--json) before cli.py prints the one-line error."""
    box: list[T] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.ticker, stats, renderer)
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


def finish(renderer: progress.Renderer, stats: progress.Stats, json_mode: bool,
           summary: dict[str, Any], code: int, message: str,
           lines: list[str] | None = None) -> None:
    """The last progress line, the summary, then `exit` (--json) or human lines on stderr
    (``lines``, by default prep's summary of the counters).  A run that ended knows
    what there was: the last bar shows that, not the estimate made before it began
    (files added or removed meanwhile made "265.7 MiB / 264.3 MiB")."""
    stats.files_total, stats.bytes_total = stats.files_done, stats.bytes_done
    renderer.update(stats, force=True)
    if json_mode:
        renderer.event("summary", **{**stats.statistics(), **summary})
        renderer.event("exit", code=code, message=message)
        renderer.close()
        return
    renderer.close()
    for line in progress.format_summary(stats) if lines is None else lines:
        print(line, file=sys.stderr)
