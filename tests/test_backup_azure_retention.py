"""forget --prune end to end on an Azure-backed repository (Azurite), with the CLI alone.

The seed goes in as prep + import put it (page blobs at the container's root), two online
backups follow into the account, then `forget --keep-last 1 --prune` removes the older
snapshots and frees what only they used; the kept snapshot must restore byte-identical
and `check --read-data` must pass on what is left.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

from pipeline.errors import EXIT_OK
from pipeline.storage import open_storage
from tests.azurite import azurite  # noqa: F401 - the fixture
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.test_backup_repo import describe, import_seed, make_tree

SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"
MiB = 1 << 20


def _data_bytes(conn: str, container: str) -> int:
    store = open_storage(conn)
    return sum(store.size(container, n) or 0 for n in store.list(container, "data/"))


def test_forget_keep_last_prune_on_azurite(tmp_path: Path, azurite: str) -> None:  # noqa: F811
    container = f"ret{uuid.uuid4().hex[:12]}"
    src, staging = tmp_path / "src", tmp_path / "staging"
    src.mkdir()
    staging.mkdir()
    make_tree(src)
    (src / "goes.bin").write_bytes(random.Random(3).randbytes(2 * MiB))  # only the seed has it
    secret = tmp_path / "pass"
    secret.write_text("an azure retention passphrase\n")
    secret.chmod(0o600)
    env = {"PIPELINE_CONFIG_DIR": str(tmp_path / "config")}
    key = ["--passphrase-file", str(secret)]
    where = ["--from", azurite, "--container", container, *key]

    run_cli("backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
            str(staging), "--job-name", "seed-azure", "--subscription", SUB, "--account",
            "backupacct", "--container", container, *key, check_code=EXIT_OK, env=env)
    import_seed(staging / "repo", open_storage(azurite), container)

    for i in range(2):                      # two online backups, each after a change
        (src / "goes.bin").unlink(missing_ok=True)
        (src / f"new-{i}.bin").write_bytes(random.Random(i).randbytes(300_000))
        (src / "docs" / "readme.txt").write_text(f"edition {i}\n" * 3000)
        run_cli("backup", "--source", str(src), "--to", azurite, "--container", container,
                *key, check_code=EXIT_OK, env=env)
    kept_state = describe(src)

    listed = json.loads(run_cli("snapshots", *where, "--json", check_code=EXIT_OK).stdout)
    assert len(listed) == 3
    newest = max(listed, key=lambda s: s["time"])
    before = _data_bytes(azurite, container)

    run_cli("forget", *where, "--keep-last", "1", "--prune", check_code=EXIT_OK)

    left = json.loads(run_cli("snapshots", *where, "--json", check_code=EXIT_OK).stdout)
    assert [s["id"] for s in left] == [newest["id"]]
    after = _data_bytes(azurite, container)
    assert after < before - MiB, (before, after)    # the seed-only 2 MiB file is freed
    run_cli("check", *where, "--read-data", check_code=EXIT_OK)
    out = tmp_path / "restored"
    run_cli("restore", *where, "--target", str(out), check_code=EXIT_OK)
    assert describe(out) == kept_state
