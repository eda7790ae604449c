"""The repository's ``config`` is plaintext JSON (restic's is encrypted): anyone who can
write to the storage can edit it.  Every field is held to what a backup could have written,
and a repo_id changed under its key files is named as such, not as a wrong passphrase.
Before: chunker sizes of 0 or a normalization of 99 were a traceback from the chunker (exit
70), a max of 1 TiB read a whole file as one chunk, an edited repo_id said "the passphrase
does not open it"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import PASS, backup

ALTERED = "the config was altered; put back the repository's own config file"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one snapshot (each test edits a copy of its config)."""
    tmp = tmp_path_factory.mktemp("cfg")
    (tmp / "src").mkdir()
    (tmp / "src" / "f.bin").write_bytes(os.urandom(100_000))
    (tmp / "pass").write_bytes(PASS + b"\n")
    repo = Repository.init(DirBackend(tmp / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, tmp / "src", False)
    repo.close()
    (tmp / "config.orig").write_bytes((tmp / "repo" / "config").read_bytes())
    return tmp


def edit(seeded: Path, change: dict[str, object], chunker: dict[str, object] | None = None
         ) -> None:
    """The config as written at init, with ``change`` (and ``chunker``'s fields) over it."""
    obj = json.loads((seeded / "config.orig").read_bytes().rstrip(b"\0"))
    obj.update(change)
    obj["chunker"].update(chunker or {})
    (seeded / "repo" / "config").write_bytes(json.dumps(obj).encode())


CASES = [
    ({}, {"min": 0}, "config's min 0 is outside 64..1048576"),
    ({}, {"avg": 0}, "config's avg 0 is outside 256..4194304"),
    ({}, {"max": 1 << 40}, f"config's max {1 << 40} is outside 1024..16777216"),
    ({}, {"normalized_chunking": 99}, "config's normalized_chunking 99 is outside 0..3"),
    ({}, {"min": 1 << 20, "avg": 256 << 10},
     "config's chunker sizes are not min <= avg <= max (1048576, 262144, 4194304)"),
    ({"pack_size": 1 << 40}, {}, f"config's pack_size {1 << 40} is outside 65536..134217728"),
    ({"pack_size": 0}, {}, "config's pack_size 0 is outside 65536..134217728"),
    ({"repo_id": "../../etc"}, {}, "config's repo_id is not 32 hex digits"),
]


@pytest.mark.parametrize(("change", "chunker", "why"), CASES)
def test_an_edited_config_is_one_line(seeded: Path, change: dict[str, object],
                                      chunker: dict[str, object], why: str) -> None:
    edit(seeded, change, chunker)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "snapshots", "--from", str(seeded / "repo"),
             "--passphrase-file", str(seeded / "pass")],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
            env={**os.environ, "PIPELINE_CONFIG_DIR": str(seeded / "home")})
    finally:
        edit(seeded, {})
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("pipeline snapshots: backup repository: " + why), line
    assert line.endswith(ALTERED if "repo_id" not in why else
                         "put back the repository's own config file"), line


def test_floats_strings_and_bools_are_not_sizes() -> None:
    good = json.loads(fmt.Config("0" * 32).encode().rstrip(b"\0"))
    for value in (1048576.0, "1048576", True):
        bad = {**good, "chunker": {**good["chunker"], "avg": value}}
        with pytest.raises(CorruptRepository, match="lacks chunker or pack_size"):
            fmt.Config.decode(json.dumps(bad).encode())
    assert fmt.Config.decode(json.dumps(good).encode()) == fmt.Config("0" * 32)


def test_a_repo_id_from_elsewhere_is_named_not_a_wrong_passphrase(seeded: Path) -> None:
    """A well-formed repo_id that is not the key files': the config was swapped."""
    edit(seeded, {"repo_id": "0123456789abcdef" * 2})
    try:
        with pytest.raises(CorruptRepository, match=r"config's repo_id 0123456789abcdef"
                           r"0123456789abcdef is not the one its key files were made for"):
            Repository.open(DirBackend(seeded / "repo"), PASS, "pass", lock=None)
    finally:
        edit(seeded, {})
    Repository.open(DirBackend(seeded / "repo"), PASS, "pass", lock=None).close()


def test_the_defaults_and_the_tests_small_sizes_are_accepted() -> None:
    for params, pack in ((fmt.ChunkerParams(), 16 << 20),
                         (fmt.ChunkerParams(256, 1024, 4096), 64 << 10),
                         (fmt.ChunkerParams(8 << 10, 32 << 10, 128 << 10), 128 << 10)):
        config = fmt.Config("ab" * 16, params, pack)
        assert fmt.Config.decode(config.encode()) == config
