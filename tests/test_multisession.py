"""Several copy sessions on one drive (format version 3, docs/FORMAT.md "Several sessions on
one drive"): a second --session-id continues a drive of a first one, named in its driveset
as AlreadyFormatted,...,AlreadyEncrypted,KEY; each session imports on its own, byte for
byte; a drive of several sessions without a journal needs --session-id; nothing before
the new session's first offset changes but sector 0's version."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.volume import drives
from tests.azurite import azurite  # noqa: F401 - the fixture

from .conftest import FAST_KDF_ARGS, run_cli

MiB = 1 << 20
DHEADER = "DriveLetter,FormatOption,SilentOrPromptOnFormat,Encryption,ExistingBitLockerKey"


def tree(root: Path, tag: str) -> dict[str, bytes]:
    """A small tree: a file over one extent, small files, an empty one."""
    files = {f"{tag}/big.bin": os.urandom(2 * MiB + 123), f"{tag}/a.txt": f"{tag} a\n".encode(),
             f"{tag}/sub/b.txt": os.urandom(5000), f"{tag}/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def first_session(tmp: Path, size: str = "64M") -> tuple[dict[str, bytes], str]:
    """Session ses1 on d1.img with the plain form; returns its files and the drive's key."""
    src = tmp / "src1"
    files = tree(src, "one")
    run_cli("prep", "--source", str(src), "--dstdir", "cont1/v1/", "--drive",
            str(tmp / "d1.img"), "--drive-size", size, "--journal-dir", str(tmp / "j"),
            "--session-id", "ses1", *FAST_KDF_ARGS, check_code=0)
    (jrn,) = journal.session_journals(tmp / "j", "ses1")
    key = jrn.recovery_password
    jrn.close()
    return files, key


def continue_args(tmp: Path, key: str, session: str = "ses2", src: str = "src2",
                  dstdir: str = "cont2/v2/") -> list[str]:
    (tmp / f"{session}.csv").write_text(
        f"{DHEADER}\n{tmp / 'd1.img'},AlreadyFormatted,SilentMode,AlreadyEncrypted,{key}\n")
    return ["prep", "--source", str(tmp / src), "--dstdir", dstdir, "--driveset",
            str(tmp / f"{session}.csv"), "--journal-dir", str(tmp / "j"), "--session-id",
            session, *FAST_KDF_ARGS]


def second_session(tmp: Path, key: str) -> dict[str, bytes]:
    files = tree(tmp / "src2", "two")
    run_cli(*continue_args(tmp, key), check_code=0)
    return files


def check_account(acct: Path, container: str, vdir: str, files: dict[str, bytes]) -> None:
    """Exactly ``files`` under container/vdir, byte for byte, and nothing else."""
    got = {str(p.relative_to(acct / container / vdir)): p.read_bytes()
           for p in (acct / container / vdir).rglob("*") if p.is_file()}
    assert got == files
    # nothing else but the importer's own state container
    assert sorted(p.name for p in acct.iterdir() if not p.name.startswith(".")) == sorted(
        [container, "waimportexport"])


def import_session(tmp: Path, session: str, acct: Path, *extra: str, code: int = 0):
    acct.mkdir(exist_ok=True)
    return run_cli("import", "--drive", str(tmp / "d1.img"), "--to", str(acct), "--log-dir",
                   str(tmp / f"logs-{session}"), *extra, check_code=code)


def data_area(image: Path, key: str) -> tuple[int, bytes]:
    """(the data segment's device offset, the drive's decrypted data area)."""
    with drives.open_drive(image) as d:
        vol = drives.read_volume(d)
        _, vkey = drives.unlock(d, vol, key.encode())
        cipher = drives.DriveCipher.for_volume(vol, vkey)
        return cipher.segment_offset, cipher.read(d, 0, cipher.data_area_size(d.size))


