"""`pipeline backup schedule`: the systemd .service + .timer pair written, checked by
systemd-analyze, listed, run (its ExecStart, as systemd would split it, makes a snapshot)
and removed; every bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.backup import schedule
from pipeline.errors import EXIT_BAD_INPUT, EXIT_NO_SEED, EXIT_OK
from pipeline.storage import open_storage
from tests.conftest import FAST_KDF_ARGS, require_tool, run_cli
from tests.test_backup_repo import CONTAINER, import_seed

SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"
PASSPHRASE = "the scheduled backup's passphrase"


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A tiny source whose path needs quoting in a unit (space, %, $, quote), its offline
    seed imported into a directory account, and an empty unit directory."""
    src = tmp_path / "my src 100% $HOME \"q\""
    src.mkdir()
    (src / "a.txt").write_text("first\n")
    (src / "sub").mkdir()
    (src / "sub" / "b.bin").write_bytes(os.urandom(5000))
    staging, units, account = tmp_path / "staging", tmp_path / "units", tmp_path / "account"
    for d in (staging, units, account):
        d.mkdir()
    secret = tmp_path / "secret dir" / "pass"
    secret.parent.mkdir()
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "config"))
    run_cli("backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
            str(staging), "--job-name", "seed-2026", "--subscription", SUB, "--account",
            "backupacct", "--container", CONTAINER, "--passphrase-file", str(secret),
            check_code=EXIT_OK)
    import_seed(staging / "repo", open_storage(f"file://{account}"))
    yield {"src": src, "units": units, "account": account, "pass": secret, "tmp": tmp_path}


def schedule_args(env: dict[str, Path], *extra: str) -> list[str]:
    return ["backup", "schedule", "--source", str(env["src"]), "--to", str(env["account"]),
            "--passphrase-file", str(env["pass"]), "--unit-dir", str(env["units"]), *extra]


