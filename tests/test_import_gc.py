"""state.fewer_collections: the GC's young threshold raised while drives import, and put
back as it was once the last one in the process ends (nested or in threads)."""

from __future__ import annotations

import gc
import threading

from pipeline.receive import state


def test_threshold_raised_then_restored_after_the_last_user() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, before[1], before[2])
        with state.fewer_collections():
            assert gc.get_threshold() == (state.GC_YOUNG, before[1], before[2])
            with state.fewer_collections():
                assert gc.get_threshold()[0] == state.GC_YOUNG
            assert gc.get_threshold()[0] == state.GC_YOUNG  # the outer one still runs
        assert gc.get_threshold() == (700, before[1], before[2])
    finally:
        gc.set_threshold(*before)


def test_threads_overlapping() -> None:
    before = gc.get_threshold()
    inside, leave = threading.Barrier(3), threading.Event()
    seen: list[int] = []

    def user() -> None:
        with state.fewer_collections():
            inside.wait()
            leave.wait()
            seen.append(gc.get_threshold()[0])

    try:
        gc.set_threshold(700, before[1], before[2])
        ts = [threading.Thread(target=user) for _ in range(2)]
        for t in ts:
            t.start()
        inside.wait()
        assert gc.get_threshold()[0] == state.GC_YOUNG
        leave.set()
        for t in ts:
            t.join()
        assert seen == [state.GC_YOUNG, state.GC_YOUNG]  # each saw it inside, whoever left first
        assert gc.get_threshold()[0] == 700
    finally:
        gc.set_threshold(*before)
