"""Issue 15 item 6: an error inside an exception group is ranked and reported like a bare one.

cli.py decides the exit code with errors.worst; a command that reports the error itself
(the `exit` event of --json) must name the same one, however deeply Trio grouped it.
"""

from __future__ import annotations

import io
import json

import pytest

from pipeline import progress
from pipeline.errors import BadInput, IntegrityError


async def test_backup_exit_event_names_the_worst_grouped_error() -> None:
    out = io.StringIO()
    renderer = progress.JsonRenderer(out)

    async def fails() -> None:
        raise ExceptionGroup("nursery", [BadInput("a bad name"),
                                         ExceptionGroup("inner", [IntegrityError("xxh3")])])

    with pytest.raises(ExceptionGroup):
        await progress.with_progress(renderer, progress.Stats(), fails)
    [exit_event] = [e for e in map(json.loads, out.getvalue().splitlines())
                    if e["type"] == "exit"]
    assert (exit_event["code"], exit_event["message"]) == (IntegrityError.exit_code, "xxh3")
