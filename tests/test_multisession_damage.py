"""Drives of several sessions: a dataset's (version 2) session continued by a plain one, a
forged SESSION segment and a forged index named as damage, and cryptsetup still reading
the LUKS2 header after the second session."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
import xxhash

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.storage.local import LocalStorage
from pipeline.volume import drives

from .conftest import require_tool, run_cli
from .test_multisession import (
    check_account,
    continue_args,
    first_session,
    import_session,
    second_session,
    tree,
)
from .test_waimport import import_, inputs, prep


def _opened(image: Path, key: str) -> tuple[drives.Drive, drives.DriveCipher]:
    drive = drives.open_drive(image, writable=True)
    vol = drives.read_volume(drive)
    _, vkey = drives.unlock(drive, vol, key.encode())
    return drive, drives.DriveCipher.for_volume(vol, vkey)


def _journal(tmp: Path, session: str) -> journal.Journal:
    (j,) = journal.session_journals(tmp / "j", session)
    return j


def test_dataset_session_continued_by_a_plain_one(tmp_path: Path) -> None:
    """Session 1 written from a dataset (version 2: attributes) keeps them on a version-3
    drive: sector 0 records it as first_version 2; both sessions import alone; cryptsetup
    still reads the header."""
    want = inputs(tmp_path)
    prep(tmp_path)
    j1 = _journal(tmp_path, "wa1")
    key = j1.recovery_password
    j1.close()
    two = tree(tmp_path / "src2", "two")
    run_cli(*continue_args(tmp_path, key), check_code=0)
    drive, cipher = _opened(tmp_path / "d1.img", key)
    with drive:
        sb = drives.read_superblock(drive, cipher)
    assert (sb.version, sb.first_version) == (3, fmt.ATTRS_VERSION)
    acct = tmp_path / "acct"
    acct.mkdir()
    (p,) = import_(tmp_path, acct, "d1.img")  # the journal directory holds ses2's too
    assert p.returncode == 5 and "pick one with --session-id" in p.stderr, p.stderr
    run_cli("import", "--drive", str(tmp_path / "d1.img"), "--journal-dir", str(tmp_path / "j"),
            "--session-id", "wa1", "--to", str(acct), "--log-dir", str(tmp_path / "logs"),
            check_code=0)
    store = LocalStorage(acct)
    for name, data in want.items():
        container, blob = name.split("/", 1)
        assert (acct / container / blob).read_bytes() == data
    assert store.get_attributes("photos", "v1/a.bin").metadata == {"Owner": "ops",
                                                                  "Project": "seed_19"}
    assert store.get_attributes("vhds", "disks/d.vhd").blob_type is fmt.BlobType.PAGE
    import_session(tmp_path, "ses2", tmp_path / "acct2", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses2")
    check_account(tmp_path / "acct2", "cont2", "v2", two)
    # cryptsetup (Debian's cryptsetup-bin) reads the header the sessions never touched
    exe = require_tool("cryptsetup")
    dump = subprocess.run([exe, "luksDump", str(tmp_path / "d1.img")], capture_output=True,
                          text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert f"UUID:          \t{sb.volume_uuid}" in dump.stdout or sb.volume_uuid in dump.stdout
    assert "aes-xts-plain64" in dump.stdout


def _rewrite_session_segment(tmp: Path, key: str, prev_index_offset: int) -> None:
    """Session 2's SESSION segment again, its checksums valid, pointing elsewhere."""
    j2 = _journal(tmp, "ses2")
    at = j2.drive.first_offset
    j2.close()
    drive, cipher = _opened(tmp / "d1.img", key)
    with drive:
        seg = bytearray(cipher.read(drive, at, fmt.SECTOR))
        head = fmt.decode_segment_header(bytes(seg[:fmt.HEADER_SIZE]), at)
        rec_at = fmt.HEADER_SIZE + 5 + 24  # frame, then drive_seq..prev_first_offset
        struct.pack_into("<Q", seg, rec_at, prev_index_offset)
        end = fmt.HEADER_SIZE + head.records_len
        body_end = end - 4
        struct.pack_into("<I", seg, body_end, xxhash.xxh32_intdigest(bytes(seg[64:body_end])))
        hdr = bytearray(seg[:fmt.HEADER_SIZE])
        struct.pack_into("<Q", hdr, 40, xxhash.xxh3_64_intdigest(bytes(seg[64:end])))
        struct.pack_into("<Q", hdr, 56, xxhash.xxh3_64_intdigest(bytes(hdr[:56])))
        seg[:fmt.HEADER_SIZE] = hdr
        cipher.write(drive, at, bytes(seg))
        drive.sync()


