"""prep end to end, as an operator runs it: round trips over several drives, out of
drives and resume, verify and keys."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from pipeline import journal
from pipeline.drive import format
from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, EXIT_OUT_OF_DRIVES

from .conftest import FAST_KDF_ARGS, ROOT, run_cli
from .drivedata import make_tree, read_tree, restore

MiB = 1 << 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("staging") / "src"
    make_tree(root, random_mb=30)
    return root, read_tree(root)


def prep(src: Path, jdir: Path, session: str, drives: list[Path], *extra: str):
    args = ["prep", "--srcdir", str(src), "--dstdir", "seed-test/vdir/", "--journal-dir",
            str(jdir), "--session-id", session, *FAST_KDF_ARGS, *extra]
    for d in drives:
        args += ["--drive", str(d)]
    return run_cli(*args)


def journals_of(jdir: Path) -> list[journal.Journal]:
    return journal.session_journals(jdir)


def restored(jdir: Path) -> dict[str, bytes]:
    pairs = []
    for j in journals_of(jdir):
        pairs.append((j.drive.path, j.recovery_password))
        j.close()
    return restore(pairs)


@pytest.mark.parametrize("fill", ["sequential", "parallel"])
def test_round_trip_over_three_drives(tmp_path: Path, tree, fill: str) -> None:
    src, files = tree
    jdir = tmp_path / "journals"
    drives = [tmp_path / f"drive{i}.img" for i in (1, 2, 3)]
    size = "32M" if fill == "sequential" else "48M"
    proc = prep(src, jdir, f"rt-{fill}", drives, "--drive-size", size, "--fill", fill, "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "start" and events[-1] == {**events[-1], "type": "exit",
                                                            "code": 0}
    summary = next(e for e in events if e["type"] == "summary")
    assert [d["seq"] for d in summary["drives"]] == [1, 2, 3]
    states = [d["state"] for d in summary["drives"]]
    if fill == "sequential":
        assert states == ["full", "full", "closed"]  # each drive filled, the last closed
    else:
        assert states == ["closed"] * 3
        assert all(d["payload_bytes"] > 4 * MiB for d in summary["drives"])
    raw = 0
    for j in journals_of(jdir):
        assert stat.S_IMODE(os.stat(j.path).st_mode) == 0o600
        assert j.drive.state in ("full", "closed")
        raw += sum(e.raw_len for e in j.extents() if e.codec is not format.Codec.ZERO)
        j.close()
    # each summary figure is what it says: files once each, the compression ratio of exactly
    # the extents stored (their payload over their raw bytes), every staging byte read
    assert summary["files_done"] == summary["files_total"] == len(files)
    assert summary["bytes_read"] == sum(map(len, files.values()))
    assert summary["bytes_stored"] == sum(d["payload_bytes"] for d in summary["drives"])
    assert summary["raw_stored"] == raw

    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0
    back = restored(jdir)
    assert back.keys() == files.keys()
    for name, data in files.items():
        assert back[name] == data, name
    # Holes and zero runs are not stored: far less on the drives than in staging.
    stored = sum(d["payload_bytes"] for d in summary["drives"])
    assert stored < sum(map(len, files.values())) * 0.7


def test_out_of_drives_then_resume_with_a_new_drive(tmp_path: Path, tree) -> None:
    src, files = tree
    jdir = tmp_path / "j"
    proc = prep(src, jdir, "ood-1", [tmp_path / "a.img"], "--drive-size", "40M")
    assert proc.returncode == EXIT_OUT_OF_DRIVES, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline prep: every drive is full")
    assert f"--resume --journal-dir {jdir} --session-id ood-1 --drive NEW" in last
    # stdout is a pipe here (a log file in real life): no password in it, the command instead
    assert "recovery password:" not in proc.stdout + proc.stderr
    keys_cmd = f"pipeline keys --journal-dir {jdir.resolve()} --session-id ood-1"
    assert keys_cmd in proc.stdout and keys_cmd in proc.stderr
    proc = prep(src, jdir, "ood-1", [tmp_path / "b.img"], "--resume", "--drive-size", "64M")
    assert proc.returncode == 0, proc.stderr
    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0
    assert restored(jdir) == files
    keys = run_cli("keys", "--journal-dir", str(jdir), "--json", check_code=0)
    rows = json.loads(keys.stdout)
    assert [r["seq"] for r in rows] == [1, 2]
    assert all(len(r["recovery_password"]) == 55 for r in rows)


def test_resume_rewrites_changed_files_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=200, random_mb=2, sparse_mb=8)
    jdir = tmp_path / "j"
    drive = tmp_path / "d.img"
    assert prep(src, jdir, "chg-1", [drive], "--drive-size", "64M").returncode == 0
    (src / "logs" / "sys log.txt").write_text("rewritten\n")
    (src / "new file.txt").write_text("new\n")
    proc = prep(src, jdir, "chg-1", [], "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = next(json.loads(x) for x in proc.stdout.splitlines() if '"summary"' in x)
    assert summary["bytes_read"] == len("rewritten\n") + len("new\n")
    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0
    assert restored(jdir) == read_tree(src)


def test_verify_names_damaged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=50, random_mb=3, sparse_mb=4)
    jdir = tmp_path / "j"
    drive = tmp_path / "d.img"
    assert prep(src, jdir, "dmg-1", [drive], "--drive-size", "64M").returncode == 0
    j = journals_of(jdir)[0]
    live_files, live_raw = len(list(j.files())), sum(e.raw_len for e in j.extents())
    # before the damage: verify's figures are the drive's, every byte and file once
    clean = run_cli("verify", "--journal-dir", str(jdir), "--json", check_code=0)
    events = [json.loads(line) for line in clean.stdout.splitlines()]
    summary = next(e for e in events if e["type"] == "summary")
    assert summary["bytes_read"] == summary["bytes_total"] == live_raw
    assert summary["files_done"] == summary["files_total"] == live_files
    assert [r["ok"] for r in summary["reports"]] == [True]
    assert events[-1] == {"type": "exit", "t": events[-1]["t"], "code": 0,
                          "message": "verified 1 drive(s): every extent matches its journal"}
    victim = next(e for e in j.extents() if e.stored_len > 100_000)
    path = next(f.path for f in j.files() if f.file_id == victim.file_id)
    offset = 16 * MiB + victim.location + 5000
    j.close()
    with open(drive, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))
    proc = run_cli("verify", "--journal-dir", str(jdir))
    assert proc.returncode == EXIT_INTEGRITY
    assert f"damaged: {path}:" in proc.stdout
    assert proc.stdout.count("damaged:") == 1
    assert path in proc.stderr.strip().splitlines()[-1]


def test_bad_inputs(tmp_path: Path, tree) -> None:
    src, _ = tree
    jdir = tmp_path / "j"
    cases = [
        (["--session-id", "x"], "session id 'x' is invalid"),
        (["--dstdir", "Bad_Container/"], "container 'Bad_Container' is invalid"),
        (["--srcdir", str(tmp_path / "nope")], "does not exist"),
        (["--level", "40"], "--level 40 is out of range"),
        (["--blob-type", "page"], "is not a multiple of 512, which page blobs require"),
    ]
    for override, needle in cases:
        args = {"--srcdir": str(src), "--dstdir": "seed/", "--journal-dir": str(jdir),
                "--session-id": "bad-1", "--drive": str(tmp_path / "x.img"),
                "--drive-size": "64M"}
        args.update(dict(zip(override[::2], override[1::2], strict=True)))
        proc = run_cli("prep", *[x for kv in args.items() for x in kv], *FAST_KDF_ARGS)
        assert proc.returncode == EXIT_BAD_INPUT, (override, proc.stderr)
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert not (tmp_path / "x.img").exists()
        assert not jdir.exists()  # bad input leaves nothing, not even the journal directory
    proc = run_cli("prep", "--journal-dir", str(jdir), "--session-id", "none-1", "--resume")
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr == (
        f"pipeline prep: journal directory {jdir} does not exist; give the one of the session\n")
    jdir.mkdir()
    proc = run_cli("prep", "--journal-dir", str(jdir), "--session-id", "none-1", "--resume")
    assert proc.returncode == EXIT_BAD_INPUT and "no journals of session none-1" in proc.stderr


@pytest.fixture(scope="module")
def signal_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The staging tree of each signal below (make_tree is seeded: the cases made the same
    tree each), made once; prep only reads it."""
    src = tmp_path_factory.mktemp("signal") / "src"
    make_tree(src, small_files=500, random_mb=24, sparse_mb=8)
    return src


