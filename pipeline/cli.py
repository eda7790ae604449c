"""Command line: argparse built from ``commands/*``, exceptions turned into exit codes.

The only module that prints errors or decides the exit status.  Each command
module provides ``add_parser(subparsers)``, which sets ``func`` on its parser:
a plain function, or an async one that runs under ``trio.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Sequence

import trio

from pipeline import __version__, errors

# Command name -> module under pipeline.commands, in help order.  Only the module of the
# command being run is imported: importing all of them (the service's web stack, the
# backup's chunker) cost about a second on every invocation.
COMMANDS = {
    "prep": "prep", "preview": "preview", "verify": "verify", "keys": "keys",
    "journal": "journal_cmd", "jobs": "jobs", "import": "import_", "repair": "repair",
    "diskprep": "diskprep", "drive": "drive", "service": "service", "backup": "backup",
    "restore": "restore", "snapshots": "snapshots",
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv``: the first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command`` given and known) one with just that command."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Offline data seeding: prepare encrypted drives, import them, "
        "then back up incrementally over the network.",
        epilog=errors.EXIT_CODE_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(f"pipeline.commands.{COMMANDS[name]}").add_parser(sub)
    return parser


def lean_malloc() -> None:
    """Have every thread allocate from glibc's one main arena (before any thread starts).

    By default each worker thread gets its own malloc arena, and the MiB-sized
    buffers freed in one stay there: perf measured prep's peak RSS at 382 MiB for
    1 GiB of data and 550 MiB for 4 GiB that way, and import's at 464-498 MiB for
    1 GiB (240 MiB with one arena).  Lowering the mmap threshold instead (every
    buffer its own mapping) kept RSS down but made the kernel zero-fill each buffer
    again: a quarter of prep's CPU time.  One arena keeps both down; the threads
    hardly contend for it (they allocate large buffers, a few a millisecond).
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator, its rules
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    lean_malloc()
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    name = " ".join(filter(None, ("pipeline", args.command, getattr(args, "subcommand", None))))
    try:
        if inspect.iscoroutinefunction(args.func):
            code = trio.run(args.func, args)
        else:
            code = args.func(args)
        return int(code or 0)
    except BaseException as exc:  # noqa: BLE001 - this is the one place that decides
        worst = errors.worst(exc)
        if errors.is_no_space(worst):  # a full disk is the user's to fix, not a bug
            where = getattr(worst, "filename", None) or os.getcwd()
            worst = errors.NoSpace(where, os.fspath(where))
        if isinstance(worst, BrokenPipeError):  # `pipeline ... | head`: the reader left
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE  # what a shell reports for a pipe's writer
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
