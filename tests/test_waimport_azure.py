"""WAImportExport v2 into Azurite, checked with Azure's own SDK: a dataset of a directory
row and a single-file row into two containers (block + page blobs, metadata, properties)
over two drives, and the three dispositions against existing blobs."""

from __future__ import annotations

import base64
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from azure.storage.blob import BlobType as AzureBlobType

from pipeline.storage.azure import AzureStorage
from tests.azurite import azurite  # noqa: F401 - the fixture

from .conftest import run_cli
from .test_waimport import (
    DHEADER,
    blob_lines,
    check_dispositions,
    dispositions_dataset,
    inputs,
    md5,
    prep,
    root_dataset,
)


def import_azure(tmp: Path, to: str, *images: str) -> None:
    for image in images:
        proc = run_cli("import", "--drive", str(tmp / image), "--journal-dir", str(tmp / "j"),
                       "--to", to, "--log-dir", str(tmp / "logs"))
        assert proc.returncode == 0, proc.stderr


def test_dataset_into_azurite_checked_with_the_sdk(tmp_path: Path, azurite: str) -> None:  # noqa: F811
    want = inputs(tmp_path, disk_size=50 * 2**20)  # the page blob spans both drives
    prep(tmp_path, session="waz1")
    import_azure(tmp_path, azurite, "d1.img", "d2.img")
    service = BlobServiceClient.from_connection_string(azurite)
    for name, data in want.items():
        container, blob = name.split("/", 1)
        client = service.get_blob_client(container, blob)
        props = client.get_blob_properties()
        assert client.download_blob().readall() == data
        cs = props.content_settings
        assert bytes(cs.content_md5) == base64.b64decode(md5(data))
        if container == "photos":
            assert props.blob_type == AzureBlobType.BLOCKBLOB
            assert props.metadata == {"Owner": "ops", "Project": "seed_19"}
            assert (cs.content_type, cs.content_encoding, cs.cache_control,
                    cs.content_language) == ("application/octet-stream", "identity",
                                             "no-cache", "en")
        else:
            assert props.blob_type == AzureBlobType.PAGEBLOB
            # beside the dataset's metadata, the importer's mark of a complete page blob
            assert props.metadata == {"Kind": "disk", "pipeline_complete": "true"}
    assert sorted(x["blob"] for x in blob_lines(tmp_path, "waz1", (1, 2))
                  if x["status"] == "ok") == sorted(want)
    # Again: nothing changes.
    etags = {n: service.get_blob_client(*n.split("/", 1)).get_blob_properties().etag
             for n in want}
    import_azure(tmp_path, azurite, "d1.img", "d2.img")
    assert {n: service.get_blob_client(*n.split("/", 1)).get_blob_properties().etag
            for n in want} == etags


def test_dispositions_on_azurite(tmp_path: Path, azurite: str) -> None:  # noqa: F811
    new = dispositions_dataset(tmp_path)
    prep(tmp_path, session="dis1")
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.get_container_client("cont")
    if not container.exists():
        container.create_container()
    for rule in ("rename", "no-overwrite", "overwrite"):
        container.upload_blob(f"d/{rule}.txt", f"old {rule}".encode(), overwrite=True)
    import_azure(tmp_path, azurite, "d1.img")
    store = AzureStorage(azurite)

    def get(name: str) -> bytes | None:
        return store.get("cont", name)

    check_dispositions(tmp_path, get, new)
    info = store.get_attributes("cont", "d/overwrite.txt")
    assert info is not None and info.properties["Content-MD5"] == md5(new["overwrite"])
    import_azure(tmp_path, azurite, "d1.img")
    assert get("d/rename (3).txt") is None
    assert all(x["status"] == "skipped" for x in blob_lines(tmp_path, "dis1", (1,)))
    # repair: the renamed blob, overwritten by someone (bytes and attributes gone), is
    # sent again under the name import chose, with its Content-MD5; the rest untouched.
    container.upload_blob("d/rename (2).txt", b"damaged", overwrite=True)
    run_cli("repair", "--journal-dir", str(tmp_path / "j"), "--session-id", "dis1", "--to",
            azurite, check_code=0)
    assert get("d/rename (2).txt") == new["rename"]
    assert store.get_attributes("cont", "d/rename (2).txt").properties["Content-MD5"] == md5(
        new["rename"])
    assert (get("d/rename.txt"), get("d/no-overwrite.txt")) == (b"old rename",
                                                                b"old no-overwrite")


