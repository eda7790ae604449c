"""`pipeline forget`: remove snapshots by a retention policy (restic's rules), then --prune."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import trio

from pipeline import progress
from pipeline.backup import forget as policy_mod
from pipeline.backup import locate, ui
from pipeline.backup.prune import forget_snapshots
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.commands.check import add_repository_arguments
from pipeline.commands.prune import add_prune_arguments, finish, parse_max_unused, prune_locked
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SEED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORAGE,
    BadInput,
    Outcome,
)

# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE, EXIT_NO_SEED)
GROUPS = {"host,source": ("hostname", "source"), "host": ("hostname",),
          "source": ("source",), "none": ()}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget", help="remove snapshots by a retention policy (--keep-*), then --prune",
        description="Keep the snapshots a --keep-* rule keeps (any rule is enough), remove "
        "the others, and say which and why.  Snapshots are judged per host and source; "
        "hours, days, weeks, months and years are local time; --keep-within counts back "
        "from the newest snapshot.  Removing a snapshot frees no space: --prune (or prune) "
        "does.  Holds the exclusive lock.")
    add_repository_arguments(p)
    for rule, unit in (("last", "newest snapshots"), ("hourly", "hours"), ("daily", "days"),
                       ("weekly", "weeks"), ("monthly", "months"), ("yearly", "years")):
        what = (f"N {unit}" if rule == "last" else
                f"newest snapshot of each of the N newest {unit} that have one")
        p.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N",
                       help=f"keep the {what}; -1 for no limit")
    p.add_argument("--keep-within", metavar="DURATION",
                   help="keep every snapshot newer than DURATION (1y2m, 30d, 2w, 12h) before "
                   "the newest")
    p.add_argument("--group-by", choices=list(GROUPS), default="host,source",
                   metavar="|".join(GROUPS),
                   help="judge snapshots per host and source (default), per host, per source, "
                   "or all together (none)")
    p.add_argument("--prune", action="store_true", help="then prune, under the same lock")
    add_prune_arguments(p)
    p.set_defaults(func=run)


def policy_of(args: argparse.Namespace) -> policy_mod.Policy:
    within = policy_mod.parse_within(args.keep_within) if args.keep_within else None
    return policy_mod.Policy(args.keep_last, args.keep_hourly, args.keep_daily,
                             args.keep_weekly, args.keep_monthly, args.keep_yearly,
                             within).check()


def decide(repo: Repository, policy: policy_mod.Policy, group_by: str
           ) -> tuple[dict[tuple[str, ...], list[policy_mod.Decision]], dict[str, SnapshotRef]]:
    """The policy's decisions per group (sync: reads every snapshot's manifest)."""
    refs = repo.snapshots()
    items, by_id = [], {}
    for ref, m in zip(refs, repo.manifests(refs), strict=True):
        fields = {"hostname": m.hostname, "source": m.source}
        items.append(policy_mod.Item(ref.hex, datetime.fromisoformat(m.time)
                                     if m.time else ref.time,
                                     tuple(fields[k] for k in GROUPS[group_by])))
        by_id[ref.hex] = ref
    return policy_mod.apply(items, policy), by_id


def show(groups: dict[tuple[str, ...], list[policy_mod.Decision]], group_by: str) -> None:
    """restic's table: per group, each snapshot kept or removed, and why (stdout)."""
    for group, decisions in groups.items():
        label = ", ".join(f"{k} {v}" for k, v in zip(GROUPS[group_by], group, strict=True))
        kept = sum(d.keep for d in decisions)
        print(f"snapshots of {label or 'every host and source'}: keep {kept}, remove "
              f"{len(decisions) - kept}")
        for d in decisions:
            when = d.item.time.astimezone().isoformat(timespec="seconds")
            verb = "keep  " if d.keep else "remove"
            print(f"  {verb} {d.item.id[:16]}  {when}  {', '.join(d.reasons)}")


async def run(args: argparse.Namespace) -> Outcome:
    check_args(args)
    policy = policy_of(args)
    if args.prune:
        parse_max_unused(args.max_unused)
    wait = locate.parse_wait(args.retry_lock)
    repo = await trio.to_thread.run_sync(
        lambda: locate.open_repository(args.source, args.container, args.passphrase_file,
                                       "exclusive", "forget", wait))
    try:
        return await _forget(repo, args, policy)
    finally:
        repo.close()


async def _forget(repo: Repository, args: argparse.Namespace, policy: policy_mod.Policy
                  ) -> Outcome:
    groups, by_id = await trio.to_thread.run_sync(decide, repo, policy, args.group_by)
    removed = [by_id[d.item.id] for ds in groups.values() for d in ds if not d.keep]
    renderer = progress.make_renderer(args.json)
    stats = progress.Stats()
    renderer.start("forget", storage=repo.backend.name, dry_run=args.dry_run)
    decisions: list[dict[str, Any]] = [
        {"id": d.item.id, "time": d.item.time.isoformat(), "group": list(g), "keep": d.keep,
         "reasons": d.reasons} for g, ds in groups.items() for d in ds]
    if not args.json:
        show(groups, args.group_by)
    if not args.dry_run:
        await trio.to_thread.run_sync(forget_snapshots, repo, removed)
    verb = "would remove" if args.dry_run else "removed"
    message = f"{verb} {len(removed)} of {len(decisions)} snapshots in {repo.backend.name}"
    extra = {"snapshots": decisions, "removed": len(removed), "dry_run": args.dry_run}
    if not args.prune:
        ui.finish(renderer, stats, args.json, extra, EXIT_OK, message, [])
        return Outcome(EXIT_OK, "" if args.json else message)
    if not args.json:
        print(f"pipeline forget: {message}", file=sys.stderr)
    forgotten = removed if args.dry_run else []    # else already gone from the listing
    plan = await progress.with_progress(renderer, stats,
                                        lambda: prune_locked(repo, args, stats, forgotten))
    line = finish(plan, args, renderer, stats, repo.backend.name, extra)
    return Outcome(EXIT_OK, "" if args.json else f"{message}; {line}")


def check_args(args: argparse.Namespace) -> None:
    if args.max_unused and not args.prune and args.max_unused != "5%":
        raise BadInput("--max-unused goes with --prune")