def unit_values(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def snapshot_count(env: dict[str, Path]) -> int:
    listed = run_cli("snapshots", "--from", str(env["account"]), "--container", CONTAINER,
                     "--json", check_code=EXIT_OK)
    return len(json.loads(listed.stdout))


def test_write_verify_run_list_remove(env: dict[str, Path]) -> None:
    analyze = require_tool("systemd-analyze")   # scripts/install installs Debian's systemd
    proc = run_cli(*schedule_args(env, "--every", "Mon..Fri 02:30"), check_code=EXIT_OK)
    service, timer = (env["units"] / f for f in ("pipeline-backup-backups.service",
                                                 "pipeline-backup-backups.timer"))
    assert proc.stdout.split() == [str(service), str(timer)]
    assert "systemctl daemon-reload" in one_line(proc)
    assert "systemctl enable --now pipeline-backup-backups.timer" in one_line(proc)
    assert sorted(p.name for p in env["units"].iterdir()) == [service.name, timer.name]
    for unit in (service, timer):
        assert stat.S_IMODE(unit.stat().st_mode) == 0o644
        assert PASSPHRASE not in unit.read_text()
    # systemd itself accepts the pair (quoting, keys, the executable)
    check = subprocess.run([analyze, "verify", str(service), str(timer)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "pipeline-backup" not in check.stderr, check.stderr
    assert unit_values(timer)["OnCalendar"] == ["Mon..Fri 02:30"]
    assert unit_values(timer)["Persistent"] == ["true"]

    # the ExecStart, split as systemd splits it, runs the online backup: one more snapshot
    values = unit_values(service)
    argv = schedule.exec_words(values["ExecStart"][0])
    assert argv is not None and argv[0] == os.path.abspath(sys.executable)
    assert argv[1:4] == ["-m", "pipeline", "backup"]
    assert argv[argv.index("--source") + 1] == str(env["src"])
    assert argv[argv.index("--passphrase-file") + 1] == str(env["pass"])
    environment = {}
    for value in values["Environment"]:
        for word in schedule.exec_words(value, dollars=False) or []:
            key, _, val = word.partition("=")
            environment[key] = val
    assert set(environment) == {"PYTHONPATH", "PIPELINE_CONFIG_DIR"}
    before = snapshot_count(env)
    (env["src"] / "new.txt").write_text("written before the timer fired\n")
    ran = subprocess.run(argv, cwd="/", env={"PATH": os.environ["PATH"], **environment},
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == EXIT_OK, ran.stderr
    assert snapshot_count(env) == before + 1

    listed = run_cli("backup", "schedule", "--list", "--unit-dir", str(env["units"]),
                     check_code=EXIT_OK)
    header, row = listed.stdout.strip().splitlines()
    assert header.split()[:4] == ["name", "every", "next", "container"]
    assert row.startswith("backups ") and "Mon..Fri 02:30" in row
    assert row.rstrip().endswith(str(env["src"])) and " backups " in row
    assert "02:30:00" in row              # the next run, as systemd-analyze computes it

    gone = run_cli("backup", "schedule", "--remove", "backups", "--unit-dir",
                   str(env["units"]), check_code=EXIT_OK)
    assert "systemctl daemon-reload" in one_line(gone)  # systemd is not PID 1 here
    assert list(env["units"].iterdir()) == []
    empty = run_cli("backup", "schedule", "--list", "--unit-dir", str(env["units"]),
                    check_code=EXIT_OK)
    assert empty.stdout.strip() == f"no schedules in {env['units']}"


def test_shorthands_name_and_env_file(env: dict[str, Path]) -> None:
    envfile = env["tmp"] / "azure.env"
    envfile.write_text("AZURE_STORAGE_CONNECTION_STRING=AccountName=x;AccountKey=c2VjcmV0\n")
    envfile.chmod(0o600)
    for every in ("hourly", "daily", "weekly"):
        run_cli(*schedule_args(env, "--every", every, "--name", every), check_code=EXIT_OK)
        assert unit_values(env["units"] / f"pipeline-backup-{every}.timer")["OnCalendar"] == [
            every]
    run_cli("backup", "schedule", "--source", str(env["src"]), "--env-file", str(envfile),
            "--passphrase-file", str(env["pass"]), "--unit-dir", str(env["units"]),
            "--every", "daily", "--name", "azure", check_code=EXIT_OK)
    values = unit_values(env["units"] / "pipeline-backup-azure.service")
    assert values["EnvironmentFile"] == [str(envfile)]
    assert "--to" not in values["ExecStart"][0] and "c2VjcmV0" not in values["ExecStart"][0]
    rows = run_cli("backup", "schedule", "--list", "--unit-dir", str(env["units"]),
                   check_code=EXIT_OK).stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["azure", "daily", "hourly", "weekly"]


@pytest.mark.parametrize("extra, needle", [
    (["--every", "daily", "--name", "Bad Name"], "is not a schedule name"),
    (["--every", "daily", "--name", "../etc"], "is not a schedule name"),
    (["--every", "daily", "--name", "x" * 65], "is not a schedule name"),
    (["--every", "Mon..Fry 02:30"], "is not a systemd calendar expression"),
    (["--every", "daily\nExecStartPre=/bin/sh"], "is not a calendar expression"),
    (["--every", "-1"], "is not a calendar expression"),
    (["--every", "25:00"], "is not a systemd calendar expression"),
    (["--every", "daily", "--container", "Bad_C"], "container name"),
    (["--every", "daily", "--list"], "go with writing a schedule"),
], ids=["name-space", "name-path", "name-long", "calendar-typo", "calendar-newline",
        "calendar-dash", "calendar-hour", "container", "list-mixed"])
def test_bad_input_one_line_nothing_written(env: dict[str, Path], extra: list[str],
                                            needle: str) -> None:
    proc = run_cli(*schedule_args(env, *extra))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert needle in one_line(proc)
    assert list(env["units"].iterdir()) == []


def test_refusals_that_need_context(env: dict[str, Path]) -> None:
    units = str(env["units"])
    cases: list[tuple[list[str], str]] = [
        (["backup", "schedule", "--source", str(env["src"]), "--to",
          "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0", "--passphrase-file",
          str(env["pass"]), "--every", "daily", "--unit-dir", units], "account key or SAS"),
        (["backup", "schedule", "--source", str(env["src"]), "--to",
          "https://a.blob.core.windows.net/?sv=2020&sig=abc", "--passphrase-file",
          str(env["pass"]), "--every", "daily", "--unit-dir", units], "account key or SAS"),
        (["backup", "schedule", "--source", str(env["src"]), "--to", str(env["account"]),
          "--passphrase-file", str(env["tmp"] / "nope"), "--every", "daily", "--unit-dir",
          units], "does not exist"),
        (["backup", "schedule", "--source", str(env["tmp"] / "nope"), "--to",
          str(env["account"]), "--passphrase-file", str(env["pass"]), "--every", "daily",
          "--unit-dir", units], "nope"),
        (["backup", "schedule", "--source", str(env["src"]), "--passphrase-file",
          str(env["pass"]), "--unit-dir", units], "needs --every WHEN"),
        (["backup", "schedule", "--remove", "nosuch", "--unit-dir", units], "no schedule nosuch"),
        (["backup", "schedule", "--remove", "Bad Name", "--unit-dir", units], "schedule name"),
        (["backup", "schedule", "--list", "--remove", "x", "--unit-dir", units], "not both"),
        (["backup", "schedule", "--list", "--unit-dir", str(env["tmp"] / "nope")],
         "does not exist"),
        (["backup", "--to", str(env["account"])], "backup needs --source DIR"),
    ]
    for args, needle in cases:
        proc = run_cli(*args)
        assert proc.returncode == EXIT_BAD_INPUT, (args, proc.stderr)
        assert needle in one_line(proc), args
    assert list(env["units"].iterdir()) == []
    # a name taken: refused, the pair already there untouched
    run_cli(*schedule_args(env, "--every", "daily"), check_code=EXIT_OK)
    before = {p.name: p.read_bytes() for p in env["units"].iterdir()}
    again = run_cli(*schedule_args(env, "--every", "hourly"))
    assert again.returncode == EXIT_BAD_INPUT and "already exists" in one_line(again)
    assert {p.name: p.read_bytes() for p in env["units"].iterdir()} == before


def test_list_treats_unit_files_as_hostile(env: dict[str, Path]) -> None:
    units = env["units"]
    run_cli(*schedule_args(env, "--every", "daily"), check_code=EXIT_OK)
    # not ours by name, binary garbage, an oversized file, a service that runs something else
    (units / "pipeline-backup-Bad Name.timer").write_text("[Timer]\nOnCalendar=daily\n")
    (units / "other.timer").write_text("[Timer]\nOnCalendar=daily\n")
    (units / "pipeline-backup-garbage.timer").write_bytes(b"\xff\xfe\x00OnCalendar=\x1b[31m")
    (units / "pipeline-backup-big.timer").write_text("OnCalendar=daily\n" * 10_000)
    (units / "pipeline-backup-evil.timer").write_text("[Timer]\nOnCalendar=\x1b]0;owned\x07\n")
    (units / "pipeline-backup-evil.service").write_text(
        "[Service]\nExecStart=/bin/rm -rf --source /home --container x\n")
    (units / "pipeline-backup-quote.service").write_text(
        '[Service]\nExecStart="/bin/unterminated\n')
    (units / "pipeline-backup-quote.timer").write_text("[Timer]\nOnCalendar=weekly\n")
    rows = {r.split()[0]: r for r in run_cli(
        "backup", "schedule", "--list", "--unit-dir", str(units),
        check_code=EXIT_OK).stdout.splitlines()[1:]}
    assert sorted(rows) == ["backups", "big", "evil", "garbage", "quote"]
    for name in ("big", "evil", "garbage"):
        assert rows[name].split()[1:] == ["?", "-", "?", "?"], rows[name]
    assert rows["quote"].split()[1] == "weekly" and rows["quote"].split()[-2:] == ["?", "?"]
    assert "\x1b" not in "".join(rows.values()) and "/home" not in rows["evil"]


def test_quoting_round_trips() -> None:
    for word in ("/plain/path", "with space", "100%", "$HOME", "${X}", 'a"b', "back\\slash",
                 "it's", "", ";", "ünïcödé", "%h/%n"):
        line = " ".join(schedule.exec_quote(w) for w in ("/bin/x", word, "end"))
        assert schedule.exec_words(line) == ["/bin/x", word, "end"], (word, line)
    assert schedule.exec_words('"unterminated') is None
    assert schedule.exec_words("bad\\escape\\q") is None
    with pytest.raises(Exception, match="control character"):
        schedule.exec_quote("new\nline")


def test_online_backup_without_a_seed_still_exit_7(env: dict[str, Path]) -> None:
    """`backup` with flags, as before the schedule subcommand: an empty container -> 7."""
    (env["tmp"] / "empty").mkdir()
    proc = run_cli("backup", "--source", str(env["src"]), "--to", str(env["tmp"] / "empty"),
                   "--container", "other", "--passphrase-file", str(env["pass"]))
    assert proc.returncode == EXIT_NO_SEED, proc.stderr