def test_root_container_into_azurite(tmp_path: Path, azurite: str) -> None:  # noqa: F811
    """``$root/`` rows land in Azure's root container (Azurite serves it as Azure does)."""
    want = root_dataset(tmp_path)
    prep(tmp_path, session="rootaz", code=1)  # 1: the subdirectory's file skipped, named
    import_azure(tmp_path, azurite, "d1.img")
    service = BlobServiceClient.from_connection_string(azurite)
    root = service.get_container_client("$root")
    assert sorted(b.name for b in root.list_blobs()) == sorted(want)
    for name, data in want.items():
        client = service.get_blob_client("$root", name)
        assert client.download_blob().readall() == data
        props = client.get_blob_properties()
        assert bytes(props.content_settings.content_md5) == base64.b64decode(md5(data))
        assert props.metadata == ({} if name == "single.txt" else {"Where": "root"})


def test_dispositions_against_page_blobs_another_tool_made(tmp_path: Path,
                                                            azurite: str) -> None:  # noqa: F811
    """Page blobs uploaded by another tool (azcopy, the portal: no pipeline_complete mark)
    exist as far as a dataset's disposition goes: no-overwrite and rename keep them (a VHD
    was overwritten and logged "new" before), overwrite replaces them, even by a block
    blob (deleted first: Azure cannot turn one type into the other in place)."""
    src = tmp_path / "src"
    src.mkdir()
    new = {}
    rows = ["BasePath,DstBlobPathOrPrefix,BlobType,Disposition,MetadataFile,PropertiesFile"]
    for rule in ("rename", "no-overwrite", "overwrite"):
        new[rule] = bytes([len(rule)]) * 1024
        (src / f"{rule}.vhd").write_bytes(new[rule])
        rows.append(f"{src}/{rule}.vhd,vhds/{rule}.vhd,PageBlob,{rule},None,None")
    (src / "to-block.txt").write_bytes(b"a block blob now")
    rows.append(f"{src}/to-block.txt,vhds/to-block.txt,BlockBlob,overwrite,None,None")
    (tmp_path / "dataset.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "driveset.csv").write_text(
        f"{DHEADER}\n{tmp_path}/d1.img,Format,SilentMode,Encrypt,\n")
    prep(tmp_path, session="foreign1")
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.get_container_client("vhds")
    if not container.exists():
        container.create_container()
    old = b"\x07" * 512
    for name in ("rename.vhd", "no-overwrite.vhd", "overwrite.vhd", "to-block.txt"):
        client = container.get_blob_client(name)
        client.create_page_blob(512, metadata={"Old": "yes"})
        client.upload_page(old, offset=0, length=512)
    import_azure(tmp_path, azurite, "d1.img")

    def blob(name: str) -> tuple[object, bytes, dict[str, str]]:
        client = container.get_blob_client(name)
        props = client.get_blob_properties()
        return props.blob_type, client.download_blob().readall(), props.metadata

    page, block = AzureBlobType.PAGEBLOB, AzureBlobType.BLOCKBLOB
    assert blob("rename.vhd") == (page, old, {"Old": "yes"})
    assert blob("rename (2).vhd")[:2] == (page, new["rename"])
    assert blob("no-overwrite.vhd") == (page, old, {"Old": "yes"})
    assert blob("overwrite.vhd")[:2] == (page, new["overwrite"])
    assert blob("to-block.txt") == (block, b"a block blob now", {})
    lines = {x["blob"]: (x["status"], x["action"]) for x in blob_lines(tmp_path, "foreign1", (1,))}
    assert lines == {"vhds/rename (2).vhd": ("ok", "renamed"),
                     "vhds/no-overwrite.vhd": ("skipped", "kept existing"),
                     "vhds/overwrite.vhd": ("ok", "overwritten"),
                     "vhds/to-block.txt": ("ok", "overwritten")}