def test_forged_session_segment_pointing_outside_the_drive_is_damage(tmp_path: Path) -> None:
    _, key = first_session(tmp_path)
    second_session(tmp_path, key)
    _rewrite_session_segment(tmp_path, key, 1 << 40)
    pw = tmp_path / "pw"
    pw.write_text(key)
    for session in ("ses1", "ses2"):
        proc = import_session(tmp_path, session, tmp_path / f"a-{session}",
                              "--recovery-password-file", str(pw), "--session-id", session,
                              code=4)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"pipeline import: {tmp_path / 'd1.img'}: the copy sessions on "
                               "the drive do not read: segment ")
        assert last.endswith("does not end where this SESSION segment begins"), last
    proc = run_cli("drive", "info", str(tmp_path / "d1.img"), "--recovery-password-file",
                   str(pw), check_code=4)
    assert "does not end where this SESSION segment begins" in proc.stdout + proc.stderr


def forge_session2_index(tmp: Path, key: str) -> journal.DriveInfo:
    """Session 2's index rewritten, checksums valid, with one extent moved into session 1's
    segments (and the trailer to match); session 2's DriveInfo as its journal knows it."""
    j1, j2 = _journal(tmp, "ses1"), _journal(tmp, "ses2")
    victim = next(e for e in j1.extents() if e.codec is not fmt.Codec.ZERO)
    records: list = list(j2.files())
    moved = False
    for e in j2.extents():
        if not moved and e.codec is not fmt.Codec.ZERO and e.stored_len == victim.stored_len:
            e = fmt.Extent(e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3,
                           victim.location)
            moved = True
        records.append(e)
    if not moved:  # no extent of the same stored size: point one at session 1's start
        e = next(r for r in records if isinstance(r, fmt.Extent)
                 and r.codec is not fmt.Codec.ZERO)
        i = records.index(e)
        records[i] = fmt.Extent(e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3,
                                fmt.SECTOR + fmt.HEADER_SIZE)
    info = j2.drive
    index = fmt.encode_index(records, info.log_seq, info.index_offset)  # a one-session check
    drive, cipher = _opened(tmp / "d1.img", key)
    with drive:
        cipher.write(drive, info.index_offset, index)
        cipher.write(drive, fmt.trailer_offset(info.data_area_size), fmt.encode_trailer(
            fmt.Trailer(info.host_seq, info.data_area_size, info.index_offset, len(index),
                        info.log_seq + 1, info.payload_bytes, version=2,
                        session_offset=info.first_offset, sessions=2)))
        drive.sync()
    j1.close()
    j2.close()
    return info


