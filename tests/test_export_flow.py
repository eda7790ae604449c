"""An export job end to end, as its two roles run it (issue 20): the customer creates it with
`jobs create --export` and ships empty drives; the site receives them, runs `pipeline
export` from the storage account onto the drives (spilling over several), and returns
them; the customer reads the keys and unpacks every drive, in reverse order, into files
byte-identical to the blobs.  A blob outside the prefix stays home; `export preview`
counts the drives the export then uses (within one)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.drive.format import BlobType
from pipeline.errors import EXIT_OK, EXIT_REFUSED
from pipeline.storage.local import LocalStorage
from tests import jobservice
from tests.conftest import FAST_KDF_ARGS, run_cli

RETURN = ["--return-name", "Ops Team", "--return-street", "1 Data Way", "--return-city",
          "Lisboa", "--return-postal-code", "1000-001", "--return-country", "PT",
          "--return-phone", "+351 21 000 0000", "--return-email", "ops@example.org",
          "--return-carrier", "DHL", "--return-account", "ACC-123"]
DRIVE_SIZE = "40M"


@dataclass
class World:
    svc: jobservice.ServiceProcess
    base: Path
    settings: Path   # the customer's publish settings
    token_file: Path  # the site's token

    def jobs(self, *args: str, code: int | None = EXIT_OK):
        return run_cli("jobs", *args, "--publish-settings", str(self.settings), "--service",
                       self.svc.url, check_code=code)

    def site(self, command: str, *args: str, code: int | None = EXIT_OK, env=None):
        words = command.split()
        return run_cli(*words, "--service", self.svc.url, "--site-token-file",
                       str(self.token_file), *args, check_code=code, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("export")
    data = base / "data"
    with jobservice.ServiceProcess(data) as svc:
        settings = base / "cust.publishsettings"
        run_cli("service", "subscription", "add", "cust", "--data", str(data), "--out",
                str(settings), check_code=0)
        token = base / "site.token"
        run_cli("service", "site-token", "--data", str(data), "--out", str(token),
                check_code=0)
        yield World(svc, base, settings, token)


def make_account(root: Path, seed: int, random_mb: tuple[int, ...]) -> dict[str, bytes]:
    """A local storage account (ROOT/CONTAINER/BLOB) with blobs under /photos/2024/ (the
    export), one outside it, and one named alone; returns what the export must bring."""
    rng = __import__("random").Random(seed)
    blobs: dict[str, bytes] = {}
    for i, mb in enumerate(random_mb):
        blobs[f"photos/2024/raw/img-{i}.bin"] = rng.randbytes(mb << 20)
    blobs["photos/2024/zeros.bin"] = bytes(3 << 20)
    blobs["photos/2024/empty"] = b""
    blobs["photos/2024/notes/ünïcode name.txt"] = b"hello, export\n" * 1000
    blobs["photos/readme.txt"] = b"read me\n"
    outside = {"photos/2023/old.bin": rng.randbytes(1 << 20)}
    for name, data in {**blobs, **outside}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    LocalStorage(root).set_attributes("photos", "photos/readme.txt".partition("/")[2],
                                      BlobType.BLOCK, META, PROPS)
    return blobs


META = (("owner", "ops"), ("source", "export test"))
PROPS = (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-cache"))


def assert_attributes(target: Path) -> None:
    """The blob's metadata and properties came back with it (the local account's layout)."""
    info = LocalStorage(target).get_attributes("photos", "readme.txt")
    assert info is not None and info.metadata == dict(META)
    assert {k: info.properties[k] for k, _ in PROPS} == dict(PROPS)


def create_and_ship(world: World, job: str, drives: int) -> None:
    made = world.jobs("create", "--job", job, "--export", "--blob-prefix", "/photos/2024/",
                      "--blob-path", "/photos/readme.txt", "--location", "westeurope",
                      "--storage-account", "acct", *RETURN)
    assert f"export job {job} created: Creating" in made.stdout
    assert "EMPTY drives" in made.stdout
    shown = json.loads(world.jobs("show", "--job", job, "--json").stdout)["properties"]
    assert shown["jobType"] == "Export" and shown["export"] == {"blobList": {
        "blobPath": ["/photos/readme.txt"], "blobPathPrefix": ["/photos/2024/"]}}
    world.jobs("ship", "--job", job, "--carrier", "DHL", "--tracking", f"E-{job}",
               "--drive-count", str(drives))
    received = world.site("site receive", "--job", job)
    assert "next: pipeline export --service URL" in received.stdout
    listed = {r["name"]: r for r in json.loads(world.site("site jobs", "--json").stdout)}
    assert listed[job]["jobType"] == "Export" and listed[job]["next"].startswith("write")


def unpack_all(world: World, job: str, images: list[Path], target: Path) -> None:
    keys = json.loads(world.jobs("keys", "--job", job, "--json").stdout)
    by_id = {k["driveId"]: k["bitLockerKey"] for k in keys}
    assert len(by_id) == len(images)
    for image in reversed(images):  # any order: the last drive first
        drive_id = json.loads(run_cli("drive", "info", str(image), "--json",
                                      check_code=0).stdout)["uuid"]  # the driveId
        key = world.base / f"{image.name}.key"
        key.write_text(by_id[drive_id] + "\n")
        key.chmod(0o600)
        run_cli("unpack", "--drive", str(image), "--recovery-password-file", str(key),
                "--target", str(target), check_code=0)


def assert_identical(target: Path, blobs: dict[str, bytes]) -> None:
    for name, data in blobs.items():
        got = (target / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
    files = {str(p.relative_to(target)) for p in target.rglob("*")
             if p.is_file() and not p.relative_to(target).parts[0].startswith(".")}
    assert files == set(blobs)  # photos/2023/old.bin, outside the prefix, stayed home


def test_export_local_account_several_drives_reverse_unpack(world: World) -> None:
    account = world.base / "account"
    blobs = make_account(account, 1, (14, 12, 9, 6))
    preview = json.loads(run_cli(
        "export", "preview", "--from", str(account), "--blob-prefix", "/photos/2024/",
        "--blob-path", "/photos/readme.txt", "--drive-size", DRIVE_SIZE, "--json",
        check_code=0).stdout)
    assert preview["blobs"] == len(blobs) and preview["bytes"] == sum(map(len, blobs.values()))
    assert preview["drives"] >= 2
    create_and_ship(world, "exp-local", 4)
    images = [world.base / f"local-{i}.img" for i in range(4)]
    out = world.site("export", "--job", "exp-local", "--from", str(account),
                     "--journal-dir", str(world.base / "jl"), "--drive-size", DRIVE_SIZE,
                     *[a for img in images for a in ("--drive", str(img))], *FAST_KDF_ARGS)
    assert "Packaging" in out.stderr
    shown = world.jobs("show", "--job", "exp-local").stdout
    assert "export of /photos/2024/*, /photos/readme.txt" in shown
    job = json.loads(world.jobs("show", "--job", "exp-local", "--json").stdout)["properties"]
    written = job["driveList"]
    assert job["state"] == "Packaging" and "incompleteBlobListUri" not in job
    assert {d["state"] for d in written} == {"Completed"}
    used = [img for img in images if img.exists()]
    assert len(written) == len(used) >= 2  # spilled over several drives
    assert abs(preview["drives"] - len(used)) <= 1, (preview, len(used))
    back = world.site("site return", "--job", "exp-local", "--tracking", "RET-1")
    assert "Completed" in back.stdout
    target = world.base / "restored"
    unpack_all(world, "exp-local", used, target)
    assert_identical(target, blobs)
    assert_attributes(target)
    again = run_cli("unpack", "--drive", str(used[0]), "--recovery-password-file",
                    str(world.base / f"{used[0].name}.key"), "--target", str(target),
                    check_code=0)  # again: nothing changes
    assert "already" in again.stdout
    assert_identical(target, blobs)


def test_export_refusals(world: World) -> None:
    bad = world.jobs("create", "--job", "exp-bad", "--export", "--location", "westeurope",
                     "--storage-account", "acct", code=None)
    assert bad.returncode != 0 and "--blob-prefix" in bad.stderr
    bad = world.jobs("create", "--job", "exp-bad", "--export", "--blob-prefix", "photos/x",
                     "--location", "westeurope", "--storage-account", "acct", code=None)
    assert bad.returncode != 0 and "blobPathPrefix[0]" in bad.stderr
    assert "Traceback" not in bad.stderr
    world.jobs("create", "--job", "exp-early", "--export", "--blob-prefix", "/photos/",
               "--location", "westeurope", "--storage-account", "acct", *RETURN)
    early = world.site("export", "--job", "exp-early", "--from", str(world.base),
                       "--journal-dir", str(world.base / "je"), "--drive",
                       str(world.base / "never.img"), code=None)
    assert early.returncode != 0 and "Creating" in early.stderr
    assert not (world.base / "never.img").exists()
    assert os.listdir(world.base / "je") == [] if (world.base / "je").exists() else True


def test_export_of_two_containers_one_session_each(world: World) -> None:
    account = world.base / "account-multi"
    blobs = make_account(account, 5, (2, 1))
    for name, data in {"docs/a.txt": b"a" * 5000, "docs/deep/b.bin": bytes(range(256)) * 99,
                       "docs2/c.txt": b"not exported"}.items():
        (account / name).parent.mkdir(parents=True, exist_ok=True)
        (account / name).write_bytes(data)
        if not name.startswith("docs2"):
            blobs[name] = data
    made = world.jobs("create", "--job", "exp-multi", "--export", "--blob-prefix",
                      "/photos/2024/", "--blob-path", "/photos/readme.txt", "--blob-prefix",
                      "/docs/", "--location", "westeurope", "--storage-account", "acct",
                      *RETURN)
    assert "export job exp-multi created" in made.stdout
    world.jobs("ship", "--job", "exp-multi", "--carrier", "DHL", "--tracking", "E-multi",
               "--drive-count", "3")
    world.site("site receive", "--job", "exp-multi")
    images = [world.base / f"multi-{i}.img" for i in range(3)]
    jdir = world.base / "jmulti"
    args = ("export", "--job", "exp-multi", "--from", str(account), "--journal-dir",
            str(jdir), "--drive-size", DRIVE_SIZE, *FAST_KDF_ARGS,
            *[a for img in images for a in ("--drive", str(img))])
    world.site(*args)
    sessions = {p.name.rsplit("-drive", 1)[0] for p in jdir.iterdir()}
    assert sessions == {"exp-multi-1", "exp-multi-2"}  # docs, photos: a session each
    used = [img for img in images if img.exists()]
    assert len(used) == 2  # one drive per container: a drive holds one session
    world.site("site return", "--job", "exp-multi", "--tracking", "RET-MULTI")
    target = world.base / "multi-restored"
    # the keys straight from the job, matched by volume id; both drives, last first
    run_cli("unpack", *[a for img in reversed(used) for a in ("--drive", str(img))],
            "--publish-settings", str(world.settings), "--service", world.svc.url,
            "--job", "exp-multi", "--target", str(target), check_code=0)
    assert_identical(target, blobs)
    other = world.base / "stranger.img"
    run_cli("drive", "format", str(other), "--drive-size", "32M", *FAST_KDF_ARGS,
            check_code=0)
    stranger = run_cli("unpack", "--drive", str(other),
                       "--publish-settings", str(world.settings), "--service", world.svc.url,
                       "--job", "exp-multi", "--target", str(target))
    assert stranger.returncode == EXIT_REFUSED and "not a drive of this job" in stranger.stderr
