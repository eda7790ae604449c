"""What a no-change `pipeline backup` imports (issue 23: a no-change incremental at least 2x
restic's speed).  Most of such a run is the interpreter starting and importing: each module
not needed costs its import on every hourly backup.  The modules are read from the process
itself (``sys.modules`` once the command has finished), less those the bare interpreter has
at startup (this install's ``.pth`` files), in the two states an hourly run finds: no local
tree cache yet, then the cache written by the run before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.backup_helpers import backed_up_tree, seed_account
from tests.conftest import ROOT
from tests.test_backup_repo import CONTAINER, PASS

# Run as `python -m pipeline` runs (runpy), then write sys.modules' names to MODULES_OUT:
# in a `finally`, so that only what the command imported is there (no json, no atexit).
_CHILD = """
import os, runpy, sys
try:
    if len(sys.argv) > 1:
        sys.argv[0] = "pipeline"
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["MODULES_OUT"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""

# Every pipeline module a no-change online backup into a local account imports.  One more
# here is one more import on every run: defer it to where it is used when it can wait (a
# module a rarer branch needs), and add it here only when the no-change run needs it.
NO_CHANGE_PIPELINE = {
    "pipeline", "pipeline.atomic", "pipeline.cli", "pipeline.credentials", "pipeline.errors",
    "pipeline.faults", "pipeline.names", "pipeline.progress",
    "pipeline.backup", "pipeline.backup.archive", "pipeline.backup.backend",
    "pipeline.backup.cache", "pipeline.backup.crypto", "pipeline.backup.encoding",
    "pipeline.backup.errors", "pipeline.backup.lock", "pipeline.backup.offline",
    "pipeline.backup.repo", "pipeline.backup.stages", "pipeline.backup.stages.messages",
    "pipeline.backup.stages.tree", "pipeline.backup.ui", "pipeline.backup.walk",
    "pipeline.commands", "pipeline.commands._options", "pipeline.commands.backup",
    # storage's BlobType and CELL, not the drive format (7 ms of the start)
    "pipeline.drive", "pipeline.drive.blob",
    "pipeline.storage", "pipeline.storage.base", "pipeline.storage.local",
    "pipeline.storage.target",
    # luks2 for the key file's argon2id; it imports xts (its keyslots), and xts the cipher
    # package AES-GCM needs anyway: 0.4 ms of its own
    "pipeline.volume", "pipeline.volume._xtsmask", "pipeline.volume.luks2",
    "pipeline.volume.xts",
}
# Never on this path, by name (top-level packages and modules): the pipeline's Trio run,
# the other storage backend and the import service's client, `backup schedule`'s module,
# and what only they need.
NEVER = {
    "trio", "outcome", "sniffio", "azure", "httpx", "h11", "httpcore", "ssl", "_ssl", "socket",
    "selectors", "asyncio", "subprocess", "rich", "hypothesis", "numpy", "sqlite3", "_sqlite3",
    "uuid", "tempfile", "difflib", "email", "http", "xml", "multiprocessing",
    "pipeline.jobs", "pipeline.prep", "pipeline.receive", "pipeline.cluster",
    "pipeline.drive.format", "pipeline.drive.attrs", "pipeline.drive.codec",
    "pipeline.backup.schedule", "pipeline.backup.stages.read", "pipeline.backup.stages.seal",
    "pipeline.backup.stages.pack", "pipeline.backup.stages.upload", "pipeline.backup.locate",
    "pipeline.storage.azure",
}


def _modules(tmp_path: Path, *args: str) -> tuple[set[str], list[dict[str, object]]]:
    out = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MODULES_OUT": str(out),
             "PIPELINE_CONFIG_DIR": str(tmp_path / "config"),
             "XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return set(out.read_text().split("\n")), [json.loads(x) for x in proc.stdout.splitlines()]


def _seeded_account(tmp_path: Path) -> tuple[Path, Path]:
    """A backed-up tree and its repository in a local account, as an imported seed is."""
    src, _ = backed_up_tree(tmp_path)
    account = tmp_path / "account"
    seed_account(tmp_path / "repo", account, CONTAINER)
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    return src, account


def _top(name: str) -> set[str]:
    """``name`` and each package above it: a.b.c -> a, a.b, a.b.c."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def test_no_change_backup_imports_only_what_it_needs(tmp_path: Path) -> None:
    src, account = _seeded_account(tmp_path)
    startup, _ = _modules(tmp_path)
    args = ("backup", "--source", str(src), "--to", str(account), "--container", CONTAINER,
            "--passphrase-file", str(tmp_path / "pass"), "--json")
    for state in ("no tree cache yet", "the tree cache of the run before"):
        modules, events = _modules(tmp_path, *args)
        summary = next(x for x in events if x.get("type") == "summary")
        assert summary["bytes_read"] == 0 and summary["chunks_new"] == 0, (state, summary)
        imported = modules - startup
        ours = {m for m in imported if m == "pipeline" or m.startswith("pipeline.")}
        assert ours == NO_CHANGE_PIPELINE, (state, sorted(ours ^ NO_CHANGE_PIPELINE))
        wrong = sorted(m for m in imported if _top(m) & NEVER)
        assert wrong == [], (state, wrong)


def test_backup_command_names_the_schedules_default_unit_dir() -> None:
    """`backup schedule --unit-dir`'s default is written in the command (its module is
    imported only when it runs): the one the schedule module means."""
    from pipeline.backup import schedule
    from pipeline.commands import backup as command

    assert command.UNIT_DIR == schedule.DEFAULT_UNIT_DIR
