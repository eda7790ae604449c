"""`pipeline backup | restore | snapshots` as an operator runs them: the offline seed, its
settings files, the online backup, and every bad input as one line with its exit code."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, EXIT_NO_SEED, EXIT_OK, EXIT_STORAGE
from pipeline.storage import open_storage
from tests import jobservice
from tests.azurite import connection_string, free_port
from tests.conftest import FAST_KDF_ARGS, require_root, run_cli
from tests.test_backup_repo import CONTAINER, describe, import_seed, make_tree

SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"
JOB = "seed-2026"
ACCOUNT = "backupacct"


@pytest.fixture(scope="module")
def service_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bytes]:
    """One import service for the module, and its subscription's publish settings: backup
    only asks it (is the job name free, what state is the job in), no test changes it."""
    base = tmp_path_factory.mktemp("backup-cli-svc")
    with jobservice.ServiceProcess(base / "svc") as svc:
        yield jobservice.subscription_settings(svc, base / "sub.publishsettings",
                                               SUB).read_bytes()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service_settings: bytes
        ) -> Iterator[dict[str, Path]]:
    """A source tree, an empty staging location, a passphrase, publish settings of a
    running import service (backup --offline asks it whether the job name is free) and a
    private config directory (PIPELINE_CONFIG_DIR) for this test."""
    src, staging, secrets_dir = tmp_path / "src", tmp_path / "staging", tmp_path / "secrets"
    for d in (src, staging, secrets_dir):
        d.mkdir()
    make_tree(src)
    (secrets_dir / "pass").write_text("a long backup passphrase\n")
    settings = secrets_dir / "sub.publishsettings"
    settings.write_bytes(service_settings)  # this test's own copy (it may move or damage it)
    settings.chmod(0o600)
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "config"))
    yield {"src": src, "staging": staging, "pass": secrets_dir / "pass",
           "settings": settings, "config": tmp_path / "config" / "offline.json",
           "tmp": tmp_path}


def offline_args(env: dict[str, Path], **over: str) -> list[str]:
    args = {"--source": str(env["src"]), "--staging": str(env["staging"]), "--job-name": JOB,
            "--subscription": SUB, "--account": ACCOUNT, "--container": CONTAINER,
            "--publish-settings": str(env["settings"]), "--passphrase-file": str(env["pass"])}
    args.update(over)
    out = ["backup", "--offline", *FAST_KDF_ARGS]
    for k, v in args.items():
        if v is not None:
            out += [k, v]
    return out


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_offline_backup_settings_files_and_restore(env: dict[str, Path]) -> None:
    proc = run_cli(*offline_args(env), "--json", check_code=EXIT_OK)
    events = json_lines(proc.stdout)
    assert [e["type"] for e in (events[0], events[-2], events[-1])] == ["start", "summary",
                                                                       "exit"]
    summary = events[-2]
    assert summary["files"] == 6 and summary["bytes_sent"] > 0 and events[-1]["code"] == 0
    staging = env["staging"].resolve()

    record = json.loads((staging / "pipeline-offline.json").read_text())
    created = record.pop("created")
    assert "T" in created
    assert record == {"version": 1, "staging": str(staging), "repository": "repo",
                      "job_name": JOB, "subscription": SUB, "account": ACCOUNT,
                      "container": CONTAINER}
    cfg = env["config"]
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert json.loads(cfg.read_text()) == {str(staging): {
        "publish_settings": str(env["settings"].resolve()), "container": CONTAINER,
        "job_name": JOB, "subscription": SUB, "account": ACCOUNT,
        "source": str(env["src"].resolve())}}
    # staging holds the repository and the record, nothing else; no secret in it
    assert sorted(p.name for p in staging.iterdir()) == ["pipeline-offline.json", "repo"]
    passphrase = env["pass"].read_bytes().strip()
    for p in staging.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert passphrase not in data and b"ManagementCertificate" not in data, p

    listed = run_cli("snapshots", "--from", str(staging), "--passphrase-file", str(env["pass"]),
                     "--json", check_code=EXIT_OK)
    (snap,) = json.loads(listed.stdout)
    assert snap["id"] == summary["snapshot"] and snap["files"] == 6
    assert snap["source"] == str(env["src"].resolve())
    keyless = run_cli("snapshots", "--from", str(staging / "repo"), check_code=EXIT_OK)
    assert summary["snapshot"][:16] in keyless.stdout

    out = env["tmp"] / "restored"
    run_cli("restore", "--from", str(staging), "--target", str(out), "--passphrase-file",
            str(env["pass"]), check_code=EXIT_OK)
    assert describe(out) == describe(env["src"])

    again = run_cli(*offline_args(env))
    assert again.returncode == EXIT_BAD_INPUT
    assert "already holds the offline backup" in one_line(again)
    assert "diskprep" in one_line(again)


def test_online_backup_after_the_seed_is_imported(env: dict[str, Path]) -> None:
    run_cli(*offline_args(env), check_code=EXIT_OK)
    account = env["tmp"] / "account"
    account.mkdir()
    to = f"file://{account}"
    # before the import: no repository in the container yet -> wait for the import job
    early = run_cli("backup", "--source", str(env["src"]), "--to", to, "--passphrase-file",
                    str(env["pass"]))
    assert early.returncode == EXIT_NO_SEED
    line = one_line(early)
    assert f"import job {JOB}" in line and "Completed" in line

    # half imported (the drive with the packs not yet): still wait for the import job
    import_seed(env["staging"] / "repo", open_storage(to), skip=lambda n: n.startswith("data/"))
    partial = run_cli("backup", "--source", str(env["src"]), "--to", to, "--passphrase-file",
                      str(env["pass"]))
    assert partial.returncode == EXIT_NO_SEED
    assert "incomplete" in one_line(partial) and f"import job {JOB}" in one_line(partial)

    import_seed(env["staging"] / "repo", open_storage(to))
    before = describe(env["src"])
    (env["src"] / "docs" / "added.txt").write_text("added after the seed\n")
    (env["src"] / "empty").unlink()
    after = describe(env["src"])
    # --container defaults to the one the offline backup recorded for this source
    proc = run_cli("backup", "--source", str(env["src"]), "--to", to, "--passphrase-file",
                   str(env["pass"]), "--json", check_code=EXIT_OK)
    summary = json_lines(proc.stdout)[-2]
    assert summary["type"] == "summary" and summary["parent"] is not None
    assert 0 < summary["bytes_sent"] < 8192          # one new small file, tree, index, snapshot

    listed = json.loads(run_cli("snapshots", "--from", to, "--container", CONTAINER,
                                "--passphrase-file", str(env["pass"]), "--json",
                                check_code=EXIT_OK).stdout)
    assert [s["id"] for s in listed][1] == summary["snapshot"] and len(listed) == 2
    for snap, want, name in ((listed[0], before, "first"), (None, after, "latest")):
        extra = ["--snapshot", snap["id"][:10]] if snap else []
        run_cli("restore", "--from", to, "--container", CONTAINER, "--target",
                str(env["tmp"] / name), "--passphrase-file", str(env["pass"]), *extra,
                check_code=EXIT_OK)
        assert describe(env["tmp"] / name) == want

    wrong = env["tmp"] / "wrong"
    wrong.write_text("not the passphrase\n")
    bad = run_cli("restore", "--from", to, "--container", CONTAINER, "--target",
                  str(env["tmp"] / "never"), "--passphrase-file", str(wrong))
    assert bad.returncode == EXIT_BAD_INPUT and "does not open" in one_line(bad)
    assert not (env["tmp"] / "never").exists()

    # a damaged pack in the account: the file holding the chunk is named and left out,
    # every other one restored, exit 4 (every damage kind: test_backup_damage.py).  A pack
    # may hold the snapshot's tree instead, which fails the restore as a whole (one line,
    # nothing written): try the packs in turn until one holds file data only.
    packs = sorted(p for p in (account / CONTAINER / "data").rglob("*") if p.is_file())
    for n, pack in enumerate(packs):
        good = pack.read_bytes()
        data = bytearray(good)
        data[200] ^= 1
        pack.write_bytes(bytes(data))
        target = env["tmp"] / f"broken-{n}"
        broken = run_cli("restore", "--from", to, "--container", CONTAINER, "--target",
                         str(target), "--passphrase-file", str(env["pass"]))
        assert broken.returncode == EXIT_INTEGRITY, broken.stderr
        lines = broken.stderr.strip().splitlines()
        if len(lines) == 1:  # the tree's pack: named, and nothing restored
            assert "does not decrypt" in lines[0] and not target.exists()
            pack.write_bytes(good)
            continue
        named, total = lines
        path = named.removeprefix("pipeline restore: ").split(": chunk ")[0]
        assert "does not decrypt" in named and "1 of 6 files could not be restored" in total
        assert describe(target) == {k: v for k, v in after.items() if k != path}
        break
    else:
        raise AssertionError(f"no pack of {len(packs)} holds file data only")


@pytest.mark.parametrize("change, needle", [
    ({"--job-name": "Bad Name"}, "job name"),
    ({"--job-name": "x"}, "3-24"),
    ({"--subscription": "not-a-uuid"}, "subscription id"),
    ({"--account": "Has_Upper"}, "storage account name"),
    ({"--container": "Bad_Container"}, "container name"),
    ({"--container": "ab"}, "3 to 63"),
    ({"--passphrase-file": "/nonexistent/pass"}, "does not exist"),
], ids=["job-space", "job-short", "subscription", "account", "container", "container-short",
        "passphrase-missing"])
def test_offline_bad_names(env: dict[str, Path], change: dict[str, str], needle: str) -> None:
    proc = run_cli(*offline_args(env, **change))
    assert proc.returncode == EXIT_BAD_INPUT
    assert needle in one_line(proc)
    assert list(env["staging"].iterdir()) == []
    assert not env["config"].exists()


def test_offline_bad_publish_settings_and_staging(env: dict[str, Path]) -> None:
    not_settings = env["tmp"] / "secrets" / "notes.txt"
    not_settings.write_text("this is not a publish settings file")
    cases: list[tuple[dict[str, str], str]] = [
        ({"--publish-settings": str(not_settings)}, "cannot be read as XML"),
        ({"--subscription": str(uuid.UUID(int=5))}, "no matching"),
        ({"--staging": str(env["tmp"] / "nope")}, "does not exist"),
        ({"--staging": str(env["src"] / "docs")}, "overlap"),
    ]
    inside = env["staging"] / "sub.publishsettings"
    inside.write_bytes(env["settings"].read_bytes())
    cases.append(({"--publish-settings": str(inside)}, "inside the staging location"))
    for change, needle in cases:
        proc = run_cli(*offline_args(env, **change))
        assert proc.returncode == EXIT_BAD_INPUT, (change, proc.stderr)
        assert needle in one_line(proc), change
    inside.unlink()
    assert list(env["staging"].iterdir()) == []
    mixed = run_cli("backup", "--source", str(env["src"]), "--staging", str(env["staging"]),
                    "--to", str(env["tmp"]), "--passphrase-file", str(env["pass"]))
    assert mixed.returncode == EXIT_BAD_INPUT and "only go with --offline" in one_line(mixed)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    require_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_staging_too_small(env: dict[str, Path], tmpfs: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs)], check=True)
    proc = run_cli(*offline_args(env, **{"--staging": str(tmpfs)}))
    assert proc.returncode == EXIT_BAD_INPUT
    line = one_line(proc)
    assert "free" in line and "needs about" in line and "larger staging" in line
    assert list(tmpfs.iterdir()) == []


def test_staging_not_writable(env: dict[str, Path], tmpfs: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64m", "tmpfs", str(tmpfs)],
                   check=True)
    proc = run_cli(*offline_args(env, **{"--staging": str(tmpfs)}))
    assert proc.returncode == EXIT_BAD_INPUT
    assert "not writable" in one_line(proc)


def test_restore_and_online_bad_input(env: dict[str, Path]) -> None:
    # a staging location without an offline backup
    proc = run_cli("restore", "--from", str(env["staging"]), "--target",
                   str(env["tmp"] / "out"), "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_BAD_INPUT and "holds no backup repository" in one_line(proc)
    # a target that is not empty
    busy = env["tmp"] / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    proc = run_cli("restore", "--from", str(env["staging"]), "--target", str(busy),
                   "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_BAD_INPUT and "is not empty" in one_line(proc)
    # online without a recorded offline backup and without --container
    proc = run_cli("backup", "--source", str(env["src"]), "--to", str(env["tmp"]),
                   "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_BAD_INPUT and "give --container" in one_line(proc)


def test_storage_unreachable(env: dict[str, Path]) -> None:
    closed = connection_string(free_port())       # nothing listens there
    proc = run_cli("backup", "--source", str(env["src"]), "--to", closed, "--container",
                   CONTAINER, "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_STORAGE
    assert "unavailable" in one_line(proc)
    assert "AccountKey" not in proc.stderr


def test_help_lists_exit_codes() -> None:
    for cmd in ("backup", "restore", "snapshots"):
        out = run_cli(cmd, "--help", check_code=0).stdout
        assert "7    no backup repository" in out and "any other code means failure" in out


def test_seed_through_prep_and_import(env: dict[str, Path]) -> None:
    """The repository really travels: prep of STAGING/repo onto a drive as page blobs into
    the container's root (what diskprep runs), import, then the online backup on top."""
    run_cli(*offline_args(env), check_code=EXIT_OK)
    jdir, drive, logs = env["tmp"] / "journals", env["tmp"] / "d1.img", env["tmp"] / "logs"
    logs.mkdir()
    run_cli("prep", "--srcdir", str(env["staging"] / "repo"), "--dstdir", f"{CONTAINER}/",
            "--journal-dir", str(jdir), "--session-id", JOB, "--blob-type", "page",
            "--drive", str(drive), "--drive-size", "32M", "--yes", *FAST_KDF_ARGS,
            check_code=EXIT_OK)
    account = env["tmp"] / "account"
    account.mkdir()
    run_cli("import", "--drive", str(drive), "--to", f"file://{account}", "--journal-dir",
            str(jdir), "--log-dir", str(logs), check_code=EXIT_OK)
    seeded = describe(env["src"])
    (env["src"] / "docs" / "later.txt").write_text("written after the drives left\n")
    run_cli("backup", "--source", str(env["src"]), "--to", str(account), "--passphrase-file",
            str(env["pass"]), check_code=EXIT_OK)
    listed = json.loads(run_cli("snapshots", "--from", str(account), "--container", CONTAINER,
                                "--json", check_code=EXIT_OK).stdout)
    assert len(listed) == 2
    run_cli("restore", "--from", str(account), "--container", CONTAINER, "--snapshot",
            listed[0]["id"], "--target", str(env["tmp"] / "seeded"), "--passphrase-file",
            str(env["pass"]), check_code=EXIT_OK)
    assert describe(env["tmp"] / "seeded") == seeded


