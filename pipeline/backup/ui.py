"""Progress for the backup commands: prep's renderers and ticker around one Trio call."""

from __future__ import annotations

import sys
from typing import Any

from pipeline import progress


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
