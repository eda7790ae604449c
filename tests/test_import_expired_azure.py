"""A file spanning two drives of a session whose first drive's staged blocks expired
(Azure drops uncommitted blocks 7 days after staging) before the second drive came in,
over an account holding an older committed copy of the same blob with the same size:
the second drive's import must not take the older copy's bytes for the expired cells
(it did before the block ids named the copy: logged "ok", 48e4829).  Expiry is
simulated by putting the block list of the committed blocks only, which drops every
uncommitted block, as Azure's expiry does."""

from __future__ import annotations

from pathlib import Path

from azure.storage.blob import BlobBlock, BlobServiceClient

from pipeline.errors import EXIT_INTEGRITY
from pipeline.receive.markers import STATE_CONTAINER, marker_name
from tests.azurite import azurite  # noqa: F401 - the fixture

from .conftest import run_cli
from .drivedata import make_tree, read_tree
from .test_import import copy_log, prep

CONTAINER = "expire"
SPANNING = "vdir/blobs/random.bin"  # as the copy log names it


def _session(base: Path, session: str, seed: int) -> tuple[dict, list[Path], Path]:
    src = base / f"src-{session}"
    make_tree(src, small_files=40, random_mb=20, sparse_mb=4, seed=seed)
    jdir = base / f"j-{session}"
    drives = [base / f"{session}-d1.img", base / f"{session}-d2.img"]
    prep(src, jdir, session, drives, "32M", dstdir=f"{CONTAINER}/vdir/")
    return read_tree(src), drives, jdir


def _import(drive: Path, jdir: Path, to: str, logs: Path, code: int = 0, *more: str) -> str:
    proc = run_cli("import", "--drive", str(drive), "--journal-dir", str(jdir), "--to", to,
                   "--log-dir", str(logs), *more, check_code=code)
    return proc.stderr


def _account(conn: str) -> dict[str, bytes]:
    client = BlobServiceClient.from_connection_string(conn).get_container_client(CONTAINER)
    return {b.name.removeprefix("vdir/"): client.download_blob(b.name).readall()
            for b in client.list_blobs(name_starts_with="vdir/")}


def test_expired_cells_are_not_filled_from_an_older_copy(
        tmp_path: Path, azurite: str) -> None:  # noqa: F811
    old, (o1, o2), ojdir = _session(tmp_path, "exp-old", seed=1)
    new, (n1, n2), njdir = _session(tmp_path, "exp-new", seed=2)
    name = SPANNING.removeprefix("vdir/")
    assert len(old[name]) == len(new[name]) and old[name] != new[name]
    logs = tmp_path / "logs"
    _import(o1, ojdir, azurite, logs)
    _import(o2, ojdir, azurite, logs)
    assert _account(azurite) == old

    _import(n1, njdir, azurite, logs)
    waiting = {x["blob"] for x in copy_log(logs, "exp-new", 1)
               if "continues on another drive" in x.get("reason", "")}
    assert SPANNING in waiting, waiting  # the file spans the drives: drive 1's cells staged
    blob = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        CONTAINER, SPANNING)
    committed, staged = blob.get_block_list("all")
    assert staged and len(committed) == 20
    blob.commit_block_list([BlobBlock(b.id) for b in committed])  # drop the staged: "expired"
    assert blob.get_block_list("uncommitted")[1] == []

    err = _import(n2, njdir, azurite, logs, code=EXIT_INTEGRITY)
    assert "cannot be committed" in err and name in err, err
    assert not any(x.get("blob") == SPANNING and x.get("status") == "ok"
                   for x in copy_log(logs, "exp-new", 2))
    assert _account(azurite)[name] == old[name]  # the older copy untouched, not a mix

    assert "pipeline import --again" in err, err  # the line says how

    # Drive 1 again: its marker says "done", so a plain import skips it; --again sends it.
    _import(n1, njdir, azurite, logs)
    assert {x.get("status") for x in copy_log(logs, "exp-new", 1) if "blob" in x} == {"skipped"}
    _import(n1, njdir, azurite, logs, 0, "--again")
    assert any(x.get("blob") == SPANNING and x.get("status") == "ok"
               for x in copy_log(logs, "exp-new", 1))
    _import(n2, njdir, azurite, logs)
    assert _account(azurite) == new
    marker = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        STATE_CONTAINER, marker_name("exp-new", 1)).download_blob().readall()
    assert b'"done"' in marker

