"""LUKS2 interoperability with cryptsetup, an independent implementation.

cryptsetup reads headers and dumps volume keys without device-mapper, so it
runs on these machines; .ci/run installs it (Debian cryptsetup-bin).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pipeline.volume import drives, luks2

from .conftest import FAST_ARGON, FAST_KDF_ARGS, FAST_PBKDF2, require_tool, run_cli


def cryptsetup(*args: str, check: bool = True) -> str:
    exe = require_tool("cryptsetup")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dumped_key(image: Path, key_file: Path) -> bytes:
    out = cryptsetup("luksDump", "--dump-volume-key", "--batch-mode",
                     "--key-file", str(key_file), str(image))
    m = re.search(r"MK dump:\s*((?:[0-9a-f]{2}\s+)+)", out + "\n")
    assert m, out
    return bytes.fromhex("".join(m.group(1).split()))


def write_image(path: Path, region: bytes, size: int = 40 << 20) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(region)


@pytest.mark.parametrize("kdf", [FAST_ARGON, FAST_PBKDF2], ids=["argon2id", "pbkdf2"])
def test_cryptsetup_reads_our_volume(tmp_path: Path, kdf: luks2.KdfParams) -> None:
    password = luks2.new_recovery_password()
    key = luks2.new_volume_key()
    region, vol = luks2.format_volume(key, [(password.encode(), kdf), (b"operator pass", kdf)],
                                      token={"session_id": "S-1"})
    image = tmp_path / "drive.img"
    write_image(image, region)

    dump = cryptsetup("luksDump", str(image))
    assert "Version:       \t2" in dump
    assert f"UUID:          \t{vol.uuid}" in dump
    assert "cipher: aes-xts-plain64" in dump
    assert "sector: 4096 [bytes]" in dump
    assert "offset: 16777216 [bytes]" in dump
    assert f"PBKDF:      {kdf.type}" in dump
    assert "AF stripes: 4000" in dump
    assert "pipeline-drive" in dump  # our identity token

    pw_file = tmp_path / "recovery.txt"
    pw_file.write_text(password)  # cryptsetup --key-file: exact bytes, no newline
    assert dumped_key(image, pw_file) == key
    op_file = tmp_path / "op.txt"
    op_file.write_text("operator pass")
    assert dumped_key(image, op_file) == key
    bad = tmp_path / "bad.txt"
    bad.write_text(luks2.new_recovery_password())
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode",
                          "--key-file", str(bad), str(image)], capture_output=True, text=True)
    assert out.returncode != 0


@pytest.mark.parametrize("pbkdf", [
    ["--pbkdf", "argon2id", "--pbkdf-memory", "16384", "--pbkdf-force-iterations", "4"],
    ["--pbkdf", "argon2i", "--pbkdf-memory", "16384", "--pbkdf-force-iterations", "4"],
    ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
], ids=["argon2id", "argon2i", "pbkdf2"])
def test_we_unlock_a_cryptsetup_volume(tmp_path: Path, pbkdf: list[str]) -> None:
    image = tmp_path / "cs.img"
    image.write_bytes(b"")
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    pw = tmp_path / "pw"
    pw.write_bytes(b"correct horse battery staple")
    cryptsetup("luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64",
               "--key-size", "512", "--sector-size", "4096", *pbkdf, "--key-file", str(pw),
               str(image))
    want = dumped_key(image, pw)
    with drives.open_drive(image) as drive:
        vol = drives.read_volume(drive)
        slot, key = drives.unlock(drive, vol, b"correct horse battery staple")
        assert (slot, key) == (0, want)
        with pytest.raises(Exception, match="no keyslot opens"):
            drives.unlock(drive, vol, b"wrong")
    # And through the CLI, as an operator would.
    proc = run_cli("drive", "unlock", str(image), "--key-file", str(pw), "--show-key",
                   check_code=0)
    assert "opens keyslot 0" in proc.stdout and want.hex() in proc.stdout


def test_cli_formatted_drive_matches_cryptsetup(tmp_path: Path) -> None:
    image = tmp_path / "d1.img"
    saved = tmp_path / "recovery.txt"
    run_cli("drive", "format", str(image), "--drive-size", "64M", "--session-id", "sess-1",
            "--save-recovery-password", str(saved), *FAST_KDF_ARGS, check_code=0)
    assert saved.stat().st_mode & 0o777 == 0o600
    password = saved.read_text().strip()
    key_file = tmp_path / "k"
    key_file.write_text(password)
    proc = run_cli("drive", "unlock", str(image), "--recovery-password-file", str(saved),
                   "--show-key", "--json", check_code=0)
    assert f'"volume_key": "{dumped_key(image, key_file).hex()}"' in proc.stdout
    # Without --show-key the key never appears.
    proc = run_cli("drive", "unlock", str(image), "--recovery-password-file", str(saved),
                   check_code=0)
    assert "opens keyslot 0" in proc.stdout
    assert dumped_key(image, key_file).hex() not in proc.stdout + proc.stderr
