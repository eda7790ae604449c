"""Chunk and pack ids: keyed BLAKE3 in repositories made now (config version 2), HMAC-SHA-256
and SHA-256 in those seeded before (version 1), which keep working as they are.  Checked
against the published vectors (BLAKE3's test_vectors.json, RFC 4231), not against our own
code; the choice is sealed in the key material, so editing the plaintext config cannot
switch it."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import blake3
import pytest
import trio

from pipeline.backup import crypto
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.check import check_repository
from pipeline.backup.errors import CorruptRepository
from pipeline.backup.repo import Repository
from pipeline.progress import Stats
from tests.conftest import FAST_ARGON
from tests.test_backup_repo import PASS, backup, describe, make_tree, reopen, restore

# BLAKE3-team/BLAKE3 test_vectors/test_vectors.json: input i % 251, the first 32 bytes
VECTOR_KEY = b"whats the Elvish word for friend"
KEYED = {0: "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26",
         1: "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b",
         1024: "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4",
         1025: "357dc55de0c7e382c900fd6e320acc04146be01db6a8ce7210b7189bd664ea69",
         4097: "00df940cd36bb9fa7cbbc3556744e0dbc8191401afe70520ba292ee3ca80abbc",
         7169: "ed9b1a922c046fdb3d423ae34e143b05ca1bf28b710432857bf738bcedbfa511"}
HASH = {0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
        7169: "a003fc7a51754a9b3c7fae0367ab3d782dccf28855a03d435f8cfe74605e7817"}


def _input(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _keys(id_key: bytes, ids: str = fmt.BLAKE3) -> crypto.MasterKeys:
    return crypto.MasterKeys(bytes(32), id_key, 5, ids)


@pytest.mark.parametrize("n", sorted(KEYED))
def test_chunk_ids_are_keyed_blake3(n: int) -> None:
    cr = crypto.Crypto(_keys(VECTOR_KEY))
    assert cr.chunk_id(_input(n)).hex() == KEYED[n]
    assert cr.chunk_id(memoryview(_input(n))).hex() == KEYED[n]


@pytest.mark.parametrize("n", sorted(HASH))
def test_pack_ids_are_blake3(n: int) -> None:
    cr = crypto.Crypto(_keys(VECTOR_KEY))
    assert cr.pack_hash(_input(n)).digest().hex() == HASH[n]
    h = cr.pack_hash()
    for i in range(0, n, 500):                 # in parts, as a pack is hashed
        h.update(_input(n)[i:i + 500])
    assert h.digest().hex() == HASH[n]


def test_older_repositories_keep_hmac_sha256_and_sha256() -> None:
    """RFC 4231 test case 2 (a short key: the id function does not care), and a pack id."""
    cr = crypto.Crypto(_keys(b"Jefe", fmt.HMAC_SHA256))
    assert cr.chunk_id(b"what do ya want for nothing?").hex() == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert cr.pack_hash(b"abc").digest().hex() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _repo(tmp_path: Path, keys: crypto.MasterKeys | None = None) -> tuple[Path, Repository]:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON, keys=keys)
    trio.run(backup, repo, src)
    return src, repo


def _config(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "repo" / "config").read_bytes().rstrip(b"\0"))


def _packs(root: Path) -> list[Path]:
    return [p for p in (root / "data").rglob("*") if p.is_file()]


def test_a_new_repository_names_chunks_and_packs_by_blake3(tmp_path: Path) -> None:
    src, repo = _repo(tmp_path)
    assert _config(tmp_path)["version"] == 2 and _config(tmp_path)["chunk_id"] == "blake3"
    packs = _packs(tmp_path / "repo")
    assert packs and all(blake3.blake3(p.read_bytes()).hexdigest() == p.name for p in packs)
    small = src / "docs" / "readme.txt"        # one chunk: its id is the file's keyed hash
    data = small.read_bytes()
    assert 0 < len(data) < fmt.ChunkerParams().min
    cid = blake3.blake3(data, key=repo.crypto.keys.id_key).digest()
    assert cid in reopen(DirBackend(tmp_path / "repo")).index


def test_a_repository_seeded_before_blake3_backs_up_restores_and_checks(tmp_path: Path
                                                                        ) -> None:
    """Made as an older pipeline made it: key material without "ids", config version 1."""
    real = crypto.MasterKeys.encode

    def old_encode(self: crypto.MasterKeys) -> bytes:
        obj = json.loads(real(self))
        del obj["ids"]
        return json.dumps(obj).encode()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypto.MasterKeys, "encode", old_encode)
        src, _ = _repo(tmp_path, _keys(bytes(range(32)), fmt.HMAC_SHA256))
    assert _config(tmp_path)["version"] == 1 and _config(tmp_path)["chunk_id"] == "hmac-sha256"
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name
               for p in _packs(tmp_path / "repo"))
    (src / "new.bin").write_bytes(b"n" * 300_000)        # an incremental backup, then back
    repo = reopen(DirBackend(tmp_path / "repo"))
    assert repo.crypto.keys.ids == fmt.HMAC_SHA256
    trio.run(backup, repo, src)
    id_key = bytes(range(32))
    assert hmac.new(id_key, b"n" * 300_000, "sha256").digest() in reopen(
        DirBackend(tmp_path / "repo")).index
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name
               for p in _packs(tmp_path / "repo"))
    trio.run(restore, reopen(DirBackend(tmp_path / "repo")), None, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)
    report = trio.run(check_repository, reopen(DirBackend(tmp_path / "repo")), Stats(), True)
    assert not report.problems and report.packs_read == len(_packs(tmp_path / "repo"))


def test_check_names_a_blake3_pack_whose_content_changed(tmp_path: Path) -> None:
    _repo(tmp_path)
    pack = _packs(tmp_path / "repo")[0]
    data = bytearray(pack.read_bytes())
    data[100] ^= 1
    pack.write_bytes(bytes(data))
    report = trio.run(check_repository, reopen(DirBackend(tmp_path / "repo")), Stats(), True)
    assert any("does not match its name" in p for p in report.problems)


@pytest.mark.parametrize("edit, why", [
    ({"version": 1, "chunk_id": "hmac-sha256"}, "not the one its keys were made with"),
    ({"version": 1}, "is not its version's"),
    ({"chunk_id": "hmac-sha256"}, "is not its version's"),
    ({"version": 3}, "upgrade pipeline"),
    ({"version": True}, "upgrade pipeline"),
    ({"version": [2]}, "upgrade pipeline"),         # was a TypeError (unhashable): exit 70
    ({"version": {"2": 2}}, "upgrade pipeline"),
    ({"version": 2.0}, "upgrade pipeline"),         # a JSON integer, as every other field
])
def test_an_edited_config_cannot_switch_the_ids(tmp_path: Path, edit: dict[str, object],
                                                why: str) -> None:
    _repo(tmp_path)
    config = {**_config(tmp_path), **edit}
    (tmp_path / "repo" / "config").write_bytes(fmt.pad(fmt.encode_json(config)))
    with pytest.raises(CorruptRepository, match=why):
        reopen(DirBackend(tmp_path / "repo"))


def test_key_material_naming_unknown_ids_is_refused() -> None:
    keys = _keys(bytes(32), "md5")
    with pytest.raises(CorruptRepository, match="upgrade pipeline"):
        crypto.MasterKeys.decode(keys.encode())
