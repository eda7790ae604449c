"""The long commands as an operator at a terminal sees them, and as a log file keeps them.

On a terminal (a real pty, pexpect) import, verify, repair and restore each show the same
progress bar as prep, MB/s included; with stdout and stderr redirected (a log file anyone
may read), no recovery password appears in anything they print."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from pipeline import journal

from .conftest import FAST_KDF_ARGS, ROOT, run_cli
from .drivedata import make_tree


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A prepared drive, its journal, the staging tree, a backup repository, a passphrase."""
    base = tmp_path_factory.mktemp("operator")
    src, jdir, drive = base / "src", base / "j", base / "d1.img"
    make_tree(src, small_files=300, random_mb=6, sparse_mb=8)
    run_cli("prep", "--source", str(src), "--dstdir", "seed-test/vdir/", "--journal-dir",
            str(jdir), "--session-id", "op-1", "--drive", str(drive), "--drive-size", "64M",
            *FAST_KDF_ARGS, check_code=0)
    [j] = journal.session_journals(jdir)
    password = j.recovery_password
    j.close()
    (base / "pw").write_text(password + "\n")
    (base / "pass").write_text("a long backup passphrase\n")
    staging = base / "staging"
    staging.mkdir()
    run_cli("backup", "--offline", "--source", str(src), "--staging", str(staging), "--job",
            "op-seed", "--subscription", "0f8fad5b-d9cb-469f-a165-70867728950e",
            "--storage-account", "opsacct", "--container", "backups", "--passphrase-file",
            str(base / "pass"), *FAST_KDF_ARGS, check_code=0,
            env={"PIPELINE_CONFIG_DIR": str(base / "config")})
    return {"base": base, "src": src, "jdir": jdir, "drive": drive, "password": password,
            "staging": staging}


def commands(s: dict[str, Path | str], tag: str) -> dict[str, list[str]]:
    base = s["base"]
    assert isinstance(base, Path)
    account, logs = base / f"acct-{tag}", base / f"logs-{tag}"
    account.mkdir(exist_ok=True)
    return {
        "verify": ["verify", "--journal-dir", str(s["jdir"])],
        "import": ["import", "--drive", str(s["drive"]), "--to", str(account),
                   "--recovery-password-file", str(base / "pw"), "--log-dir", str(logs)],
        "repair": ["repair", "--journal-dir", str(s["jdir"]), "--source", str(s["src"]),
                   "--to", str(account)],
        "restore": ["restore", "--from", str(s["staging"]), "--target",
                    str(base / f"restored-{tag}"), "--passphrase-file", str(base / "pass")],
    }


@pytest.mark.parametrize("name", ["verify", "import", "repair", "restore"])
def test_at_a_terminal_the_long_commands_show_progress(seeded, name: str) -> None:
    args = commands(seeded, "tty")[name] if name != "repair" else None
    if name == "repair":  # repair compares what an import put in the account
        cmds = commands(seeded, "tty")
        run_cli(*cmds["import"], check_code=0)
        args = cmds["repair"]
    child = pexpect.spawn(sys.executable, ["-m", "pipeline", *args], cwd=str(ROOT),
                          encoding="utf-8", timeout=300, dimensions=(40, 200))
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "MB/s" in out and "━" in out, out  # rich's bar, with the rate
    assert str(seeded["password"]) not in out


def test_redirected_output_never_holds_a_recovery_password(seeded) -> None:
    password = str(seeded["password"])
    for extra in ([], ["--json"]):
        cmds = commands(seeded, f"log{len(extra)}")
        for name in ("import", "verify", "repair", "restore"):
            proc = run_cli(*cmds[name], *extra)
            assert proc.returncode == 0, (name, extra, proc.stderr)
            assert password not in proc.stdout + proc.stderr, (name, extra)
    prep = run_cli("prep", "--source", str(seeded["src"]), "--dstdir", "seed-test/vdir/",
                   "--journal-dir", str(seeded["base"] / "j2"), "--session-id", "op-2",
                   "--drive", str(seeded["base"] / "d2.img"), "--drive-size", "64M",
                   *FAST_KDF_ARGS, check_code=0)
    [j] = journal.session_journals(seeded["base"] / "j2")
    assert j.recovery_password not in prep.stdout + prep.stderr
    j.close()
