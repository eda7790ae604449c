"""Command line: argparse built from ``commands/*``, exceptions turned into exit codes.

The only module that prints errors or decides the exit status.  Each command
module provides ``add_parser(subparsers)``, which sets ``func`` on its parser:
a plain function, or an async one that runs under ``trio.run``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import traceback
from collections.abc import Iterator, Sequence

import trio

from pipeline import __version__, errors
from pipeline.commands import (
    backup,
    diskprep,
    drive,
    import_,
    jobs,
    journal_cmd,
    keys,
    prep,
    preview,
    repair,
    restore,
    service,
    snapshots,
    verify,
)

COMMANDS = (prep, preview, verify, keys, journal_cmd, jobs, import_, repair, diskprep, drive,
            service, backup, restore, snapshots)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Offline data seeding: prepare encrypted drives, import them, "
        "then back up incrementally over the network.",
        epilog=errors.EXIT_CODE_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _rank(exc: BaseException) -> int:
    """Which error decides the exit code when several arrive together."""
    order = (KeyboardInterrupt, errors.IntegrityError, errors.OutOfDrives,
             errors.Refused, errors.BadInput, errors.PipelineError)
    for rank, cls in enumerate(order):
        if isinstance(exc, cls):
            return rank
    return len(order)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(filter(None, ("pipeline", args.command, getattr(args, "subcommand", None))))
    try:
        if inspect.iscoroutinefunction(args.func):
            code = trio.run(args.func, args)
        else:
            code = args.func(args)
        return int(code or 0)
    except BaseException as exc:  # noqa: BLE001 - this is the one place that decides
        worst = min(_leaves(exc), key=_rank)
        if isinstance(worst, KeyboardInterrupt):
            print(f"{name}: interrupted", file=sys.stderr)
            return errors.EXIT_INTERRUPTED
        if isinstance(worst, SystemExit):
            raise worst from None
        if isinstance(worst, errors.PipelineError) and worst.exit_code != errors.EXIT_BUG:
            print(f"{name}: {worst}", file=sys.stderr)
            return worst.exit_code
        traceback.print_exception(exc)
        print(f"{name}: internal error (a bug); please report it with the traceback above",
              file=sys.stderr)
        return errors.EXIT_BUG
