"""Crash points for fault-injection tests.

``PIPELINE_CRASH_AT=point:n[:SIGNAL]`` makes the process send itself SIGKILL
(or ``SIGNAL``, e.g. ``INT`` for a Ctrl-C) the n-th time it reaches ``point``
(e.g. ``after_pwrite:3``), so tests can stop prep exactly between a write and
its fdatasync, or between the fdatasync and the journal commit.  Unset,
:func:`reached` costs one comparison.
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = os.environ.get("PIPELINE_CRASH_AT", "")
_POINT, _, _REST = _SPEC.partition(":")
_N, _, _SIGNAL = _REST.partition(":")
_lock = threading.Lock()
_seen = 0

POINTS = ("after_journal_create", "after_format", "after_pwrite", "after_sync",
          "after_commit", "after_index", "after_trailer", "after_reopen")


def reached(point: str) -> None:
    """Die here, as a power cut would, if the test asked for it."""
    global _seen
    if point != _POINT:
        return
    with _lock:
        _seen += 1
        if _seen == int(_N or 1):
            os.kill(os.getpid(), getattr(signal, "SIG" + _SIGNAL) if _SIGNAL else signal.SIGKILL)
