"""`pipeline prune`: delete what no snapshot uses (after `forget`), holding the exclusive lock."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

import trio

from pipeline import progress
from pipeline.backup import locate, ui
from pipeline.backup.prune import Plan, execute, make_plan
from pipeline.backup.repo import Repository, SnapshotRef
from pipeline.commands.check import add_repository_arguments
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


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-unused", default="5%", metavar="N%",
                   help="unused space to tolerate, as a share of the used (default 5%%): "
                   "packs most of which is unused are repacked until no more is left; 0%% "
                   "repacks every partly used pack, 100%% only deletes wholly unused ones")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be deleted and repacked; change nothing")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="free the packs no snapshot uses (run after forget)",
        description="Delete the chunks and packs no snapshot uses, repack the packs that "
        "are mostly unused, and write the index afresh.  New packs and index files are "
        "stored before any old one is deleted, so an interrupted prune loses nothing a "
        "snapshot uses.  Holds the repository's exclusive lock: refused while a backup, "
        "restore or check runs (exit 5), unless --retry-lock waits for it.")
    add_repository_arguments(p)
    add_prune_arguments(p)
    p.set_defaults(func=run)


def parse_max_unused(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if m is None or float(m[1]) > 100:
        raise BadInput(f"--max-unused {text}: give a share such as 5% (0% to 100%)")
    return float(m[1])


def plan_lines(plan: Plan) -> list[str]:
    """What prune does, in words (stderr)."""
    fs = progress.format_size
    return [
        f"{len(plan.sizes)} packs: {len(plan.delete)} unused to delete, {len(plan.repack)} to "
        f"repack, {len(plan.leftovers)} left by interrupted runs, {len(plan.missing)} missing "
        "ones the index still names (no snapshot uses them)",
        f"used {fs(plan.used_bytes)} in {len(plan.used)} chunks; unused {fs(plan.unused_bytes)},"
        f" {fs(plan.unused_after)} of it left after this prune"]


async def prune_locked(repo: Repository, args: argparse.Namespace,
                       stats: progress.Stats, forgotten: Sequence[SnapshotRef] = ()) -> Plan:
    """Plan, then (unless --dry-run) execute, on a repository this run holds exclusively;
    ``forgotten``: what a dry run of forget would have removed, planned as gone."""
    max_unused = parse_max_unused(args.max_unused)
    plan = await trio.to_thread.run_sync(make_plan, repo, max_unused, forgotten)
    if not args.dry_run:
        await trio.to_thread.run_sync(execute, repo, plan, stats)
    return plan


def finish(plan: Plan, args: argparse.Namespace, renderer: progress.Renderer,
           stats: progress.Stats, name: str, extra: dict[str, Any] | None = None) -> str:
    """The summary (--json) or the plan in words, and the closing line."""
    verb = "would free" if args.dry_run else "freed"
    message = (f"{verb} {len(plan.delete)} unused packs, repacked {len(plan.repack)}, removed "
               f"{len(plan.leftovers)} leftovers in {name}")
    if args.dry_run:
        message = message.replace("repacked", "would repack").replace("removed", "would remove")
    summary = {**plan.summary(), "dry_run": args.dry_run, **(extra or {})}
    ui.finish(renderer, stats, args.json, summary, EXIT_OK, message, [])
    if not args.json:
        for line in plan_lines(plan):
            print(line, file=sys.stderr)
    return message


async def run(args: argparse.Namespace) -> Outcome:
    parse_max_unused(args.max_unused)
    wait = locate.parse_wait(args.retry_lock)
    repo = await trio.to_thread.run_sync(
        lambda: locate.open_repository(args.source, args.container, args.passphrase_file,
                                       "exclusive", "prune", wait))
    stats = progress.Stats()
    renderer = progress.make_renderer(args.json)
    renderer.start("prune", storage=repo.backend.name, dry_run=args.dry_run)
    try:
        plan = await progress.with_progress(renderer, stats,
                                            lambda: prune_locked(repo, args, stats))
    finally:
        repo.close()
    message = finish(plan, args, renderer, stats, repo.backend.name)
    return Outcome(EXIT_OK, "" if args.json else message)
