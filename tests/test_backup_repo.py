"""Backup repository round trips on a directory, a local storage account and Azurite.

Also the helpers the other backup tests share: a source tree with the awkward cases,
a description of a tree to compare restores with, and the seed's import emulated
(the repository's files copied into a container as page blobs of the same bytes).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import progress
from pipeline.backup import archive
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import Backend, DirBackend, StorageBackend
from pipeline.backup.errors import NoRepository, PartialRestore, WrongPassphrase
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import run_restore
from pipeline.storage import BlobType, Storage, open_storage
from pipeline.storage.base import CELL
from tests.conftest import FAST_ARGON

MiB = 1 << 20
PASS = b"correct horse battery staple"
CONTAINER = "backups"


# --------------------------------------------------------------------------- shared helpers


def make_tree(root: Path, seed: int = 1) -> None:
    """Empty files and dirs, non-ASCII names, a sparse file, a zero-heavy file, odd modes,
    a symlink, and fixed mtimes (directories last, so their times stick)."""
    r = random.Random(seed)
    (root / "docs" / "empty dir").mkdir(parents=True)
    (root / "données" / "日本").mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "docs" / "readme.txt").write_text("hello\n" * 5000)
    (root / "données" / "日本" / "ünïcödé файл.bin").write_bytes(r.randbytes(300_000))
    with open(root / "sparse.img", "wb") as f:             # holes, data, written zeros
        f.truncate(24 * MiB)
        f.seek(3 * MiB + 17)
        f.write(r.randbytes(700_000))
        f.seek(12 * MiB)
        f.write(bytes(3 * MiB) + b"tail" * 1000)
    with open(root / "zeros.bin", "wb") as f:               # zero-heavy, no holes
        f.write(bytes(5 * MiB) + r.randbytes(4096) + bytes(2 * MiB))
    (root / "docs" / "big.bin").write_bytes(r.randbytes(3 * MiB) + b"ab" * MiB)
    os.symlink("docs/readme.txt", root / "link")
    os.chmod(root / "docs" / "readme.txt", 0o640)
    os.chmod(root / "zeros.bin", 0o400)
    os.chmod(root / "docs" / "empty dir", 0o750)
    t = 1_600_000_000_123_456_789
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(p, ns=(t + i * 1000, t + i * 1000), follow_symlinks=False)
    os.utime(root, ns=(t - 5, t - 5))


def describe(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must reproduce: type, mode, mtime, size and content digest."""
    out: dict[str, tuple[Any, ...]] = {}
    st = os.stat(root)
    out["."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(p), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(4 * MiB):
                    h.update(block)
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size,
                        h.hexdigest())
    return out


