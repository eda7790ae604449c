"""A torn write of sector 0, the one in-place rewrite of a drive (the superblock to version
3 when a second session begins): only the first N bytes of the new sector reach the medium
(or only the last ones).  The data area's cipher is deterministic per 16-byte block, so the
sector holds the new fields and the old checksum (or the reverse): the superblock reads as
the state its checksum belongs to (docs/FORMAT.md, "Version 3"), session 1 imports with or
without its journal, and session 2's prep, run again, begins the session.  A tear inside
the first block (garbage where the magic was) cannot be read back: session 1 imports with
its journal, prep refuses the drive in one line, never begins it anew over session 1."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from pipeline.drive import format as fmt
from pipeline.volume import drives

from .conftest import run_cli
from .test_multisession import (
    check_account,
    continue_args,
    first_session,
    import_session,
    tree,
)


def _sector0_states(image: Path, key: str) -> tuple[int, bytes, bytes]:
    """(sector 0's device offset, its ciphertext now, its ciphertext as version 3)."""
    with drives.open_drive(image, writable=True) as d:
        vol = drives.read_volume(d)
        _, vkey = drives.unlock(d, vol, key.encode())
        cipher = drives.DriveCipher.for_volume(vol, vkey)
        at = cipher.segment_offset
        old_ct = d.pread(fmt.SECTOR, at)
        sb = drives.read_superblock(d, cipher)
        cipher.write(d, 0, fmt.encode_superblock(dataclasses.replace(
            sb, version=fmt.SESSIONS_VERSION, first_version=sb.version)))
        new_ct = d.pread(fmt.SECTOR, at)
        d.pwrite(old_ct, at)  # back as it was
        d.sync()
    return at, old_ct, new_ct


def _tear(image: Path, at: int, sector: bytes) -> None:
    with drives.open_drive(image, writable=True) as d:
        d.pwrite(sector, at)
        d.sync()


@pytest.fixture(scope="module")
def one_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    base = tmp_path_factory.mktemp("torn")
    files, key = first_session(base)
    return base, files, key


def _copy(base: Path, tmp: Path) -> None:
    shutil.copy(base / "d1.img", tmp / "d1.img")
    shutil.copytree(base / "j", tmp / "j")


# (what reached the medium, as a function of the old and new ciphertexts)
TORN = {
    "first 512 bytes new": lambda old, new: new[:512] + old[512:],
    "first 4080 bytes new": lambda old, new: new[:4080] + old[4080:],
    "last 512 bytes new": lambda old, new: old[:-512] + new[-512:],
}


@pytest.mark.parametrize("how", list(TORN))
def test_torn_version_write_reads_as_one_state_and_prep_goes_on(
        one_session: tuple[Path, dict, str], tmp_path: Path, how: str) -> None:
    base, one, key = one_session
    _copy(base, tmp_path)
    at, old, new = _sector0_states(tmp_path / "d1.img", key)
    torn = TORN[how](old, new)
    assert torn not in (old, new)
    _tear(tmp_path / "d1.img", at, torn)
    pw = tmp_path / "pw"
    pw.write_text(key)
    # Session 1 imports whole, without its journal and with it.
    import_session(tmp_path, "ses1", tmp_path / "a1", "--recovery-password-file", str(pw))
    check_account(tmp_path / "a1", "cont1", "v1", one)
    import_session(tmp_path, "ses1", tmp_path / "a1j", "--journal-dir", str(tmp_path / "j"),
                   "--session-id", "ses1")
    check_account(tmp_path / "a1j", "cont1", "v1", one)
    run_cli("drive", "info", str(tmp_path / "d1.img"), "--recovery-password-file", str(pw),
            check_code=0)
    # Session 2's prep, run again, begins the session; each imports alone.
    two = tree(tmp_path / "src2", "two")
    run_cli(*continue_args(tmp_path, key), check_code=0)
    for session, container, vdir, files in (("ses1", "cont1", "v1", one),
                                            ("ses2", "cont2", "v2", two)):
        acct = tmp_path / f"b-{session}"
        import_session(tmp_path, session, acct, "--recovery-password-file", str(pw),
                       "--session-id", session)
        check_account(acct, container, vdir, files)
    with drives.open_drive(tmp_path / "d1.img") as d:  # sector 0 is whole again, version 3
        vol = drives.read_volume(d)
        _, vkey = drives.unlock(d, vol, key.encode())
        cipher = drives.DriveCipher.for_volume(vol, vkey)
        raw = cipher.read(d, 0, fmt.SECTOR)
    assert fmt.decode_superblock(raw).version == fmt.SESSIONS_VERSION
    fmt._check_sector(raw, fmt.SUPERBLOCK_MAGIC, "superblock")  # its own checksum holds


def test_sector0_torn_inside_its_first_block_is_refused_never_begun_anew(
        one_session: tuple[Path, dict, str], tmp_path: Path) -> None:
    base, one, key = one_session
    _copy(base, tmp_path)
    at, old, new = _sector0_states(tmp_path / "d1.img", key)
    _tear(tmp_path / "d1.img", at, new[:8] + old[8:])  # half an AES block: garbage
    pw = tmp_path / "pw"
    pw.write_text(key)
    # With its journal, session 1 imports whole, the superblock's damage named.
    proc = import_session(tmp_path, "ses1", tmp_path / "a1j", "--journal-dir",
                          str(tmp_path / "j"), "--session-id", "ses1", code=None)
    assert proc.returncode in (0, 1), proc.stderr
    check_account(tmp_path / "a1j", "cont1", "v1", one)
    # Without it: exit 4, the superblock named.
    proc = import_session(tmp_path, "ses1", tmp_path / "a1", "--recovery-password-file",
                          str(pw), code=4)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"pipeline import: {tmp_path / 'd1.img'}: superblock: bad magic")
    # Session 2's prep refuses the drive in one line (exit 5), and writes nothing to it.
    before = (tmp_path / "d1.img").read_bytes()
    two = tree(tmp_path / "src2", "two")
    assert two
    proc = run_cli(*continue_args(tmp_path, key), check_code=5)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pipeline prep: {tmp_path / 'd1.img'} holds a pipeline drive "
                           "whose superblock does not read (superblock: bad magic"), last
    assert last.endswith("import its sessions with their journals before the drive is used "
                         "again")
    assert (tmp_path / "d1.img").read_bytes() == before