@pytest.mark.parametrize("sig", ["INT", "TERM", "HUP"])
def test_ctrl_c_commits_what_was_read_and_resume_finishes(tmp_path: Path, signal_tree: Path,
                                                          sig: str) -> None:
    """Ctrl-C, `kill` (SIGTERM) and a closed terminal (SIGHUP) stop prep alike: what was
    read is written and committed, exit 130, and --resume finishes the copy."""
    src = signal_tree
    jdir = tmp_path / "j"
    env_prep = ["prep", "--srcdir", str(src), "--dstdir", "seed/", "--journal-dir", str(jdir),
                "--session-id", "int-1", "--drive", str(tmp_path / "d.img"),
                "--drive-size", "64M", *FAST_KDF_ARGS]
    proc = subprocess.run([sys.executable, "-m", "pipeline", *env_prep], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                          "PIPELINE_CRASH_AT": f"after_pwrite:2:{sig}"})
    assert proc.returncode == 130, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "interrupted after" in last and "what was read is committed" in last
    assert f"pipeline prep --resume --journal-dir {jdir} --session-id int-1" in last
    j = journals_of(jdir)[0]
    assert j.drive.state == "closed" and j.drive.payload_bytes > 0  # drained and closed
    j.close()
    proc = run_cli(*env_prep[:-len(FAST_KDF_ARGS)], "--resume", "--json", *FAST_KDF_ARGS)
    assert proc.returncode == 0, proc.stderr
    summary = next(json.loads(x) for x in proc.stdout.splitlines() if '"summary"' in x)
    assert summary["skipped_bytes"] > 0
    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0
    assert restored(jdir) == read_tree(src)


