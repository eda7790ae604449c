"""WAImportExport v2, prep's side: bad CSVs and keys refused before anything is written,
preview --dataset, --additional-driveset on --resume, a session keeping its dataset, and
prep killed (SIGKILL) then resumed.  The round trips: test_waimport.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.storage.local import LocalStorage

from .conftest import FAST_KDF_ARGS, require_tool, run_cli
from .test_waimport import DHEADER, HEADER, MiB, import_, inputs, prep


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t, s: t.replace("Disposition,", "").replace("rename,", "").replace("overwrite,", ""),
     "dataset.csv:1: missing column Disposition"),
    (lambda t, s: t.replace("PageBlob", "AppendBlob"),
     "dataset.csv:3: BlobType: 'AppendBlob' is not BlockBlob or PageBlob"),
    (lambda t, s: t.replace(f"{s}/disk.vhd", f"{s}/gone.vhd"),
     "dataset.csv:3: BasePath: '{s}/gone.vhd': No such file or directory"),
    # two rows whose files meet in one blob: photos/v1/sub/b.txt from both
    (lambda t, s: t + f"{s}/photos/sub/,photos/v1/sub/,BlockBlob,rename,None,None\n",
     "dataset.csv:4: BasePath: '{s}/photos/sub/' lies in line 2's"),
    (lambda t, s: t + f"{s}/other/,photos/v1/sub/,BlockBlob,rename,None,None\n",
     "dataset.csv:4: DstBlobPathOrPrefix: /"),
    # page blobs: names.page_blob_problem on a file row and on a directory row's files
    (lambda t, s: (Path(s, "disk.vhd").write_bytes(bytes(1000)), t)[1],
     "dataset.csv:3: BlobType: '{s}/disk.vhd': 1000 bytes is not a multiple of 512, which "
     "page blobs require; set BlobType to BlockBlob"),
    (lambda t, s: t + f"{s}/other/,pages/,PageBlob,rename,None,None\n",
     "dataset.csv:4: BlobType: {s}/other/b.txt: 5 bytes is not a multiple of 512, which page "
     "blobs require; set BlobType to BlockBlob"),
    (lambda t, s: t.replace("PageBlob,overwrite", "PageBlob,replace"),
     "dataset.csv:3: Disposition: 'replace' is not rename, no-overwrite or overwrite"),
    (lambda t, s: t.replace(f"{s}/disk.vhd", "D:\\disk.vhd"),
     "dataset.csv:3: BasePath: 'D:\\\\disk.vhd' is a Windows path; give the Linux path"),
    # two single-file rows to one blob
    (lambda t, s: t + f"{s}/photos/a.bin,vhds/disks/d.vhd,BlockBlob,rename,None,None\n",
     "dataset.csv:4: DstBlobPathOrPrefix: 'vhds/disks/d.vhd' is line 3's too; two rows would "
     "write the same blob(s)"),
    # a row's metadata file: missing, or another kind of XML (named under its column)
    (lambda t, s: t.replace("vmeta.xml", "gone.xml"),
     "dataset.csv:3: MetadataFile: {t}/gone.xml: No such file or directory"),
    (lambda t, s: t.replace("vmeta.xml", "props.xml"),
     "dataset.csv:3: MetadataFile: {t}/props.xml:2: the root element is <Properties>, not "
     "<Metadata>"),
])
def test_bad_dataset_is_exit_2_and_nothing_written(tmp_path: Path, edit, expected: str) -> None:
    """One line naming file:line and column, exit 2, no drive, no journal, not even the
    journal directory written."""
    inputs(tmp_path)
    src = tmp_path / "src"
    (src / "other").mkdir()
    (src / "other" / "b.txt").write_bytes(b"clash")
    path = tmp_path / "dataset.csv"
    path.write_text(edit(path.read_text(), str(src)))
    proc = prep(tmp_path, code=2)
    want = f"pipeline prep: {tmp_path}/" + expected.format(s=src, t=tmp_path)
    (line,) = proc.stderr.splitlines()
    assert line.startswith(want), proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "d1.img").exists() and not (tmp_path / "d2.img").exists()
    assert not (tmp_path / "j").exists()


def test_bad_driveset_is_exit_2_and_nothing_written(tmp_path: Path) -> None:
    inputs(tmp_path)
    (tmp_path / "driveset.csv").write_text(f"{DHEADER}\nE:,Format,SilentMode,Encrypt,\n"
                                           f"{tmp_path}/d1.img,Format,Loud,Encrypt,\n")
    proc = prep(tmp_path, code=2)
    assert [x for x in proc.stderr.splitlines() if " note: " not in x] == [
        f"pipeline prep: {tmp_path}/driveset.csv:2: DriveLetter: 'E:' is a Windows drive "
        "letter; give the drive's block device (/dev/sdX) or image file path",
        f"pipeline prep: {tmp_path}/driveset.csv:3: SilentOrPromptOnFormat: 'Loud' is not "
        "SilentMode or PromptOnFormat",
        f"pipeline prep: {tmp_path}/driveset.csv: 2 problems (each on a line above); fix them "
        "and run the same command again"]
    assert not (tmp_path / "d1.img").exists()
    (tmp_path / "driveset.csv").write_text(
        f"{DHEADER.replace('Encryption,', '')}\n{tmp_path}/d1.img,Format,SilentMode,\n")
    proc = prep(tmp_path, code=2)
    assert [x for x in proc.stderr.splitlines() if " note: " not in x] == [
        f"pipeline prep: {tmp_path}/driveset.csv:1: missing column Encryption"]
    assert not (tmp_path / "d1.img").exists()
    assert not (tmp_path / "j").exists()


def test_preview_then_additional_driveset_on_resume(tmp_path: Path) -> None:
    """preview --dataset counts the drives; one drive is too few (exit 3); --resume
    --additional-driveset adds the next, as /AdditionalDriveSet does, and the session
    imports whole."""
    src = tmp_path / "src"
    src.mkdir()
    data = {f"f{i}.bin": os.urandom(17 * MiB) for i in range(3)}
    for name, blob in data.items():
        (src / name).write_bytes(blob)
    (tmp_path / "dataset.csv").write_text(f"{HEADER}\n{src}/,big/,BlockBlob,rename,None,None\n")
    (tmp_path / "one.csv").write_text(f"{DHEADER}\n{tmp_path}/d1.img,Format,SilentMode,Encrypt,\n")
    (tmp_path / "more.csv").write_text(f"{DHEADER}\n{tmp_path}/d2.img,Format,SilentMode,Encrypt,\n")
    est = json.loads(run_cli("preview", "--dataset", str(tmp_path / "dataset.csv"),
                             "--drive-size", "64M", "--json", check_code=0).stdout)
    assert (est["files"], est["bytes"], est["drives"]) == (3, 51 * MiB, 2)
    proc = prep(tmp_path, session="add1", driveset="one.csv", code=3)
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"--resume --journal-dir {tmp_path / 'j'} --session-id add1 --drive NEW (or "
        "--additional-driveset FILE)")
    run_cli("prep", "--resume", "--journal-dir", str(tmp_path / "j"), "--session-id", "add1",
            "--additional-driveset", str(tmp_path / "more.csv"), "--drive-size", "64M",
            *FAST_KDF_ARGS, check_code=0)
    acct = tmp_path / "acct"
    acct.mkdir()
    for p in import_(tmp_path, acct, "d1.img", "d2.img", session="add1"):
        assert p.returncode == 0, p.stderr
    for name, blob in data.items():
        assert (acct / "big" / name).read_bytes() == blob
    # --additional-driveset belongs to --resume; $root has no virtual directories.
    run_cli("prep", "--dataset", str(tmp_path / "dataset.csv"), "--additional-driveset",
            str(tmp_path / "more.csv"), "--journal-dir", str(tmp_path / "j2"), "--session-id",
            "add2", check_code=2)
    (tmp_path / "root.csv").write_text(f"{HEADER}\n{src}/,$root/v/,BlockBlob,rename,None,None\n")
    proc = run_cli("preview", "--dataset", str(tmp_path / "root.csv"), "--drive-size", "64M",
                   check_code=2)
    assert ("root.csv:2: DstBlobPathOrPrefix: the root container ($root) has no virtual "
            "directories") in proc.stderr


@pytest.mark.parametrize("point", ["after_journal_create", "after_format", "after_pwrite"])
def test_kill_9_then_resume_keeps_the_dataset(tmp_path: Path, point: str) -> None:
    """prep --dataset killed (SIGKILL) before the drive is formatted, right after, or
    between a segment's write and its sync: --resume needs no CSV (the session's kept
    dataset), the drive ends up version 2, and the import has every attribute."""
    want = inputs(tmp_path)
    proc = run_cli("prep", "--dataset", str(tmp_path / "dataset.csv"), "--driveset",
                   str(tmp_path / "driveset.csv"), "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "kill9", "--drive-size", "64M", *FAST_KDF_ARGS,
                   env={"PIPELINE_CRASH_AT": f"{point}:1"})
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    (tmp_path / "dataset.csv").unlink()
    (tmp_path / "meta.xml").unlink()
    run_cli("prep", "--resume", "--journal-dir", str(tmp_path / "j"), "--session-id", "kill9",
            *FAST_KDF_ARGS, check_code=0)
    acct = tmp_path / "acct"
    acct.mkdir()
    seqs = sorted(j.drive.seq for j in journal.session_journals(tmp_path / "j", "kill9"))
    for p in import_(tmp_path, acct, *(f"d{s}.img" for s in seqs), session="kill9"):
        assert p.returncode == 0, p.stderr
    store = LocalStorage(acct)
    for name, data in want.items():
        container, blob = name.split("/", 1)
        assert store.get(container, blob) == data
    assert store.get_attributes("photos", "v1/a.bin").metadata == {"Owner": "ops",
                                                                     "Project": "seed_19"}
    assert store.get_attributes("vhds", "disks/d.vhd").blob_type is fmt.BlobType.PAGE


def test_already_encrypted_with_a_wrong_key_or_no_volume_is_exit_2(tmp_path: Path) -> None:
    """Tried before any drive is touched: the other drive of the set stays unformatted."""
    exe = require_tool("cryptsetup")
    inputs(tmp_path)
    image = tmp_path / "luks.img"
    blank = tmp_path / "blank.img"
    for p in (image, blank):
        with open(p, "wb") as f:
            f.truncate(64 * MiB)
    (tmp_path / "key").write_text("right key")
    subprocess.run([exe, "luksFormat", "--batch-mode", "--type", "luks2", "--sector-size",
                    "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", str(tmp_path / "key"), str(image)], check=True)
    for target, why in ((image, "no keyslot opens with this ExistingBitLockerKey"),
                        (blank, "holds no LUKS2 volume")):
        (tmp_path / "enc.csv").write_text(
            f"{DHEADER}\n{tmp_path}/d1.img,Format,SilentMode,Encrypt,\n"
            f"{target},AlreadyFormatted,SilentMode,AlreadyEncrypted,wrong key\n")
        proc = prep(tmp_path, driveset="enc.csv", code=2)
        assert why in proc.stderr, proc.stderr
        assert not (tmp_path / "d1.img").exists()


def test_dataset_and_its_session_rules(tmp_path: Path) -> None:
    """--dataset replaces --source/--dstdir; a session keeps the dataset it began with."""
    inputs(tmp_path)
    proc = prep(tmp_path, "--source", str(tmp_path / "src"), code=2)
    assert "--dataset replaces --source and --dstdir" in proc.stderr
    prep(tmp_path, session="keep1")
    saved = tmp_path / "j" / "keep1.dataset.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    proc = run_cli("prep", "--resume", "--dataset", str(tmp_path / "dataset.csv"),
                   "--journal-dir", str(tmp_path / "j"), "--session-id", "keep1", check_code=2)
    assert "keeps the dataset it began with" in proc.stderr
    saved.unlink()
    proc = run_cli("prep", "--resume", "--journal-dir", str(tmp_path / "j"), "--session-id",
                   "keep1", check_code=2)
    assert "keep1.dataset.json is missing" in proc.stderr


def test_already_encrypted_drive_in_use_is_refused(tmp_path: Path) -> None:
    """The drive safety checks hold for an AlreadyEncrypted drive too: attached to a loop
    device (as when opened and mounted elsewhere), it is refused (exit 5), untouched."""
    exe = require_tool("cryptsetup")
    losetup = require_tool("losetup")
    inputs(tmp_path)
    image = tmp_path / "luks.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    (tmp_path / "key").write_text("k")
    subprocess.run([exe, "luksFormat", "--batch-mode", "--type", "luks2", "--sector-size",
                    "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", str(tmp_path / "key"), str(image)], check=True)
    before = image.read_bytes()
    (tmp_path / "enc.csv").write_text(
        f"{DHEADER}\n{image},AlreadyFormatted,SilentMode,AlreadyEncrypted,k\n")
    loop = subprocess.run([losetup, "-f", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        proc = prep(tmp_path, driveset="enc.csv", code=5)
    finally:
        subprocess.run([losetup, "-d", loop], check=True)
    assert f"is attached to {loop}" in proc.stderr
    assert image.read_bytes() == before


def test_silent_mode_formats_a_drive_holding_data_prompt_on_format_refuses(
        tmp_path: Path) -> None:
    """SilentOrPromptOnFormat: prep never prompts.  PromptOnFormat leaves a drive holding
    data untouched (exit 5, one line saying --yes); SilentMode formats it as --yes does."""
    inputs(tmp_path)
    image = tmp_path / "d1.img"
    before = os.urandom(4096) * (64 * MiB // 4096)
    image.write_bytes(before)
    (tmp_path / "driveset.csv").write_text(f"{DHEADER}\n{image},Format,PromptOnFormat,Encrypt,\n")
    proc = prep(tmp_path, code=5)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline prep: {image} is not empty (it holds a partition table, a file system or "
        "other data); formatting destroys it: pass --yes to confirm")
    assert image.read_bytes() == before
    (tmp_path / "driveset.csv").write_text(f"{DHEADER}\n{image},Format,SilentMode,Encrypt,\n")
    prep(tmp_path, code=0)
    (jrn,) = journal.session_journals(tmp_path / "j", "wa1")
    assert jrn.drive.state == "closed"
    jrn.close()
