"""`import --service` derives each drive's key once: the job's manifestHash check of a
one-session drive runs inside the reader's one unlock (it unlocked the drive a second time:
one more argon2id a drive, ~0.5 s and 256 MiB at prep's default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from pipeline.cluster import site_remote
from pipeline.errors import EXIT_REFUSED
from pipeline.jobs.client import ServiceClient
from pipeline.receive import reader as driveread
from pipeline.receive import service_import
from pipeline.storage.local import LocalStorage
from pipeline.volume import luks2

from . import jobservice
from .conftest import FAST_KDF_ARGS, run_cli
from .drivedata import make_tree, read_tree


def test_a_one_session_drive_s_key_is_derived_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src, jdir, image = tmp_path / "src", tmp_path / "j", tmp_path / "d1.img"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=4)
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seeded/one/", "--journal-dir", str(jdir),
            "--session-id", "kdf-1", *FAST_KDF_ARGS, "--drive", str(image), "--drive-size",
            "64M", check_code=0)
    (entry,) = json.loads(run_cli("journal", "export", "--journal-dir", str(jdir),
                                  check_code=0).stdout)
    derived: list[int] = []
    real = luks2.derive

    def counted(*args: object, **kwargs: object) -> bytes:
        derived.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(luks2, "derive", counted)
    data, settings = tmp_path / "svc", tmp_path / "site.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        client = ServiceClient.from_file(str(settings))
        client.put("job-kdf", jobservice.job_body([entry]))
        client.put("job-bad", jobservice.job_body([{**entry, "manifestHash": "ab" * 32}]))
        for job in ("job-kdf", "job-bad"):
            run_cli("jobs", "ship", "--job", job, "--carrier", "DHL", "--tracking", "T-1",
                    "--publish-settings", str(settings), "--service", svc.url, check_code=0)
        token = tmp_path / "site.token"
        token.write_text(svc.site_token() + "\n")
        site = ServiceClient.from_site_token_file(svc.url, str(token))
        uuid = entry["driveId"]

        # What one unlock of this drive costs: the keyslots tried until one opens.
        job = service_import.JobImport.connect(site, "job-kdf")
        key = job.key_for(str(image))
        driveread.unlock_drive(str(image), key.value, key.kind).close()
        once, derived[:] = len(derived), []
        assert once >= 1

        job.start([uuid])  # the client's step before the site task (cluster.receive)
        (tmp_path / "acct").mkdir()
        got = trio.run(site_remote._import_job, site, ("job-kdf", None, None), [uuid],
                       {uuid: str(image)}, lambda: LocalStorage(tmp_path / "acct"),
                       lambda _: None)
        assert got["code"] == 0, got
        assert read_tree(tmp_path / "acct" / "seeded" / "one") == read_tree(src)
        assert len(derived) == once  # the manifestHash held inside the one unlock

        # A wrong manifestHash is still refused, named, in that same one unlock.
        derived.clear()
        (tmp_path / "acct-bad").mkdir()
        got = trio.run(site_remote._import_job, site, ("job-bad", None, None), [uuid],
                       {uuid: str(image)}, lambda: LocalStorage(tmp_path / "acct-bad"),
                       lambda _: None)
        assert got["code"] == EXIT_REFUSED, got
        assert got["message"].endswith(
            "is not the one job job-bad declared (manifestHash): the drive was changed in "
            "transit or is not the one prepared; check the drive and --job"), got
        assert len(derived) == once
        assert [p for p in (tmp_path / "acct-bad").iterdir() if not p.name.startswith(".")] == []
