"""WAImportExport v2 end to end on a local account: prep --dataset/--driveset -> import, with
metadata, properties, page blobs, every disposition, an AlreadyEncrypted drive made by
cryptsetup, and bad CSVs refused before anything is written.  Azurite: test_waimport_azure.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.storage.local import LocalStorage
from pipeline.volume import drives

from .conftest import FAST_KDF_ARGS, require_tool, run_cli

MiB = 1 << 20
HEADER = "BasePath,DstBlobPathOrPrefix,BlobType,Disposition,MetadataFile,PropertiesFile"
DHEADER = "DriveLetter,FormatOption,SilentOrPromptOnFormat,Encryption,ExistingBitLockerKey"


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def inputs(tmp: Path, disk_size: int = 3 * 4096) -> dict[str, bytes]:
    """A directory row and a single-file row into two containers, page + block blobs, with
    metadata and properties files (no Content-MD5: import computes it).  A ``disk_size``
    over a 64M drive's 48 MiB makes the page blob span both drives of the set."""
    src = tmp / "src"
    (src / "photos" / "sub").mkdir(parents=True)
    files = {"photos/a.bin": os.urandom(3000), "photos/big.bin": os.urandom(MiB + 4096),
             "photos/sub/b.txt": b"hello\n", "disk.vhd": os.urandom(disk_size)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    (tmp / "meta.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<Metadata>\n'
                                  "  <Owner>ops</Owner>\n  <Project>seed_19</Project>\n"
                                  "</Metadata>\n")
    (tmp / "props.xml").write_text('<?xml version="1.0"?>\n<Properties>\n'
                                   "  <Content-Type>application/octet-stream</Content-Type>\n"
                                   "  <Content-Encoding>identity</Content-Encoding>\n"
                                   "  <Cache-Control>no-cache</Cache-Control>\n"
                                   "  <Content-Language>en</Content-Language>\n"
                                   "  <Etag>0x1</Etag>\n</Properties>\n")
    (tmp / "vmeta.xml").write_text("<Metadata><Kind>disk</Kind></Metadata>")
    (tmp / "dataset.csv").write_text(
        f"{HEADER}\n"
        f'"{src}/photos/","photos/v1/",BlockBlob,rename,"{tmp}/meta.xml",{tmp}/props.xml\n'
        f"{src}/disk.vhd,vhds/disks/d.vhd,PageBlob,overwrite,{tmp}/vmeta.xml,None\n")
    (tmp / "driveset.csv").write_text(
        f"{DHEADER}\n{tmp}/d1.img,Format,SilentMode,Encrypt,\n"
        f"{tmp}/d2.img,Format,SilentMode,Encrypt,\n")
    return {"photos/v1/a.bin": files["photos/a.bin"], "photos/v1/big.bin": files["photos/big.bin"],
            "photos/v1/sub/b.txt": files["photos/sub/b.txt"],
            "vhds/disks/d.vhd": files["disk.vhd"]}


def prep(tmp: Path, *extra: str, session: str = "wa1", code: int = 0,
         dataset: str = "dataset.csv", driveset: str = "driveset.csv"
         ) -> subprocess.CompletedProcess[str]:
    return run_cli("prep", "--dataset", str(tmp / dataset), "--driveset", str(tmp / driveset),
                   "--journal-dir", str(tmp / "j"), "--session-id", session,
                   "--drive-size", "64M", *FAST_KDF_ARGS, *extra, check_code=code)


def import_(tmp: Path, to: Path, *images: str, session: str = "wa1"
            ) -> list[subprocess.CompletedProcess[str]]:
    out = []
    for image in images:
        out.append(run_cli("import", "--drive", str(tmp / image), "--journal-dir",
                           str(tmp / "j"), "--to", str(to), "--log-dir", str(tmp / "logs")))
    return out


def copy_log(tmp: Path, session: str, seq: int) -> list[dict]:
    path = tmp / "logs" / f"copylog-{session}-drive{seq:02d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def blob_lines(tmp: Path, session: str, seqs: tuple[int, ...]) -> list[dict]:
    return [x for s in seqs for x in copy_log(tmp, session, s) if x["type"] == "blob"]


def test_dataset_round_trip_on_a_local_account(tmp_path: Path) -> None:
    want = inputs(tmp_path, disk_size=50 * MiB)
    proc = prep(tmp_path)
    assert "Etag is set by the service; ignored" in proc.stderr
    acct = tmp_path / "acct"
    acct.mkdir()
    for p in import_(tmp_path, acct, "d1.img", "d2.img"):
        assert p.returncode == 0, p.stderr
    store = LocalStorage(acct)
    for name, data in want.items():
        container, blob = name.split("/", 1)
        assert (acct / container / blob).read_bytes() == data
        info = store.get_attributes(container, blob)
        assert info is not None and info.properties["Content-MD5"] == md5(data)
    photo = store.get_attributes("photos", "v1/sub/b.txt")
    assert photo.metadata == {"Owner": "ops", "Project": "seed_19"}
    assert photo.properties == {"Content-Type": "application/octet-stream",
                                "Content-Encoding": "identity",
                                "Content-Language": "en", "Cache-Control": "no-cache",
                                "Content-MD5": md5(b"hello\n")}
    disk = store.get_attributes("vhds", "disks/d.vhd")
    assert (disk.blob_type, disk.metadata) == (fmt.BlobType.PAGE, {"Kind": "disk"})
    # The attributes file is the documented JSON, beside the blob's own tree.
    doc = json.loads((acct / ".pipeline-attrs" / "vhds" / "disks" / "d.vhd").read_text())
    assert doc == {"blob_type": "PageBlob", "metadata": {"Kind": "disk"},
                   "properties": {"Content-MD5": md5(want["vhds/disks/d.vhd"])}}
    lines = blob_lines(tmp_path, "wa1", (1, 2))
    assert sorted(x["blob"] for x in lines if x["status"] == "ok") == sorted(want)
    # The page blob spans both drives: the first one's import leaves it waiting.
    first = {x["blob"]: x for x in blob_lines(tmp_path, "wa1", (1,))}
    assert first["vhds/disks/d.vhd"]["status"] == "skipped"
    assert "continues on another drive" in first["vhds/disks/d.vhd"]["reason"]
    ok = {x["blob"]: (x["disposition"], x["action"]) for x in lines if x["status"] == "ok"}
    assert ok == {"photos/v1/a.bin": ("rename", "new"), "photos/v1/big.bin": ("rename", "new"),
                  "photos/v1/sub/b.txt": ("rename", "new"),
                  # decided by drive 1's import, which delivered its first part
                  "vhds/disks/d.vhd": ("overwrite", "as decided before")}
    # Importing both drives again changes nothing.
    before = {p: p.stat().st_mtime_ns for p in acct.rglob("*") if p.is_file()
              and "waimportexport" not in p.parts}
    for p in import_(tmp_path, acct, "d1.img", "d2.img"):
        assert p.returncode == 0, p.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert all(x["status"] == "skipped" for x in blob_lines(tmp_path, "wa1", (1, 2)))


def test_drives_are_version_2_and_the_old_path_still_writes_version_1(tmp_path: Path) -> None:
    inputs(tmp_path)
    prep(tmp_path)
    jrn = journal.session_journals(tmp_path / "j", "wa1")[0]
    with drives.open_drive(tmp_path / "d1.img") as drive:
        vol = drives.read_volume(drive)
        _, key = drives.unlock(drive, vol, jrn.recovery_password.encode())
        sb = drives.read_superblock(drive, drives.DriveCipher.for_volume(vol, key))
    assert sb.version == fmt.ATTRS_VERSION
    run_cli("verify", "--journal-dir", str(tmp_path / "j"), "--session-id", "wa1", check_code=0)
    # Without the journal: the closing index carries the attributes as the journal does.
    pw = tmp_path / "pw"
    pw.write_text(jrn.recovery_password)
    acct = tmp_path / "acct-index"
    acct.mkdir()
    run_cli("import", "--drive", str(tmp_path / "d1.img"), "--recovery-password-file", str(pw),
            "--to", str(acct), "--log-dir", str(tmp_path / "logs-index"), check_code=0)
    disk = LocalStorage(acct).get_attributes("vhds", "disks/d.vhd")
    assert (disk.blob_type, disk.metadata) == (fmt.BlobType.PAGE, {"Kind": "disk"})
    assert LocalStorage(acct).get_attributes("photos", "v1/sub/b.txt").metadata["Owner"] == "ops"
    # --source/--dstdir, the one-row shorthand: version 1 as before, imported as before.
    old = tmp_path / "old"
    (old / "d").mkdir(parents=True)
    (old / "d" / "f.txt").write_bytes(b"v1")
    run_cli("prep", "--source", str(old), "--dstdir", "cont/vd/", "--drive",
            str(tmp_path / "v1.img"), "--drive-size", "64M", "--journal-dir",
            str(tmp_path / "j1"), "--session-id", "old1", *FAST_KDF_ARGS, check_code=0)
    jrn1 = journal.session_journals(tmp_path / "j1", "old1")[0]
    with drives.open_drive(tmp_path / "v1.img") as drive:
        vol = drives.read_volume(drive)
        _, key = drives.unlock(drive, vol, jrn1.recovery_password.encode())
        assert drives.read_superblock(drive, drives.DriveCipher.for_volume(vol, key)).version == 1
    acct = tmp_path / "acct"
    acct.mkdir()
    run_cli("import", "--drive", str(tmp_path / "v1.img"), "--journal-dir", str(tmp_path / "j1"),
            "--to", str(acct), "--log-dir", str(tmp_path / "logs"), check_code=0)
    assert (acct / "cont" / "vd" / "d" / "f.txt").read_bytes() == b"v1"
    assert LocalStorage(acct).get_attributes("cont", "vd/d/f.txt").metadata == {}


def dispositions_dataset(tmp: Path) -> dict[str, bytes]:
    src = tmp / "src"
    src.mkdir()
    new = {}
    rows = [HEADER]
    for rule in ("rename", "no-overwrite", "overwrite"):
        data = f"new {rule}\n".encode()
        (src / f"{rule}.txt").write_bytes(data)
        new[rule] = data
        rows.append(f"{src}/{rule}.txt,cont/d/{rule}.txt,BlockBlob,{rule},None,None")
    (tmp / "dataset.csv").write_text("\n".join(rows) + "\n")
    (tmp / "driveset.csv").write_text(f"{DHEADER}\n{tmp}/d1.img,Format,SilentMode,Encrypt,\n")
    return new


def check_dispositions(tmp: Path, get: callable, new: dict[str, bytes]) -> None:
    """What each rule did against the existing blobs, and what the copy log says."""
    assert get("d/rename.txt") == b"old rename"
    assert get("d/rename (2).txt") == new["rename"]
    assert get("d/no-overwrite.txt") == b"old no-overwrite"
    assert get("d/overwrite.txt") == new["overwrite"]
    lines = {x["blob"]: x for x in blob_lines(tmp, "dis1", (1,))}
    assert lines["cont/d/rename (2).txt"] | {"t": 0} == {
        "t": 0, "type": "blob", "status": "ok", "blob": "cont/d/rename (2).txt", "size": 11,
        "reason": "", "file_id": lines["cont/d/rename (2).txt"]["file_id"],
        "disposition": "rename", "action": "renamed", "renamed_from": "cont/d/rename.txt"}
    skipped = lines["cont/d/no-overwrite.txt"]
    assert (skipped["status"], skipped["action"], skipped["disposition"]) == (
        "skipped", "kept existing", "no-overwrite")
    assert "no-overwrite" in skipped["reason"]
    over = lines["cont/d/overwrite.txt"]
    assert (over["status"], over["action"]) == ("ok", "overwritten")


def test_dispositions_on_a_local_account(tmp_path: Path) -> None:
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

    def get(name: str) -> bytes | None:
        return store.get("cont", name)

    check_dispositions(tmp_path, get, new)
    # Again: the drive is done, nothing moves, no "rename (3)".
    (p,) = import_(tmp_path, acct, "d1.img", session="dis1")
    assert p.returncode == 0, p.stderr
    assert get("d/rename (3).txt") is None
    check_dispositions_again(tmp_path)


def check_dispositions_again(tmp: Path) -> None:
    assert all(x["status"] == "skipped" for x in blob_lines(tmp, "dis1", (1,)))


def test_resumed_import_keeps_the_decision(tmp_path: Path) -> None:
    """A crash between the parts and the commits: the marker says "parts"; the import
    run again writes to the name decided the first time, not to "rename (3)"."""
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
    marker = acct / "waimportexport" / "dis1" / "drive-01.json"
    doc = json.loads(marker.read_text())
    doc["state"] = "parts"  # as a crash before "done" leaves it
    marker.write_text(json.dumps(doc))
    (p,) = import_(tmp_path, acct, "d1.img", session="dis1")
    assert p.returncode == 0, p.stderr
    assert store.get("cont", "d/rename (3).txt") is None
    assert store.get("cont", "d/rename (2).txt") == new["rename"]
    lines = {x["blob"]: x for x in blob_lines(tmp_path, "dis1", (1,))}
    assert lines["cont/d/rename (2).txt"]["action"] == "renamed"


def test_import_again_keeps_the_decision(tmp_path: Path) -> None:
    """import --again of a drive already imported: sent once more to the names decided the
    first time (kept in its marker), not to "rename (3)"; the account as it was."""
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
    before = sorted(x.relative_to(acct) for x in (acct / "cont").rglob("*"))
    run_cli("import", "--drive", str(tmp_path / "d1.img"), "--journal-dir", str(tmp_path / "j"),
            "--to", str(acct), "--log-dir", str(tmp_path / "logs"), "--again")
    assert sorted(x.relative_to(acct) for x in (acct / "cont").rglob("*")) == before
    assert store.get("cont", "d/rename (3).txt") is None
    assert store.get("cont", "d/rename.txt") == b"old rename"
    assert store.get("cont", "d/rename (2).txt") == new["rename"]
    assert store.get("cont", "d/no-overwrite.txt") == b"old no-overwrite"
    assert store.get("cont", "d/overwrite.txt") == new["overwrite"]
    lines = {x["blob"]: (x["status"], x["action"]) for x in blob_lines(tmp_path, "dis1", (1,))}
    assert lines == {"cont/d/rename (2).txt": ("ok", "renamed"),
                     "cont/d/no-overwrite.txt": ("skipped", "kept existing"),
                     "cont/d/overwrite.txt": ("ok", "as decided before")}


def test_already_encrypted_drive_made_by_cryptsetup(tmp_path: Path) -> None:
    """AlreadyFormatted + AlreadyEncrypted: the volume cryptsetup made is opened with its
    key and kept (same UUID, the key still opens it); prep writes into its data area."""
    exe = require_tool("cryptsetup")
    want = inputs(tmp_path)
    image = tmp_path / "luks.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    # A recovery password, as a BitLocker operator's ExistingBitLockerKey is: the job's
    # bitLockerKey below (a passphrase: test_waimport_service.py).
    key = "111111-222222-333333-444444-555555-666666-000055-123453"
    (tmp_path / "key").write_text(key)
    subprocess.run([exe, "luksFormat", "--batch-mode", "--type", "luks2", "--cipher",
                    "aes-xts-plain64", "--key-size", "512", "--sector-size", "4096",
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", str(tmp_path / "key"), str(image)], check=True)
    uuid = subprocess.run([exe, "luksUUID", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "enc.csv").write_text(
        f"{DHEADER}\n{image},AlreadyFormatted,SilentMode,AlreadyEncrypted,{key}\n")
    prep(tmp_path, driveset="enc.csv")
    assert subprocess.run([exe, "luksUUID", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip() == uuid
    with drives.open_drive(image) as drive:
        vol = drives.read_volume(drive)
        drives.unlock(drive, vol, key.encode())  # the operator's key still opens it
        header = hashlib.sha256(drive.pread(16384, 0)).hexdigest()
    # The job's drive list: the volume's own id and key, its manifest and header hashes.
    (entry,) = json.loads(run_cli("journal", "export", "--journal-dir", str(tmp_path / "j"),
                                  "--session-id", "wa1", check_code=0).stdout)
    assert (entry["driveId"], entry["bitLockerKey"], entry["driveHeaderHash"]) == (
        uuid, key, header)
    assert entry["manifestFile"].startswith("/index@") and len(entry["manifestHash"]) == 64
    acct = tmp_path / "acct"
    acct.mkdir()
    (p,) = import_(tmp_path, acct, "luks.img")
    assert p.returncode == 0, p.stderr
    for name, data in want.items():
        container, blob = name.split("/", 1)
        assert (acct / container / blob).read_bytes() == data


def test_rename_takes_the_first_free_number(tmp_path: Path) -> None:
    from pipeline.receive.disposition import renamed
    assert [renamed(n, 2) for n in ("a.txt", "d/x.tar.gz", "d/.hidden", "noext", "d.v/f")] == [
        "a (2).txt", "d/x.tar (2).gz", "d/.hidden (2)", "noext (2)", "d.v/f (2)"]
    new = dispositions_dataset(tmp_path)
    prep(tmp_path, session="dis1")
    acct = tmp_path / "acct"
    acct.mkdir()
    store = LocalStorage(acct)
    store.ensure_container("cont")
    for name in ("d/rename.txt", "d/rename (2).txt"):
        store.put("cont", name, b"taken")
    (p,) = import_(tmp_path, acct, "d1.img", session="dis1")
    assert p.returncode == 0, p.stderr
    assert store.get("cont", "d/rename (3).txt") == new["rename"]
    assert store.get("cont", "d/rename (2).txt") == b"taken"


def test_unclosed_version_2_drive_imports_by_log_scan_with_attributes(tmp_path: Path) -> None:
    """prep killed after its first committed segment: no closing index, no journal at the
    import; the walk of the log still gives each file its container and attributes (exit 8:
    the drive cannot vouch it is complete)."""
    want = inputs(tmp_path)
    proc = run_cli("prep", "--dataset", str(tmp_path / "dataset.csv"), "--driveset",
                   str(tmp_path / "driveset.csv"), "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "scan1", "--drive-size", "64M", *FAST_KDF_ARGS,
                   env={"PIPELINE_CRASH_AT": "after_commit:1"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    jrn = journal.session_journals(tmp_path / "j", "scan1")[0]
    committed = {f.blob for f in jrn.files()}
    pw = tmp_path / "pw"
    pw.write_text(jrn.recovery_password)
    acct = tmp_path / "acct"
    acct.mkdir()
    proc = run_cli("import", "--drive", str(tmp_path / "d1.img"), "--recovery-password-file",
                   str(pw), "--to", str(acct), "--log-dir", str(tmp_path / "logs"))
    assert proc.returncode == 8, proc.stderr
    store = LocalStorage(acct)
    done = {x["blob"] for x in blob_lines(tmp_path, "scan1", (1,)) if x["status"] == "unvouched"}
    assert done and done <= committed
    for name in done:
        container, blob = name.split("/", 1)
        assert store.get(container, blob) == want[name]
        info = store.get_attributes(container, blob)
        assert info.metadata == ({"Owner": "ops", "Project": "seed_19"}
                                 if container == "photos" else {"Kind": "disk"})


def root_dataset(tmp: Path) -> dict[str, bytes]:
    """A ``$root/`` directory row (its subdirectory's file cannot be a root blob: skipped,
    named) and a single-file row into the root container."""
    src = tmp / "src"
    (src / "top" / "sub").mkdir(parents=True)
    files = {"a.txt": b"root a\n", "b.bin": os.urandom(5000)}
    for name, data in files.items():
        (src / "top" / name).write_bytes(data)
    (src / "top" / "sub" / "c.txt").write_bytes(b"nested")
    (src / "one.txt").write_bytes(b"single")
    (tmp / "meta.xml").write_text("<Metadata><Where>root</Where></Metadata>")
    (tmp / "dataset.csv").write_text(
        f"{HEADER}\n{src}/top/,$root/,BlockBlob,rename,{tmp}/meta.xml,None\n"
        f"{src}/one.txt,$root/single.txt,BlockBlob,overwrite,None,None\n")
    (tmp / "driveset.csv").write_text(f"{DHEADER}\n{tmp}/d1.img,Format,SilentMode,Encrypt,\n")
    return {**files, "single.txt": b"single"}


def test_root_container_end_to_end_on_a_local_account(tmp_path: Path) -> None:
    """``$root/`` -> import -> blobs in the root container, kept in the local account's
    directory ``$root`` (no other container name has a '$')."""
    want = root_dataset(tmp_path)
    proc = prep(tmp_path, session="root1", code=1)  # 1: an entry skipped, named
    assert "sub/c.txt" in proc.stderr and "root container ($root) has no '/'" in proc.stderr
    acct = tmp_path / "acct"
    acct.mkdir()
    (p,) = import_(tmp_path, acct, "d1.img", session="root1")
    assert p.returncode == 0, p.stderr
    store = LocalStorage(acct)
    assert store.list("$root") == sorted(want)
    for name, data in want.items():
        assert (acct / "$root" / name).read_bytes() == data
        info = store.get_attributes("$root", name)
        assert info.properties["Content-MD5"] == md5(data)
        assert info.metadata == ({} if name == "single.txt" else {"Where": "root"})
    lines = blob_lines(tmp_path, "root1", (1,))
    assert sorted(x["blob"] for x in lines if x["status"] == "ok") == sorted(
        f"$root/{n}" for n in want)
    assert not (acct / "$root" / "sub").exists()
    # --dstdir $root/ (a staging tree, subdirectories and all) is refused with one line.
    proc = run_cli("prep", "--source", str(tmp_path / "src"), "--dstdir", "$root/", "--drive",
                   str(tmp_path / "x.img"), "--drive-size", "64M", "--journal-dir",
                   str(tmp_path / "jx"), "--session-id", "rootx", *FAST_KDF_ARGS, check_code=2)
    assert "use --dataset with a $root/ row" in proc.stderr
    assert not (tmp_path / "x.img").exists()
