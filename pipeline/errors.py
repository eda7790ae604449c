"""Exceptions the user can act on, each with its exit code.

Modelled on borg's ``helpers/errors.py``: the class docstring is the message
template, ``exit_code`` is what ``cli.main`` returns.  Modules raise; only
``cli.py`` prints and exits.  This module imports nothing from pipeline.

Exit codes (also printed by ``--help``; any unknown code means failure):

    0      done
    1      done with warnings
    2      bad input: arguments, paths, names, wrong password
    3      out of drives: stopped cleanly, resume with more drives
    4      integrity failure: checksum, decrypt or format mismatch
    5      refused: unsafe device or missing confirmation
    6      storage account unreachable or refused; retry when it is back
    7      no offline backup in the staging location, or its seed is not imported yet
    8      a drive cannot vouch for completeness: no closing index, or it was never closed
           (what it holds was imported and checked; files not on it are named)
    9      no space left on a local filesystem pipeline writes (journal, copy log, restore
           target, staging): free space, then run the same command again
    70     internal error (a bug)
    128+N  ended by signal N (130 = Ctrl-C)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

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

EXIT_CODE_TABLE = """\
exit codes:
  0    done
  1    done with warnings (items skipped; listed in the log)
  2    bad input: arguments, paths, names, wrong password
  3    out of drives: stopped cleanly; run again with --resume and more drives
  4    integrity failure: checksum, decrypt or format mismatch
  5    refused: unsafe device or missing confirmation (--yes)
  6    storage account unreachable or refused; retry when it is back
  7    no offline backup in the staging location, or its seed is not imported yet
  8    a drive cannot vouch for completeness (no intact closing index): what it holds was
       imported and checked; import it with its journal (--journal-dir) to know the rest
  9    no space left on a local filesystem (journal, copy log, restore target, staging):
       free space, then run the same command again (prep: --resume)
  70   internal error (a bug): traceback on stderr
  130  interrupted (Ctrl-C); resumable
any other code means failure"""


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
    order = (KeyboardInterrupt, IntegrityError, OutOfDrives, Refused, BadInput, NoSpace,
             PipelineError)
    for i, cls in enumerate(order):
        if isinstance(exc, cls):
            return i
    if is_no_space(exc):
        return order.index(NoSpace)
    return len(order)


def worst(exc: BaseException) -> BaseException:
    """The one error of a (possibly grouped) exception that decides what the user is told."""
    return min(leaves(exc), key=rank)
