"""A small block blob's Put Blob sent straight on the thread's connection (``azure._PutBlob``,
``write_whole``'s hot path), not through the SDK: names that need quoting, a SAS, a
connection the service closed, the blob Azure stores; and every other outcome left to
the SDK, whose errors name the account as before."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import BlobClient, BlobServiceClient

from pipeline.drive.format import BlobType
from pipeline.errors import EXIT_STORAGE
from pipeline.storage import StorageUnavailable, open_storage
from pipeline.storage import azure as azure_storage

from .azurite import ACCOUNT, ACCOUNT_KEY, azurite  # noqa: F401 - the fixture

NAMES = ["plain", "a b/ü?x#y%z", "dir/sub/~tilde+plus&amp=eq", "empty"]


def _no_sdk_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("sent through the SDK")
    monkeypatch.setattr(BlobClient, "upload_blob", refuse)


def _port(conn: str) -> int:
    return int(conn.split("127.0.0.1:")[1].split("/")[0])


def test_put_blob_direct_quoted_names_and_a_closed_connection(
        azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    store = open_storage(azurite)
    assert isinstance(store, azure_storage.AzureStorage) and store._direct is not None
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    _no_sdk_upload(monkeypatch)
    blobs = {name: b"" if name == "empty" else name.encode() * 100 for name in NAMES}
    for name, data in blobs.items():
        store.write_whole(c, name, BlobType.BLOCK, data)
    conn = store._direct._local.conn
    conn.sock.shutdown(socket.SHUT_RDWR)  # as a service closing an idle kept-alive one
    store.write_whole(c, "after-close", BlobType.BLOCK, b"again")
    assert store._direct is not None and store._direct._local.conn is not conn
    blobs["after-close"] = b"again"
    assert {name: store.get(c, name) for name in blobs} == blobs
    assert sorted(store.list(c)) == sorted(blobs)
    # What Azure stores is what the SDK's Put Blob gives: a block blob, octet-stream.
    props = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        c, "a b/ü?x#y%z").get_blob_properties()
    assert (props.blob_type.value, props.content_settings.content_type, props.size) == (
        "BlockBlob", "application/octet-stream", len(blobs["a b/ü?x#y%z"]))
    monkeypatch.undo()
    store.write_whole(c, "plain", BlobType.BLOCK, b"replaced")  # there: part + commit
    assert store.get(c, "plain") == b"replaced"


def test_put_blob_direct_with_a_sas(azurite: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
                                    ) -> None:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(ACCOUNT, ACCOUNT_KEY,
                               ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True,
                                                     list=True, add=True, create=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1))
    store = open_storage(f"http://127.0.0.1:{_port(azurite)}/{ACCOUNT}?{sas}")
    assert isinstance(store, azure_storage.AzureStorage) and store._direct is not None
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    _no_sdk_upload(monkeypatch)
    store.write_whole(c, "via sas/ü", BlobType.BLOCK, b"sas")
    assert store.get(c, "via sas/ü") == b"sas" and store._direct is not None


def test_put_blob_refused_or_unreachable_is_the_sdks_error(azurite: str) -> None:  # noqa: F811
    wrong = "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3JvbmdrZXk="
    store = open_storage(azurite.replace(ACCOUNT_KEY, wrong))
    with pytest.raises(StorageUnavailable) as ei:  # 403 to us, then the SDK's own answer
        store.write_whole("abc", "x", BlobType.BLOCK, b"x")
    msg = str(ei.value)
    assert ei.value.exit_code == EXIT_STORAGE and "refused" in msg
    assert wrong not in msg and ACCOUNT_KEY not in msg

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again on return
    store = open_storage(azurite.replace(f"127.0.0.1:{_port(azurite)}", f"127.0.0.1:{port}"))
    with pytest.raises(StorageUnavailable) as ei:
        store.write_whole("abc", "x", BlobType.BLOCK, b"x")
    assert "connection refused" in str(ei.value) and ACCOUNT_KEY not in str(ei.value)
    assert store._direct is None  # a new connection failed: the SDK from then on


def test_no_direct_put_behind_a_proxy(azurite: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
                                      ) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert open_storage(azurite)._direct is None  # the SDK's requests goes through it
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert open_storage(azurite)._direct is not None