def test_two_sessions_on_one_drive_each_import_alone(tmp_path: Path) -> None:
    one, key = first_session(tmp_path)
    image = tmp_path / "d1.img"
    before = image.read_bytes()
    seg_off, area1 = data_area(image, key)
    two = second_session(tmp_path, key)
    after = image.read_bytes()
    (j2,) = journal.session_journals(tmp_path / "j", "ses2")
    (j1,) = journal.session_journals(tmp_path / "j", "ses1")
    info = j2.drive
    # Session 2 began where session 1's index ends; nothing before that changed but
    # sector 0 (version 3), and the LUKS2 header region not at all.
    assert info.first_offset == j1.drive.index_offset + j1.drive.index_length
    assert (info.host_session, info.host_seq, info.session_no) == ("ses1", 1, 2)
    assert after[:seg_off] == before[:seg_off]
    start = seg_off + fmt.SECTOR
    assert after[start:seg_off + info.first_offset] == before[start:seg_off + info.first_offset]
    _, area2 = data_area(image, key)
    sb1, sb2 = fmt.decode_superblock(area1), fmt.decode_superblock(area2)
    assert (sb2.version, sb2.first_version) == (3, 1)
    assert sb2 == fmt.Superblock(**{**{f: getattr(sb1, f) for f in sb1.__dataclass_fields__},
                                    "version": 3, "first_version": 1})
    tr = fmt.decode_trailer(area2[-fmt.SECTOR:], sb2)
    assert (tr.version, tr.sessions, tr.session_offset) == (2, 2, info.first_offset)
    assert (tr.index_offset, tr.index_length) == (info.index_offset, info.index_length)
    # Each session imports alone, byte for byte, with its own journal.
    import_session(tmp_path, "ses1", tmp_path / "acct1", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses1")
    check_account(tmp_path / "acct1", "cont1", "v1", one)
    import_session(tmp_path, "ses2", tmp_path / "acct2", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses2")
    check_account(tmp_path / "acct2", "cont2", "v2", two)
    for s in ("ses1", "ses2"):
        run_cli("verify", "--journal-dir", str(tmp_path / "j"), "--session-id", s,
                check_code=0)
    # repair compares each session's account with that session's journal only
    for s, src, acct in (("ses1", "src1", "acct1"), ("ses2", "src2", "acct2")):
        run_cli("repair", "--journal-dir", str(tmp_path / "j"), "--session-id", s, "--source",
                str(tmp_path / src), "--to", str(tmp_path / acct), "--dry-run", check_code=0)
    # The journal directory holds both: without --session-id, import says which to pick.
    proc = import_session(tmp_path, "ses1", tmp_path / "acct0", "--journal-dir",
                          str(tmp_path / "j"), code=5)
    assert "holds several copy sessions with journals in this directory (ses1, ses2); pick one " \
           "with --session-id" in proc.stderr
    # Without journals: the recovery password, and the session named.
    pw = tmp_path / "pw"
    pw.write_text(key)
    proc = import_session(tmp_path, "x", tmp_path / "acct3", "--recovery-password-file",
                          str(pw), code=5)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pipeline import: {image} holds 2 copy sessions (ses1, ses2); pick one with --session-id")
    import_session(tmp_path, "ses2", tmp_path / "acct3", "--recovery-password-file", str(pw),
                   "--session-id", "ses2")
    check_account(tmp_path / "acct3", "cont2", "v2", two)
    import_session(tmp_path, "ses1", tmp_path / "acct4", "--recovery-password-file", str(pw),
                   "--session-id", "ses1")
    check_account(tmp_path / "acct4", "cont1", "v1", one)
    proc = import_session(tmp_path, "ses9", tmp_path / "acct5", "--recovery-password-file",
                          str(pw), "--session-id", "ses9", code=5)
    assert "holds no session ses9 (its sessions: ses1, ses2)" in proc.stderr
    # unpack (a drive back into a directory) picks the session the same way
    run_cli("unpack", "--drive", str(image), "--recovery-password-file", str(pw),
            "--session-id", "ses1", "--target", str(tmp_path / "unpacked"), check_code=0)
    got = {str(p.relative_to(tmp_path / "unpacked" / "cont1" / "v1")): p.read_bytes()
           for p in (tmp_path / "unpacked" / "cont1" / "v1").rglob("*") if p.is_file()}
    assert got == one and not (tmp_path / "unpacked" / "cont2").exists()
    # Each session's job lists the drive: the same driveId, key and header hash, its own
    # manifest (its own INDEX, whose sha256 is the hash).
    lists = {}
    for s, jrn in (("ses1", j1), ("ses2", j2)):
        out = run_cli("journal", "export", "--journal-dir", str(tmp_path / "j"), "--session-id",
                      s, check_code=0).stdout
        (entry,) = json.loads(out)
        lists[s] = entry
        index = area2[jrn.drive.index_offset:jrn.drive.index_offset + jrn.drive.index_length]
        assert entry["manifestHash"] == hashlib.sha256(index).hexdigest()
        assert entry["manifestFile"] == (f"/index@{jrn.drive.index_offset}+"
                                         f"{jrn.drive.index_length}")
    for field in ("driveId", "bitLockerKey", "driveHeaderHash"):
        assert lists["ses1"][field] == lists["ses2"][field]
    assert lists["ses1"]["manifestHash"] != lists["ses2"]["manifestHash"]
    j1.close()
    j2.close()


def test_luks2_token_says_the_drive_s_real_version(tmp_path: Path) -> None:
    """The token (identity in the clear, `drive info`) says what the superblock was written
    as: 2 for a dataset's drive (it said 1 for every drive before), 1 otherwise."""
    from .conftest import FAST_PBKDF2
    for version in (fmt.FORMAT_VERSION, fmt.ATTRS_VERSION):
        image = tmp_path / f"v{version}.img"
        with drives.prepare_target(str(image), size=32 * MiB, confirmed=True) as drive:
            identity = drives.Identity("tok-1", "", 1, "cont/", version=version)
            volume, cipher = drives.format_drive(drive, [(b"pw", FAST_PBKDF2)], identity)
            assert volume.token["format_version"] == version
            assert drives.read_superblock(drive, cipher).version == version
        with drives.open_drive(image) as drive:
            assert drives.read_volume(drive).token["format_version"] == version


def test_three_sessions_read_from_the_start_without_a_trailer(tmp_path: Path) -> None:
    """Three sessions chain from the trailer; with the trailer destroyed, a walk of the
    segment headers from the start finds every one, closed, and each imports whole."""
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    three = tree(tmp_path / "src3", "three")
    run_cli(*continue_args(tmp_path, key, session="ses3", src="src3", dstdir="cont3/"),
            check_code=0)
    (j3,) = journal.session_journals(tmp_path / "j", "ses3")
    assert (j3.drive.session_no, j3.drive.host_session) == (3, "ses1")
    j3.close()
    pw = tmp_path / "pw"
    pw.write_text(key)
    want = {"ses1": ("cont1", "v1", one), "ses2": ("cont2", "v2", two),
            "ses3": ("cont3", "", three)}

    def import_all(tag: str) -> None:
        for s, (container, vdir, files) in want.items():
            import_session(tmp_path, s, tmp_path / f"{tag}-{s}", "--recovery-password-file",
                           str(pw), "--session-id", s)
            check_account(tmp_path / f"{tag}-{s}", container, vdir, files)

    import_all("trailer")
    with drives.open_drive(tmp_path / "d1.img", writable=True) as d:
        vol = drives.read_volume(d)
        _, vkey = drives.unlock(d, vol, key.encode())
        cipher = drives.DriveCipher.for_volume(vol, vkey)
        cipher.write(d, fmt.trailer_offset(cipher.data_area_size(d.size)), bytes(fmt.SECTOR))
        d.sync()
    import_all("walked")
    proc = run_cli("drive", "info", str(tmp_path / "d1.img"), "--recovery-password-file",
                   str(pw), check_code=0)
    assert [line.split(",")[0] for line in proc.stdout.splitlines()
            if line.startswith("session ")] == ["session       'ses1'", "session       'ses2'",
                                                "session       'ses3'"]


def test_session_1_resumed_after_session_2_began_takes_no_more(tmp_path: Path) -> None:
    """prep --resume of session 1 (a file added to its staging) never writes after its
    index once session 2 follows it: its drive is full for it (out of drives, exit 3);
    session 2 still imports whole."""
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    (tmp_path / "src1" / "one" / "late.txt").write_bytes(b"late\n")
    before = (tmp_path / "d1.img").read_bytes()
    run_cli("prep", "--resume", "--journal-dir", str(tmp_path / "j"), "--session-id", "ses1",
            check_code=3)
    assert (tmp_path / "d1.img").read_bytes() == before
    (j1,) = journal.session_journals(tmp_path / "j", "ses1")
    assert j1.drive.state == "full"
    j1.close()
    import_session(tmp_path, "ses2", tmp_path / "acct2", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses2")
    check_account(tmp_path / "acct2", "cont2", "v2", two)
    import_session(tmp_path, "ses1", tmp_path / "acct1", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses1")
    check_account(tmp_path / "acct1", "cont1", "v1", one)


def test_two_sessions_into_azurite(tmp_path: Path, azurite: str) -> None:  # noqa: F811
    """Each session of one drive imported alone into Azurite (one account, two containers),
    read back with Azure's SDK: each container holds exactly its session's files."""
    from azure.storage.blob import BlobServiceClient

    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    for s in ("ses2", "ses1"):
        run_cli("import", "--drive", str(tmp_path / "d1.img"), "--journal-dir",
                str(tmp_path / "j"), "--session-id", s, "--to", azurite, "--log-dir",
                str(tmp_path / f"logs-{s}"), check_code=0)
    service = BlobServiceClient.from_connection_string(azurite)
    for container, vdir, files in (("cont1", "v1/", one), ("cont2", "v2/", two)):
        cc = service.get_container_client(container)
        got = {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}
        assert got == {vdir + name: data for name, data in files.items()}
