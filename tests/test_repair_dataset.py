"""repair on a WAImportExport dataset session: each file checked where import put it (its
own container and blob type, the name a ``rename`` chose), re-sent with its metadata and
properties; what no import decided is re-sent only where the disposition allows."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.drive import format as fmt
from pipeline.storage.local import LocalStorage

from .conftest import run_cli
from .test_waimport import dispositions_dataset, import_, inputs, md5, prep


def repair(tmp: Path, acct: Path, session: str, code: int) -> list[dict]:
    proc = run_cli("repair", "--journal-dir", str(tmp / "j"), "--session-id", session,
                   "--to", str(acct), "--json", check_code=code)
    return [x for x in map(json.loads, proc.stdout.splitlines()) if x.get("type") == "blob"]


def test_repair_puts_back_bytes_and_attributes_where_import_put_them(tmp_path: Path) -> None:
    want = inputs(tmp_path)
    prep(tmp_path)
    acct = tmp_path / "acct"
    acct.mkdir()
    for p in import_(tmp_path, acct, "d1.img"):
        assert p.returncode == 0, p.stderr
    store = LocalStorage(acct)
    assert repair(tmp_path, acct, "wa1", 0) == []  # all as the journals say
    # Damage: bytes of one blob, the attributes of another, a third gone.
    with open(acct / "photos" / "v1" / "a.bin", "r+b") as f:
        f.write(b"XXXX")
    (acct / ".pipeline-attrs" / "photos" / "v1" / "sub" / "b.txt").unlink()
    store.delete("vhds", "disks/d.vhd")
    store.set_attributes("photos", "v1/big.bin", fmt.BlobType.BLOCK, (("Owner", "x"),), ())
    events = {x["blob"]: x for x in repair(tmp_path, acct, "wa1", 0)}
    assert {b: x["status"] for b, x in events.items()} == {
        "photos/v1/a.bin": "re-sent", "photos/v1/sub/b.txt": "re-sent",
        "vhds/disks/d.vhd": "re-sent", "photos/v1/big.bin": "re-sent"}
    assert events["vhds/disks/d.vhd"]["reason"] == "missing"
    assert events["photos/v1/big.bin"]["bytes"] == 0  # only its attributes set again
    for name, data in want.items():
        container, blob = name.split("/", 1)
        assert store.get(container, blob) == data
        info = store.get_attributes(container, blob)
        assert info.properties["Content-MD5"] == md5(data)
        assert info.metadata == ({"Kind": "disk"} if container == "vhds"
                                 else {"Owner": "ops", "Project": "seed_19"})
    disk = store.get_attributes("vhds", "disks/d.vhd")
    assert disk.blob_type is fmt.BlobType.PAGE
    assert store.get_attributes("photos", "v1/sub/b.txt").properties["Cache-Control"] == "no-cache"
    # Never the session container + the entry's name (the old, unsafe behaviour).
    assert not (acct / "photos" / "photos").exists() and not (acct / "vhds" / "vhds").exists()
    assert repair(tmp_path, acct, "wa1", 0) == []


def test_repair_follows_the_rename_its_import_chose(tmp_path: Path) -> None:
    new = dispositions_dataset(tmp_path)
    prep(tmp_path, session="dis1")
    acct = tmp_path / "acct"
    acct.mkdir()
    store = LocalStorage(acct)
    store.ensure_container("cont")
    for rule in ("rename", "no-overwrite", "overwrite"):
        store.put("cont", f"d/{rule}.txt", f"old {rule}".encode())
    (p,) = import_(tmp_path, acct, "d1.img", session="dis1")
    assert p.returncode == 0, p.stderr
    (acct / "cont" / "d" / "rename (2).txt").write_bytes(b"damaged!!!!")
    events = repair(tmp_path, acct, "dis1", 0)
    assert {x["blob"]: x["status"] for x in events} == {  # no-overwrite: import skipped it
        "cont/d/rename (2).txt": "re-sent", "cont/d/no-overwrite.txt": "kept"}
    assert store.get("cont", "d/rename (2).txt") == new["rename"]
    assert store.get("cont", "d/rename.txt") == b"old rename"  # the existing one untouched
    assert store.get("cont", "d/no-overwrite.txt") == b"old no-overwrite"
    assert store.get_attributes("cont", "d/rename (2).txt").properties["Content-MD5"] == md5(
        new["rename"])


def test_repair_without_an_import_keeps_to_each_disposition(tmp_path: Path) -> None:
    """The drive never imported (lost): no marker says what import decided.  Absent blobs
    and overwrite are re-sent; no-overwrite keeps the existing blob; rename refuses (exit 4),
    for only the import can choose the new name once."""
    new = dispositions_dataset(tmp_path)
    prep(tmp_path, session="dis1")
    acct = tmp_path / "acct"
    acct.mkdir()
    store = LocalStorage(acct)
    store.ensure_container("cont")
    for rule in ("rename", "no-overwrite", "overwrite"):
        store.put("cont", f"d/{rule}.txt", f"old {rule}".encode())
    events = {x["blob"]: x["status"] for x in repair(tmp_path, acct, "dis1", 4)}
    assert events == {"cont/d/rename.txt": "failed", "cont/d/no-overwrite.txt": "kept",
                      "cont/d/overwrite.txt": "re-sent"}
    assert store.get("cont", "d/overwrite.txt") == new["overwrite"]
    assert store.get("cont", "d/rename.txt") == b"old rename"
    assert store.get("cont", "d/no-overwrite.txt") == b"old no-overwrite"
    store.delete("cont", "d/rename.txt")
    events = {x["blob"]: x["status"] for x in repair(tmp_path, acct, "dis1", 0)}
    assert events == {"cont/d/rename.txt": "re-sent", "cont/d/no-overwrite.txt": "kept"}
    assert store.get("cont", "d/rename.txt") == new["rename"]
