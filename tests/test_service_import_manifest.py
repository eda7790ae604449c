"""A one-session drive imported by the receiving site (`import --service URL --job NAME`, no
journal) is held to the job's manifestHash as a drive of several sessions is
(test_multisession_service.py): the drive's closing index must lie where the job's
manifestFile says and have its sha256, else the import is refused (exit 5) before anything
is written or the job moves; the job that declares the right one imports byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from pipeline.cluster import site_remote
from pipeline.errors import EXIT_REFUSED
from pipeline.jobs.client import ServiceClient
from pipeline.storage.local import LocalStorage

from . import jobservice
from .conftest import FAST_KDF_ARGS, run_cli
from .drivedata import make_tree, read_tree


def test_one_session_drive_is_held_to_the_job_s_manifest(tmp_path: Path) -> None:
    src, jdir, image = tmp_path / "src", tmp_path / "j", tmp_path / "d1.img"
    make_tree(src, small_files=20, random_mb=2, sparse_mb=4)
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seeded/one/", "--journal-dir", str(jdir),
            "--session-id", "one-1", *FAST_KDF_ARGS, "--drive", str(image), "--drive-size",
            "64M", check_code=0)
    (entry,) = json.loads(run_cli("journal", "export", "--journal-dir", str(jdir),
                                  check_code=0).stdout)
    data, settings = tmp_path / "svc", tmp_path / "site.publishsettings"
    with jobservice.ServiceProcess(data) as svc:
        run_cli("service", "subscription", "add", "site", "--data", str(data), "--out",
                str(settings), check_code=0)
        customer = ["--publish-settings", str(settings), "--service", svc.url]
        client = ServiceClient.from_file(str(settings))
        client.put("job-right", jobservice.job_body([entry]))
        client.put("job-hash", jobservice.job_body([{**entry, "manifestHash": "ab" * 32}]))
        offset, length = entry["manifestFile"].removeprefix("/index@").split("+")
        client.put("job-place", jobservice.job_body(
            [{**entry, "manifestFile": f"/index@{int(offset) + 4096}+{length}"}]))
        for job in ("job-right", "job-hash", "job-place"):
            run_cli("jobs", "ship", "--job", job, "--carrier", "DHL", "--tracking", "T-1",
                    *customer, check_code=0)
        token = tmp_path / "site.token"
        token.write_text(svc.site_token() + "\n")
        site = ["--service", svc.url, "--site-token-file", str(token)]

        def import_(job: str, acct: Path, code: int):
            acct.mkdir()
            return run_cli("import", "--drive", str(image), "--to", str(acct), "--log-dir",
                           str(tmp_path / f"logs-{job}"), *site, "--job", job,
                           check_code=code)

        def state(job: str) -> tuple[str, list[str]]:
            shown = json.loads(run_cli("jobs", "show", "--job", job, "--json", *customer,
                                       check_code=0).stdout)["properties"]
            return shown["state"], [d["state"] for d in shown["driveList"]]

        fix = ("the drive was changed in transit or is not the one prepared; check the drive "
               "and --job")
        proc = import_("job-hash", tmp_path / "acct-hash", EXIT_REFUSED)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"pipeline import: {image}: the closing index at offset {offset} is not the one "
            f"job job-hash declared (manifestHash): {fix}")
        proc = import_("job-place", tmp_path / "acct-place", EXIT_REFUSED)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"pipeline import: {image}: its closing index is {entry['manifestFile']}, not job "
            f"job-place's manifest /index@{int(offset) + 4096}+{length}: {fix}")
        for job in ("job-hash", "job-place"):  # nothing written, the job where it was
            acct = tmp_path / f"acct-{job.removeprefix('job-')}"
            assert [p for p in acct.iterdir() if not p.name.startswith(".")] == []
            assert state(job) == ("Shipping", ["Specified"])
        # The cluster's site task (a worker's `import --cluster --service`) asks the same.
        site_client = ServiceClient.from_site_token_file(svc.url, str(token))
        (tmp_path / "acct-cluster").mkdir()
        got = trio.run(site_remote._import_job, site_client, ("job-hash", None, None),
                       [entry["driveId"]], {entry["driveId"]: str(image)},
                       lambda: LocalStorage(tmp_path / "acct-cluster"), lambda _: None)
        assert (got["code"], got["drives"]) == (EXIT_REFUSED, []), got
        assert got["message"].endswith("is not the one job job-hash declared (manifestHash): "
                                       + fix), got
        assert [p for p in (tmp_path / "acct-cluster").iterdir()
                if not p.name.startswith(".")] == []
        import_("job-right", tmp_path / "acct", 0)
        assert read_tree(tmp_path / "acct" / "seeded" / "one") == read_tree(src)
        assert state("job-right") == ("Packaging", ["Completed"])
