"""The importer under crashes and damage: never old bytes called "ok", damage always named.

Issue 15's findings, each reproduced as an outsider would: a file rewritten on the
same drive by ``prep --resume`` (its staging copy changed) imported from a log
scan; a drive that cannot vouch for completeness; another drive at the journal's
path; a truncated image; a damaged superblock; a stale cell in a partial blob.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from pipeline import journal
from pipeline.drive.format import BlobType
from pipeline.errors import EXIT_INCOMPLETE, EXIT_INTEGRITY, EXIT_REFUSED
from pipeline.storage.local import LocalStorage
from pipeline.volume import luks2

from .conftest import FAST_KDF_ARGS, ROOT, run_cli
from .test_import import copy_log, local_blobs, prep

MiB = 1 << 20


def _prep_cmd(src: Path, jdir: Path, session: str, drive: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "prep", "--srcdir", str(src), "--dstdir",
            "seed-test/vdir/", "--journal-dir", str(jdir), "--session-id", session,
            "--drive", str(drive), "--drive-size", "96M", *FAST_KDF_ARGS, *extra]


def _journal_state(jdir: Path) -> tuple[dict[str, int], str, int, int]:
    """(extents committed per path, drive state, index offset, data offset of the log end)."""
    (j,) = journal.session_journals(jdir)
    try:
        names = {f.file_id: f.path for f in j.files()}
        count: dict[str, int] = {}
        for e in j.extents():
            count[names[e.file_id]] = count.get(names[e.file_id], 0) + 1
        return count, j.drive.state, j.drive.index_offset, j.drive.log_offset
    finally:
        j.close()


def _password_file(jdir: Path, out: Path) -> Path:
    (j,) = journal.session_journals(jdir)
    out.write_text(j.recovery_password + "\n")
    j.close()
    return out


def _import(tmp_path: Path, drive: Path, *secret: str, name: str = "account"
            ) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """`pipeline import` of one drive into a fresh local account; copy logs in tmp/logs."""
    account, logs = tmp_path / name, tmp_path / "logs"
    account.mkdir()
    logs.mkdir(exist_ok=True)
    proc = run_cli("import", "--drive", str(drive), "--to", str(account), *secret,
                   "--log-dir", str(logs))
    return proc, account, logs


def _flip(path: Path, offset: int, n: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _crashed_after_commit(src: Path, jdir: Path, drive: Path, session: str,
                          wanted: str, extents: int) -> None:
    """Kill prep (SIGKILL, after a journal commit) once ``wanted`` is wholly committed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n in range(1, 40):
        for p in [*jdir.glob("*"), drive]:
            p.unlink(missing_ok=True)
        run = subprocess.run(_prep_cmd(src, jdir, session, drive, "--level", "19",
                                       "--threads", "1"),
                             env={**env, "PIPELINE_CRASH_AT": f"after_commit:{n}"},
                             capture_output=True, timeout=300)
        assert run.returncode == -9, run.stderr.decode()
        count, state, _, _ = _journal_state(jdir)
        if count.get(wanted) == extents and state == "open":
            return
    raise AssertionError(f"never killed with {wanted} committed")


