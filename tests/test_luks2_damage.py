"""Damaged and hostile LUKS2 headers: either copy may be lost, and every byte read
from a drive may have been crafted.

cryptsetup is the independent check: it must agree on which drives open.  It
repairs a damaged copy whenever it can write the device (even ``luksDump`` and
``open --readonly`` do), so it is always given a copy of the image.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import EXIT_INTEGRITY, IntegrityError
from pipeline.volume import drives, luks2

from .conftest import FAST_ARGON, FAST_KDF_ARGS, FAST_PBKDF2, require_tool, run_cli

KEY = bytes(range(64))
HDR = luks2.HDR_SIZE
SIZE = 40 << 20  # device size given to parse_header


@pytest.fixture(scope="module")
def volume() -> tuple[bytes, luks2.Volume]:
    # The digest's PBKDF2 at its floor (1000, not 100,000): every parsed volume in the
    # hypothesis test opens each keyslot, and each open checks a candidate against it.
    return luks2.format_volume(KEY, [(b"recovery", FAST_ARGON), (b"operator", FAST_PBKDF2)],
                               token={"session_id": "S1"}, digest_iterations=1000)


def damaged(region: bytes, *edits: tuple[int, bytes]) -> bytes:
    out = bytearray(region)
    for at, data in edits:
        out[at:at + len(data)] = data
    return bytes(out)


def flip(region: bytes, at: int) -> tuple[int, bytes]:
    return at, bytes([region[at] ^ 0xFF])


def opens(vol: luks2.Volume, region: bytes) -> bytes | None:
    ks = vol.keyslots[0]
    return luks2.open_keyslot(vol, 0, b"recovery",
                              region[ks.area_offset:ks.area_offset + ks.material_size])


# -- which copy is read --------------------------------------------------------

@pytest.mark.parametrize("what,edit,reason", [
    ("flip byte 0", lambda r: flip(r, 0), "bad magic"),
    ("zero the first 4096 bytes", lambda r: (0, bytes(4096)), "bad magic"),
    ("corrupt the checksum", lambda r: flip(r, 448), "checksum mismatch"),
    ("damage the JSON", lambda r: flip(r, 4096 + 10), "checksum mismatch"),
    ("bad version", lambda r: (6, b"\x00\x03"), "LUKS version 3, not 2"),
])
def test_damaged_primary_opens_via_the_secondary(volume, what: str, edit: Callable,
                                                 reason: str) -> None:
    region, good = volume
    blob = damaged(region, edit(region))
    vol = luks2.parse_header(blob, SIZE)
    assert (vol.copy, vol.offset) == ("secondary", HDR)
    assert (vol.metadata, vol.uuid, vol.seqid) == (good.metadata, good.uuid, good.seqid)
    assert len(vol.warnings) == 1
    assert vol.warnings[0].startswith(f"primary LUKS2 header at 0 is damaged ({reason}); "
                                      f"using the secondary copy at {HDR}")
    assert opens(vol, region) == KEY


def test_damaged_secondary_only_reads_the_primary(volume) -> None:
    region, good = volume
    for edit in (flip(region, HDR), flip(region, HDR + 448), (HDR, bytes(HDR))):
        vol = luks2.parse_header(damaged(region, edit), SIZE)
        assert (vol.copy, vol.offset, vol.metadata) == ("primary", 0, good.metadata)
        assert len(vol.warnings) == 1
        assert vol.warnings[0].startswith(f"secondary LUKS2 header at {HDR} is damaged (")


@pytest.mark.parametrize("edits,message", [
    (lambda r: [flip(r, 0), flip(r, HDR + 448)],
     f"no valid LUKS2 header: primary at 0: bad magic; secondary at {HDR}: checksum mismatch"),
    (lambda r: [flip(r, 5000), flip(r, HDR + 5000)],
     f"no valid LUKS2 header: primary at 0: checksum mismatch; secondary at {HDR}: "
     "checksum mismatch"),
    (lambda r: [(0, bytes(2 * HDR))],
     "no valid LUKS2 header: primary at 0: bad magic; secondary: not found at offsets "
     "16384 to 4194304 (not a drive formatted by pipeline or cryptsetup"),
    (lambda r: [flip(r, 5000), (HDR, bytes(4096))],  # no hdr_size to trust: all probed
     "no valid LUKS2 header: primary at 0: checksum mismatch; secondary: not found at "
     "offsets 16384 to 4194304"),
])
def test_both_copies_damaged_names_each_reason(volume, edits: Callable, message: str) -> None:
    region, _ = volume
    with pytest.raises(luks2.CorruptHeader) as err:
        luks2.parse_header(damaged(region, *edits(region)), SIZE)
    assert str(err.value).startswith(message)
    assert isinstance(err.value, IntegrityError) and "\n" not in str(err.value)


def _seal(meta: Any, magic: bytes, at: int, seqid: int = 1, hdr_size: int = HDR,
          text: bytes | None = None, label: bytes = b"") -> bytes:
    """One header copy with a valid checksum around any JSON (or raw text)."""
    if text is None:
        text = json.dumps(meta).encode()
    binary = luks2._BIN.pack(magic, 2, hdr_size, seqid, label, b"sha256", bytes(64),
                             b"0d6fc2a8-5f43-4b9e-9a59-7e0b7e6c1d11", b"", at, b"", b"")
    area = bytearray(hdr_size)
    area[:len(binary)] = binary
    area[4096:4096 + len(text)] = text
    area[448:480] = hashlib.sha256(area).digest()
    return bytes(area)


def test_higher_seqid_wins(volume) -> None:
    region, good = volume
    newer = _seal(good.metadata, luks2.MAGIC_SECONDARY, HDR, seqid=5, label=b"newer")
    vol = luks2.parse_header(damaged(region, (HDR, newer)), SIZE)
    assert (vol.copy, vol.seqid, vol.label) == ("secondary", 5, "newer")
    assert vol.warnings == ("LUKS2 header copies differ: primary seqid 1, secondary seqid 5; "
                            "using the newer secondary copy",)
    newer = _seal(good.metadata, luks2.MAGIC_PRIMARY, 0, seqid=7, label=b"newer")
    vol = luks2.parse_header(damaged(region, (0, newer)), SIZE)
    assert (vol.copy, vol.seqid, vol.label) == ("primary", 7, "newer")


def test_secondary_found_at_a_larger_offset(volume) -> None:
    """A 64 KiB metadata area (cryptsetup --luks2-metadata-size): the probe finds it."""
    _, good = volume
    meta = copy.deepcopy(good.metadata)
    meta["config"]["json_size"] = str((64 << 10) - 4096)
    for ks in meta["keyslots"].values():  # keyslots follow the two larger copies
        ks["area"]["offset"] = str(int(ks["area"]["offset"]) + 2 * (48 << 10))
    meta["config"]["keyslots_size"] = str(int(meta["config"]["keyslots_size"]) - (96 << 10))
    region = bytearray(4 << 20)
    region[0:64 << 10] = _seal(meta, luks2.MAGIC_PRIMARY, 0, hdr_size=64 << 10)
    region[64 << 10:128 << 10] = _seal(meta, luks2.MAGIC_SECONDARY, 64 << 10,
                                       hdr_size=64 << 10)
    region[0] ^= 0xFF
    vol = luks2.parse_header(bytes(region), SIZE)
    assert (vol.copy, vol.offset, vol.hdr_size) == ("secondary", 64 << 10, 64 << 10)


def test_secondary_must_sit_at_its_own_size(volume) -> None:
    region, good = volume
    moved = _seal(good.metadata, luks2.MAGIC_SECONDARY, HDR, hdr_size=2 * HDR,
                  text=json.dumps({**good.metadata, "config": {
                      **good.metadata["config"], "json_size": str(2 * HDR - 4096)}}).encode())
    with pytest.raises(luks2.CorruptHeader, match="header size 32768 does not match its offset"):
        luks2.parse_header(damaged(region, flip(region, 0), (HDR, moved)), SIZE)


def test_reading_stops_at_the_end_of_the_device(volume) -> None:
    region, _ = volume
    blob = damaged(region, (0, bytes(2 * HDR)))[:64 << 10]
    with pytest.raises(luks2.CorruptHeader, match="not found at offsets"):
        luks2.parse_header(blob, device_size=len(blob))
    with pytest.raises(luks2.NeedMoreData):  # no size: the caller must read on
        luks2.parse_header(blob)


# -- hostile JSON ------------------------------------------------------------------

def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        *parents, last = path.split("/")
        node = meta
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


_DELETE = object()
KS0 = "keyslots/0"

HOSTILE: list[tuple[str, Callable[[dict], None], str]] = [
    ("no keyslots", _set("keyslots", _DELETE), "has no 'keyslots'"),
    ("keyslots a list", _set("keyslots", []), "'keyslots' is not an object"),
    ("keyslot a string", _set(KS0, "x"), "keyslot 0 is not an object"),
    ("keyslot id", _set("keyslots/99", {}), "keyslot 99: keyslot ids are 0 to 31"),
    ("no kdf", _set(f"{KS0}/kdf", _DELETE), "keyslot 0 kdf is not an object"),
    ("kdf type", _set(f"{KS0}/kdf/type", "scrypt"), "unsupported kdf"),
    ("argon2 memory", _set(f"{KS0}/kdf/memory", 1 << 40), "'memory' is not an integer"),
    ("argon2 time huge", _set(f"{KS0}/kdf/time", 1 << 33), "'time' is not an integer"),
    ("argon2 time float", _set(f"{KS0}/kdf/time", 4.5), "'time' is not an integer"),
    ("argon2 cpus bool", _set(f"{KS0}/kdf/cpus", True), "'cpus' is not an integer"),
    ("argon2 cpus 0", _set(f"{KS0}/kdf/cpus", 0), "argon2 needs"),
    ("short salt", _set(f"{KS0}/kdf/salt", "AAAA"), "salt shorter than 8 bytes"),
    ("bad salt", _set(f"{KS0}/kdf/salt", "!!"), "'salt' is not base64"),
    ("pbkdf2 hash", _set("keyslots/1/kdf/hash", "md4"), "unsupported hash 'md4'"),
    ("af hash", _set(f"{KS0}/af/hash", None), "'hash' is not a string"),
    ("stripes 0", _set(f"{KS0}/af/stripes", 0), "key_size and stripes must be at least 1"),
    ("stripes huge", _set(f"{KS0}/af/stripes", 10**9), "area too small for its key"),
    ("key size", _set(f"{KS0}/key_size", "64x"), "'key_size' is not an integer"),
    ("area key size", _set(f"{KS0}/area/key_size", 48), "XTS keys are 32 or 64 bytes"),
    ("area offset text", _set(f"{KS0}/area/offset", "-1"), "'offset' is not an integer"),
    ("area offset huge", _set(f"{KS0}/area/offset", "9" * 30), "'offset' is not an integer"),
    ("area in header", _set(f"{KS0}/area/offset", "4096"), "area outside the keyslots area"),
    ("area past end", _set(f"{KS0}/area/size", str(1 << 40)), "area outside the keyslots area"),
    ("areas overlap", _set("keyslots/1/area/offset", "40960"), "area overlaps keyslot 1"),
    ("priority", _set(f"{KS0}/priority", "high"), "'priority' is not an integer"),
    ("keyslots_size", _set("config/keyslots_size", str(1 << 40)), "'keyslots_size'"),
    ("keyslots_size align", _set("config/keyslots_size", "16744447"), "multiple of 4096"),
    ("json_size", _set("config/json_size", "4096"), "json_size does not match"),
    ("no segment", _set("segments", {}), "no segment 0"),
    ("segment type", _set("segments/0/type", "linear"), "not a crypt segment"),
    ("segment offset", _set("segments/0/offset", "0"), "segment 0 starts inside"),
    ("segment beyond", _set("segments/0/offset", str(SIZE + 4096)), "beyond the end of the dev"),
    ("segment size", _set("segments/0/size", str(SIZE)), "beyond the end of the device"),
    ("sector size", _set("segments/0/sector_size", 4097), "bad sector size"),
    ("iv tweak", _set("segments/0/iv_tweak", []), "'iv_tweak' is not an integer"),
    ("digest type", _set("digests/0/type", "argon2"), "digest 0: unsupported type"),
    ("digest slots", _set("digests/0/keyslots", ["7"]), "refers to a keyslot that does not"),
    ("digest slots str", _set("digests/0/keyslots", "01"), "'keyslots' is not an array"),
    ("digest iterations", _set("digests/0/iterations", 0), "no iterations"),
    ("digest empty", _set("digests/0/digest", ""), "digest is not 16 to 64 bytes"),
    ("digest hash", _set("digests/0/hash", 5), "'hash' is not a string"),
    ("tokens", _set("tokens", None), "'tokens' is not an object"),
]


@pytest.mark.parametrize("what,edit,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_json_is_one_line_error(volume, what: str, edit: Callable, reason: str) -> None:
    region, good = volume
    meta = copy.deepcopy(good.metadata)
    edit(meta)
    hostile = damaged(region, (0, _seal(meta, luks2.MAGIC_PRIMARY, 0)),
                      (HDR, _seal(meta, luks2.MAGIC_SECONDARY, HDR)))
    with pytest.raises(luks2.CorruptHeader) as err:
        luks2.parse_header(hostile, SIZE)
    text = str(err.value)
    assert text.startswith("no valid LUKS2 header: primary at 0: ") and "\n" not in text
    assert reason in text.split("; secondary at ")[0], text
    # With one good copy left, the volume opens through it and says why the other failed.
    vol = luks2.parse_header(damaged(region, (0, _seal(meta, luks2.MAGIC_PRIMARY, 0))), SIZE)
    assert vol.copy == "secondary" and reason in vol.warnings[0]


JSON_TEXTS = [
    ("array", b"[]", "does not start with '{'"),
    ("space first", b" {}", "does not start with '{'"),
    ("junk after NUL", b'{"a": 1}\0junk', "data after the JSON text"),
    ("no NUL", b"{" + b" " * (HDR - 4096 - 1), "no NUL after the JSON text"),
    ("NaN", b'{"a": NaN}', "does not parse"),
    ("Infinity", b'{"a": -Infinity}', "does not parse"),
    ("truncated", b'{"a": 1', "does not parse"),
    ("not UTF-8", b'{"a": "\xff"}', "does not parse"),
    ("deep nesting", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "does not parse"),
    ("5000 digits", b'{"a": ' + b"9" * 5000 + b"}", "does not parse"),
]


@pytest.mark.parametrize("what,text,reason", JSON_TEXTS, ids=[t[0] for t in JSON_TEXTS])
def test_hostile_json_text(what: str, text: bytes, reason: str) -> None:
    region = _seal(None, luks2.MAGIC_PRIMARY, 0, text=text)
    region += _seal(None, luks2.MAGIC_SECONDARY, HDR, text=text)
    with pytest.raises(luks2.CorruptHeader) as err:
        luks2.parse_header(region, SIZE)
    assert reason in str(err.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
    | st.text(max_size=8) | st.sampled_from(["dynamic", "0", "32768", "luks2", "sha256"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_json_gives_a_volume_or_a_corrupt_header(volume, data: st.DataObject) -> None:
    """Replace any node of a valid header with any JSON: never another exception,
    and a volume that parses answers every question asked of it."""
    region, good = volume
    meta = copy.deepcopy(good.metadata)
    path = data.draw(st.sampled_from(_paths(meta)[1:]))
    value = data.draw(_json)
    node = meta
    for p in path[:-1]:
        node = node[p]
    if data.draw(st.booleans()):
        node[path[-1]] = value
    else:
        del node[path[-1]]
    blob = damaged(region, (0, _seal(meta, luks2.MAGIC_PRIMARY, 0)),
                   (HDR, _seal(meta, luks2.MAGIC_SECONDARY, HDR)))
    try:
        vol = luks2.parse_header(blob, SIZE)
    except luks2.CorruptHeader as exc:
        assert "\n" not in str(exc)
        return
    vol.summary()
    luks2.check_supported(vol) if vol.segment.encryption == luks2.CIPHER else None
    for ks in vol.keyslots.values():
        area = region[ks.area_offset:ks.area_offset + ks.material_size]
        with contextlib.suppress(luks2.CorruptHeader):
            luks2.open_keyslot(vol, ks.id, b"wrong", area)


def test_crafted_volume_key_is_refused() -> None:
    """A header whose author knows the key can make its halves equal: XTS refuses such a
    key, and so does unlocking, with a one-line error instead of a ValueError later."""
    weak = bytes(32) * 2
    region, vol = luks2.format_volume(KEY, [(b"pw", FAST_PBKDF2)], digest_iterations=1000)
    meta = copy.deepcopy(vol.metadata)
    salt = base64.b64decode(meta["digests"]["0"]["salt"])
    digest = hashlib.pbkdf2_hmac("sha256", weak, salt, 1000, 32)
    meta["digests"]["0"]["digest"] = base64.b64encode(digest).decode()
    ks = vol.keyslots[0]
    slot_key = luks2.derive(ks.kdf, b"pw", ks.kdf_salt, 64)
    material = luks2.af_split(weak, luks2.AF_STRIPES)
    material += bytes(ks.material_size - len(material))
    area = luks2.xts.encrypt(slot_key, material, 0, sector_size=512)
    crafted = luks2.parse_header(damaged(region, (0, _seal(meta, luks2.MAGIC_PRIMARY, 0))),
                                 SIZE)
    with pytest.raises(luks2.CorruptHeader, match="does not fit aes-xts-plain64"):
        luks2.open_keyslot(crafted, 0, b"pw", area)


# -- drives and the CLI, with cryptsetup as the independent check ------------------

def cryptsetup_opens(image: Path, key_file: Path, tmp_path: Path) -> bool:
    """Whether cryptsetup opens the image; it gets copies, as it repairs what it reads."""
    exe = require_tool("cryptsetup")
    results = []
    for args in (["open", "--test-passphrase", "--key-file", str(key_file)], ["luksDump"]):
        scratch = tmp_path / "cryptsetup-copy.img"
        shutil.copyfile(image, scratch)
        proc = subprocess.run([exe, *args, str(scratch)], capture_output=True, text=True,
                              timeout=120)
        results.append(proc.returncode == 0)
        scratch.unlink()
    assert results[0] == results[1], "cryptsetup open and luksDump disagree"
    return results[0]


def poke(image: Path, at: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.fixture(scope="module")
def cli_drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("dmg")
    image, saved = base / "drive.img", base / "recovery.txt"
    run_cli("drive", "format", str(image), "--drive-size", "40M", "--session-id", "dmg-1",
            "--save-recovery-password", str(saved), *FAST_KDF_ARGS, check_code=0)
    key_file = base / "key"
    key_file.write_text(saved.read_text().strip())  # cryptsetup: every byte counts
    return image, saved, key_file


@pytest.mark.parametrize("what,at,data", [
    ("flip byte 0", 0, b"\xb3"),  # 'L' ^ 0xFF
    ("zero 4096 bytes", 0, bytes(4096)),
    ("checksum", 448, b"\x00" * 32),
])
def test_cli_reads_a_drive_whose_primary_is_damaged(tmp_path: Path, cli_drive, what: str,
                                                    at: int, data: bytes) -> None:
    image0, saved, key_file = cli_drive
    image = tmp_path / "d.img"
    shutil.copyfile(image0, image)
    poke(image, at, data)
    before = image.read_bytes()[:2 * HDR]
    with drives.open_drive(image) as drive:
        vol = drives.read_volume(drive)
        assert vol.copy == "secondary"
        assert drives.unlock(drive, vol, saved.read_text().strip().encode())[0] == 0
    proc = run_cli("drive", "info", str(image), check_code=0)
    assert f"header copy used: secondary at {HDR}" in proc.stdout
    assert "warning       primary LUKS2 header at 0 is damaged" in proc.stdout
    proc = run_cli("drive", "info", str(image), "--json", "--recovery-password-file",
                   str(saved), check_code=0)
    info = json.loads(proc.stdout)
    assert (info["header_copy"], info["header_offset"]) == ("secondary", HDR)
    assert info["superblock"]["matches_header"] is True
    proc = run_cli("drive", "unlock", str(image), "--recovery-password-file", str(saved),
                   check_code=0)
    assert "opens keyslot 0" in proc.stdout
    assert proc.stderr.startswith(f"pipeline drive unlock: warning: {image}: primary LUKS2 "
                                  "header at 0 is damaged")
    assert image.read_bytes()[:2 * HDR] == before  # read-only: nothing repaired
    assert cryptsetup_opens(image, key_file, tmp_path)


def test_cli_both_copies_damaged(tmp_path: Path, cli_drive) -> None:
    image0, saved, key_file = cli_drive
    image = tmp_path / "d.img"
    shutil.copyfile(image0, image)
    poke(image, 0, b"\xb3")
    poke(image, HDR + 5000, b"\xff")
    for args in (["drive", "info", str(image)],
                 ["drive", "unlock", str(image), "--recovery-password-file", str(saved)]):
        proc = run_cli(*args, check_code=EXIT_INTEGRITY)
        assert proc.stderr.strip() == (
            f"pipeline {args[0]} {args[1]}: {image}: no valid LUKS2 header: primary at 0: "
            f"bad magic; secondary at {HDR}: checksum mismatch")
    assert not cryptsetup_opens(image, key_file, tmp_path)


def test_cli_secondary_damaged_reads_the_primary(tmp_path: Path, cli_drive) -> None:
    image0, saved, key_file = cli_drive
    image = tmp_path / "d.img"
    shutil.copyfile(image0, image)
    poke(image, HDR, bytes(4096))
    proc = run_cli("drive", "unlock", str(image), "--recovery-password-file", str(saved),
                   check_code=0)
    assert f"secondary LUKS2 header at {HDR} is damaged (bad magic)" in proc.stderr
    assert cryptsetup_opens(image, key_file, tmp_path)


def test_we_read_a_cryptsetup_volume_with_larger_metadata(tmp_path: Path) -> None:
    """cryptsetup's --luks2-metadata-size puts the secondary at 64 KiB; with the primary
    magic gone, both of us probe for it there."""
    exe = require_tool("cryptsetup")
    image, pw = tmp_path / "cs.img", tmp_path / "pw"
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    pw.write_bytes(b"correct horse")
    subprocess.run([exe, "luksFormat", "--batch-mode", "--type", "luks2",
                    "--luks2-metadata-size", "64k", "--cipher", "aes-xts-plain64",
                    "--key-size", "512", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                    "1000", "--key-file", str(pw), str(image)], check=True, timeout=120)
    poke(image, 0, b"\xb3")
    with drives.open_drive(image) as drive:
        vol = drives.read_volume(drive)
        assert (vol.copy, vol.offset, vol.hdr_size) == ("secondary", 64 << 10, 64 << 10)
        assert drives.unlock(drive, vol, b"correct horse")[0] == 0
    assert cryptsetup_opens(image, pw, tmp_path)


def test_verify_and_import_read_past_a_damaged_primary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {"a.txt": b"hello\n" * 1000, "d/b.bin": bytes(range(256)) * 300, "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    jdir, image = tmp_path / "j", tmp_path / "d1.img"
    run_cli("prep", "--srcdir", str(src), "--dstdir", "seed-test/vdir/", "--journal-dir",
            str(jdir), "--session-id", "dmg-2", "--drive-size", "40M", "--drive", str(image),
            *FAST_KDF_ARGS, check_code=0)
    poke(image, 0, b"\xb3")
    before = image.read_bytes()[:2 * HDR]
    proc = run_cli("verify", "--journal-dir", str(jdir), check_code=0)
    assert f"pipeline verify: warning: {image}: primary LUKS2 header at 0 is damaged" \
        in proc.stderr
    from pipeline import journal  # the drive's recovery password, as an operator has it
    (j,) = journal.session_journals(jdir)
    saved = tmp_path / "pw"
    saved.write_text(j.recovery_password + "\n")
    j.close()
    account, logs = tmp_path / "account", tmp_path / "logs"
    account.mkdir()
    logs.mkdir()
    proc = run_cli("import", "--drive", str(image), "--to", f"file://{account}",
                   "--recovery-password-file", str(saved), "--log-dir", str(logs),
                   check_code=0)
    assert f"pipeline import: warning: {image}: primary LUKS2 header at 0 is damaged" \
        in proc.stderr
    for name, data in files.items():
        assert (account / "seed-test" / "vdir" / name).read_bytes() == data
    assert image.read_bytes()[:2 * HDR] == before  # neither command repaired it
