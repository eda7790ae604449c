"""forget: restic's retention rules (pure), the command, and a state machine over
backup / forget / prune / restore in which every kept snapshot restores byte-identical
after every step."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pipeline.backup import forget as policy
from pipeline.backup import prune
from pipeline.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from pipeline.progress import Stats
from tests.test_backup_prune import Repo


def items(*stamps: str) -> list[policy.Item]:
    return [policy.Item(f"{i:02d}", datetime.fromisoformat(s).replace(tzinfo=UTC))
            for i, s in enumerate(stamps)]


def kept(decisions: dict) -> list[str]:
    return sorted(d.item.id for ds in decisions.values() for d in ds if d.keep)


DAYS = items("2026-01-01T10:00", "2026-01-01T18:00", "2026-01-02T09:00", "2026-01-05T09:00",
             "2026-01-12T09:00", "2026-02-01T09:00", "2026-03-15T09:00", "2025-12-31T23:00")


def test_rules_as_restic() -> None:
    assert kept(policy.apply(DAYS, policy.Policy(last=2), UTC)) == ["05", "06"]
    # the newest of each of the 3 newest days that have one
    assert kept(policy.apply(DAYS, policy.Policy(daily=3), UTC)) == ["04", "05", "06"]
    assert kept(policy.apply(DAYS, policy.Policy(daily=6), UTC)) == ["01", "02", "03", "04",
                                                                     "05", "06"]
    assert kept(policy.apply(DAYS, policy.Policy(monthly=-1), UTC)) == ["04", "05", "06",
                                                                       "07"]
    assert kept(policy.apply(DAYS, policy.Policy(yearly=5), UTC)) == ["06", "07"]
    # ISO weeks: Dec 31 and Jan 1-2 are week 1 of 2026 (one bucket), Jan 5 week 2, ...
    assert kept(policy.apply(DAYS, policy.Policy(weekly=4), UTC)) == ["03", "04", "05", "06"]
    assert kept(policy.apply(DAYS, policy.Policy(weekly=6), UTC)) == ["02", "03", "04", "05",
                                                                      "06"]
    # within counts back from the newest snapshot, not from now
    assert kept(policy.apply(DAYS, policy.Policy(within=policy.parse_within("2m")), UTC)) == [
        "05", "06"]                                     # after Jan 15
    assert kept(policy.apply(DAYS, policy.Policy(within=policy.parse_within("9w2d")), UTC)) == [
        "04", "05", "06"]                               # after Jan 9
    both = policy.apply(DAYS, policy.Policy(last=1, monthly=2), UTC)
    reasons = {d.item.id: d.reasons for ds in both.values() for d in ds}
    assert reasons["06"] == ["last snapshot", "monthly snapshot"]
    assert reasons["05"] == ["monthly snapshot"] and reasons["00"] == []


def test_buckets_are_local_time() -> None:
    two = items("2026-01-01T23:30", "2026-01-02T00:30")
    east = datetime.fromisoformat("2026-01-01T00:00+09:00").tzinfo
    assert len(kept(policy.apply(two, policy.Policy(daily=5), UTC))) == 2
    assert len(kept(policy.apply(two, policy.Policy(daily=5), east))) == 1  # both Jan 2nd


def test_groups_are_judged_apart() -> None:
    a = [policy.Item(f"a{i}", datetime(2026, 1, i + 1, tzinfo=UTC), ("h1", "/src"))
         for i in range(3)]
    b = [policy.Item(f"b{i}", datetime(2026, 2, i + 1, tzinfo=UTC), ("h2", "/src"))
         for i in range(3)]
    assert kept(policy.apply(a + b, policy.Policy(last=1))) == ["a2", "b2"]


def test_empty_policy_and_bad_durations_are_refused() -> None:
    with pytest.raises(BadInput, match="no retention policy"):
        policy.Policy().check()
    with pytest.raises(BadInput, match="--keep-daily -2"):
        policy.Policy(daily=-2).check()
    for bad in ("", "5", "3x", "1d2", "d"):
        with pytest.raises(BadInput, match="--keep-within"):
            policy.parse_within(bad)
    assert policy.parse_within("1y2m3w4d5h") == policy.Within(1, 2, 25, 5)
    assert policy.Within(months=1).before(datetime(2026, 3, 31)) == datetime(2026, 2, 28)


@given(st.lists(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2027, 1, 1)),
                min_size=1, max_size=30, unique=True),
       st.integers(0, 5), st.integers(0, 5), st.integers(0, 3), st.integers(0, 3))
def test_policy_properties(times: list[datetime], last: int, daily: int, monthly: int,
                           yearly: int) -> None:
    """Any rule keeps; the newest is always kept; keep-last N keeps exactly the N newest;
    a larger count never keeps fewer."""
    if not (last or daily or monthly or yearly):
        last = 1
    snaps = [policy.Item(f"{i:03d}", t.replace(tzinfo=UTC)) for i, t in enumerate(times)]
    p = policy.Policy(last=last, daily=daily, monthly=monthly, yearly=yearly)
    got = set(kept(policy.apply(snaps, p, UTC)))
    newest = max(snaps, key=lambda s: (s.time, s.id))
    assert newest.id in got
    by_last = set(kept(policy.apply(snaps, policy.Policy(last=last), UTC))) if last else set()
    ordered = sorted(snaps, key=lambda s: (s.time, s.id), reverse=True)
    assert by_last == {s.id for s in ordered[:last]}
    assert by_last <= got
    more = policy.Policy(last=last + 1, daily=daily + 1, monthly=monthly, yearly=yearly)
    assert got <= set(kept(policy.apply(snaps, more, UTC)))
    if daily:                       # one per day, for as many days as asked and there are
        days = {s.time.date() for s in snaps}
        assert len({s.time.date() for s in snaps if s.id in got}) >= min(daily, len(days))


def test_forget_command(tmp_path: Path) -> None:
    r = Repo(tmp_path)
    r.init()
    ids = [r.backup() for _ in range(4)]
    refused = r.cli("forget", code=EXIT_BAD_INPUT)
    assert "no retention policy" in refused.stderr
    dry = r.cli("forget", "--keep-last", "2", "--dry-run")
    assert dry.stdout.count("\n  remove ") == 2 and dry.stdout.count("\n  keep ") == 2
    assert "would remove 2 of 4" in dry.stderr
    assert len(list((r.account / "backups" / "snapshots").iterdir())) == 4
    proc = r.cli("forget", "--keep-last", "2", "--prune", "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = next(e for e in events if e["type"] == "summary")
    assert summary["removed"] == 2 and summary["packs_deleted"] + summary[
        "packs_repacked"] > 0
    assert {s["id"] for s in summary["snapshots"] if s["keep"]} == set(ids[2:])
    for sid in ids[:2]:
        r.states.pop(sid)
    r.verify_all()
    r.cli("check", "--read-data", code=EXIT_OK)


class BackupMachine(RuleBasedStateMachine):
    """backup, forget, prune and restore in any order on one small repository; every
    snapshot left restores byte-identical to its source after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pipeline-sm-"))
        self.r = Repo(self.dir)
        self.r.init()

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule()
    def backup(self) -> None:
        self.r.backup()

    @rule(n=st.integers(0, 3))
    def forget_oldest(self, n: int) -> None:
        with self.r.open("exclusive") as repo:
            refs = repo.snapshots()[:n]
            prune.forget_snapshots(repo, refs)
        for ref in refs:
            self.r.states.pop(ref.hex)

    @rule(last=st.integers(1, 3), daily=st.integers(0, 2))
    def forget_policy(self, last: int, daily: int) -> None:
        with self.r.open("exclusive") as repo:
            refs = repo.snapshots()
            snaps = [policy.Item(ref.hex, ref.time) for ref in refs]
            decided = policy.apply(snaps, policy.Policy(last=last, daily=daily))
            gone = {d.item.id for ds in decided.values() for d in ds if not d.keep}
            prune.forget_snapshots(repo, [ref for ref in refs if ref.hex in gone])
        for sid in gone:
            self.r.states.pop(sid)

    @rule(max_unused=st.sampled_from([0.0, 5.0, 50.0, 100.0]))
    def prune(self, max_unused: float) -> None:
        with self.r.open("exclusive") as repo:
            prune.execute(repo, prune.make_plan(repo, max_unused), Stats())

    @rule(seed=st.integers(0, 1 << 16))
    def restore_one(self, seed: int) -> None:
        if self.r.states:
            sid = random.Random(seed).choice(sorted(self.r.states))
            with self.r.open() as repo:
                import trio

                from tests.test_backup_repo import describe, restore
                out = self.dir / f"one-{seed}-{random.random()}"
                trio.run(restore, repo, sid, out)
                assert describe(out) == self.r.states[sid]

    @invariant()
    def every_kept_snapshot_restores(self) -> None:
        self.r.verify_all()
        with self.r.open() as repo:
            assert not prune.make_plan(repo, 100.0).missing


TestBackupMachine = BackupMachine.TestCase
TestBackupMachine.settings = settings(max_examples=8, stateful_step_count=8, deadline=None,
                                      suppress_health_check=list(HealthCheck))


def test_within_and_days() -> None:
    newest = datetime(2026, 5, 1, 12, tzinfo=UTC)
    snaps = [policy.Item(f"{i}", newest - timedelta(days=i)) for i in range(40)]
    got = kept(policy.apply(snaps, policy.Policy(within=policy.parse_within("30d"))))
    assert sorted(map(int, got)) == list(range(30))