def test_file_rewritten_on_resume_imports_new_content_from_a_log_scan(tmp_path: Path) -> None:
    """Issue 15 #1: the superseded copy's bytes must never reach the blob."""
    src, jdir, drive = tmp_path / "src", tmp_path / "j", tmp_path / "d.img"
    rng = random.Random(15)
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    old = rng.randbytes(4 * MiB)
    (src / "a" / "F.bin").write_bytes(old)
    (src / "b" / "big.bin").write_bytes(rng.randbytes(24 * MiB))
    _crashed_after_commit(src, jdir, drive, "rewrite-1", "a/F.bin", 4)

    # The file changes in staging: its first MiB becomes zeros (a ZERO extent now).
    with open(src / "a" / "F.bin", "r+b") as f:
        f.write(bytes(MiB))
    new = (src / "a" / "F.bin").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(_prep_cmd(src, jdir, "rewrite-1", drive, "--resume"), env=env,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    _, state, index_offset, _ = _journal_state(jdir)
    assert state == "closed"
    _flip(drive, luks2.DATA_OFFSET + index_offset + 200)  # the closing index is damaged

    pw = _password_file(jdir, tmp_path / "pw")
    proc, account, logs = _import(tmp_path, drive, "--recovery-password-file", str(pw))
    # The drive cannot vouch for completeness without its index: said, with its own code.
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr
    assert "no intact closing index" in proc.stderr
    blobs = local_blobs(account, "seed-test")
    assert blobs["a/F.bin"] == new != old
    assert blobs["b/big.bin"] == (src / "b" / "big.bin").read_bytes()
    log = copy_log(logs, "rewrite-1", 1)
    assert log[0]["records_from"] == "log scan"
    assert any(x["type"] == "incomplete" for x in log)
    statuses = [(x["status"], x["reason"]) for x in log
                if x["type"] == "blob" and x["blob"] == "vdir/a/F.bin"]
    assert any(s == "unvouched" for s, _ in statuses)  # no index: not the drive's word
    assert any(s == "skipped" and "older copy" in r for s, r in statuses)

    # With the journal the same drive imports the same bytes, and vouches for itself.
    proc, account2, _ = _import(tmp_path, drive, "--journal-dir", str(jdir), name="account2")
    assert proc.returncode == 0, proc.stderr
    assert local_blobs(account2, "seed-test")["a/F.bin"] == new


def test_never_closed_drive_without_journal_says_it_cannot_vouch(tmp_path: Path) -> None:
    """Issue 15 #4: a drive prep never closed imports what it holds, exit 8, named."""
    src, jdir, drive = tmp_path / "src", tmp_path / "j", tmp_path / "d.img"
    rng = random.Random(4)
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(3 * MiB))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(_prep_cmd(src, jdir, "open-1", drive, "--level", "19",
                                   "--threads", "1"),
                         env={**env, "PIPELINE_CRASH_AT": "after_commit:1"},
                         capture_output=True, timeout=300)
    assert run.returncode == -9
    count, state, _, _ = _journal_state(jdir)
    assert state == "open"
    pw = _password_file(jdir, tmp_path / "pw")
    proc, account, logs = _import(tmp_path, drive, "--recovery-password-file", str(pw))
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr
    assert str(drive) in proc.stderr and "cannot vouch" in proc.stderr
    blobs = local_blobs(account, "seed-test")
    for name, data in blobs.items():  # whatever it holds is exact
        assert data == (src / name).read_bytes()
    whole = {p for p, n in count.items() if n == 3}
    assert set(blobs) == whole