class CountingStorage:
    """A Storage that counts every byte handed to it for writing (the network, online)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = inner.name
        self.sent = 0

    def write_part(self, container: str, blob: str, blob_type: BlobType, size: int, offset: int,
                   data: bytes) -> None:
        self.sent += len(data)
        self.inner.write_part(container, blob, blob_type, size, offset, data)

    def put(self, container: str, blob: str, data: bytes) -> None:
        self.sent += len(data)
        self.inner.put(container, blob, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _chunk_ids(repo: Repository, path: Path) -> dict[bytes, int]:
    """The ids and lengths of ``path``'s chunks under ``repo``'s own chunker and keys."""
    from pipeline.backup.walk import FileReader

    reader = FileReader(repo.config.chunker, repo.crypto.keys.chunker_seed, repo.crypto.chunk_id)
    node = fmt.Node("file", path.name)
    assert reader.read(path, node, lambda cid, data, n: None, lambda msg: None)
    return {cid: n for cid, n in node.content if cid is not None}


def import_seed(repo_dir: Path, storage: Storage, container: str = CONTAINER,
                skip: Callable[[str], bool] = lambda name: False) -> int:
    """What prep + import do to a seeded repository: every file becomes a page blob of the
    same bytes at the container's root (``skip``: files whose drive is not imported yet).
    Returns the bytes copied."""
    storage.ensure_container(container)
    total = 0
    for p in sorted(repo_dir.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        assert len(data) % 512 == 0, p        # page blobs need it; prep refuses otherwise
        name = p.relative_to(repo_dir).as_posix()
        if skip(name):
            continue
        for off in range(0, len(data), CELL):
            storage.write_part(container, name, BlobType.PAGE, len(data), off,
                               data[off:off + CELL])
        storage.commit(container, name, BlobType.PAGE, len(data), [])
        total += len(data)
    return total


async def backup(repo: Repository, src: Path, parent: bool = True) -> archive.BackupResult:
    warnings: list[str] = []
    ref = (await trio.to_thread.run_sync(archive.find_parent, repo, str(src.resolve()),
                                         socket.gethostname()) if parent else None)
    result = await archive.run_backup(repo, src.resolve(), progress.Stats(), warnings.append,
                                      archive.BackupOptions(threads=2), ref)
    assert not warnings, warnings
    return result


async def restore(repo: Repository, snapshot: str | None, target: Path) -> fmt.Manifest:
    ref = find_snapshot(repo.snapshots(), snapshot)
    return await run_restore(repo, ref, target, progress.Stats(), 2)


def reopen(backend: Backend) -> Repository:
    repo = Repository.open(backend, PASS, "test")
    repo.load_index()
    return repo


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, as cli.py would see it."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def storage_factory(kind: str, tmp_path: Path, request: pytest.FixtureRequest
                    ) -> Callable[[], Storage]:
    if kind == "local":
        (tmp_path / "account").mkdir(exist_ok=True)
        return lambda: open_storage(f"file://{tmp_path / 'account'}")
    conn = request.getfixturevalue("azurite")
    return lambda: open_storage(conn)


# --------------------------------------------------------------------------- tests


async def test_round_trip_in_a_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = describe(src)
    backend = DirBackend(tmp_path / "staging" / "repo")
    repo = Repository.init(backend, PASS, FAST_ARGON)
    first = await backup(repo, src)
    assert first.manifest.files == 6 and first.manifest.dirs == 4

    await restore(reopen(DirBackend(backend.root)), None, tmp_path / "out")
    assert describe(tmp_path / "out") == before
    # holes and zero runs come back as holes, not as written zeros
    assert os.stat(tmp_path / "out" / "sparse.img").st_blocks * 512 < 4 * MiB
    assert not list((tmp_path / "out").rglob(".pipeline-restore*"))

    # nothing changed: no chunk is stored again, only the new snapshot file is written
    sent = backend.bytes_sent
    second = await backup(repo, src)
    assert second.chunks_new == 0 and second.packs == 0
    assert backend.bytes_sent - sent == second.bytes_sent <= 2048
    assert second.parent is not None and second.parent.id == first.snapshot.id
    # every repository file is a multiple of 512 bytes (page blobs), nothing left in .partial;
    # keys, config, packs, index, snapshots are the owner's only (0600, directories 0700)
    for p in [Path(backend.root), *Path(backend.root).rglob("*")]:
        assert not p.is_file() or p.stat().st_size % 512 == 0, p
        assert stat.S_IMODE(p.stat().st_mode) == (0o600 if p.is_file() else 0o700), p
    backend.close()
    assert not (tmp_path / "staging" / ".repo.partial").exists()


@pytest.mark.parametrize("kind", ["local", "azure"])
async def test_seed_import_then_online_backup(kind: str, tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    """Offline into staging, the repository imported as page blobs, then online backups
    that send only what changed, and restores of every snapshot, byte for byte."""
    make = storage_factory(kind, tmp_path, request)
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    states = [describe(src)]
    staging = DirBackend(tmp_path / "staging" / "repo")
    seed = await backup(Repository.init(staging, PASS, FAST_ARGON), src)
    assert import_seed(Path(staging.root), make()) > 0

    counting = CountingStorage(make())
    online = StorageBackend(counting, CONTAINER)
    repo = reopen(online)
    lock = counting.sent  # the repository lock file, written as it opens
    big_before = _chunk_ids(repo, src / "docs" / "big.bin")
    (src / "docs" / "new.txt").write_text("new file\n")
    (src / "données" / "日本" / "ünïcödé файл.bin").rename(src / "moved.bin")
    (src / "docs" / "readme.txt").unlink()
    with open(src / "docs" / "big.bin", "r+b") as f:
        f.seek(MiB + 5)
        f.write(b"X" * 4096)
    states.append(describe(src))
    second = await backup(repo, src)
    assert second.parent is not None and second.parent.id == seed.snapshot.id
    assert counting.sent - lock == online.bytes_sent - lock == second.bytes_sent
    # Only big.bin's changed chunks and new.txt are new: the moved file is not sent.  Which
    # chunks changed depends on the repository's random chunker seed (restic's polynomial),
    # so the expectation is computed with this repository's chunker, not a fixed bound.
    big_after = _chunk_ids(repo, src / "docs" / "big.bin")
    changed = {cid: n for cid, n in big_after.items() if cid not in big_before}
    assert second.chunks_new == len(changed) + 1
    assert second.raw_new == sum(changed.values()) + len("new file\n")
    assert 0 < counting.sent - lock <= second.raw_new + 64 * 1024

    refs = repo.snapshots()
    assert [r.id for r in refs] == [seed.snapshot.id, second.snapshot.id]
    for i, ref in enumerate(refs):
        await restore(reopen(StorageBackend(make(), CONTAINER)), ref.hex[:12],
                      tmp_path / f"out{i}")
        assert describe(tmp_path / f"out{i}") == states[i]


async def test_snapshots_oldest_first_and_prefix_lookup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("1")
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    made = []
    for i in range(3):
        (src / "f").write_text(str(i))
        made.append((await backup(repo, src)).snapshot)
    refs = repo.snapshots()
    assert [r.id for r in refs] == [m.id for m in made]
    assert [r.time for r in refs] == sorted(r.time for r in refs)
    assert find_snapshot(refs, made[1].hex[:8]).id == made[1].id
    assert find_snapshot(refs, None).id == made[2].id


async def test_wrong_passphrase_and_missing_repository(tmp_path: Path) -> None:
    backend = DirBackend(tmp_path / "repo")
    Repository.init(backend, PASS, FAST_ARGON)
    with pytest.raises(WrongPassphrase) as info:
        Repository.open(backend, b"not it", "pass.txt")
    assert info.value.exit_code == 2 and "pass.txt" in str(info.value)
    with pytest.raises(NoRepository) as missing:
        Repository.open(DirBackend(tmp_path / "nothing"), PASS, "pass.txt")
    assert missing.value.exit_code == 7


def _secret_forms(value: bytes) -> list[bytes]:
    return [value, value.hex().encode(), base64.b64encode(value),
            base64.b64encode(value).rstrip(b"=")]


async def test_passphrase_and_keys_never_in_the_clear(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    (src / "notes.txt").write_bytes(b"no secret here\n")
    backend = DirBackend(tmp_path / "staging" / "repo")
    repo = Repository.init(backend, PASS, FAST_ARGON)
    await backup(repo, src)
    keys = repo.crypto.keys
    needles = _secret_forms(PASS) + _secret_forms(keys.enc_key) + _secret_forms(keys.id_key)
    needles.append(str(keys.chunker_seed).encode())
    files = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        data = p.read_bytes()
        for needle in needles:
            assert needle not in data, (p, needle[:8])
    # and the file contents and names are not readable either
    for p in files:
        data = p.read_bytes()
        assert b"hello\nhello\n" not in data and "ünïcödé".encode() not in data


async def test_damaged_pack_fails_only_its_files(tmp_path: Path) -> None:
    """More damage kinds and the expected sets: test_backup_damage.py."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    backend = DirBackend(tmp_path / "repo")
    await backup(Repository.init(backend, PASS, FAST_ARGON), src)
    pack = next((tmp_path / "repo" / "data").rglob("*"))
    while not pack.is_file():
        pack = next(pack.iterdir())
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x40
    pack.write_bytes(bytes(data))
    with pytest.raises(PartialRestore) as info:
        await restore(reopen(DirBackend(tmp_path / "repo")), None, tmp_path / "out")
    assert info.value.exit_code == 4 and info.value.failed
    lost = {f.path for f in info.value.failed}
    assert describe(tmp_path / "out") == {k: v for k, v in describe(src).items()
                                          if k not in lost}


class FailingBackend(DirBackend):
    """Fails the Nth pack upload (restic's failSaveRepo)."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.packs = 0
        self.fail_at = fail_at

    def put(self, name: str, data: bytes) -> None:
        if name.startswith(fmt.DATA):
            self.packs += 1
            if self.packs == self.fail_at:
                raise OSError(5, "Input/output error")
        super().put(name, data)


async def test_interrupted_backup_writes_no_snapshot_and_the_next_one_completes(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(3)
    for i in range(6):
        (src / f"f{i}").write_bytes(r.randbytes(2 * MiB))
    before = describe(src)
    Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    failing = FailingBackend(tmp_path / "repo", fail_at=2)
    repo = Repository.open(failing, PASS, "test")
    repo.config = fmt.Config(repo.config.repo_id, repo.config.chunker, pack_size=2 * MiB)
    with pytest.raises(BaseExceptionGroup) as info:
        await backup(repo, src)
    assert isinstance(leaf(info.value), OSError)
    assert repo.snapshots() == []
    again = reopen(DirBackend(tmp_path / "repo"))
    result = await backup(again, src)
    assert result.manifest.files == 6
    await restore(again, None, tmp_path / "out")
    assert describe(tmp_path / "out")["f5"] == before["f5"]
