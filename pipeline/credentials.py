"""Reading secrets the operator hands us: recovery passwords, passphrases, key files.

Secrets come from files (or a prompt), never from the command line, where
every user on the machine can read them in ``ps``.  Nothing here logs or
prints a secret.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import BadInput, Caution, NoSpace, is_no_space
from pipeline.volume import luks2

MAX_KEY_FILE = 8 * 1024 * 1024  # cryptsetup's default key-file size limit


@dataclass(frozen=True)
class Secret:
    """Bytes to try on a keyslot, and what to call them in messages."""

    value: bytes
    kind: str  # "recovery password", "passphrase" or "key file"

    def __repr__(self) -> str:  # never show the secret in a traceback or log
        return f"Secret(<{self.kind}>)"


def warn_if_exposed(path: str | os.PathLike[str], what: str) -> None:
    """Warn (``errors.Caution``) when others may read the secret file ``path``: its group
    or anyone, by its mode.  A warning, not a refusal: the operator may have reasons (an
    ACL-guarded share), but must know."""
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode
        if mode & 0o044:
            warnings.warn(Caution(
                f"{what} {path} is readable by {'anyone' if mode & 0o004 else 'its group'} "
                f"(mode {stat.S_IMODE(mode):04o}); make it private: chmod 600 {path}"),
                stacklevel=2)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        warn_if_exposed(p, what)
        with p.open("rb") as f:     # bounded: /dev/zero or a pipe has no size to check first
            data = f.read(MAX_KEY_FILE + 1)
        if len(data) > MAX_KEY_FILE:
            raise BadInput(f"{what} {p} is larger than {MAX_KEY_FILE} bytes; is it the right file?")
        return data
    except FileNotFoundError:
        raise BadInput(f"{what} {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {p} is a directory; give the file") from None
    except PermissionError:
        raise BadInput(f"{what} {p}: permission denied") from None


def recovery_password_file(path: str | os.PathLike[str]) -> Secret:
    """The 48-digit recovery password in a text file, validated group by group."""
    raw = _read(path, "recovery password file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadInput(f"recovery password file {path} is not text") from None
    return Secret(luks2.parse_recovery_password(text).encode(), "recovery password")


def passphrase_file(path: str | os.PathLike[str]) -> Secret:
    """A passphrase in a text file; one trailing newline is not part of it."""
    raw = _read(path, "passphrase file")
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise BadInput(f"passphrase file {path} is empty")
    return Secret(raw, "passphrase")


def key_file(path: str | os.PathLike[str]) -> Secret:
    """A key file: every byte counts, as with ``cryptsetup --key-file``."""
    raw = _read(path, "key file")
    if not raw:
        raise BadInput(f"key file {path} is empty")
    return Secret(raw, "key file")


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Create a file readable by its owner only (mode 0600) holding ``text``."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BadInput(f"{p} already exists; give a new file name") from None
    except OSError as exc:
        raise BadInput(f"cannot create {p}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as exc:
        p.unlink(missing_ok=True)  # half a recovery password saved is worse than none
        if is_no_space(exc):
            raise NoSpace(p) from None
        raise
