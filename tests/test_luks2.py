"""LUKS2 header, keyslots, AF splitter and recovery passwords (pure, no files)."""

from __future__ import annotations

import base64
import json
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import EXIT_BAD_INPUT, InvalidRecoveryPassword
from pipeline.volume import luks2

from .conftest import FAST_ARGON, FAST_PBKDF2

KEY = bytes(range(64))


# -- recovery passwords ------------------------------------------------------

def test_recovery_password_shape_and_check_digits() -> None:
    seen = set()
    for _ in range(200):
        pw = luks2.new_recovery_password()
        assert re.fullmatch(r"(\d{6}-){7}\d{6}", pw)
        groups = [int(g) for g in pw.split("-")]
        assert all(g % 11 == 0 and g < 720896 for g in groups)
        assert luks2.parse_recovery_password(pw) == pw
        seen.add(pw)
    assert len(seen) == 200  # 128 bits from the CSPRNG: no repeats


def test_recovery_password_known_valid_and_invalid() -> None:
    # A hand-made valid password: every group is 11 times a 16-bit number.
    good = "449328-149083-704913-135630-658559-208098-311311-390258"
    assert all(int(g) % 11 == 0 for g in good.split("-"))
    assert luks2.parse_recovery_password(f"  {good}\n") == good
    assert luks2.parse_recovery_password(good.replace("-", " ")) == good


@pytest.mark.parametrize("group", range(8))
def test_mistyped_group_is_reported_by_number(group: int) -> None:
    pw = luks2.new_recovery_password().split("-")
    digits = list(pw[group])
    digits[2] = str((int(digits[2]) + 1) % 10)  # one typo changes the value by 1000: not % 11
    pw[group] = "".join(digits)
    with pytest.raises(InvalidRecoveryPassword) as err:
        luks2.parse_recovery_password("-".join(pw))
    assert f"group {group + 1} " in str(err.value)
    assert err.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("text,needle", [
    ("123", "has 1 groups"),
    ("-".join(["000000"] * 7), "has 7 groups"),
    ("-".join(["000000"] * 7 + ["00000a"]), "group 8"),
    ("-".join(["000000"] * 7 + ["0000000"]), "group 8"),
    ("-".join(["720896"] + ["000000"] * 7), "group 1"),  # 65536 * 11: out of range
])
def test_malformed_recovery_passwords(text: str, needle: str) -> None:
    with pytest.raises(InvalidRecoveryPassword) as err:
        luks2.parse_recovery_password(text)
    assert needle in str(err.value)


# -- AF splitter -------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=1, max_size=80), stripes=st.integers(1, 50),
       hash_name=st.sampled_from(["sha256", "sha1", "sha512"]))
def test_af_roundtrip(key: bytes, stripes: int, hash_name: str) -> None:
    material = luks2.af_split(key, stripes, hash_name)
    assert len(material) == len(key) * stripes
    assert luks2.af_merge(material, len(key), stripes, hash_name) == key


def test_af_any_damaged_stripe_loses_the_key() -> None:
    material = bytearray(luks2.af_split(KEY, 10))
    material[3 * 64 + 5] ^= 1
    assert luks2.af_merge(bytes(material), 64, 10) != KEY


# -- header and keyslots -----------------------------------------------------

@pytest.fixture(scope="module")
def volume() -> tuple[bytes, luks2.Volume]:
    return luks2.format_volume(KEY, [(b"recovery", FAST_ARGON), (b"operator", FAST_PBKDF2)],
                               label="lbl", token={"session_id": "S1", "sequence": 2})


def test_format_layout(volume: tuple[bytes, luks2.Volume]) -> None:
    region, vol = volume
    assert len(region) == luks2.DATA_OFFSET
    assert region[:6] == luks2.MAGIC_PRIMARY
    assert region[luks2.HDR_SIZE:luks2.HDR_SIZE + 6] == luks2.MAGIC_SECONDARY
    assert vol.copy == "primary" and not vol.warnings
    seg = vol.segment
    assert (seg.offset, seg.encryption, seg.sector_size, seg.size) == (
        luks2.DATA_OFFSET, "aes-xts-plain64", 4096, None)
    slots = vol.keyslots
    assert [s.kdf.type for s in slots.values()] == ["argon2id", "pbkdf2"]
    assert slots[1].area_offset == slots[0].area_offset + slots[0].area_size
    assert vol.token == {"session_id": "S1", "sequence": 2}
    assert vol.label == "lbl"
    # The AF material is encrypted: the raw key bytes are nowhere in the region.
    assert KEY not in region and KEY[:16] not in region


