"""The backup repository's errors, each with its exit code (see ``pipeline.errors``).

Exit code 7 is new here: the online backup, ``restore`` and ``snapshots`` found
no repository in the storage account, which after an offline seed means the
import job has not completed yet.  It differs from bad input (2) because the
right move is to wait, not to change the command.
"""

from __future__ import annotations

from pipeline.errors import EXIT_STORAGE, BadInput, IntegrityError, PipelineError

EXIT_NO_REPOSITORY = 7

EXIT_CODES = """\
exit codes:
  0    done
  1    done with warnings (files skipped; listed as warnings)
  2    bad input: arguments, paths, names, staging checks, wrong passphrase
  4    integrity failure: a pack, index or snapshot is damaged or missing
  6    storage unreachable or full; fix it and run the same command again
  7    no backup repository there yet: the seed's import job must complete first
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


class StagingFull(PipelineError):
    """{}"""

    exit_code = EXIT_STORAGE
