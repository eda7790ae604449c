"""Site export from Azure Blob (Azurite, Microsoft's emulator): the job names its blobs in
a blob list file in the account (export.blobListBlobPath, Azure's XML), the site streams
them onto a drive, the customer unpacks byte-identical files (issue 20)."""

from __future__ import annotations

import hashlib
import random

from pipeline.drive.format import BlobType
from pipeline.jobs.client import ServiceClient
from pipeline.storage.azure import AzureStorage
from pipeline.storage.local import LocalStorage
from tests import jobservice
from tests.azurite import azurite  # noqa: F401 - the fixture
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.test_export_flow import World, unpack_all, world  # noqa: F401


def test_export_from_azurite_with_a_blob_list_file(world: World, azurite: str) -> None:  # noqa: F811
    store = AzureStorage(azurite)
    store.ensure_container("media")
    rng = random.Random(7)
    blobs = {f"clips/{i:02d}.bin": rng.randbytes(rng.randrange(1, 3 << 20)) for i in range(6)}
    blobs["clips/zero.bin"] = bytes(2 << 20)
    blobs["solo.txt"] = b"just one\n"
    for name, data in {**blobs, "other/skip.bin": b"not listed"}.items():
        store.put("media", name, data)
    store.set_attributes("media", "solo.txt", BlobType.BLOCK, (("kind", "note"),),
                         (("Content-Type", "text/plain"), ("Content-Language", "en")))
    store.ensure_container("lists")
    store.put("lists", "export.xml", b"<BlobList>\n<BlobPathPrefix>/media/clips/"
              b"</BlobPathPrefix>\n<BlobPath>/media/solo.txt</BlobPath>\n</BlobList>\n")
    client = ServiceClient.from_file(str(world.settings), url=world.svc.url)
    client.put("exp-azure", jobservice.job_body(  # Azure's shape, as its SDK sends it
        [], jobType="Export", driveList=None, export={"blobListBlobPath": "/lists/export.xml"}))
    world.jobs("ship", "--job", "exp-azure", "--carrier", "DHL", "--tracking", "AZ-1",
               "--drive-count", "1")
    world.site("site receive", "--job", "exp-azure")
    image = world.base / "azure-0.img"
    world.site("export", "--job", "exp-azure", "--from", azurite, "--journal-dir",
               str(world.base / "ja"), "--drive", str(image), "--drive-size", "40M",
               *FAST_KDF_ARGS)
    job = client.get("exp-azure")["properties"]
    assert job["state"] == "Packaging" and len(job["driveList"]) == 1
    world.site("site return", "--job", "exp-azure", "--tracking", "AZ-RET")
    target = world.base / "from-azure"
    unpack_all(world, "exp-azure", [image], target)
    for name, data in blobs.items():
        got = (target / "media" / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
    assert not (target / "media" / "other").exists()
    info = LocalStorage(target).get_attributes("media", "solo.txt")
    assert info is not None and info.metadata == {"kind": "note"}
    assert info.properties["Content-Type"] == "text/plain"
    assert info.properties["Content-Language"] == "en"
    run_cli("jobs", "show", "--job", "exp-azure", "--publish-settings", str(world.settings),
            "--service", world.svc.url, check_code=0)
