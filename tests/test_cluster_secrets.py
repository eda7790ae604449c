"""`import --cluster --to STORAGE`: no storage key crosses Dask's wire.  The client sends the
account's address only; each worker brings its own credential (`pipeline worker
--storage-key-file FILE` or AZURE_STORAGE_CONNECTION_STRING) and checks it is that account's.
Checked on what the client hands to Dask (every submitted task's arguments, pickled), on
the processes' logs, and end to end into Azurite."""

from __future__ import annotations

import os
import pickle
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from pipeline import cli
from pipeline.cluster import target
from pipeline.errors import BadInput
from pipeline.storage import open_storage
from tests.azurite import ACCOUNT_KEY, azurite  # noqa: F401 - the fixture
from tests.conftest import FAST_KDF_ARGS, require_root
from tests.drivedata import make_tree, read_tree
from tests.test_cluster import Proc, scheduler_address, start_scheduler, start_worker
from tests.test_cluster import cli as run

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ=="
CONN = ("DefaultEndpointsProtocol=https;AccountName=seedacct;AccountKey=" + KEY
        + ";EndpointSuffix=core.windows.net")


def test_the_client_sends_the_account_address_only(tmp_path: Path) -> None:
    public, store = target.public_target(CONN)
    assert public == "https://seedacct.blob.core.windows.net" and store is not None
    sas = "https://seedacct.blob.core.windows.net/?sv=2022-11-02&sp=rwl&sig=abc%2Fdef"
    assert target.public_target(sas)[0] == "https://seedacct.blob.core.windows.net"
    bare, none = target.public_target("https://SeedAcct.blob.core.windows.net/")
    assert (bare, none) == ("https://seedacct.blob.core.windows.net", None)
    assert target.public_target(str(tmp_path))[0] == str(tmp_path)


def test_a_worker_uses_its_own_credential_for_that_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    public = target.public_target(CONN)[0]
    with pytest.raises(BadInput, match="worker w1 has no credential for https://seedacct"):
        target.open_on_worker(public, None, "w1")
    other = CONN.replace("seedacct", "otheracct")
    with pytest.raises(BadInput, match="for https://otheracct.blob.core.windows.net, not"):
        target.open_on_worker(public, other, "w1")
    assert target.open_on_worker(public, CONN, "w1").name.startswith(public)
    assert target.open_on_worker(str(tmp_path), None, "w1") is not None  # a shared directory
    key_file = tmp_path / "storage.key"
    key_file.write_text(CONN + "\n")
    key_file.chmod(0o600)
    assert target.read_credential(key_file) == CONN
    monkeypatch.setenv(target.ENV, other)
    assert target.read_credential(None) == other
    monkeypatch.delenv(target.ENV)
    assert target.read_credential(None) is None
    for text, why in (("", "is empty"), (str(tmp_path), "names no storage account"),
                      ("AccountName=x;BlobEndpoint=https://x", "no AccountKey")):
        key_file.write_text(text)
        with pytest.raises(BadInput, match=why) as err:
            target.read_credential(key_file)
        assert KEY not in str(err.value)


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[str, dict[str, Proc]]]:
    require_root()
    procs: dict[str, Proc] = {}
    try:
        procs["scheduler"] = start_scheduler(tmp_path)
        yield scheduler_address(procs["scheduler"]), procs
    finally:
        for p in procs.values():
            p.stop()


def _import_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]
                       ) -> tuple[int, str, list[bytes]]:
    """`pipeline import --cluster ...` in this process, every task it submits recorded as
    Dask receives it (the real Client.submit runs)."""
    import distributed

    sent: list[bytes] = []
    real = distributed.Client.submit

    def recording(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(pickle.dumps((fn.__module__, fn.__qualname__, args, kwargs)))
        return real(self, fn, *args, **kwargs)

    with mock.patch.object(distributed.Client, "submit", recording):
        code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err, sent


def test_import_over_tcp_sends_no_key(tmp_path: Path, scheduler: tuple[str, dict[str, Proc]],
                                      azurite: str,  # noqa: F811 - the fixture
                                      capsys: pytest.CaptureFixture[str]) -> None:
    address, procs = scheduler
    assert address.startswith("tcp://")
    key_file = tmp_path / "storage.key"
    key_file.write_text(azurite + "\n")
    key_file.chmod(0o600)
    procs["w1"] = start_worker(tmp_path, address, "w1",
                               extra=["--storage-key-file", str(key_file)])
    procs["w2"] = start_worker(tmp_path, address, "w2")  # no credential yet
    src = tmp_path / "staging"
    make_tree(src, small_files=40, random_mb=6, sparse_mb=18)
    jdir = tmp_path / "journals"
    run("prep", "--cluster", address, "--source", str(src), "--dstdir", "cont/seed/",
        "--journal-dir", str(jdir), "--session-id", "sec-1", *FAST_KDF_ARGS)
    argv = ["import", "--cluster", address, "--journal-dir", str(jdir), "--to", azurite,
            "--log-dir", str(tmp_path / "logs")]
    code, out, sent = _import_in_process(argv, capsys)
    assert code == 2 and "worker w2 has no credential for http://127.0.0.1" in out, out
    assert "--storage-key-file" in out
    procs["w2"].stop()  # the same worker again, its credential in its environment
    procs["w2"] = start_worker(tmp_path, address, "w2", env={target.ENV: azurite})
    code, out, more = _import_in_process(argv, capsys)
    assert code == 0, out
    sent += more
    assert len(sent) == 4  # two tasks a run, one a worker
    secret = urllib.parse.quote(ACCOUNT_KEY).encode()
    for task in sent:
        assert ACCOUNT_KEY.encode() not in task and secret not in task
        assert b"AccountKey" not in task
        assert b"http://127.0.0.1:" in task  # the address did go: that is all
    for p in procs.values():
        assert ACCOUNT_KEY not in p.log.read_text(errors="replace")
    store = open_storage(azurite)
    got = {b: store.get("cont", b) for b in store.list("cont")}
    assert {k.removeprefix("seed/"): v for k, v in got.items()} == read_tree(src)
    assert os.listdir(tmp_path / "logs")
