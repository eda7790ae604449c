"""The receiving side: import drives into a storage account, copy logs, repair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, EXIT_REFUSED, IntegrityError
from pipeline.receive import importer
from pipeline.volume import drives, luks2

from .conftest import FAST_ARGON, FAST_KDF_ARGS, run_cli
from .drivedata import make_tree, read_tree

MiB = 1 << 20


def prep(src: Path, jdir: Path, session: str, drive_paths: list[Path], size: str,
         *extra: str, dstdir: str = "seed-test/vdir/") -> None:
    args = ["prep", "--srcdir", str(src), "--dstdir", dstdir, "--journal-dir", str(jdir),
            "--session-id", session, "--drive-size", size, *FAST_KDF_ARGS, *extra]
    for d in drive_paths:
        args += ["--drive", str(d)]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr


def import_(drive: Path, to: str, *secret: str, log_dir: Path):
    log_dir.mkdir(exist_ok=True)
    return run_cli("import", "--drive", str(drive), "--to", to, *secret, "--log-dir",
                   str(log_dir), "--json")


def local_blobs(root: Path, container: str, vdir: str = "vdir/") -> dict[str, bytes]:
    base = root / container / vdir
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def copy_log(log_dir: Path, session: str, seq: int) -> list[dict]:
    path = log_dir / f"copylog-{session}-drive{seq:02d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def three_drives(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("imp")
    src = base / "src"
    make_tree(src, small_files=1500, random_mb=30, sparse_mb=32)
    jdir = base / "j"
    paths = [base / f"d{i}.img" for i in (1, 2, 3)]
    prep(src, jdir, "imp-1", paths, "32M")
    return src, jdir, paths


def test_import_three_drives_in_any_order_local(tmp_path: Path, three_drives) -> None:
    src, jdir, paths = three_drives
    files = read_tree(src)
    account = tmp_path / "account"
    account.mkdir()
    logs = tmp_path / "logs"
    spanning_seen = False
    for n, seq in enumerate((3, 1, 2)):
        proc = import_(paths[seq - 1], str(account), "--journal-dir", str(jdir), log_dir=logs)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert events[0]["type"] == "start" and events[-1]["type"] == "summary"
        assert any(e["type"] == "progress" for e in events)
        [out] = [e for e in events if e["type"] == "drive"]
        summary = events[-1]
        assert out["seq"] == seq and out["corrupt"] == out["missing"] == 0
        # the figures are the drive's: every byte of its extents dealt with, each file once
        with journal.Journal.open(next(jdir.glob(f"*drive{seq:02d}*"))) as j:
            raw = sum(e.raw_len for e in j.extents())
            nfiles = len(list(j.files()))
        assert summary["bytes_read"] == summary["bytes_total"] == raw
        assert summary["files_done"] == summary["files_total"] == nfiles
        assert summary["elapsed_s"] > 0 and summary["bytes_per_s"] > 0
        got = local_blobs(account, "seed-test")
        for name, data in got.items():
            assert data == files[name], name  # whatever is visible is complete and right
        if n < 2:
            waiting = [x for x in copy_log(logs, "imp-1", seq)
                       if x.get("status") == "skipped"]
            spanning_seen |= any("continues on another drive" in x["reason"] for x in waiting)
            assert len(got) < len(files)
    assert spanning_seen  # at least one file spans drives and waited for its last drive
    assert local_blobs(account, "seed-test") == files
    # Zero extents are not written: the VHD's holes stay holes in the local account.
    vhd = account / "seed-test" / "vdir" / "images" / "disk 0.vhd"
    assert vhd.stat().st_blocks * 512 < vhd.stat().st_size / 2
    # Idempotent: a second import of a drive changes nothing and says so.
    before = {p: p.stat().st_mtime_ns for p in account.rglob("*") if p.is_file()}
    proc = run_cli("import", "--drive", str(paths[0]), "--to", str(account),
                   "--journal-dir", str(jdir), "--log-dir", str(logs))
    assert proc.returncode == 0 and "already imported; nothing changed" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in account.rglob("*") if p.is_file()}
    state = importer.STATE_CONTAINER  # the importer's own state: markers, copy logs
    assert {p: t for p, t in after.items() if state not in p.parts} == {
        p: t for p, t in before.items() if state not in p.parts}
    totals = copy_log(logs, "imp-1", 1)[-1]
    assert totals["type"] == "totals" and totals["result"] == "already imported"


def test_import_without_journal_from_the_drive_alone(tmp_path: Path, three_drives) -> None:
    src, jdir, paths = three_drives
    files = read_tree(src)
    account = tmp_path / "account"
    account.mkdir()
    passwords = {}
    for j in journal.session_journals(jdir):
        passwords[j.drive.seq] = j.recovery_password
        j.close()
    lost = tmp_path / "journal-lost"  # the journals are gone: only drives + passwords
    for seq in (2, 3, 1):
        pw = tmp_path / f"pw{seq}"
        pw.write_text(passwords[seq] + "\n")
        proc = import_(paths[seq - 1], f"file://{account}", "--recovery-password-file",
                       str(pw), log_dir=lost)
        assert proc.returncode == 0, proc.stderr
    assert local_blobs(account, "seed-test") == files


def test_damaged_drive_then_repair(tmp_path: Path, three_drives) -> None:
    src, jdir0, paths0 = three_drives
    files = read_tree(src)
    # Work on copies: the module's drives stay intact for the other tests.
    jdir = tmp_path / "j"
    shutil.copytree(jdir0, jdir)
    paths = []
    for p in paths0:
        shutil.copy(p, tmp_path / p.name)
        paths.append(tmp_path / p.name)
    journals = journal.session_journals(jdir)
    for j in journals:  # the journal records where the drives are
        j.drive.path = str(tmp_path / Path(j.drive.path).name)
        j._save_drive()
        j.close()
    # Damage two extents of two different files on drive 1.
    j1 = journal.session_journals(jdir)[0]
    names = {f.file_id: f.blob for f in j1.files()}
    victims = {}
    for e in j1.extents():
        if e.stored_len > 50_000 and names[e.file_id] not in victims.values():
            victims[e.location] = names[e.file_id]
        if len(victims) == 2:
            break
    j1.close()
    with open(paths[0], "r+b") as f:
        for loc in victims:
            f.seek(luks2.DATA_OFFSET + loc + 777)
            b = f.read(1)
            f.seek(luks2.DATA_OFFSET + loc + 777)
            f.write(bytes([b[0] ^ 1]))
    account = tmp_path / "account"
    account.mkdir()
    logs = tmp_path / "logs"
    codes = [import_(p, str(account), "--journal-dir", str(jdir), log_dir=logs).returncode
             for p in paths]
    assert codes[0] == EXIT_INTEGRITY and codes[1:] == [0, 0]
    corrupt = {x["blob"] for x in copy_log(logs, "imp-1", 1) if x.get("status") == "corrupt"}
    assert corrupt == {"vdir/" + v for v in victims.values()} or corrupt == set(
        victims.values())
    got = local_blobs(account, "seed-test")
    assert set(files) - set(got) == {b.removeprefix("vdir/") for b in corrupt}
    for name, data in got.items():
        assert data == files[name]
    proc = run_cli("repair", "--journal-dir", str(jdir), "--srcdir", str(src), "--to",
                   str(account))
    assert proc.returncode == 0, proc.stderr
    resent = [line for line in proc.stdout.splitlines() if line.startswith("re-sent:")]
    assert len(resent) == 2 and all(any(b in line for b in corrupt) for line in resent)
    again = run_cli("repair", "--journal-dir", str(jdir), "--srcdir", str(src), "--to",
                    str(account), "--dry-run")
    assert again.returncode == 0 and "re-sent 0" in again.stdout
    assert local_blobs(account, "seed-test") == files


def test_import_errors(tmp_path: Path, three_drives) -> None:
    src, jdir, paths = three_drives
    account = tmp_path / "account"
    account.mkdir()
    logs = tmp_path / "logs"

    def one_line(proc) -> str:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    wrong = tmp_path / "wrong"
    wrong.write_text(luks2.new_recovery_password())
    proc = import_(paths[0], str(account), "--recovery-password-file", str(wrong),
                   log_dir=logs)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "no keyslot opens with this recovery password" in one_line(proc)

    other = tmp_path / "other-src"
    make_tree(other, small_files=5, random_mb=1, sparse_mb=1)
    prep(other, tmp_path / "other-j", "other-1", [tmp_path / "o.img"], "40M")
    proc = import_(tmp_path / "o.img", str(account), "--journal-dir", str(jdir), log_dir=logs)
    assert proc.returncode == EXIT_REFUSED
    assert "belongs to no journal" in one_line(proc)

    # A drive whose container name breaks Azure's rules: prep never writes one, so the
    # superblock's decoder calls it damage (exit 4), naming the drive and the container.
    bad = tmp_path / "bad.img"
    with drives.prepare_target(bad, size=40 * MiB) as d:
        drives.format_drive(d, [(b"pw-for-test", FAST_ARGON)],
                            drives.Identity("bad-1", "", 1, "Bad_Container/x/"))
    keyf = tmp_path / "k"
    keyf.write_bytes(b"pw-for-test")
    proc = import_(bad, str(account), "--key-file", str(keyf), log_dir=logs)
    assert proc.returncode == EXIT_INTEGRITY
    assert "Bad_Container" in one_line(proc) and str(bad) in one_line(proc)

    proc = import_(paths[0], "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                   "AccountKey=c2VjcmV0;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
                   "--journal-dir", str(jdir), log_dir=logs)
    assert proc.returncode == 6
    line = one_line(proc)
    assert "127.0.0.1:9" in line and "c2VjcmV0" not in line
    # Nothing half-written is visible as complete anywhere.
    assert not (account / "seed-test").exists() or local_blobs(account, "seed-test") == {}


def test_import_into_azurite_with_page_blobs(tmp_path: Path, azurite: str) -> None:
    """Block and page blobs in Azure's own emulator, checked by downloading them."""
    from azure.storage.blob import BlobServiceClient

    src = tmp_path / "src"
    (src / "vm").mkdir(parents=True)
    with open(src / "vm" / "disk 1.vhd", "wb") as f:  # VHD-like: sparse, 512-aligned
        f.truncate(40 * MiB)
        for mb in (0, 9, 31):
            f.seek(mb * MiB + 4096)
            f.write(b"\xa5" * 700_000)
        f.seek(40 * MiB - 512)
        f.write(b"conectix" + bytes(504))
    (src / "vm" / "nvram.bin").write_bytes(bytes(range(256)) * 2 * 40)  # 20 KiB
    (src / "vm" / "empty.bin").write_bytes(b"")
    jdir = tmp_path / "j"
    paths = [tmp_path / "p1.img", tmp_path / "p2.img"]
    prep(src, jdir, "page-1", paths, "32M", "--blob-type", "page", "--fill", "parallel",
         dstdir="seedpages/vm-backup/")
    logs = tmp_path / "logs"
    for p in reversed(paths):
        proc = import_(p, azurite, "--journal-dir", str(jdir), log_dir=logs)
        assert proc.returncode == 0, proc.stderr
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.get_container_client("seedpages")
    names = {b.name: b for b in container.list_blobs(name_starts_with="vm-backup/")}
    assert set(names) == {"vm-backup/vm/disk 1.vhd", "vm-backup/vm/nvram.bin",
                          "vm-backup/vm/empty.bin"}
    for name, blob in names.items():
        assert blob.blob_type == "PageBlob", name
        data = container.download_blob(name).readall()
        assert data == (src / name.removeprefix("vm-backup/")).read_bytes(), name
    # Holes were not written: the page ranges cover only the data.
    ranges = container.get_blob_client("vm-backup/vm/disk 1.vhd").list_page_ranges()
    assert sum(r.end - r.start + 1 for r in ranges if not r.cleared) < 8 * MiB


