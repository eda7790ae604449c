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
    70     internal error (a bug)
    128+N  ended by signal N (130 = Ctrl-C)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_DRIVES = 3
EXIT_INTEGRITY = 4
EXIT_REFUSED = 5
EXIT_STORAGE = 6
EXIT_NO_SEED = 7
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
