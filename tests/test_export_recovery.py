"""Export under trouble (issue 20): kill -9 during the site's export, then the same command
again; drives too few (what did not fit is listed in incompleteBlobListUri, as Azure's blob
list); a damaged drive unpacks every other blob and names the damaged one (exit 4)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from pipeline import journal
from pipeline.drive import format
from pipeline.errors import EXIT_INTEGRITY, EXIT_WARNING
from pipeline.jobs.client import ServiceClient
from pipeline.prep import blobsource
from pipeline.volume import luks2
from tests import test_export_flow
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.test_export_flow import (
    DRIVE_SIZE,
    World,
    assert_attributes,
    assert_identical,
    create_and_ship,
    make_account,
    unpack_all,
)

world = test_export_flow.world  # the module's service, customer and site


def _export(world: World, job: str, account: Path, jdir: Path, images: list[Path],
            code: int | None = 0, env: dict[str, str] | None = None):
    return world.site("export", "--job", job, "--from", str(account), "--journal-dir",
                      str(jdir), "--drive-size", DRIVE_SIZE, *FAST_KDF_ARGS,
                      *[a for img in images for a in ("--drive", str(img))], code=code, env=env)


def _repair(world: World, job: str, account: Path, target: Path, *args: str,
            code: int = 0):
    return run_cli("repair", "--export", "--job", job, "--publish-settings",
                   str(world.settings), "--service", world.svc.url, "--from", str(account),
                   "--target", str(target), *args, check_code=code)


def test_kill_9_during_site_export_then_resume(world: World) -> None:
    account = world.base / "acct-crash"
    blobs = make_account(account, 2, (11, 9, 8))
    create_and_ship(world, "exp-crash", 3)
    images = [world.base / f"crash-{i}.img" for i in range(3)]
    jdir = world.base / "jcrash"
    died = _export(world, "exp-crash", account, jdir, images, code=None,
                   env={"PIPELINE_CRASH_AT": "after_pwrite:8"})
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr)
    client = ServiceClient.from_file(str(world.settings), url=world.svc.url)
    assert client.get("exp-crash")["properties"]["state"] == "Transferring"
    crashed = journal.session_journals(jdir, "exp-crash")
    assert crashed and any(j.counts()["extents"] for j in crashed)
    for j in crashed:
        j.close()
    _export(world, "exp-crash", account, jdir, images)  # the same command, again
    job = client.get("exp-crash")["properties"]
    assert job["state"] == "Packaging" and "incompleteBlobListUri" not in job
    used = [img for img in images if img.exists()]
    assert len(job["driveList"]) == len(used) >= 2
    world.site("site return", "--job", "exp-crash", "--tracking", "RET-CRASH")
    target = world.base / "crash-restored"
    unpack_all(world, "exp-crash", used, target)
    assert_identical(target, blobs)


def test_too_few_drives_lists_what_did_not_fit(world: World) -> None:
    account = world.base / "acct-full"
    blobs = make_account(account, 3, (12, 12, 12))
    create_and_ship(world, "exp-full", 1)
    image = world.base / "full-0.img"
    out = _export(world, "exp-full", account, world.base / "jfull", [image], code=EXIT_WARNING)
    assert "not exported" in out.stderr
    job = ServiceClient.from_file(str(world.settings), url=world.svc.url).get("exp-full")
    uri = job["properties"]["incompleteBlobListUri"]
    assert job["properties"]["state"] == "Packaging"
    listed = Path(uri.removeprefix("file://"))
    assert listed.is_file() and listed.is_relative_to(account)
    paths, prefixes = blobsource.parse_blob_list(listed.read_bytes())
    assert prefixes == [] and "/photos/2024/raw/img-2.bin" in paths  # blobs go in order
    assert set(paths) < {f"/{name}" for name in blobs}
    world.site("site return", "--job", "exp-full", "--tracking", "RET-FULL")
    target = world.base / "full-restored"
    unpack_all(world, "exp-full", [image], target)
    # every blob on the drive is whole and identical; what did not fit is absent, not torn
    for name, data in blobs.items():
        path = target / name
        if f"/{name}" in paths:
            assert not path.exists(), name
        else:
            assert path.read_bytes() == data, name
    # repair --export (Azure's RepairExport): what did not fit comes from the account
    dry = _repair(world, "exp-full", account, target, "--dry-run", code=EXIT_INTEGRITY)
    assert "differs: /photos/2024/raw/img-2.bin: missing" in dry.stdout
    fixed = _repair(world, "exp-full", account, target)
    assert f"fetched {len(paths)} from" in fixed.stderr
    assert_identical(target, blobs)
    assert_attributes(target)  # a fetched blob gets its metadata and properties too
    assert "fetched 0 from" in _repair(world, "exp-full", account, target).stderr


def test_a_damaged_drive_unpacks_the_rest_and_names_the_damage(world: World) -> None:
    account = world.base / "acct-dmg"
    blobs = make_account(account, 4, (3, 2))
    create_and_ship(world, "exp-dmg", 1)
    image = world.base / "dmg-0.img"
    jdir = world.base / "jdmg"
    _export(world, "exp-dmg", account, jdir, [image])
    [jrn] = journal.session_journals(jdir, "exp-dmg")
    files = {f.file_id: f for f in jrn.files()}
    victim = next(e for e in jrn.extents() if e.codec is not format.Codec.ZERO
                  and files[e.file_id].blob == "photos/2024/raw/img-0.bin")
    jrn.close()
    with open(image, "r+b") as f:  # one byte of the stored extent, inside the data area
        at = luks2.DATA_OFFSET + victim.location + victim.stored_len // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    target = world.base / "dmg-restored"
    keys = json.loads(world.jobs("keys", "--job", "exp-dmg", "--json").stdout)
    key = world.base / "dmg.key"
    key.write_text(keys[0]["bitLockerKey"] + "\n")
    key.chmod(0o600)
    bad = run_cli("unpack", "--drive", str(image), "--recovery-password-file", str(key),
                  "--target", str(target), check_code=EXIT_INTEGRITY)
    assert "1 blob(s) corrupt or missing" in bad.stderr and "Traceback" not in bad.stderr
    logs = "".join(p.read_text() for p in (target / ".pipeline-unpack").glob("copylog-*"))
    assert "img-0.bin" in logs and '"corrupt"' in logs
    assert not (target / "photos/2024/raw/img-0.bin").exists()
    for name, data in blobs.items():
        if name != "photos/2024/raw/img-0.bin":
            assert (target / name).read_bytes() == data, name
    fixed = _repair(world, "exp-dmg", account, target)
    assert "fetched: /photos/2024/raw/img-0.bin: missing" in fixed.stdout
    assert_identical(target, blobs)


def test_a_full_drive_is_on_the_job_before_the_next_is_formatted(world: World) -> None:
    account = world.base / "acct-fill"
    make_account(account, 6, (14, 12))
    create_and_ship(world, "exp-fill", 2)
    images = [world.base / f"fill-{i}.img" for i in range(2)]
    died = _export(world, "exp-fill", account, world.base / "jfill", images, code=None,
                   env={"PIPELINE_CRASH_AT": "after_journal_create:2"})
    assert died.returncode == -signal.SIGKILL, (died.returncode, died.stderr)
    job = ServiceClient.from_file(str(world.settings), url=world.svc.url).get("exp-fill")
    [first] = job["properties"]["driveList"]  # drive 1 filled; drive 2 never formatted
    assert job["properties"]["state"] == "Transferring" and first["state"] == "Received"
    keys = json.loads(world.jobs("keys", "--job", "exp-fill", "--json").stdout)
    assert [k["driveId"] for k in keys] == [first["driveId"]]
