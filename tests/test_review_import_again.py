"""Review of ``import --cluster --again --drive`` (78eece8): the drives named resolve to
the session's drives only, each once however often or however named (uuid, path);
anything else is refused in one line naming what is attached; the named drives run
first with ``again``, the others after without it; a worker lost during the --again run
stops the import there (Interrupted, exit 130: safe to repeat) before any other drive's
commit could look for parts not yet sent again.  The workers are faked here (what Dask
answers); the real scheduler, workers and Azurite path is test_cluster_again's."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from pipeline import progress
from pipeline.cluster import receive
from pipeline.errors import EXIT_INTERRUPTED, BadInput, Interrupted

WANTED = {"u1": "drive 1 (volume u1)", "u2": "drive 2 (volume u2)",
          "u3": "drive 3 (volume u3)"}
DESCRIBED = {"w1": {"address": "tcp://w1", "drives": [
                 {"uuid": "u1", "path": "/dev/sdb"}, {"uuid": "x9", "path": "/dev/sdc"}]},
             "w2": {"address": "tcp://w2", "drives": [
                 {"uuid": "u2", "path": "/dev/sdb"}, {"uuid": "u3", "path": "/dev/sdd"}]}}


class _Cluster:
    def __init__(self, address: str) -> None:
        assert address == "tcp://sched"

    def workers(self) -> dict[str, Any]:
        return DESCRIBED

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _fake_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receive.dask_client, "Cluster", _Cluster)


def _resolve(*named: str) -> dict[str, str]:
    return trio.run(receive._resolve, "tcp://sched", named, WANTED)


def test_a_drive_named_twice_or_two_ways_is_imported_once() -> None:
    assert _resolve("u1", "u1") == {"u1": WANTED["u1"]}
    assert _resolve("u3", "/dev/sdd", "u3") == {"u3": WANTED["u3"]}


def test_a_drive_not_in_the_session_is_refused_naming_the_attached_ones() -> None:
    attached = ("the session's drives attached: u1 (w1: /dev/sdb); u2 (w2: /dev/sdb); "
                "u3 (w2: /dev/sdd)")
    for x in ("x9", "/dev/sdc", "nope", ""):       # x9: attached, but another session's
        with pytest.raises(BadInput) as got:
            _resolve("u1", x)
        assert str(got.value) == (f"--drive {x}: no drive of the session with that volume "
                                  f"uuid or path is attached to a pipeline worker; {attached}")


def test_a_path_on_two_workers_is_refused_asking_for_the_uuid() -> None:
    with pytest.raises(BadInput) as got:
        _resolve("/dev/sdb")
    assert str(got.value) == ("--drive /dev/sdb: drives on several workers have that path; "
                              "give its volume uuid: u1 (w1), u2 (w2)")


def _outcome(uuid: str) -> dict[str, Any]:
    return {"seq": int(uuid[1]), "uuid": uuid}


def test_named_drives_run_first_again_then_the_others(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    runs: list[tuple[list[str], bool]] = []

    async def run_on_workers(address: str, wanted: dict[str, str], kind: str, label: str,
                             fn: Any, head: Any, tail: tuple[str, bool], *a: Any,
                             **k: Any) -> dict[str, Any]:
        runs.append((sorted(wanted), tail[1]))
        return {"w": {"code": 0, "drives": [_outcome(u) for u in sorted(wanted)]}}

    monkeypatch.setattr(receive, "run_on_workers", run_on_workers)
    monkeypatch.setattr(receive, "_wanted", lambda journals: WANTED)
    monkeypatch.setattr(receive, "_head", lambda journals: ("/j", "s1"))
    done = trio.run(receive.import_all, "tcp://sched", [], "acct", None,
                    None, progress.Stats(), ["/dev/sdd", "u3"])
    assert runs == [(["u3"], True), (["u1", "u2"], False)]
    assert [d["seq"] for d in done] == [1, 2, 3]


def test_a_worker_lost_in_the_again_run_stops_before_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[list[str]] = []

    async def run_on_workers(address: str, wanted: dict[str, str], *a: Any,
                             **k: Any) -> dict[str, Any]:
        runs.append(sorted(wanted))
        raise Interrupted("worker(s) w2 lost mid-run; start them again and run the same "
                          "import command: it is safe to repeat")

    monkeypatch.setattr(receive, "run_on_workers", run_on_workers)
    monkeypatch.setattr(receive, "_wanted", lambda journals: WANTED)
    monkeypatch.setattr(receive, "_head", lambda journals: ("/j", "s1"))
    with pytest.raises(Interrupted) as got:
        trio.run(receive.import_all, "tcp://sched", [], "acct", None, None,
                 progress.Stats(), ["u2"])
    assert runs == [["u2"]] and got.value.exit_code == EXIT_INTERRUPTED
