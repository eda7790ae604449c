"""End to end over the import service: prep -> jobs create -> jobs ship (the customer's
publish settings) -> import --service (the site's token) -> the job Completed (import's
--return-tracking: the shortcut for `site return`), or CompletedMoreInfo with an error
log that the service holds too."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import journal
from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY
from pipeline.jobs.client import ServiceClient, ServiceError
from pipeline.volume import luks2
from tests import jobservice

from .conftest import FAST_KDF_ARGS, run_cli
from .drivedata import make_tree, read_tree


def prep_two_drives(base: Path, session: str) -> tuple[Path, Path, list[Path]]:
    src, jdir = base / "src", base / "j"
    make_tree(src, small_files=200, random_mb=6, sparse_mb=8)
    drives = [base / "a.img", base / "b.img"]
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seeded/backup/", "--journal-dir",
            str(jdir), "--session-id", session, *FAST_KDF_ARGS, "--fill", "parallel",
            "--drive", str(drives[0]), "--drive", str(drives[1]), "--drive-size", "40M",
            check_code=0)
    return src, jdir, drives


def jobs(settings: Path, url: str, *args: str, code: int = 0):
    return run_cli("jobs", *args, "--publish-settings", str(settings), "--service", url,
                   check_code=code)


def site_token_file(svc: jobservice.ServiceProcess, where: Path) -> Path:
    """The receiving site's credential, in a file as the site keeps it."""
    path = where / "site.token"
    path.write_text(svc.site_token() + "\n")
    return path


def create_and_ship(settings: Path, url: str, job: str, jdir: Path) -> None:
    out = jobs(settings, url, "create", "--job", job, "--journal-dir", str(jdir),
               "--location", "westeurope", "--storage-account", "seedacct",
               "--return-name", "Ops Team", "--return-street", "1 Data Way",
               "--return-city", "Lisboa", "--return-postal-code", "1000-001",
               "--return-country", "PT", "--return-phone", "+351 21 000 0000",
               "--return-email", "ops@example.org", "--return-carrier", "DHL",
               "--return-account", "ACC-123").stdout
    assert f"job {job} created: Creating, 2 drive(s)" in out
    assert "ship the drives to (westeurope)" in out
    shown = jobs(settings, url, "ship", "--job", job, "--carrier", "DHL", "--tracking",
                 "TRK-1").stdout
    assert "Shipping" in shown


def test_prep_create_ship_import_completed(tmp_path: Path) -> None:
    src, jdir, drives = prep_two_drives(tmp_path, "svc-1")
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = tmp_path / "site.publishsettings"
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        create_and_ship(settings, svc.url, "seed-one", jdir)
        account = tmp_path / "account"
        account.mkdir()
        token = site_token_file(svc, tmp_path)
        site = ServiceClient.from_site_token_file(svc.url, str(token))
        for i, d in enumerate([drives[0], drives[0], drives[1]]):  # one drive at a time
            proc = run_cli("import", "--drive", str(d), "--to", str(account), "--service",
                           svc.url, "--job", "seed-one", "--site-token-file", str(token),
                           "--log-dir", str(tmp_path), "--return-tracking", "RET-9")
            assert proc.returncode == 0, proc.stderr
            listed = site.find("seed-one")
            if i == 0:
                first = listed["properties"]["driveList"]
            elif i == 1:  # imported again: already imported, its outcome and bytes stand
                assert "was already imported" in proc.stdout
                assert listed["properties"]["driveList"] == first
        job = json.loads(jobs(settings, svc.url, "show", "--job", "seed-one", "--json").stdout)
        props = job["properties"]
        assert props["state"] == "Completed"
        assert props["returnPackage"]["trackingNumber"] == "RET-9"
        for d in props["driveList"]:
            assert d["state"] == "ShippedBack" and d["percentComplete"] == 100
        # --fill parallel shares the files out by timing: under load one drive may get them
        # all and the other none (its bytesSucceeded 0, percentComplete 100: nothing to copy)
        for d, j in zip(sorted(props["driveList"], key=lambda d: d["driveId"]),
                        sorted(journal.session_journals(jdir), key=lambda j: j.drive.uuid),
                        strict=True):  # a drive's bytes are those it carried, whole files or not
            assert d["bytesSucceeded"] == sum(e.raw_len for e in j.extents())
            j.close()
            assert d["verboseLogUri"].startswith("file://")
            assert "bitLockerKey" not in d
        assert sum(d["bytesSucceeded"] for d in props["driveList"]) == sum(
            map(len, read_tree(src).values()))
        base = account / "seeded" / "backup"
        got = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*")
               if p.is_file()}
        assert got == read_tree(src)
        keys = jobs(settings, svc.url, "keys", "--job", "seed-one").stdout
        for j in journal.session_journals(jdir):
            assert j.recovery_password in keys
            assert j.recovery_password not in svc.log()
            j.close()


