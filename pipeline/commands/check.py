"""`pipeline check`: is every snapshot in a backup repository restorable (exit 4 if not)."""

from __future__ import annotations

import argparse
import sys

import trio

from pipeline import progress
from pipeline.backup import locate, ui
from pipeline.backup.check import check_repository, parse_subset
from pipeline.backup.errors import RepositoryDamaged
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SEED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORAGE,
    Outcome,
)

# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE, EXIT_NO_SEED)


def add_repository_arguments(p: argparse.ArgumentParser) -> None:
    """--from, --container, --passphrase-file, --retry-lock, --json: as restore's."""
    p.add_argument("--from", dest="source", required=True, metavar="STORAGE",
                   help="storage account (with --container), or a repository directory "
                   "such as STAGING/repo")
    p.add_argument("--container", metavar="C", help="container holding the repository")
    p.add_argument("--passphrase-file", required=True, metavar="FILE",
                   help="file holding the backup passphrase")
    p.add_argument("--retry-lock", metavar="DURATION",
                   help="wait up to DURATION (30s, 5m, 1h) for another run's lock to go "
                   "(default: refuse at once)")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="verify a backup repository: structure, and with --read-data every pack",
        description="Check the repository's config, keys and index files, that every pack "
        "the index names is there with the right size, and that every snapshot's tree and "
        "every chunk it names can be found.  --read-data reads every pack and checks every "
        "chunk against its id; --read-data-subset a share of them.  Each damaged or missing "
        "pack is named with the snapshots and files it affects (exit 4).  Packs no index "
        "names (left by an interrupted backup or prune) are reported, not damage: the next "
        "prune removes them.")
    add_repository_arguments(p)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--read-data", action="store_true",
                      help="read every pack and check every chunk (reads the whole repository)")
    data.add_argument("--read-data-subset", metavar="N%|n/t",
                      help="read a random N%% of the packs, or the n-th of t groups of them")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> Outcome:
    if args.read_data_subset is not None:
        parse_subset(args.read_data_subset)
    wait = locate.parse_wait(args.retry_lock)
    repo = await trio.to_thread.run_sync(
        lambda: locate.open_repository(args.source, args.container, args.passphrase_file,
                                       "shared", "check", wait))
    stats = progress.Stats()
    renderer = progress.make_renderer(args.json)
    renderer.start("check", storage=repo.backend.name, read_data=bool(args.read_data),
                   subset=args.read_data_subset)
    try:
        report = await progress.with_progress(renderer, stats, lambda: check_repository(
            repo, stats, args.read_data, args.read_data_subset))
    finally:
        repo.close()
    summary = report.summary()
    leftovers = (f"; {len(report.unreferenced)} packs no index names (left by an interrupted "
                 "backup or prune; the next prune removes them)" if report.unreferenced else "")
    read = (f", read {report.packs_read} packs" if args.read_data or args.read_data_subset
            else "")
    if report.problems:
        count = sum(not line.startswith(" ") for line in report.problems)
        message = (f"{count} problems in {repo.backend.name}: "
                   f"{len(report.damaged_packs)} damaged or missing packs{leftovers}")
        if args.json:
            for line in report.problems:
                renderer.event("error", message=line)
            ui.finish(renderer, stats, True, summary, EXIT_INTEGRITY, message)
        else:
            renderer.close()
        raise RepositoryDamaged(message, report.problems)
    message = (f"no errors: {report.snapshots} snapshots, {report.index_files} index files, "
               f"{report.packs} packs{read}{leftovers}")
    ui.finish(renderer, stats, args.json, summary, EXIT_OK, message, [])
    if not args.json:
        for name in report.unreferenced[:20]:
            print(f"unreferenced pack {name}", file=sys.stderr)
    return Outcome(EXIT_OK, "" if args.json else message)
