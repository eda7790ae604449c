"""The backup repository's errors, each with its exit code (see ``pipeline.errors``).

Exit code 7 is new here: the online backup, ``restore`` and ``snapshots`` found
no repository in the storage account, which after an offline seed means the
import job has not completed yet.  It differs from bad input (2) because the
right move is to wait, not to change the command.  A full staging location or
restore target is ``pipeline.errors.NoSpace`` (9), as for every local filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import BadInput, IntegrityError, PipelineError

EXIT_NO_REPOSITORY = 7

EXIT_CODES = """\
exit codes:
  0    done
  1    done with warnings (files skipped; listed as warnings)
  2    bad input: arguments, paths, names, staging checks, wrong passphrase
  4    integrity failure: a pack, index or snapshot is damaged or missing (restore:
       every other file is restored; the ones that could not be are named)
  6    storage account unreachable or refused; fix it and run the same command again
  7    no backup repository there yet: the seed's import job must complete first
  9    no space left on a local filesystem (staging location, restore target): free
       space, then run the same command again
  70   internal error (a bug): traceback on stderr
  130  interrupted (Ctrl-C); nothing is marked complete, run the command again
any other code means failure"""


class WrongPassphrase(BadInput):
    """backup repository {}: the passphrase in {} does not open it; give the backup passphrase used with `pipeline backup --offline`"""  # noqa: E501 - one-line template


class CorruptRepository(IntegrityError):
    """backup repository: {}"""


class NoRepository(PipelineError):
    """{}"""

    exit_code = EXIT_NO_REPOSITORY


@dataclass(frozen=True, slots=True)
class FailedFile:
    """A file ``restore`` could not write: its path, and the first of its chunks that failed."""

    path: str
    chunk: int                  # 1-based, among the file's data chunks
    chunks: int
    reason: str
    more: int = 0               # further failed chunks of the same file

    def line(self) -> str:
        more = f" (and {self.more} more)" if self.more else ""
        return f"{self.path}: chunk {self.chunk} of {self.chunks} unreadable{more}: {self.reason}"


class PartialRestore(IntegrityError):
    """{}"""

    def __init__(self, message: str, failed: list[FailedFile], restored: int) -> None:
        super().__init__(message)
        self.failed = failed
        self.restored = restored
