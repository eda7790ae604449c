"""Which snapshots a retention policy keeps: restic's ``forget`` rules, pure.

Snapshots are grouped (by host and source, as restic groups by host and paths),
and each group is judged on its own, newest first.  A snapshot is kept when any
rule keeps it, and every rule that does is named:

- ``last N``: the N newest.
- ``hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of the N
  newest hours (days, ISO weeks, months, years) that have one, in local time.
- ``within DURATION``: every snapshot newer than DURATION before the group's
  newest one (not before now: a machine that stopped backing up keeps its last).

N = -1 means no limit.  A policy with no rule is refused: it would remove
everything (restic does the same).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from pipeline.errors import BadInput

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True, slots=True)
class Within:
    """A calendar duration: years, months, days, hours (``1y2m``, ``30d``, ``2w``)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, t: datetime) -> datetime:
        """``t`` minus this duration, months by the calendar (day clamped to the month)."""
        month = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month = divmod(month, 12)
        day = min(t.day, _days_in(year, month + 1))
        return t.replace(year=year, month=month + 1, day=day) - timedelta(days=self.days,
                                                                         hours=self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


def _days_in(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def parse_within(text: str) -> Within:
    """``1y2m3d4h``, ``2w`` (14 days): restic's units, plus weeks."""
    parts = re.findall(r"(\d+)([ymwdh])", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise BadInput(f"--keep-within {text}: give a duration of numbers with units y "
                       "(years), m (months), w (weeks), d (days), h (hours), e.g. 30d or 1y2m")
    got = {"y": 0, "m": 0, "w": 0, "d": 0, "h": 0}
    for n, u in parts:
        got[u] += int(n)
    return Within(got["y"], got["m"], got["d"] + 7 * got["w"], got["h"])


@dataclass(frozen=True)
class Policy:
    """How many of each to keep (0: the rule is off; -1: no limit)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Within | None = None

    def empty(self) -> bool:
        return self.within is None and not any(getattr(self, r) for r in RULES)

    def check(self) -> Policy:
        for rule in RULES:
            if getattr(self, rule) < -1:
                raise BadInput(f"--keep-{rule} {getattr(self, rule)}: give a count, or -1 "
                               "for no limit")
        if self.empty():
            raise BadInput("no retention policy: give at least one --keep-* option (e.g. "
                           "--keep-daily 7 --keep-weekly 4); forget never removes every "
                           "snapshot by default")
        return self


@dataclass(frozen=True)
class Item:
    """A snapshot as the policy sees it: its id, time and group."""

    id: str
    time: datetime
    group: tuple[str, ...] = ()


@dataclass
class Decision:
    item: Item
    keep: bool
    reasons: list[str] = field(default_factory=list)


_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def _judge(items: Sequence[Item], policy: Policy, tz: tzinfo | None) -> list[Decision]:
    """One group, newest first, as restic's ApplyPolicy."""
    ordered = sorted(items, key=lambda i: (i.time, i.id), reverse=True)
    counts = {r: getattr(policy, r) for r in RULES}
    last: dict[str, object] = {}
    cutoff = policy.within.before(ordered[0].time) if policy.within and ordered else None
    out = []
    for nr, item in enumerate(ordered):
        local = item.time.astimezone(tz)
        reasons = []
        if cutoff is not None and item.time > cutoff:
            reasons.append(f"within {policy.within}")
        for rule in RULES:
            if counts[rule] == 0:
                continue
            bucket = nr if rule == "last" else _BUCKETS[rule](local)
            if last.get(rule) != bucket:
                last[rule] = bucket
                if counts[rule] > 0:
                    counts[rule] -= 1
                reasons.append("last snapshot" if rule == "last" else f"{rule} snapshot")
        out.append(Decision(item, bool(reasons), reasons))
    return out


def apply(items: Sequence[Item], policy: Policy, tz: tzinfo | None = None
          ) -> dict[tuple[str, ...], list[Decision]]:
    """Each group's decisions, newest first; ``tz``: the buckets' zone (default local)."""
    policy.check()
    groups: dict[tuple[str, ...], list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    return {g: _judge(members, policy, tz) for g, members in sorted(groups.items())}