def _ignores(pid: int, sig: int) -> bool:
    """Whether process ``pid`` ignores ``sig`` (SigIgn in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(x.split()[1], 16) for x in status.splitlines() if x.startswith("SigIgn:")),
                0)
    return bool(mask >> (sig - 1) & 1)


def _children(pid: int, needle: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line contains ``needle``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_ = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat_.rpartition(")")[2].split()[1]) == pid and needle in cmd:
            out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def group_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 small files (the feeder still at work when the signal lands), made once for
    both signals (make_tree is seeded: the same tree); prep only reads it."""
    src = tmp_path_factory.mktemp("group") / "src"
    make_tree(src, small_files=20_000, random_mb=8, sparse_mb=8)
    return src


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_at_the_terminal_reaches_prep_and_its_helpers(tmp_path: Path, group_tree: Path,
                                                             sig: signal.Signals) -> None:
    """A real Ctrl-C signals the whole process group, as a service manager's SIGTERM does:
    the feeder and the counting walk get it too.  prep alone decides (drain, commit, exit
    130); no helper prints a traceback."""
    src = group_tree
    jdir = tmp_path / "j"
    args = ["prep", "--srcdir", str(src), "--dstdir", "seed/", "--journal-dir", str(jdir),
            "--session-id", "grp-1", "--drive", str(tmp_path / "d.img"), "--drive-size", "128M",
            "--json", *FAST_KDF_ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    # Signal while the feeder is at work: poll for it (waiting for a progress event could
    # let a fast machine's feeder finish its whole walk first).
    # Once it ignores the signal (it sets that first thing): before, the signal would be a
    # race this test does not mean to run.
    deadline = time.monotonic() + 60
    while not any(_ignores(pid, sig) for pid in _children(proc.pid, "pipeline.prep.feed")):
        assert proc.poll() is None and time.monotonic() < deadline, "no feeder started"
        time.sleep(0.005)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    events = [json.loads(x) for x in out.splitlines()]
    if events[-1]["code"] == 0:  # finished before the signal landed: nothing to check
        pytest.fail("prep ended before Ctrl-C; make the tree larger")
    assert proc.returncode == 130 and events[-1]["code"] == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    proc2 = run_cli(*args[:-len(FAST_KDF_ARGS) - 1], "--resume", *FAST_KDF_ARGS)
    assert proc2.returncode == 0, proc2.stderr
    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0
    assert restored(jdir) == read_tree(src)


def test_abort_voids_the_session(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=10, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    assert prep(src, jdir, "abt-1", [tmp_path / "d.img"], "--drive-size", "64M"
                ).returncode == 0
    proc = run_cli("prep", "--journal-dir", str(jdir), "--session-id", "abt-1", "--abort")
    assert proc.returncode == 0 and "void" in proc.stdout
    proc = prep(src, jdir, "abt-1", [], "--resume")
    assert proc.returncode == EXIT_BAD_INPUT and "was aborted" in proc.stderr


def test_preview_estimates_drives(tmp_path: Path, tree) -> None:
    src, files = tree
    proc = run_cli("preview", "--srcdir", str(src), "--drive-size", "32M", "--json",
                   check_code=0)
    est = json.loads(proc.stdout)
    assert est["files"] == len(files)
    assert est["bytes"] == sum(map(len, files.values()))
    assert est["data_bytes"] < est["bytes"]  # the VHD's holes
    assert 2 <= est["drives"] <= 4  # prep needed exactly 3 such drives
    assert not any(p.name.endswith(".img") for p in tmp_path.iterdir())
    # the capacity preview names is the one prep shows for such a drive (its data area,
    # which depends on the drive's size alone: one small file is enough to make the drive)
    jdir, small = tmp_path / "j", tmp_path / "small"
    small.mkdir()
    (small / "f.txt").write_text("one file\n")
    prep(small, jdir, "cap-1", [tmp_path / "a.img"], "--drive-size", "32M")
    [j] = journal.session_journals(jdir, "cap-1")
    assert est["data_area_per_drive"] == j.drive.data_area_size
    j.close()
    assert est["usable_per_drive"] < est["data_area_per_drive"]


def test_a_refused_drive_stops_prep_before_any_format(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=10, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    good, bad = tmp_path / "good.img", src / "inside.img"
    proc = prep(src, jdir, "pre-1", [good, bad], "--drive-size", "64M", "--fill", "parallel")
    assert proc.returncode == 5, proc.stderr
    assert "is inside the staging location" in proc.stderr.strip().splitlines()[-1]
    assert not list(jdir.glob("*.journal"))  # the session never began
    assert not good.exists()  # an image is created only when prep opens that drive


def test_a_drive_never_reached_leaves_no_image_and_no_password_in_a_log(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=10, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    first, spare = tmp_path / "first.img", tmp_path / "spare.img"
    proc = prep(src, jdir, "spare-1", [first, spare], "--drive-size", "64M")
    assert proc.returncode == 0, proc.stderr
    assert first.exists() and not spare.exists()  # sequential fill never opened the spare
    [j] = journal.session_journals(jdir, "spare-1")
    password = j.recovery_password
    j.close()
    assert password not in proc.stdout + proc.stderr  # stdout is a pipe (a log, in real life)
    assert "pipeline keys --journal-dir" in proc.stdout
    # keys finds the journals from a folder above them (diskprep keeps one folder a job)
    keys = run_cli("keys", "--journal-dir", str(tmp_path), check_code=0)
    assert f"recovery password: {password}" in keys.stdout


def test_on_a_terminal_prep_shows_progress_and_the_passwords(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=10, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    args = ["-m", "pipeline", "prep", "--srcdir", str(src), "--dstdir", "seed-test/vdir/",
            "--journal-dir", str(jdir), "--session-id", "tty-1", *FAST_KDF_ARGS,
            "--drive", str(tmp_path / "d.img"), "--drive-size", "64M"]
    child = pexpect.spawn(sys.executable, args, cwd=str(tmp_path), encoding="utf-8",
                          timeout=120, dimensions=(40, 160))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    [j] = journal.session_journals(jdir, "tty-1")
    password = j.recovery_password
    j.close()
    assert f"recovery password: {password}" in child.before
    assert "MB/s" in child.before


def test_journal_export_drive_list(tmp_path: Path) -> None:
    import hashlib

    from pipeline.drive import format
    from pipeline.receive import reader as driveread
    from pipeline.volume import luks2

    src = tmp_path / "src"
    make_tree(src, small_files=20, random_mb=1, sparse_mb=2)
    jdir = tmp_path / "j"
    drive = tmp_path / "d.img"
    assert prep(src, jdir, "exp-1", [drive], "--drive-size", "64M").returncode == 0
    proc = run_cli("journal", "export", "--journal-dir", str(jdir), check_code=0)
    (entry,) = json.loads(proc.stdout)
    j = journals_of(jdir)[0]
    assert entry["driveId"] == j.drive.uuid
    assert entry["bitLockerKey"] == j.recovery_password
    j.close()
    with open(drive, "rb") as f:
        assert entry["driveHeaderHash"] == hashlib.sha256(f.read(luks2.HDR_SIZE)).hexdigest()
    with driveread.unlock_drive(str(drive), entry["bitLockerKey"].encode()) as od:
        tr = format.decode_trailer(od.cipher.read(
            od.drive, format.trailer_offset(od.superblock.data_area_size), format.SECTOR))
        index = od.cipher.read(od.drive, tr.index_offset, tr.index_length)
    assert entry["manifestHash"] == hashlib.sha256(index).hexdigest()
    assert entry["manifestFile"] == f"/index@{tr.index_offset}+{tr.index_length}"


def test_one_operator_passphrase_opens_every_drive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, small_files=10, random_mb=3, sparse_mb=2)
    jdir = tmp_path / "j"
    op = tmp_path / "operator.pass"
    op.write_text("correct horse battery staple\n")
    drives = [tmp_path / "a.img", tmp_path / "b.img"]
    assert prep(src, jdir, "op-1", drives, "--drive-size", "64M", "--fill", "parallel",
                "--passphrase-file", str(op)).returncode == 0
    for d in drives:
        proc = run_cli("drive", "unlock", str(d), "--passphrase-file", str(op), check_code=0)
        assert "passphrase opens keyslot 1" in proc.stdout
        info = json.loads(run_cli("drive", "info", str(d), "--json", check_code=0).stdout)
        assert [k["id"] for k in info["keyslots"]] == [0, 1]
        assert "correct horse" not in json.dumps(info)
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("incorrect horse\n")
    proc = run_cli("drive", "unlock", str(drives[0]), "--passphrase-file", str(wrong))
    assert proc.returncode == EXIT_BAD_INPUT
    assert "no keyslot opens with this passphrase" in proc.stderr
