"""A full local filesystem, for real (small tmpfs mounts): the journal directory, a drive
image's host filesystem, the copy-log directory and a local account.

Each time: one line naming the filesystem, the documented exit code, nothing recorded
as committed that is not on the drive, and the run after space is freed completes
(prep with --resume, import by running it again) with byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import credentials, journal
from pipeline.drive import codec, format
from pipeline.errors import EXIT_NO_SPACE, EXIT_STORAGE, NoSpace
from pipeline.receive import reader as driveread

from .conftest import FAST_KDF_ARGS, ROOT, run_cli
from .diskfull import fill, grow, small_tmpfs
from .drivedata import read_tree, restore
from .test_crash_resume import committed_digests

DSTDIR = "seed-test/vdir/"
SMALL_FILES = 2000


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Two incompressible files past one commit's worth (32 MiB), then many small files:
    the journal grows with every file, the drive with every byte."""
    src = tmp_path_factory.mktemp("full") / "src"
    rng = random.Random(15)
    (src / "a_big").mkdir(parents=True)
    for i in (1, 2):
        (src / "a_big" / f"r{i}.bin").write_bytes(rng.randbytes(17 << 20))
    for i in range(SMALL_FILES):
        d = src / "b_small" / f"d{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file {i:05d}.txt").write_bytes(rng.randbytes(rng.randrange(1, 90)))
    return src, read_tree(src)


def prep_cmd(src: Path, jdir: Path, session: str, drive: Path) -> list[str]:
    return ["prep", "--srcdir", str(src), "--dstdir", DSTDIR, "--journal-dir", str(jdir),
            "--session-id", session, "--drive-size", "128M", "--drive", str(drive),
            *FAST_KDF_ARGS]


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The run ended with ``code`` and said so in exactly one line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def check_committed(jdir: Path) -> dict[str, int]:
    """Everything the journals record as committed is on the drive and reads back
    (decrypts, decompresses, matches its xxh3); returns each drive's watermark."""
    marks = {}
    for j in journal.session_journals(jdir):
        info = j.drive
        assert all(off + length <= info.log_offset for _, off, length in j.segments())
        with driveread.unlock_drive(info.path, j.recovery_password.encode()) as od:
            for e in j.extents(include_superseded=True):
                if e.codec is format.Codec.ZERO:
                    continue
                start = e.location - e.location % format.SECTOR
                end = format.align_up(e.location + e.stored_len)
                plain = od.cipher.read(od.drive, start, end - start)
                codec.unpack(e.codec, plain[e.location - start:][:e.stored_len], e.raw_len,
                             e.xxh3)
        marks[info.path] = info.log_offset
        j.close()
    return marks


def check_done(jdir: Path, files: dict[str, bytes]) -> None:
    """verify passes and every file comes back from the drives byte for byte."""
    run_cli("verify", "--journal-dir", str(jdir), check_code=0)
    pairs = []
    for j in journal.session_journals(jdir):
        assert j.drive.state in ("closed", "full"), j.drive
        pairs.append((j.drive.path, j.recovery_password))
        j.close()
    assert restore(pairs) == files


