"""kill -9 at the import's crash points while a file spans two drives, into Azurite, then
the import again: every blob, read back with Azure's own SDK, is the source file byte for
byte, none left hidden, and the copy logs give the verdicts a local import that ran
through gives.

The local store's bug (022e1f6: drive 2 killed after committing a file that spans
drives, run again, committed a new sparse partial over the good blob) has its own test
in test_import_state_crash.py; Azure keeps partial state differently (a block blob's
committed blocks stand in for blocks not staged again, a page blob is written in
place), so the same kills are run here against the real protocol.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from pipeline.receive.markers import STATE_CONTAINER
from pipeline.storage.azure import COMPLETE
from tests.azurite import azurite  # noqa: F401 - the fixture

from .conftest import run_cli
from .drivedata import make_tree, read_tree
from .test_import import copy_log, local_blobs, prep

MiB = 1 << 20
POINTS = ("import_after_sweep:1", "import_after_commit_round:1")


def _page_tree(root: Path) -> None:
    """Files whose sizes are whole pages: one outgrows a 32M drive's room, a sparse image,
    small ones."""
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "random.bin").write_bytes(random.Random(7).randbytes(20 * MiB))
    with open(root / "blobs" / "disk.vhd", "wb") as f:
        f.truncate(8 * MiB)
        for mb in (0, 5):
            f.seek(mb * MiB + 4096)
            f.write(b"\x5a" * 300_000)
    (root / "small").mkdir()
    for i in range(30):
        (root / "small" / f"p{i:02d}.bin").write_bytes(bytes([i]) * 512 * (i + 1))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("spanaz")
    block, page = base / "block", base / "page"
    make_tree(block, small_files=40, random_mb=20, sparse_mb=4)
    _page_tree(page)
    return {"block": (block, read_tree(block)), "page": (page, read_tree(page))}


Prepped = Callable[[str, int], tuple[str, list[Path], Path, Path, Path]]


@pytest.fixture(scope="module")
def prepped(tmp_path_factory: pytest.TempPathFactory, sources: dict) -> Prepped:
    """(session, drives, journal dir, local reference account, its logs) for a blob type
    and the killed drive: the drives of one session per blob type, and the reference per
    killed drive, each made once, on first use, and shared by the cases (they only read
    the drives and journals, as one case's reference and Azure import always did)."""
    drives_of: dict[str, tuple[str, list[Path], Path]] = {}
    refs: dict[tuple[str, int], tuple[Path, Path]] = {}

    def get(btype: str, killed: int) -> tuple[str, list[Path], Path, Path, Path]:
        if btype not in drives_of:
            base = tmp_path_factory.mktemp(f"spanaz-{btype}")
            session, jdir = f"spanaz-{btype}", base / "j"
            drives = [base / "d1.img", base / "d2.img"]
            prep(sources[btype][0], jdir, session, drives, "32M", "--blob-type", btype,
                 dstdir=f"{session}/vdir/")
            drives_of[btype] = (session, drives, jdir)
        session, drives, jdir = drives_of[btype]
        if (btype, killed) not in refs:
            refs[btype, killed] = _reference(session, drives, jdir, killed,
                                             tmp_path_factory.mktemp(f"ref-{btype}-{killed}"))
        return (session, drives, jdir, *refs[btype, killed])

    return get


def _reference(session: str, drives: list[Path], jdir: Path, killed: int, base: Path
               ) -> tuple[Path, Path]:
    """The drives imported into a local account, unkilled, the other one first."""
    other = 3 - killed
    ref, ref_logs = base / "ref", base / "ref-logs"
    ref.mkdir()
    _import(drives[other - 1], jdir, str(ref), ref_logs)
    waiting = {x["blob"] for x in copy_log(ref_logs, session, other)
               if "continues on another drive" in x.get("reason", "")}
    assert any(b.endswith("blobs/random.bin") for b in waiting), waiting  # spans the drives
    _import(drives[killed - 1], jdir, str(ref), ref_logs)
    return ref, ref_logs


def _fresh_account(conn: str, session: str) -> None:
    """Nothing of the session left in Azurite by an earlier case (they share the session):
    its container, staged blocks included, and the importer's markers and logs gone."""
    service = BlobServiceClient.from_connection_string(conn)
    with contextlib.suppress(ResourceNotFoundError):
        service.delete_container(session)
    state = service.get_container_client(STATE_CONTAINER)
    if state.exists():
        for b in state.list_blobs(name_starts_with=f"{session}/"):
            state.delete_blob(b.name)
        assert not list(state.list_blobs(name_starts_with=f"{session}/"))
    assert session not in {c.name for c in service.list_containers()}


def _import(drive: Path, jdir: Path, to: str, logs: Path, crash: str | None = None) -> None:
    run_cli("import", "--drive", str(drive), "--journal-dir", str(jdir), "--to", to,
            "--log-dir", str(logs), env={"PIPELINE_CRASH_AT": crash} if crash else None,
            check_code=-signal.SIGKILL if crash else 0)


def _account(conn: str, container: str, btype: str, final: bool = False) -> dict[str, bytes]:
    """Every visible blob of the container as the SDK reads it (``final``: every blob, and
    a partial one, metadata pipeline_complete=false, fails the test: nothing may stay
    half-done once the drives are in)."""
    client = BlobServiceClient.from_connection_string(conn).get_container_client(container)
    out = {}
    for b in client.list_blobs(name_starts_with="vdir/", include=["metadata"]):
        assert b.blob_type == ("PageBlob" if btype == "page" else "BlockBlob"), b.name
        flag = (b.metadata or {}).get(COMPLETE)
        if flag == "false" and not final:
            continue  # a partial page blob, hidden from the importer's readers
        assert flag == ("true" if btype == "page" else None), (b.name, flag)
        out[b.name.removeprefix("vdir/")] = client.download_blob(b.name).readall()
    return out


def _verdicts(logs: Path, session: str, seq: int) -> list[tuple[str, str]]:
    return sorted((x["blob"].removeprefix(f"{session}/"), x["status"])
                  for x in copy_log(logs, session, seq) if x.get("type") == "blob")


def _totals(logs: Path, session: str, seq: int) -> dict:
    last = copy_log(logs, session, seq)[-1]
    return {k: v for k, v in last.items() if k not in ("t", "drive")}


@pytest.mark.parametrize("btype", ["block", "page"])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("killed", [2, 1], ids=["drive2-killed", "drive1-killed"])
def test_killed_with_a_file_spanning_drives_into_azurite(
        tmp_path: Path, azurite: str, sources: dict, prepped: Prepped,  # noqa: F811
        btype: str, point: str, killed: int) -> None:
    """Drives imported 1 then 2; the ``killed`` one is killed at ``point``, then imported
    again (drive 1 killed: drive 2 is imported before drive 1's second run, so it sees
    drive 1's "parts" marker, or none, and drive 1's run again completes the file).

    The reference is the same drives imported into a local account, unkilled, the other
    one first: the killed drive's last copy log gives the same (blob, verdict) pairs and
    totals (drive 1 run again after drive 2 completes the spanning file, as drive 1
    imported after drive 2 does).  The cases share the prepped session (one per blob
    type), so each starts from an account cleared of it."""
    files = sources[btype][1]
    session, drives, jdir, ref, ref_logs = prepped(btype, killed)
    d1, d2 = drives
    _fresh_account(azurite, session)
    assert local_blobs(ref, session) == files

    logs = tmp_path / "logs"
    if killed == 2:
        _import(d1, jdir, azurite, logs)
        _import(d2, jdir, azurite, logs, crash=point)
        shown = _account(azurite, session, btype)
        assert all(files[name] == data for name, data in shown.items())  # whole, right blobs
        if point.startswith("import_after_commit_round"):
            assert shown == files  # the spanning file committed, drive 2 still "parts"
        _import(d2, jdir, azurite, logs)
    else:
        _import(d1, jdir, azurite, logs, crash=point)
        shown = _account(azurite, session, btype)
        assert all(files[name] == data for name, data in shown.items())
        _import(d2, jdir, azurite, logs)
        shown = _account(azurite, session, btype)
        assert all(files[name] == data for name, data in shown.items())
        _import(d1, jdir, azurite, logs)
    assert _account(azurite, session, btype, final=True) == files

    assert _verdicts(logs, session, killed) == _verdicts(ref_logs, session, killed)
    assert _totals(logs, session, killed) == _totals(ref_logs, session, killed)
    for seq in (1, 2):
        assert _totals(logs, session, seq)["result"] == "done"
    ok = {b for seq in (1, 2) for b, s in _verdicts(logs, session, seq) if s == "ok"}
    assert ok == {"vdir/" + name for name in files}  # every file "ok" on its last drive
