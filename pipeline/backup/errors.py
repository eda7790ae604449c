"""The backup repository's errors, each with its exit code (the table is ``pipeline.errors``).

No repository in the storage account is ``EXIT_NO_SEED`` (7): after an offline
seed it means the import job has not completed yet, and the right move is to
wait, not to change the command.  A full staging location or restore target is
``pipeline.errors.NoSpace`` (9), as for every local filesystem.  A repository
another run holds locked (prune while a backup runs) is ``EXIT_REFUSED`` (5):
nothing was changed, run it again once the other is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import (
    EXIT_NO_SEED,
    BadInput,
    IntegrityError,
    PipelineError,
    Refused,
    printable,  # noqa: F401 - backup's modules take it from here
)


class WrongPassphrase(BadInput):
    """backup repository {}: the passphrase in {} does not open it; give the backup passphrase used with `pipeline backup --offline`"""  # noqa: E501 - one-line template


class CorruptRepository(IntegrityError):
    """backup repository: {}"""


class NoRepository(PipelineError):
    """{}"""

    exit_code = EXIT_NO_SEED


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
        return (f"{printable(self.path)}: chunk {self.chunk} of {self.chunks} unreadable"
                f"{more}: {self.reason}")


class PartialRestore(IntegrityError):
    """{}"""

    def __init__(self, message: str, failed: list[FailedFile], restored: int) -> None:
        super().__init__(message)
        self.failed = failed
        self.restored = restored

    def details(self) -> list[str]:
        """One line per file not restored, path first (cli prints them before the total)."""
        return [f.line() for f in self.failed]


class RepositoryLocked(Refused):
    """{}"""


class RepositoryDamaged(IntegrityError):
    """{}"""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems

    def details(self) -> list[str]:
        """One line per damaged or missing item, and what it affects (cli prints them first)."""
        return list(self.problems)
