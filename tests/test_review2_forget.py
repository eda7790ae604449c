"""Review 2 of forget/prune --dry-run as the operator relies on it: it changes nothing
(every file of the storage the same, byte for byte) and says what the same command
without --dry-run then does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.backup_helpers import repo_backed_up
from tests.test_backup_prune import Repo

PLAN = ("packs_deleted", "packs_repacked", "leftover_packs", "chunks_used", "used_bytes",
        "unused_bytes", "unused_bytes_after", "bytes_freed_at_most")


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    repo = repo_backed_up(tmp_path, monkeypatch)
    for _ in range(3):
        repo.backup()
    return repo


def storage(r: Repo) -> dict[str, str]:
    """Every file of the account (the repository and the storage's own), by content."""
    return {p.relative_to(r.account).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(r.account.rglob("*")) if p.is_file()}


def summary(out: str) -> dict[str, object]:
    return next(e for e in map(json.loads, out.splitlines()) if e.get("type") == "summary")


def test_dry_runs_change_nothing(r: Repo) -> None:
    before = storage(r)
    for args in (["forget", "--keep-last", "1", "--dry-run"],
                 ["forget", "--keep-last", "1", "--prune", "--dry-run"],
                 ["prune", "--dry-run"], ["prune", "--dry-run", "--max-unused", "0%"]):
        r.cli(*args)
        assert storage(r) == before, args


def test_forget_prune_dry_run_plans_with_the_snapshots_it_would_remove_gone(r: Repo) -> None:
    """Before: the dry run planned the prune with the 3 snapshots still there: 'would
    free 0 unused packs, would repack 0' (nothing unused yet), while the same command
    then freed and repacked packs.  Now its plan is the real run's, figure for figure."""
    dry = summary(r.cli("forget", "--keep-last", "1", "--prune", "--dry-run", "--json").stdout)
    real = summary(r.cli("forget", "--keep-last", "1", "--prune", "--json").stdout)
    assert dry["removed"] == real["removed"] == 3
    assert {k: dry[k] for k in PLAN} == {k: real[k] for k in PLAN}
    assert int(real["packs_deleted"]) + int(real["packs_repacked"]) > 0   # type: ignore[call-overload]
    r.cli("check", "--read-data")
    r.verify_all()