def test_restore_summary_figures_are_what_is_on_disk(env: dict[str, Path]) -> None:
    """'restored X in N files' is the bytes and files now in --target: counted once each,
    however many fetch tasks ran at once (a `+= await` lost their updates: 40.7 of 53.9 MiB)."""
    for i in range(120):  # ~24 MiB of incompressible data: many ranges, fetched at once
        (env["src"] / f"many-{i:03d}.bin").write_bytes(os.urandom(100_000 + i * 1_700))
    run_cli(*offline_args(env, **{"--publish-settings": None}), check_code=EXIT_OK)
    out = env["tmp"] / "restored"
    proc = run_cli("restore", "--from", str(env["staging"]), "--target", str(out),
                   "--passphrase-file", str(env["pass"]), "--threads", "4", "--json",
                   check_code=EXIT_OK)
    summary = [e for e in json_lines(proc.stdout) if e["type"] == "summary"][0]
    on_disk = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert summary["files_done"] == summary["files_total"] == len(on_disk)
    assert summary["bytes_read"] == summary["bytes_total"] == sum(
        p.stat().st_size for p in on_disk)
    assert summary["elapsed_s"] > 0 and summary["bytes_per_s"] > 0


def test_restore_finds_the_recorded_container_and_names_what_is_wrong(
        env: dict[str, Path]) -> None:
    run_cli(*offline_args(env, **{"--publish-settings": None}), check_code=EXIT_OK)
    account = env["tmp"] / "account"
    account.mkdir()
    import_seed(env["staging"] / "repo", open_storage(f"file://{account}"))
    restore = ["restore", "--from", str(account), "--passphrase-file", str(env["pass"])]
    # backup --offline recorded the container: restore needs no --container
    run_cli(*restore, "--target", str(env["tmp"] / "out"), check_code=EXIT_OK)
    assert describe(env["tmp"] / "out") == describe(env["src"])
    proc = run_cli("snapshots", "--from", str(account), "--container", "nosuch",
                   "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_NO_SEED
    assert f"container nosuch does not exist in {account}" in one_line(proc)
    for wanted, needle in (("abc", "is too short"), ("zzzzzzzzzz", "is not a snapshot id"),
                           ("00000000", "matches no snapshot")):
        proc = run_cli(*restore, "--target", str(env["tmp"] / wanted), "--snapshot", wanted)
        assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
        assert needle in one_line(proc)


def test_backup_summary_counts_each_file_once(env: dict[str, Path]) -> None:
    """The last bar and the summary say what was backed up, not the estimate made before:
    files added after the estimate made "5992/5990 files" once."""
    proc = run_cli(*offline_args(env, **{"--publish-settings": None}), "--json",
                   check_code=EXIT_OK)
    events = json_lines(proc.stdout)
    summary = [e for e in events if e["type"] == "summary"][0]
    files = [p for p in env["src"].rglob("*") if p.is_file() and not p.is_symlink()]
    assert summary["files_done"] == summary["files_total"] == len(files)
    assert summary["bytes_read"] + summary["unchanged_bytes"] == summary["bytes_total"] == sum(
        p.stat().st_size for p in files)
    last = [e for e in events if e["type"] == "progress"][-1]
    assert last["files_done"] == last["files_total"] and last["bytes_total"] == summary[
        "bytes_total"]

