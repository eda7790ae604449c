"""Command line: argparse built from ``commands/*``, outcomes and exceptions turned into
exit codes.  The only module that prints errors or decides the exit status.

The contract every command keeps:

- Its module provides ``add_parser(subparsers)``, which sets ``func`` on its parser
  (and on each subcommand's), and ``EXITS``: the exit codes beyond
  ``errors.EVERY_COMMAND`` it can end with.  ``--help`` lists them, worded by the one
  table, ``errors.EXIT_CODES``.
- ``func(args)`` is a plain function, or an ``async def`` that cli runs under
  ``trio.run``; a plain one may also return an ``async def`` of no arguments, which
  cli then runs under ``trio.run`` (a command whose common case needs no Trio: trio's
  import is a tenth of a no-change backup).  No command calls ``trio.run`` itself, nor
  runs another command as a process.
- It returns an ``errors.Outcome``: done (0) or done with warnings (1), with an
  optional line that cli prints on stderr as ``pipeline CMD: line``.
- Anything else ends it by raising: a ``PipelineError`` (its class decides the code;
  cli prints ``pipeline CMD: message``, after the error's ``details()`` unless --json
  sent those as events), ``KeyboardInterrupt`` (130), or any other exception (70, a
  bug, with its traceback).  A command prints progress, results, JSON events and
  warnings; never its own error line, never its own exit code.
- SIGTERM and SIGHUP are a Ctrl-C (``stop_signals_as_ctrl_c``): what a command does
  on Ctrl-C (prep: commit what was read, then 130) it does on ``kill`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import inspect
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn, TextIO

from pipeline import __version__, errors

# Command name -> module under pipeline.commands, in help order.  Only the module of the
# command being run is imported: importing all of them (the service's web stack, the
# backup's chunker) cost about a second on every invocation.
COMMANDS = {
    "prep": "prep", "preview": "preview", "verify": "verify", "keys": "keys",
    "journal": "journal_cmd", "jobs": "jobs", "site": "site", "import": "import_",
    "export": "export", "unpack": "unpack",
    "repair": "repair", "diskprep": "diskprep", "drive": "drive", "service": "service",
    "backup": "backup", "restore": "restore", "snapshots": "snapshots",
    "check": "check", "forget": "forget", "prune": "prune",
    "generate": "generate", "worker": "worker",
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv``: the first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, as argparse does; the exit-code table as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """argparse, plus a suggestion for a mistyped command or option (``pipeline improt``:
    did you mean ``import``?), as git and restic do.  ``argv`` is the command line being
    parsed: argparse reports a missing required option before an unknown one, and the
    unknown one (``--sorce``) is the reason."""

    argv: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        super().error(f"{message}{_suggestion(self, message, self.argv)}")


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and its subcommands' parsers."""
    found = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _all_options(child)
    return found


def _parsers(parser: argparse.ArgumentParser) -> Iterator[Parser]:
    """``parser`` and every subcommand's parser under it."""
    if isinstance(parser, Parser):
        yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                yield from _parsers(child)


def _suggestion(parser: argparse.ArgumentParser, message: str, argv: Sequence[str]) -> str:
    """'; did you mean X?' for a mistyped command word or option in ``argv``, or ''."""
    import difflib  # here: only a mistyped command line needs it

    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        close = difflib.get_close_matches(choice[1], re.findall(r"'([^']*)'", choice[2]),
                                          n=1, cutoff=0.6)
        return f"; did you mean {close[0]}?" if close else ""
    known = _all_options(parser)
    for word in argv:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            close = difflib.get_close_matches(option, sorted(known), n=1, cutoff=0.6)
            if close:
                return f"; {option} is not an option: did you mean {close[0]}?"
    return ""


def _with_exit_codes(parser: argparse.ArgumentParser, codes: Sequence[int]) -> None:
    """Give ``parser`` and its subcommands' parsers the table of the command's codes."""
    parser.epilog = errors.exit_code_help(codes)
    parser.formatter_class = HelpFormatter
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _with_exit_codes(child, codes)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command`` given and known) one with just that command."""
    parser = Parser(
        prog="pipeline",
        description="Offline data seeding: prepare encrypted drives, import them, "
        "then back up incrementally over the network.",
        epilog=errors.exit_code_help(),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        module = importlib.import_module(f"pipeline.commands.{COMMANDS[name]}")
        module.add_parser(sub)
        _with_exit_codes(sub.choices[name], module.EXITS)
    return parser


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Hand SIGTERM/SIGHUP to whatever handles SIGINT now, as if it were one: Python's
    KeyboardInterrupt, Trio's (which raises it only where that is safe) or a command's
    own receiver (prep's two-stage stop).  Called as a signal handler, so a blocking
    system call is interrupted as by Ctrl-C."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    signal.signal(signum, signal.SIG_DFL)  # Ctrl-C ignored (a background job): end as
    signal.raise_signal(signum)            # this signal always ended us


@contextlib.contextmanager
def stop_signals_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, systemd, a container stopping) and SIGHUP (the terminal went away)
    stop every command as Ctrl-C does: cleanly, resumably, exit 130.  A signal the caller
    set to be ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # only it gets signals
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is signal.SIG_DFL:
            signal.signal(sig, _as_ctrl_c)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def warnings_as_lines(name: str) -> Iterator[None]:
    """An ``errors.Caution`` a library module raises as a warning (``warnings.warn``)
    prints as one line naming the command, ``pipeline CMD: warning: ...``: library code
    does not print, and does not know which command runs it."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, errors.Caution):
            print(f"{name}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    shown = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always", errors.Caution)
        warnings.showwarning = show
        yield


def _run(func: object, args: argparse.Namespace) -> errors.Outcome:
    """Call the command; async ones (or the async rest a plain one returns) under one
    ``trio.run``; trio is imported only then."""
    if inspect.iscoroutinefunction(func):
        import trio

        outcome = trio.run(func, args)
    else:
        assert callable(func)
        outcome = func(args)
        if inspect.iscoroutinefunction(outcome):
            import trio

            outcome = trio.run(outcome)
    if not isinstance(outcome, errors.Outcome):
        raise TypeError(f"{func!r} returned {outcome!r}, not an errors.Outcome")
    return outcome


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
    """Run one command line; return its exit code (the one place that decides it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    lean_malloc()
    parser = build_parser(_command_in(argv))
    for each in _parsers(parser):
        each.argv = argv
    args = parser.parse_args(argv)
    name = " ".join(filter(None, ("pipeline", args.command, getattr(args, "subcommand", None))))
    try:
        with stop_signals_as_ctrl_c(), warnings_as_lines(name):
            outcome = _run(args.func, args)
    except BaseException as exc:  # noqa: BLE001 - this is the one place that decides
        return _failed(name, exc, bool(getattr(args, "json", False)))
    if outcome.message:
        print(f"{name}: {outcome.message}", file=sys.stderr)
    return outcome.code


def _failed(name: str, exc: BaseException, json_mode: bool) -> int:
    """Say why the command ``name`` stopped, in one line (a traceback for a bug); its code."""
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
        for line in [] if json_mode else worst.details():
            print(f"{name}: {line}", file=sys.stderr)
        print(f"{name}: {worst}", file=sys.stderr)
        return worst.exit_code
    traceback.print_exception(exc)
    print(f"{name}: internal error (a bug); please report it with the traceback above",
          file=sys.stderr)
    return errors.EXIT_BUG