def test_another_volume_at_the_journals_path_is_named(tmp_path: Path) -> None:
    """Issue 15 #8: not "no keyslot opens" but "another drive is at that path"."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.bin").write_bytes(os.urandom(MiB))
    drive, other = tmp_path / "d.img", tmp_path / "o.img"
    prep(src, tmp_path / "j", "vol-1", [drive], "40M")
    prep(src, tmp_path / "j2", "vol-2", [other], "40M")
    drive.unlink()
    other.rename(drive)
    proc = run_cli("verify", "--journal-dir", str(tmp_path / "j"))
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert "another drive is at that path" in proc.stderr
    assert "no keyslot opens" not in proc.stderr


def test_damaged_superblock_names_the_drive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.bin").write_bytes(os.urandom(MiB))
    drive = tmp_path / "d.img"
    prep(src, tmp_path / "j", "sb-1", [drive], "40M")
    _flip(drive, luks2.DATA_OFFSET + 100, 8)
    proc = run_cli("verify", "--journal-dir", str(tmp_path / "j"))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert f"({drive}) damaged, every file intact: superblock:" in proc.stderr
    # With the journal the import loses nothing: the journal's record stands in, named.
    account = tmp_path / "acc"
    account.mkdir()
    proc = run_cli("import", "--drive", str(drive), "--to", str(account), "--journal-dir",
                   str(tmp_path / "j"), "--log-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "superblock: checksum mismatch; the journal's record of it stands in" in proc.stderr
    assert local_blobs(account, "seed-test") == {"x.bin": (src / "x.bin").read_bytes()}
    pw = _password_file(tmp_path / "j", tmp_path / "pw")
    proc = run_cli("import", "--drive", str(drive), "--to", str(tmp_path),
                   "--recovery-password-file", str(pw), "--log-dir", str(tmp_path))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert f"{drive}: superblock" in proc.stderr


def test_truncated_image_imports_what_is_there_and_names_the_rest(tmp_path: Path) -> None:
    """Issue 15 #8: a cut image is not refused whole."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(8)
    for i in range(8):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(2 * MiB + 1000 * i))
    drive, jdir = tmp_path / "d.img", tmp_path / "j"
    prep(src, jdir, "cut-1", [drive], "64M")
    _, _, _, log_end = _journal_state(jdir)
    cut = luks2.DATA_OFFSET + log_end // 2
    os.truncate(drive, cut - cut % 4096)
    proc, account, logs = _import(tmp_path, drive, "--journal-dir", str(jdir))
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "truncated" in proc.stderr
    blobs = local_blobs(account, "seed-test")
    assert blobs and len(blobs) < 8
    for name, data in blobs.items():
        assert data == (src / name).read_bytes()
    log = copy_log(logs, "cut-1", 1)
    missing = {x["blob"] for x in log if x["type"] == "blob" and x["status"] == "missing"}
    assert missing == {f"vdir/f{i}.bin" for i in range(8)} - {f"vdir/{n}" for n in blobs}


def test_commit_clears_cells_an_older_copy_left(tmp_path: Path) -> None:
    """A partial blob may hold an older copy's bytes in a cell the new copy stores as zeros
    (the older copy came from a drive imported before): commit must not keep them."""
    store = LocalStorage(tmp_path)
    store.ensure_container("cont")
    store.write_part("cont", "b", BlobType.BLOCK, 3 * MiB, MiB, b"\xaa" * MiB)
    store.write_part("cont", "b", BlobType.BLOCK, 3 * MiB, 0, b"\x01" * MiB)
    store.write_part("cont", "b", BlobType.BLOCK, 3 * MiB, 2 * MiB, b"\x02" * MiB)
    store.commit("cont", "b", BlobType.BLOCK, 3 * MiB, [MiB])
    assert store.read("cont", "b", 0, 3 * MiB) == b"\x01" * MiB + bytes(MiB) + b"\x02" * MiB


def test_importer_state_is_kept_out_of_the_customers_container(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.bin").write_bytes(os.urandom(MiB))
    drive, jdir = tmp_path / "d.img", tmp_path / "j"
    prep(src, jdir, "state-1", [drive], "40M")
    proc, account, logs = _import(tmp_path, drive, "--journal-dir", str(jdir))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (account / "seed-test").rglob("*") if p.is_file()) == ["x.bin"]
    marker = json.loads((account / "waimportexport" / "state-1" / "drive-01.json").read_text())
    assert marker["state"] == "done"


def _segments_from_watermark(drive: Path, jdir: Path) -> int:
    """How many segments a log scan would read past the journal's watermark."""
    from pipeline.drive import format
    from pipeline.receive import reader as driveread

    (j,) = journal.session_journals(jdir)
    try:
        od = driveread.unlock_drive(str(drive), j.recovery_password.encode())
        offset, seq, n = j.drive.log_offset, j.drive.log_seq, 0
    finally:
        j.close()
    with od:
        while True:
            try:
                head = format.decode_segment_header(
                    od.cipher.read(od.drive, offset, format.SECTOR), offset, seq)
            except format.CorruptRecord:
                return n
            n, offset, seq = n + 1, head.end, seq + 1


