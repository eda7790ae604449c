"""Exceptions the user can act on, each with its exit code; the one exit-code table.

Modelled on borg's ``helpers/errors.py``: the class docstring is the message
template, ``exit_code`` is what ``cli.main`` returns.  Modules raise; only
``cli.py`` prints and exits.  A command that ran to its end returns an
``Outcome`` instead (done, or done with warnings).  ``EXIT_CODES`` is the only
table of codes: ``--help`` of each command lists the codes it declares, from it
(``exit_code_help``).  This module imports nothing from pipeline.
"""

from __future__ import annotations

import errno
import os
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_DRIVES = 3
EXIT_INTEGRITY = 4
EXIT_REFUSED = 5
EXIT_STORAGE = 6
EXIT_NO_SEED = 7
EXIT_INCOMPLETE = 8
EXIT_NO_SPACE = 9
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

# Every code any command ends with, and what it tells the user to do next.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_WARNING: "done with warnings (items skipped; each named on stderr or in the log)",
    EXIT_BAD_INPUT: "bad input: arguments, paths, names, staging checks, wrong password or "
                    "passphrase",
    EXIT_OUT_OF_DRIVES: "out of drives: stopped cleanly; run again with --resume and more "
                        "drives",
    EXIT_INTEGRITY: "integrity failure: checksum, decrypt or format mismatch; a backup pack, "
                    "index or snapshot damaged or missing (restore: every other file is "
                    "restored; the ones that could not be are named)",
    EXIT_REFUSED: "refused: unsafe device, missing confirmation (--yes), a job name taken, "
                  "or a backup repository locked by another run",
    EXIT_STORAGE: "storage account unreachable or refused; retry when it is back",
    EXIT_NO_SEED: "no backup repository there yet (the seed's import job must complete "
                  "first), or no offline backup in the staging location (backup --offline)",
    EXIT_INCOMPLETE: "a drive cannot vouch for completeness (no intact closing index): what "
                     "it holds was imported and checked; import it with its journal "
                     "(--journal-dir) to know the rest",
    EXIT_NO_SPACE: "no space left on a local filesystem (journal, copy log, restore target, "
                   "staging): free space, then run the same command again (prep: --resume)",
    EXIT_BUG: "internal error (a bug): traceback on stderr",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM or SIGHUP); resumable: run the same "
                      "command again (prep: --resume)",
}

# What every command can end with: its arguments, a bug, an interrupt.
EVERY_COMMAND = (EXIT_OK, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED)


def exit_code_help(codes: Iterable[int] | None = None) -> str:
    """The ``--help`` table of ``codes`` (with ``EVERY_COMMAND``'s), or of every code."""
    chosen = sorted(set(EXIT_CODES if codes is None else (*EVERY_COMMAND, *codes)))
    lines = ["exit codes:"]
    for code in chosen:
        lines += textwrap.wrap(f"{code:<4} {EXIT_CODES[code]}", 88, initial_indent="  ",
                               subsequent_indent=" " * 7, break_on_hyphens=False)
    return "\n".join([*lines, "any other code means failure"])


def exit_code_markdown() -> str:
    """The README's table of every code: the same words as ``--help`` (a test holds the
    README to it)."""
    rows = ["| code | meaning |", "|------|---------|"]
    rows += [f"| {code} | {text} |" for code, text in sorted(EXIT_CODES.items())]
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command that ran to its end returns to ``cli.main``: ``code`` is
    ``EXIT_OK`` or ``EXIT_WARNING`` (a failure is raised, never returned), and
    ``message``, when not empty, is the line cli prints on stderr after the command's
    name (``pipeline prep: ...``)."""

    code: int = EXIT_OK
    message: str = ""

    def __post_init__(self) -> None:
        if self.code not in (EXIT_OK, EXIT_WARNING):
            raise ValueError(f"exit code {self.code} is not an outcome: raise its error")


class Caution(UserWarning):
    """Something the user should fix though the command goes on (a secret file others can
    read): library code ``warnings.warn``s it, cli.py prints it as one line."""


class PipelineError(Exception):
    """Error: {}"""

    exit_code = EXIT_BUG

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args = args

    def message(self) -> str:
        template = (type(self).__doc__ or "{}").strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return " ".join(str(a) for a in self.args)

    def __str__(self) -> str:
        return self.message()

    def details(self) -> list[str]:
        """Lines cli prints before the message, one per item the error is about (none by
        default; with --json they went out as events instead)."""
        return []


class BadInput(PipelineError):
    """{}"""

    exit_code = EXIT_BAD_INPUT


class WrongPassword(BadInput):
    """{}: no keyslot opens with this {}; check the password and the drive"""


class InvalidRecoveryPassword(BadInput):
    """recovery password {}: {}"""


class Refused(PipelineError):
    """{}"""

    exit_code = EXIT_REFUSED


class IntegrityError(PipelineError):
    """{}"""

    exit_code = EXIT_INTEGRITY


class OutOfDrives(PipelineError):
    """{}"""

    exit_code = EXIT_OUT_OF_DRIVES


class Incomplete(PipelineError):
    """{}"""

    exit_code = EXIT_INCOMPLETE


class Interrupted(PipelineError):
    """{}"""

    exit_code = EXIT_INTERRUPTED


class NoSpace(PipelineError):
    """no space left on {} (writing {}); free space there, then {}"""

    exit_code = EXIT_NO_SPACE

    def __init__(self, path: str | os.PathLike[str], what: str = "",
                 then: str = "run the same command again") -> None:
        super().__init__(filesystem_of(path), what or os.fspath(path), then)

    def next_step(self, what: str) -> None:
        """Say what to run once there is room, where the same command again would not do
        (prep: its --resume); the raiser deep down does not know the command."""
        self.args = (*self.args[:2], what)


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """An OSError that means the filesystem is full (or the quota is spent)."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def filesystem_of(path: str | os.PathLike[str]) -> str:
    """The mount point holding ``path`` (or its nearest existing parent), for messages."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return f"the filesystem mounted at {p}"


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The plain exceptions inside ``exc``, however deeply grouped (Trio nurseries group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def rank(exc: BaseException) -> int:
    """Which error decides the exit code when several arrive together (lower wins)."""
    order = ((KeyboardInterrupt, Interrupted), IntegrityError, OutOfDrives, Refused,
             BadInput, NoSpace, PipelineError)
    for i, cls in enumerate(order):
        if isinstance(exc, cls):
            return i
    if is_no_space(exc):
        return order.index(NoSpace)
    return len(order)


def worst(exc: BaseException) -> BaseException:
    """The one error of a (possibly grouped) exception that decides what the user is told."""
    return min(leaves(exc), key=rank)


def printable(text: str) -> str:
    """A path (or any text from a drive, a repository, a request) for one message line: as
    it is when every character prints, else control characters and backslashes escaped as
    repr does and the undecodable bytes of a surrogate-escaped name as \\xNN.  A file name is its
    owner's choice: a newline or an escape sequence in it must not split a line or
    reach the terminal as such."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:       # os.fsdecode's stand-in for a byte that is not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() and ch != "\\":
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
