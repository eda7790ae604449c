"""`pipeline drive info` on a one-session drive (format version 1 or 2): the closing index
decoded, as on a drive of several sessions (test_multisession*): how many files it lists,
their bytes and its sha256 (what a job's manifestHash must equal); a damaged index is exit
4, a drive never closed is no error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import journal
from pipeline.drive import format as fmt
from pipeline.errors import EXIT_INTEGRITY

from .conftest import FAST_KDF_ARGS, run_cli
from .test_multisession import first_session, second_session
from .test_waimport import inputs, prep


def v2_drive(tmp: Path) -> tuple[Path, Path, journal.Journal, dict[str, bytes]]:
    """A dataset's drive (format version 2), its recovery password file and journal."""
    files = inputs(tmp)
    prep(tmp)
    (jrn,) = journal.session_journals(tmp / "j", "wa1")
    pw = tmp / "pw"
    pw.write_text(jrn.recovery_password + "\n")
    return tmp / "d1.img", pw, jrn, files


def info_of(image: Path, pw: Path) -> tuple[dict[str, Any], list[str]]:
    """`drive info` with the key, exit 0: its JSON, and its text's lines."""
    args = ("drive", "info", str(image), "--recovery-password-file", str(pw))
    return (json.loads(run_cli(*args, "--json", check_code=0).stdout),
            run_cli(*args, check_code=0).stdout.splitlines())


def test_drive_info_reports_a_v2_drive_s_closing_index(tmp_path: Path) -> None:
    image, pw, jrn, files = v2_drive(tmp_path)
    d = jrn.drive
    assert d.state == "closed"
    want = {"offset": d.index_offset, "length": d.index_length, "files": len(files),
            "file_bytes": sum(map(len, files.values())), "sha256": d.index_sha256}
    info, text = info_of(image, pw)
    assert info["superblock"]["format_version"] == fmt.ATTRS_VERSION
    assert (info["closed"], info["index_problem"], info["index"]) == (True, "", want)
    assert (f"index         {len(files)} files, {want['file_bytes']} bytes, sha256 "
            f"{d.index_sha256} (offset {d.index_offset}, length {d.index_length})") in text
    jrn.close()


def test_drive_info_names_a_damaged_closing_index(tmp_path: Path) -> None:
    image, pw, jrn, _ = v2_drive(tmp_path)
    at = json.loads(run_cli("drive", "info", str(image), "--json", check_code=0).stdout
                    )["segment"]["offset"] + jrn.drive.index_offset
    jrn.close()
    with open(image, "r+b") as f:  # one ciphertext byte of the index's header sector
        f.seek(at + 5)
        byte = f.read(1)
        f.seek(at + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = run_cli("drive", "info", str(image), "--recovery-password-file", str(pw), "--json",
                   check_code=EXIT_INTEGRITY)
    info = json.loads(proc.stdout)  # what it found is printed either way
    assert info["closed"] is True and info["index"] is None and info["index_problem"]
    assert proc.stderr.strip() == (f"pipeline drive info: {image}: the closing index is "
                                   f"damaged: {info['index_problem']}")


def test_drive_info_on_a_drive_never_closed(tmp_path: Path) -> None:
    image, pw = tmp_path / "new.img", tmp_path / "pw"
    run_cli("drive", "format", str(image), "--drive-size", "64M", "--save-recovery-password",
            str(pw), *FAST_KDF_ARGS, check_code=0)
    info, text = info_of(image, pw)
    assert info["superblock"]["format_version"] == fmt.FORMAT_VERSION
    assert (info["closed"], info["index_problem"], info["index"]) == (False, "", None)
    assert "index         none: the drive was not closed (no valid trailer)" in text


def test_drive_info_reports_each_session_s_index_on_a_v3_drive(tmp_path: Path) -> None:
    """The same report for each closed session of a drive of several sessions."""
    one, key = first_session(tmp_path)
    two = second_session(tmp_path, key)
    pw = tmp_path / "pw"
    pw.write_text(key + "\n")
    info, _ = info_of(tmp_path / "d1.img", pw)
    assert info["superblock"]["format_version"] == fmt.SESSIONS_VERSION
    got = {s["session_id"]: s["index"] for s in info["sessions"]}
    for sid, files in (("ses1", one), ("ses2", two)):
        (jrn,) = journal.session_journals(tmp_path / "j", sid)
        assert got[sid] == {"offset": jrn.drive.index_offset, "length": jrn.drive.index_length,
                            "files": len(files), "file_bytes": sum(map(len, files.values())),
                            "sha256": jrn.drive.index_sha256}, sid
        jrn.close()