def stopped_at(point: str, args: list[str]) -> subprocess.Popen[str]:
    """Start the CLI so that it stops itself (SIGSTOP) at fault point ``point``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_CRASH_AT": f"{point}:STOP"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "T":
            return proc
        if proc.poll() is not None:
            pytest.fail(f"ended before {point}: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"never reached {point}")


def go_on(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --------------------------------------------------------------------------
# prep: the journal directory


def test_journal_outgrows_its_filesystem_then_resume(tmp_path: Path, tree) -> None:
    src, files = tree
    drive = tmp_path / "d1.img"
    with small_tmpfs(tmp_path / "j", "256k") as jdir:
        cmd = prep_cmd(src, jdir, "full-1", drive)
        line = one_line(run_cli(*cmd), EXIT_NO_SPACE)
        assert f"no space left on the filesystem mounted at {jdir}" in line, line
        assert f"prep --resume --journal-dir {jdir} --session-id full-1" in line, line
        check_committed(jdir)
        grow(jdir, "16m")
        run_cli(*cmd, "--resume", check_code=0)
        check_done(jdir, files)


def test_journal_full_at_a_commit_keeps_its_watermark(tmp_path: Path, tree) -> None:
    """Full between the drive's fdatasync and the journal commit of a later segment:
    the commit does not happen, the earlier ones stay, resume rewrites the rest."""
    src, files = tree
    with small_tmpfs(tmp_path / "j", "16m") as jdir:
        cmd = prep_cmd(src, jdir, "full-2", tmp_path / "d1.img")
        proc = stopped_at("after_sync:2", cmd)
        before = committed_digests(jdir)  # the drive is locked: raw bytes up to the watermark
        assert [mark for mark, _ in before.values()][0] > format.SECTOR  # a commit is in
        filler = fill(jdir)
        line = one_line(go_on(proc), EXIT_NO_SPACE)
        assert f"no space left on the filesystem mounted at {jdir}" in line, line
        assert committed_digests(jdir) == before
        check_committed(jdir)
        filler.unlink()
        run_cli(*cmd, "--resume", check_code=0)
        check_done(jdir, files)


def test_journal_full_when_closing_the_drive(tmp_path: Path, tree) -> None:
    """Index and trailer written, the journal cannot say so: the drive stays open in
    the journal, and resume closes it again."""
    src, files = tree
    with small_tmpfs(tmp_path / "j", "16m") as jdir:
        cmd = prep_cmd(src, jdir, "full-3", tmp_path / "d1.img")
        proc = stopped_at("after_trailer:1", cmd)
        before = committed_digests(jdir)
        filler = fill(jdir)
        line = one_line(go_on(proc), EXIT_NO_SPACE)
        assert f"no space left on the filesystem mounted at {jdir}" in line, line
        assert committed_digests(jdir) == before
        check_committed(jdir)
        (j,) = journal.session_journals(jdir)
        assert j.drive.state == "open"
        j.close()
        again = one_line(run_cli(*cmd, "--resume"), EXIT_NO_SPACE)  # still full: the same
        assert f"no space left on the filesystem mounted at {jdir}" in again, again
        assert committed_digests(jdir) == before
        filler.unlink()
        run_cli(*cmd, "--resume", check_code=0)
        check_done(jdir, files)


def test_journal_directory_full_before_the_first_journal(tmp_path: Path, tree) -> None:
    src, files = tree
    with small_tmpfs(tmp_path / "j", "1m") as jdir:
        cmd = prep_cmd(src, jdir, "full-4", tmp_path / "d1.img")
        filler = fill(jdir)
        line = one_line(run_cli(*cmd), EXIT_NO_SPACE)
        assert f"no space left on the filesystem mounted at {jdir}" in line, line
        assert "run the same command again" in line, line  # no session to resume yet
        assert sorted(p.name for p in jdir.iterdir()) == [".filler"]  # no half journal
        filler.unlink()
        run_cli(*cmd, check_code=0)
        check_done(jdir, files)


# --------------------------------------------------------------------------
# prep: an image file whose host filesystem fills before the drive does


def test_image_drive_on_a_full_filesystem_then_resume(tmp_path: Path, tree) -> None:
    src, files = tree
    jdir = tmp_path / "j"
    with small_tmpfs(tmp_path / "img", "24m") as host:
        cmd = prep_cmd(src, jdir, "full-5", host / "d1.img")  # 128M, sparse
        line = one_line(run_cli(*cmd), EXIT_NO_SPACE)
        assert f"no space left on the filesystem mounted at {host} (writing drive image " \
               f"{host / 'd1.img'})" in line, line
        assert "prep --resume" in line, line
        check_committed(jdir)
        grow(host, "160m")
        run_cli(*cmd, "--resume", check_code=0)
        check_done(jdir, files)


# --------------------------------------------------------------------------
# import: the copy-log directory and a local account


@pytest.fixture(scope="module")
def prepped(tmp_path_factory: pytest.TempPathFactory, tree) -> tuple[Path, Path]:
    src, _ = tree
    base = tmp_path_factory.mktemp("prepped")
    run_cli(*prep_cmd(src, base / "j", "full-imp", base / "d1.img"), check_code=0)
    return base / "j", base / "d1.img"


def imported(account: Path) -> dict[str, bytes]:
    """The blobs the account shows (committed), by path under the virtual directory."""
    top = account / DSTDIR
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def import_cmd(jdir: Path, drive: Path, account: Path, logs: Path) -> list[str]:
    return ["import", "--drive", str(drive), "--journal-dir", str(jdir), "--to", str(account),
            "--log-dir", str(logs)]


def test_import_copy_log_directory_full_then_again(tmp_path: Path, tree, prepped) -> None:
    _, files = tree
    jdir, drive = prepped
    account = tmp_path / "account"
    account.mkdir()
    with small_tmpfs(tmp_path / "logs", "64k") as logs:
        cmd = import_cmd(jdir, drive, account, logs)
        line = one_line(run_cli(*cmd), EXIT_NO_SPACE)
        log = logs / "copylog-full-imp-drive01.jsonl"
        assert line == (f"pipeline import: no space left on the filesystem mounted at {logs} "
                        f"(writing copy log {log}); free space there, then run the same "
                        "command again"), line
        grow(logs, "4m")
        run_cli(*cmd, check_code=0)
        totals = json.loads(log.read_text().splitlines()[-1])
        assert (totals["result"], totals["ok"]) == ("done", len(files)), totals
    assert imported(account) == files


def test_import_into_a_full_local_account_then_again(tmp_path: Path, tree, prepped) -> None:
    _, files = tree
    jdir, drive = prepped
    logs = tmp_path / "logs"
    logs.mkdir()
    with small_tmpfs(tmp_path / "account", "16m") as account:
        cmd = import_cmd(jdir, drive, account, logs)
        line = one_line(run_cli(*cmd), EXIT_STORAGE)
        assert f"no space left on the filesystem mounted at {account}" in line, line
        shown = imported(account)
        assert all(files[name] == data for name, data in shown.items())  # none half there
        grow(account, "128m")
        run_cli(*cmd, check_code=0)
        assert imported(account) == files


def test_a_secret_file_on_a_full_filesystem_is_not_left_half_written(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "keys", "64k") as keys:
        fill(keys)
        with pytest.raises(NoSpace, match=f"no space left on the filesystem mounted at {keys}"):
            credentials.write_private(keys / "recovery.txt", "123456-" * 8 + "\n")
        assert not (keys / "recovery.txt").exists()


def test_every_journal_write_on_a_full_filesystem_changes_nothing(tmp_path: Path) -> None:
    """commit, set_state, supersede, set_skipped: NoSpace, the journal and its copy of the
    drive row as they were (no 'cannot rollback'), and each works once there is room."""
    session = journal.SessionInfo("s", "/src", "c/v/", 1, 1, "sequential")
    drive = journal.DriveInfo(1, "/dev/null", "u", 1 << 30, 1 << 30, state="open")

    def segment(first: int, seq: int, offset: int) -> tuple[list[journal.SyncedSegment], int, int]:
        files = [format.FileEntry(i, f"f{i}" + "x" * 200, f"v/f{i}", 10, i, 0o100644)
                 for i in range(first, first + 500)]
        exts = [(format.Extent(f.file_id, 0, 10, format.Codec.RAW, 10, bytes(16), 0),
                 b"y" * 10) for f in files]
        blob, records, encoded = format.layout_data_segment(files, exts, seq, offset)
        header = format.decode_segment_header(blob, offset, seq)
        return [(header, records, encoded)], header.end, seq + 1

    with small_tmpfs(tmp_path / "j", "1m") as jdir:
        jrn = journal.Journal.create(jdir / "j.journal", session, drive, "pw")
        jrn.commit(*segment(1, 0, format.SECTOR))
        before = (journal.DriveInfo(**vars(jrn.drive)), jrn.counts())
        second = segment(1000, 1, jrn.drive.log_offset)
        writes = [lambda j: j.commit(*second),
                  lambda j: j.set_state("closed", index_offset=1 << 20, index_length=4096),
                  lambda j: j.supersede(range(1, 400)),
                  lambda j: j.set_skipped([("bad\\name", "a backslash")] * 2000)]
        filler = fill(jdir)
        for write in writes:
            with pytest.raises(NoSpace, match=f"mounted at {jdir} .writing journal"):
                write(jrn)
            assert (jrn.drive, jrn.counts()) == before
        jrn.close()
        (jrn,) = journal.session_journals(jdir)
        assert (jrn.drive, jrn.counts()) == before
        filler.unlink()
        for write in writes:
            write(jrn)
        assert (jrn.drive.state, jrn.drive.log_offset) == ("closed", second[1])
        assert len(jrn.skipped()) == 2000
        jrn.close()