def test_forged_index_listing_another_session_s_extents_is_damage(tmp_path: Path) -> None:
    """Session 2's index rewritten (checksums valid) to point one extent into session 1's
    segments: a lie no crash or bit rot tells, so every reader says exit 4 and names it
    (the structure, its offset): verify, import with and without the journal, unpack
    with and without it, drive info; nothing is imported from session 2's index nor from
    its log in its place (never session 1's extents as session 2's).  Session 1 still
    imports whole."""
    one, key = first_session(tmp_path)
    second_session(tmp_path, key)
    info = forge_session2_index(tmp_path, key)
    proc = run_cli("verify", "--journal-dir", str(tmp_path / "j"), "--session-id", "ses2",
                   check_code=4)
    assert "closing index" in proc.stdout + proc.stderr
    pw = tmp_path / "pw"
    pw.write_text(key)
    breach = (f"pipeline import: {tmp_path / 'd1.img'}: the closing index of session ses2 "
              f"breaks the format although its checksums hold (segment {info.log_seq} at "
              f"offset {info.index_offset}: record ")
    for how in (["--recovery-password-file", str(pw), "--session-id", "ses2"],
                ["--journal-dir", str(tmp_path / "j"), "--session-id", "ses2"]):
        acct = tmp_path / f"acct2-{how[0]}"
        proc = import_session(tmp_path, "ses2", acct, *how, code=4)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(breach), last
        assert "lies outside its session's segments" in last or "is not inside the " \
            "segments before the index" in last, last
        assert last.endswith("re-send the session's files from the source (pipeline repair)")
        assert [p.name for p in acct.iterdir() if not p.name.startswith(".")] == []
    for how in (["--recovery-password-file", str(pw)], ["--journal-dir", str(tmp_path / "j")]):
        proc = run_cli("unpack", "--drive", str(tmp_path / "d1.img"), *how, "--session-id",
                       "ses2", "--target", str(tmp_path / f"un-{how[0]}"), check_code=4)
        assert "the closing index of session ses2 breaks the format" in proc.stderr
        assert not (tmp_path / f"un-{how[0]}" / "cont2").exists()
    proc = run_cli("drive", "info", str(tmp_path / "d1.img"), "--recovery-password-file",
                   str(pw), check_code=4)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"pipeline drive info: {tmp_path / 'd1.img'}: the closing index of session ses2 is "
        f"damaged: segment {info.log_seq} at offset {info.index_offset}: record ")
    # session 1 is untouched: it imports whole, its index's sha256 as session 2 recorded it
    import_session(tmp_path, "ses1", tmp_path / "acct1", "--recovery-password-file", str(pw),
                   "--session-id", "ses1")
    check_account(tmp_path / "acct1", "cont1", "v1", one)
    import_session(tmp_path, "ses1", tmp_path / "acct1j", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses1")
    check_account(tmp_path / "acct1j", "cont1", "v1", one)


def test_a_drive_with_a_damaged_superblock_of_ours_is_not_begun_anew(tmp_path: Path) -> None:
    """AlreadyEncrypted: a volume whose sector 0 is a damaged superblock of ours is refused
    (exit 5), never taken for an empty volume and overwritten."""
    _, key = first_session(tmp_path)
    drive, cipher = _opened(tmp_path / "d1.img", key)
    with drive:
        sector = bytearray(cipher.read(drive, 0, fmt.SECTOR))
        sector[100] ^= 0x01  # a string byte: the checksum no longer holds
        cipher.write(drive, 0, bytes(sector))
        drive.sync()
    before = (tmp_path / "d1.img").read_bytes()
    tree(tmp_path / "src2", "two")
    proc = run_cli(*continue_args(tmp_path, key), check_code=5)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline prep: {tmp_path / 'd1.img'} holds a pipeline drive whose superblock does "
        "not read (superblock: checksum mismatch); import its sessions with their journals "
        "before the drive is used again")
    assert (tmp_path / "d1.img").read_bytes() == before


def test_forged_index_on_a_one_session_drive_is_the_same_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule on a drive of one session (versions 1 and 2): an index whose checksums
    hold but which points an extent at the index itself is refused, exit 4, named, with
    and without the journal; no log scan stands in (before: exit 8 from a log scan)."""
    _, key = first_session(tmp_path)
    j1 = _journal(tmp_path, "ses1")
    info = j1.drive
    records: list = list(j1.files())
    moved = False
    for e in j1.extents():
        if not moved and e.codec is not fmt.Codec.ZERO:
            e = fmt.Extent(e.file_id, e.offset, e.raw_len, e.codec, e.stored_len, e.xxh3,
                           info.index_offset + fmt.HEADER_SIZE)
            moved = True
        records.append(e)
    with monkeypatch.context() as m:  # the forger's encoder checks nothing
        m.setattr(fmt, "_check_records", lambda *_: None)
        index = fmt.encode_index(records, info.log_seq, info.index_offset)
    drive, cipher = _opened(tmp_path / "d1.img", key)
    with drive:
        cipher.write(drive, info.index_offset, index)
        cipher.write(drive, fmt.trailer_offset(info.data_area_size), fmt.encode_trailer(
            fmt.Trailer(info.seq, info.data_area_size, info.index_offset, len(index),
                        info.log_seq + 1, info.payload_bytes)))
        drive.sync()
    j1.close()
    pw = tmp_path / "pw"
    pw.write_text(key)
    for how in (["--recovery-password-file", str(pw)], ["--journal-dir", str(tmp_path / "j")]):
        acct = tmp_path / f"acct-{how[0]}"
        proc = import_session(tmp_path, "ses1", acct, *how, code=4)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"pipeline import: {tmp_path / 'd1.img'}: the closing index of session ses1 breaks "
            f"the format although its checksums hold (segment {info.log_seq} at offset "
            f"{info.index_offset}: record "), last
        assert "is not inside the segments before the index" in last
        assert [p.name for p in acct.iterdir() if not p.name.startswith(".")] == []
    run_cli("verify", "--journal-dir", str(tmp_path / "j"), check_code=4)