def test_import_block_blobs_into_azurite(tmp_path: Path, azurite: str) -> None:
    """Block blobs in Azure's own emulator, from two drives imported last first.

    A small tree of its own (the module's is for the local account: 1,500 small
    files made this test take over a minute): one incompressible file in parts on
    both drives, a sparse image (its zero cells staged as zero blocks), empty,
    small and odd-named files.
    """
    from azure.storage.blob import BlobServiceClient

    src, jdir = tmp_path / "src", tmp_path / "j"
    make_tree(src, small_files=40, random_mb=20, sparse_mb=8)
    paths = [tmp_path / "b1.img", tmp_path / "b2.img"]
    prep(src, jdir, "blk-1", paths, "32M")
    files = read_tree(src)
    logs = tmp_path / "logs"
    container = BlobServiceClient.from_connection_string(azurite).get_container_client(
        "seed-test")
    for n, seq in enumerate((2, 1)):
        proc = import_(paths[seq - 1], azurite, "--journal-dir", str(jdir), log_dir=logs)
        assert proc.returncode == 0, proc.stderr
        got = {b.name.removeprefix("vdir/"): b
               for b in container.list_blobs(name_starts_with="vdir/")}
        if n == 0:  # random.bin outgrows a drive: its part on drive 2 waits, unseen
            waiting = [x for x in copy_log(logs, "blk-1", seq) if x.get("status") == "skipped"]
            assert any("continues on another drive" in x["reason"] and
                       x["blob"].endswith("blobs/random.bin") for x in waiting), waiting
            # Exactly the files whole on drive 2 are visible (which those are depends on how
            # prep's threads interleaved small files and extents: possibly none of them).
            whole = {x["blob"].removeprefix("vdir/") for x in copy_log(logs, "blk-1", seq)
                     if x.get("type") == "blob" and x.get("status") == "ok"}
            assert "blobs/random.bin" not in got and set(got) == whole and len(got) < len(files)
    assert set(got) == set(files)
    for name in ("images/disk 0.vhd", "blobs/random.bin", "naïve café — ünïcode.txt",
                 "empty/zero bytes", "small/d07/e0/file 00007.txt"):
        assert got[name].blob_type == "BlockBlob"
        assert container.download_blob("vdir/" + name).readall() == files[name], name
    assert sum(b.size for b in got.values()) == sum(map(len, files.values()))