def _area(region: bytes, vol: luks2.Volume, slot: int) -> bytes:
    ks = vol.keyslots[slot]
    return region[ks.area_offset:ks.area_offset + ks.material_size]


def test_open_each_keyslot(volume: tuple[bytes, luks2.Volume]) -> None:
    region, vol = volume
    assert luks2.open_keyslot(vol, 0, b"recovery", _area(region, vol, 0)) == KEY
    assert luks2.open_keyslot(vol, 1, b"operator", _area(region, vol, 1)) == KEY
    assert luks2.open_keyslot(vol, 0, b"operator", _area(region, vol, 0)) is None
    assert luks2.open_keyslot(vol, 1, b"recovery ", _area(region, vol, 1)) is None


def test_damaged_keyslot_area_does_not_yield_a_wrong_key(volume) -> None:
    region, vol = volume
    area = bytearray(_area(region, vol, 0))
    area[1000] ^= 0x80
    assert luks2.open_keyslot(vol, 0, b"recovery", bytes(area)) is None


def test_damaged_primary_falls_back_to_secondary(volume) -> None:
    region, _ = volume
    blob = bytearray(region[:2 * luks2.HDR_SIZE])
    blob[5000] ^= 1  # inside the primary JSON area
    vol = luks2.parse_header(bytes(blob))
    assert vol.copy == "secondary"
    assert vol.offset == luks2.HDR_SIZE
    assert any("primary LUKS2 header at 0 is damaged (checksum mismatch)" in w
               for w in vol.warnings)
    assert luks2.open_keyslot(vol, 0, b"recovery", _area(region, vol, 0)) == KEY


def test_damaged_secondary_is_reported(volume) -> None:
    region, _ = volume
    blob = bytearray(region[:2 * luks2.HDR_SIZE])
    blob[luks2.HDR_SIZE + 100] ^= 1
    vol = luks2.parse_header(bytes(blob))
    assert vol.copy == "primary"
    assert len(vol.warnings) == 1
    assert "secondary LUKS2 header at 16384 is damaged (checksum mismatch)" in vol.warnings[0]


def test_both_copies_damaged(volume) -> None:
    region, _ = volume
    blob = bytearray(region)  # with no valid primary, every secondary offset is probed
    blob[5000] ^= 1
    blob[luks2.HDR_SIZE + 5000] ^= 1
    with pytest.raises(luks2.CorruptHeader, match="primary at 0: checksum mismatch; "
                       "secondary at 16384: checksum mismatch"):
        luks2.parse_header(bytes(blob))


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, 2 * luks2.HDR_SIZE - 1), mask=st.integers(1, 255))
def test_any_flipped_header_byte_is_detected_or_harmless(volume, pos: int, mask: int) -> None:
    region, good = volume
    blob = bytearray(region)
    blob[pos] ^= mask
    try:
        vol = luks2.parse_header(bytes(blob))
    except luks2.CorruptHeader:
        return
    # One copy still verifies: it must be an intact copy with the same metadata.
    assert (vol.metadata, vol.uuid, vol.seqid) == (good.metadata, good.uuid, good.seqid)
    # Only the unused tail of the 64-byte csum field (sha256 fills 32) goes unnoticed,
    # exactly as in cryptsetup; any other damage is reported.
    assert vol.warnings or pos % luks2.HDR_SIZE in range(480, 512)


def test_not_luks() -> None:
    with pytest.raises(luks2.CorruptHeader, match="no valid LUKS2 header"):
        luks2.parse_header(bytes(8192), device_size=8192)
    with pytest.raises(luks2.CorruptHeader, match="no valid LUKS2 header"):
        luks2.parse_header(bytes(8 << 20))  # every secondary offset probed
    with pytest.raises(luks2.NeedMoreData):  # a blank start: the secondary may follow
        luks2.parse_header(bytes(8192))
    with pytest.raises(luks2.NeedMoreData):
        luks2.parse_header(b"LUKS\xba\xbe")