def test_resume_wipes_the_uncommitted_tail_before_appending(tmp_path: Path) -> None:
    """Segments a killed run synced but never committed must not be readable as the log's
    continuation once the resumed run appends (a new segment could end where one starts)."""
    src, jdir, drive = tmp_path / "src", tmp_path / "j", tmp_path / "d.img"
    rng = random.Random(9)
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(6 * MiB))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(_prep_cmd(src, jdir, "tail-1", drive, "--threads", "1"),
                         env={**env, "PIPELINE_CRASH_AT": "after_sync:1"},
                         capture_output=True, timeout=300)
    assert run.returncode == -9, run.stderr.decode()
    assert _segments_from_watermark(drive, jdir) >= 1  # synced, not committed: a stale tail
    run = subprocess.run(_prep_cmd(src, jdir, "tail-1", drive, "--resume"),
                         env={**env, "PIPELINE_CRASH_AT": "after_reopen:1"},
                         capture_output=True, timeout=300)
    assert run.returncode == -9, run.stderr.decode()
    assert _segments_from_watermark(drive, jdir) == 0
    run = subprocess.run(_prep_cmd(src, jdir, "tail-1", drive, "--resume"), env=env,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert run_cli("verify", "--journal-dir", str(jdir)).returncode == 0


def test_a_full_drives_index_is_written_again_when_resume_supersedes_its_files(
        tmp_path: Path) -> None:
    """Drive 1 fills and closes listing F; F changes in staging; --resume writes F again on
    drive 2.  Drive 1 alone (no journal) must no longer offer the old F as complete."""
    src, jdir = tmp_path / "src", tmp_path / "j"
    rng = random.Random(99)
    src.mkdir()
    (src / "F.bin").write_bytes(rng.randbytes(3 * MiB))
    (src / "G.bin").write_bytes(rng.randbytes(30 * MiB))
    d1, d2 = tmp_path / "d1.img", tmp_path / "d2.img"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "pipeline", "prep", "--srcdir", str(src), "--dstdir",
            "seed-test/vdir/", "--journal-dir", str(jdir), "--session-id", "stale-1",
            "--drive-size", "40M", *FAST_KDF_ARGS, "--threads", "1"]
    run = subprocess.run([*base, "--drive", str(d1)], env=env, capture_output=True,
                         timeout=300)
    assert run.returncode == 3, run.stderr.decode()  # drive 1 full: out of drives
    (j1,) = journal.session_journals(jdir)
    assert j1.drive.state == "full" and "F.bin" in {f.path for f in j1.files()}
    j1.close()
    with open(src / "F.bin", "r+b") as f:  # F changes: resume supersedes the copy on drive 1
        f.write(bytes(MiB))
    run = subprocess.run([*base, "--resume", "--drive", str(d2)], env=env,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    j1 = journal.session_journals(jdir)[0]
    assert not j1.drive.index_stale
    pw = tmp_path / "pw1"
    pw.write_text(j1.recovery_password)
    j1.close()
    proc, account, logs = _import(tmp_path, d1, "--recovery-password-file", str(pw))
    assert proc.returncode == 0, proc.stderr
    assert "F.bin" not in local_blobs(account, "seed-test")  # the old copy is not offered
    assert "vdir/F.bin" not in {x.get("blob") for x in copy_log(logs, "stale-1", 1)}


def test_commit_clears_runs_of_cells_and_a_short_last_one(tmp_path: Path) -> None:
    """Adjacent zero cells are cleared as one run, the file's short last cell too."""
    store = LocalStorage(tmp_path)
    store.ensure_container("cont")
    size = 3 * MiB + 512
    for off in (0, MiB, 2 * MiB, 3 * MiB):
        store.write_part("cont", "b", BlobType.BLOCK, size, off, b"\xee" * min(MiB, size - off))
    store.write_part("cont", "b", BlobType.BLOCK, size, 2 * MiB, b"\x02" * MiB)
    store.commit("cont", "b", BlobType.BLOCK, size, [3 * MiB, 0, MiB])
    assert store.read("cont", "b", 0, size) == bytes(2 * MiB) + b"\x02" * MiB + bytes(512)