def test_marker_chunks_are_json_of_each_file_and_the_head_counts_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker is a head and chunks of CHUNK_FILES files (no JSON of every file held):
    each chunk is what json.dumps of its list of files gives, other drives' imports parse
    it back, and the head counts the chunks."""
    from pipeline.receive import markers

    monkeypatch.setattr(markers, "CHUNK_FILES", 2)
    files = [{"file_id": i, "path": f"a ü\"{i}", "blob": f"v/a ü\"{i}", "size": 5 << 20,
              "cells": [0, 2 << 20], "zero": [1 << 20], "bad": [3 << 20]} for i in range(5)]
    chunks = list(markers.chunks_json(iter(files)))
    assert chunks == [json.dumps(files[k:k + 2]).encode() for k in (0, 2, 4)]
    assert [markers.parse_files("c", raw, "h") for raw in chunks] == [
        files[0:2], files[2:4], files[4:]]
    assert list(markers.chunks_json(iter([]))) == []
    head = markers.head("sess-1", 3, "parts", 3)
    assert json.loads(head) == {"session_id": "sess-1", "seq": 3, "state": "parts",
                                "chunks": 3}
    assert markers.parse_marker("h", head)["chunks"] == 3
    for bad in (b'{"seq": 1, "state": "done"}', b'{"seq": 1, "state": "x", "chunks": 1}',
                b'{"seq": 1, "state": "done", "chunks": -1}', b"[", None):
        with pytest.raises(IntegrityError):
            markers.parse_marker("h", bad)
    for bad in (b'[{"file_id": -1, "blob": "b", "cells": [], "zero": []}]',
                b'[{"file_id": 1, "blob": "b", "cells": [1.5], "zero": []}]',
                b'[{"file_id": 18446744073709551616, "blob": "b", "cells": [], "zero": []}]',
                None):
        with pytest.raises(IntegrityError, match="h is damaged"):
            markers.parse_files("c", bad, "h")