def test_json_is_what_cryptsetup_expects(volume) -> None:
    region, _ = volume
    text = region[4096:luks2.HDR_SIZE].split(b"\0", 1)[0]
    meta = json.loads(text)
    assert meta["config"] == {"json_size": "12288", "keyslots_size": "16744448"}
    assert meta["segments"]["0"]["offset"] == "16777216"
    assert meta["keyslots"]["0"]["area"] == {
        "type": "raw", "offset": "32768", "size": "258048",
        "encryption": "aes-xts-plain64", "key_size": 64}
    assert len(base64.b64decode(meta["keyslots"]["0"]["kdf"]["salt"])) == 32
    assert meta["tokens"]["0"]["type"] == "pipeline-drive"


def test_refuses_bad_volume_keys() -> None:
    with pytest.raises(ValueError):
        luks2.format_volume(bytes(64), [(b"x", FAST_PBKDF2)])
    with pytest.raises(ValueError):
        luks2.format_volume(KEY[:32], [(b"x", FAST_PBKDF2)])
    with pytest.raises(ValueError):
        luks2.format_volume(KEY, [])


# -- the keyslot KDF -----------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["argon2id", "argon2i"]), time=st.integers(1, 3),
       cpus=st.integers(1, 4), extra_kib=st.integers(0, 256),
       passphrase=st.binary(min_size=0, max_size=40), salt=st.binary(min_size=8, max_size=32),
       length=st.sampled_from([32, 64]))
def test_argon2_matches_openssl(kind: str, time: int, cpus: int, extra_kib: int,
                                passphrase: bytes, salt: bytes, length: int) -> None:
    """libargon2 (ours) against OpenSSL's Argon2 (through cryptography): two implementations."""
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2i, Argon2id

    kdf = luks2.KdfParams(type=kind, time=time, memory=8 * cpus + extra_kib, cpus=cpus)
    cls = Argon2id if kind == "argon2id" else Argon2i
    want = cls(salt=salt, length=length, iterations=time, lanes=cpus,
               memory_cost=kdf.memory).derive(passphrase)
    assert luks2.derive(kdf, passphrase, salt, length) == want


def test_argon2_lets_other_threads_run() -> None:
    """A drive's format or unlock must not freeze prep (progress, Ctrl-C, other drives):
    while one thread derives, this one keeps most of its speed (it kept ~3% with
    cryptography's Argon2, which held the GIL).  A ratio within one run, not a time."""
    import threading
    import time as clock

    kdf = luks2.KdfParams(type="argon2id", time=3, memory=64 * 1024, cpus=1)  # one core

    def spin(seconds: float) -> int:
        n, end = 0, clock.perf_counter() + seconds
        while clock.perf_counter() < end:
            n += 1
        return n

    start = clock.perf_counter()
    luks2.derive(kdf, b"pw", b"s" * 16, 64)
    derive_s = clock.perf_counter() - start
    rate_alone = spin(derive_s) / derive_s  # this thread's pace, over as long
    worker = threading.Thread(target=luks2.derive, args=(kdf, b"pw", b"s" * 16, 64))
    start = clock.perf_counter()
    worker.start()
    beside = 0
    while worker.is_alive():
        beside += spin(0.005)
    rate_beside = beside / (clock.perf_counter() - start)
    assert rate_beside / rate_alone > 0.3, (rate_beside, rate_alone)


def test_format_volume_holds_its_region_once_and_after_the_kdfs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The 16 MiB region is made once, written in place and returned without a copy, and
    only after every keyslot's KDF ran (argon2id takes 256 MiB by default: the region
    must not sit on top of it).  Measured: traced peak 32.3 -> 16.8 MiB; RSS with the
    default argon2id slot +272 -> +256 MiB."""
    luks2.format_volume(KEY, [(b"warm", FAST_PBKDF2)], digest_iterations=1000)  # caches
    during_kdf: list[int] = []
    real = luks2.derive

    def derive(*args: object) -> bytes:
        during_kdf.append(tracemalloc.get_traced_memory()[0])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(luks2, "derive", derive)
    tracemalloc.start()
    try:
        region, vol = luks2.format_volume(KEY, [(b"a", FAST_PBKDF2), (b"b", FAST_PBKDF2)],
                                          digest_iterations=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert type(region) is bytes and len(region) == luks2.DATA_OFFSET
    assert peak < luks2.DATA_OFFSET + (1 << 20), peak  # one region, not two (32 MiB)
    assert len(during_kdf) == 2 and max(during_kdf) < 1 << 20, during_kdf
    assert vol == luks2.parse_header(region[:2 * luks2.HDR_SIZE])
    assert [luks2.open_keyslot(vol, i, pw, _area(region, vol, i)) for i, pw in (
        (0, b"a"), (1, b"b"))] == [KEY, KEY]