def test_a_damaged_drive_ends_completed_more_info(tmp_path: Path) -> None:
    src, jdir, drives = prep_two_drives(tmp_path, "svc-2")
    # --fill parallel spreads the files by timing: damage whichever drive got a large extent
    victim = None
    for j in journal.session_journals(jdir):
        victim = next((e for e in j.extents() if e.stored_len > 50_000), None)
        if victim is not None:
            break
        j.close()
    assert victim is not None
    names = {f.file_id: f.blob for f in j.files()}
    damaged_path = j.drive.path
    j.close()
    with open(damaged_path, "r+b") as f:
        f.seek(luks2.DATA_OFFSET + victim.location + 99)
        b = f.read(1)
        f.seek(luks2.DATA_OFFSET + victim.location + 99)
        f.write(bytes([b[0] ^ 0xFF]))
    data = tmp_path / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = tmp_path / "s.publishsettings"
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        create_and_ship(settings, svc.url, "seed-two", jdir)
        account = tmp_path / "account"
        account.mkdir()
        proc = run_cli("import", "--drive", str(drives[0]), "--drive", str(drives[1]), "--to",
                       str(account), "--service", svc.url, "--job", "seed-two",
                       "--site-token-file", str(site_token_file(svc, tmp_path)),
                       "--log-dir", str(tmp_path))
        assert proc.returncode == EXIT_INTEGRITY, proc.stderr
        job = json.loads(jobs(settings, svc.url, "show", "--job", "seed-two", "--json").stdout)
        props = job["properties"]
        assert props["state"] == "Packaging"
        by_path = {d["driveId"]: d for d in props["driveList"]}
        states = sorted(d["state"] for d in by_path.values())
        assert states == ["Completed", "CompletedMoreInfo"]
        bad = next(d for d in by_path.values() if d["state"] == "CompletedMoreInfo")
        error_log = Path(bad["errorLogUri"].removeprefix("file://"))
        lines = [json.loads(x) for x in error_log.read_text().splitlines()]
        assert {x["blob"] for x in lines} == {names[victim.file_id]}
        assert all(x["status"] == "corrupt" for x in lines)
        # The service holds both logs of the bad drive (the job asked for Verbose) and the
        # verbose one of the good drive; the customer reads them with its own credential.
        customer = ServiceClient.from_file(str(settings), url=svc.url)
        assert customer.get_copy_log("seed-two", bad["driveId"],
                                     "error") == error_log.read_bytes()
        for d in by_path.values():
            verbose = customer.get_copy_log("seed-two", d["driveId"], "verbose")
            assert b'"type": "totals"' in verbose
        good = next(d for d in by_path.values() if d["state"] == "Completed")
        try:
            customer.get_copy_log("seed-two", good["driveId"], "error")
            raise AssertionError("an error log for a drive without errors")
        except ServiceError as exc:
            assert exc.status == 404
        # The same from the command line; `jobs show` names the command.
        shown = jobs(settings, svc.url, "show", "--job", "seed-two").stdout
        assert f"errors: pipeline jobs log --job seed-two --drive {bad['driveId']}" in shown
        got = jobs(settings, svc.url, "log", "--job", "seed-two", "--drive", bad["driveId"])
        assert got.stdout.encode() == error_log.read_bytes()
        none = jobs(settings, svc.url, "log", "--job", "seed-two", "--drive", good["driveId"],
                    code=EXIT_BAD_INPUT)
        assert "has no error log for drive" in none.stderr
