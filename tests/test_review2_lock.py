"""Review 2: lock files with hostile content.  Anyone who can write to the storage can
drop a file in locks/; one holding the key can write any fields.  No traceback, no
escape sequence reaching the terminal, and no lock that holds the repository for ever."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.backup import lock as lock_mod
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK
from tests.backup_helpers import repo_backed_up
from tests.test_backup_prune import Repo

HOST = os.uname().nodename


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    return repo_backed_up(tmp_path, monkeypatch)


def put_lock(r: Repo, content: object) -> str:
    """A lock file of ``content``: bytes as they are, anything else as sealed JSON."""
    name = f"{lock_mod.LOCKS}{os.urandom(32).hex()}"
    with r.open(None) as repo:
        data = content if isinstance(content, bytes) else repo.crypto.seal_file(
            lock_mod.LOCK_MAGIC, json.dumps(content).encode())
        repo.backend.put(name, data)
    return name


def locks(r: Repo) -> list[str]:
    return r.backend().list(lock_mod.LOCKS)


def test_a_lock_file_not_of_this_repository_is_ignored_with_a_warning(r: Repo) -> None:
    """200 random bytes in locks/ (no key needed).  Before: every command, backup and
    prune alike, refused with exit 4 ('has magic ...'), and no command could remove it.
    Now a warning naming it and the fix; prune (an exclusive lock) goes on."""
    name = put_lock(r, os.urandom(200))
    proc = r.cli("prune")
    assert proc.returncode == EXIT_OK
    assert (f"pipeline prune: warning: ignored {name} of {r.url.removeprefix('file://')} "
            "container backups: not a lock of this repository (it does not decrypt with its "
            "key); remove it from the storage") in proc.stderr.splitlines()
    assert locks(r) == [name]


BAD_FIELDS = {
    # a time without a zone: TypeError comparing it with now (traceback, exit 70)
    "naive time": ({"host": "elsewhere", "pid": 7, "exclusive": True, "command": "prune",
                    "time": "2026-01-01T00:00:00"}, "not refreshed for "),
    # a pid past C long on this host: OverflowError in os.kill (traceback, exit 70)
    "huge pid": ({"host": HOST, "pid": 2 ** 70, "exclusive": True, "command": "prune",
                  "time": "now"}, f"process {2 ** 70} on this host is gone"),
    # dated 2099: 'refreshed 0 s ago' and held the repository until then (exit 5)
    "future time": ({"host": "elsewhere", "pid": 7, "exclusive": True, "command": "prune",
                     "time": "2099-01-01T00:00:00+00:00"}, "s in the future (a wrong clock"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_a_lock_with_odd_fields_is_stale_and_removed(r: Repo, case: str) -> None:
    from datetime import UTC, datetime
    content, why = BAD_FIELDS[case]
    if content["time"] == "now":
        content = {**content, "time": datetime.now(UTC).isoformat()}
    name = put_lock(r, content)
    proc = r.cli("prune")
    assert proc.returncode == EXIT_OK, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if "warning:" in x]
    assert warning.startswith(f"pipeline prune: warning: removed the stale lock {name} ")
    assert why in warning
    assert locks(r) == []


def test_a_locks_host_and_command_reach_the_terminal_escaped(r: Repo) -> None:
    """A held lock (fresh, another host) whose host and command hold a newline and an
    escape sequence: the refusal is still one line, the control characters escaped."""
    from datetime import UTC, datetime
    put_lock(r, {"host": "h\x1b[2J", "pid": 7, "exclusive": True,
                 "command": "prune\nFAKE: all fine", "time": datetime.now(UTC).isoformat()})
    proc = r.cli("prune", code=None)
    assert proc.returncode == lock_mod.RepositoryLocked.exit_code, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "\x1b" not in line
    assert "an exclusive lock by PID 7 on h\\x1b[2J (prune\\nFAKE: all fine), refreshed " in line


def test_a_lock_of_the_key_with_a_pid_that_is_no_number_is_one_line(r: Repo) -> None:
    """Decrypts, but pid is a string: one line naming the file and the fix (exit 4), as
    a lock lacking fields (not ignored: it was written with the key)."""
    from datetime import UTC, datetime
    name = put_lock(r, {"host": "h", "pid": "12", "exclusive": True, "command": "x",
                        "time": datetime.now(UTC).isoformat()})
    proc = r.cli("prune", code=EXIT_INTEGRITY)
    assert proc.stderr.splitlines() == [
        f"pipeline prune: backup repository: lock file {name} lacks fields; if no other "
        "pipeline uses this repository, delete it"]
