"""WAImportExport v2 drives in an import job: a dataset session whose driveset holds a drive
we format and an AlreadyEncrypted volume cryptsetup made (its key a recovery password, as a
BitLocker operator's ExistingBitLockerKey is) goes through `jobs create` (the drive list
from the journals), `jobs ship` and the site's `import --service --job`, which takes every
key from the job and applies each file's container, blob type, metadata and properties.
A volume whose key is a passphrase, not a recovery password, cannot be listed in a job:
prep says so before writing it, and journal export / jobs create refuse it in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from pipeline.drive import format as fmt
from pipeline.storage.local import LocalStorage

from . import jobservice
from .conftest import require_tool, run_cli
from .test_multisession_service import RETURN
from .test_waimport import DHEADER, MiB, blob_lines, inputs, md5, prep

KEY = "111111-222222-333333-444444-555555-666666-000055-123453"  # each group a multiple of 11


def cryptsetup_volume(tmp: Path, name: str, key: str) -> Path:
    exe = require_tool("cryptsetup")
    image = tmp / name
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    (tmp / f"{name}.key").write_text(key)
    subprocess.run([exe, "luksFormat", "--batch-mode", "--type", "luks2", "--sector-size",
                    "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", str(tmp / f"{name}.key"), str(image)], check=True)
    return image


def test_dataset_drives_in_a_job_imported_by_the_site(tmp_path: Path) -> None:
    want = inputs(tmp_path, disk_size=50 * MiB)  # the page blob spans both drives
    image = cryptsetup_volume(tmp_path, "luks.img", KEY)
    (tmp_path / "set.csv").write_text(
        f"{DHEADER}\n{tmp_path}/d1.img,Format,SilentMode,Encrypt,\n"
        f"{image},AlreadyFormatted,SilentMode,AlreadyEncrypted,{KEY}\n")
    proc = prep(tmp_path, session="job1", driveset="set.csv")
    assert "ExistingBitLockerKey" not in proc.stderr  # a recovery password: no note
    exported = json.loads(run_cli("journal", "export", "--journal-dir", str(tmp_path / "j"),
                                  "--session-id", "job1", check_code=0).stdout)
    assert [e["bitLockerKey"] == KEY for e in exported] == [False, True]
    data, settings = tmp_path / "svc", tmp_path / "site.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        customer = ["--publish-settings", str(settings), "--service", svc.url]
        out = run_cli("jobs", "create", "--job", "wa-job", "--journal-dir", str(tmp_path / "j"),
                      "--session-id", "job1", *RETURN, *customer, check_code=0).stdout
        assert "job wa-job created: Creating, 2 drive(s)" in out
        run_cli("jobs", "ship", "--job", "wa-job", "--carrier", "DHL", "--tracking", "T-1",
                *customer, check_code=0)
        token = tmp_path / "site.token"
        token.write_text(svc.site_token() + "\n")
        token.chmod(0o600)
        acct = tmp_path / "acct"
        acct.mkdir()
        for drive in (tmp_path / "d1.img", image):  # no journal at the site: keys from the job
            run_cli("import", "--drive", str(drive), "--to", str(acct), "--log-dir",
                    str(tmp_path / "logs"), "--service", svc.url, "--site-token-file",
                    str(token), "--job", "wa-job", check_code=0)
        shown = json.loads(run_cli("jobs", "show", "--job", "wa-job", "--json", *customer,
                                   check_code=0).stdout)
        assert [(d["driveId"], d["state"]) for d in shown["properties"]["driveList"]] == [
            (e["driveId"], "Completed") for e in exported]
    store = LocalStorage(acct)
    for name, blob in want.items():
        container, rest = name.split("/", 1)
        assert store.get(container, rest) == blob
        info = store.get_attributes(container, rest)
        assert info.properties["Content-MD5"] == md5(blob)
        if container == "photos":
            assert (info.blob_type, info.metadata) == (fmt.BlobType.BLOCK,
                                                       {"Owner": "ops", "Project": "seed_19"})
            assert info.properties == {
                "Content-Type": "application/octet-stream", "Content-Encoding": "identity",
                "Content-Language": "en", "Cache-Control": "no-cache",
                "Content-MD5": md5(blob)}
        else:
            assert (info.blob_type, info.metadata) == (fmt.BlobType.PAGE, {"Kind": "disk"})
    assert sorted(x["blob"] for x in blob_lines(tmp_path, "job1", (1, 2))
                  if x["status"] == "ok") == sorted(want)


def test_a_passphrase_keyed_volume_is_said_at_prep_and_kept_out_of_a_job(tmp_path: Path) -> None:
    want = inputs(tmp_path)
    image = cryptsetup_volume(tmp_path, "luks.img", "correct horse battery staple")
    (tmp_path / "enc.csv").write_text(
        f"{DHEADER}\n{image},AlreadyFormatted,SilentMode,AlreadyEncrypted,"
        "correct horse battery staple\n")
    proc = prep(tmp_path, session="pass1", driveset="enc.csv")
    assert (f"pipeline prep: note: {tmp_path}/enc.csv:2: ExistingBitLockerKey: not a recovery "
            "password (48 digits in 8 groups of 6): the drive imports with its journal or "
            "--passphrase-file, but journal export and jobs create cannot list it in an "
            "import job") in proc.stderr
    refusal = (f"drive 1 ({image}) opens with the ExistingBitLockerKey of its driveset, which "
               "is not a recovery password (48 digits in 8 groups of 6); an import job's "
               "bitLockerKey must be one")
    proc = run_cli("journal", "export", "--journal-dir", str(tmp_path / "j"), "--session-id",
                   "pass1", check_code=2)
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"pipeline journal export: {refusal}")
    assert "correct horse" not in proc.stderr and proc.stdout == ""
    data, settings = tmp_path / "svc", tmp_path / "site.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        customer = ["--publish-settings", str(settings), "--service", svc.url]
        proc = run_cli("jobs", "create", "--job", "pass-job", "--journal-dir",
                       str(tmp_path / "j"), "--session-id", "pass1", *RETURN, *customer,
                       check_code=2)
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"pipeline jobs create: {refusal}")
        proc = run_cli("jobs", "show", "--job", "pass-job", *customer)
        assert proc.returncode != 0 and "does not exist" in proc.stderr  # nothing created
    # What the refusal says to do: the site imports it with the volume's passphrase.
    acct = tmp_path / "acct"
    acct.mkdir()
    run_cli("import", "--drive", str(image), "--passphrase-file", str(tmp_path / "luks.img.key"),
            "--to", str(acct), "--log-dir", str(tmp_path / "logs"), check_code=0)
    for name, blob in want.items():
        container, rest = name.split("/", 1)
        assert LocalStorage(acct).get(container, rest) == blob
