"""Storage backends: every behaviour runs against a local directory and against Azurite."""

from __future__ import annotations

import os
import random
import socket
import stat
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3.util.connection
from azure.core.pipeline.transport import HttpTransport

from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, EXIT_STORAGE, BadInput
from pipeline.storage import (
    BlobType,
    InvalidName,
    PartsMissing,
    Storage,
    StorageUnavailable,
    check_blob_name,
    check_container_name,
    open_storage,
)
from pipeline.storage.azure import CONNECT_TIMEOUT_S
from pipeline.storage.local import LocalStorage
from tests.azurite import ACCOUNT, ACCOUNT_KEY, connection_string

MB = 1 << 20
BLOCK, PAGE = BlobType.BLOCK, BlobType.PAGE
Factory = Callable[[], Storage]
TYPES = pytest.mark.parametrize("btype", [BLOCK, PAGE], ids=["block", "page"])


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def port_of(conn: str) -> int:
    return int(conn.split("127.0.0.1:")[1].split("/")[0])


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=["local", "azure"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory of Storage objects on one account: each call is a new "run"."""
    if request.param == "local":
        root = tmp_path / "account"
        root.mkdir()
        return lambda: open_storage(f"file://{root}")
    conn = request.getfixturevalue("azurite")
    return lambda: open_storage(conn)


@pytest.fixture
def store(make: Factory) -> Storage:
    s = make()
    s.check()
    return s


@pytest.fixture
def container(store: Storage) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(name)
    store.ensure_container(name)            # idempotent
    return name


# -- round trips ----------------------------------------------------------------------------

# (size, zero cells) per layout; page sizes are multiples of 512, block sizes need not be.
LAYOUTS = {
    "zeros-middle": (5 * MB + 1536, {1, 3}),
    "zero-at-end": (4 * MB + 1536, {2, 4}),       # the last, partial cell is zero
    "all-zero": (3 * MB, {0, 1, 2}),
    "dense": (3 * MB + 512, set()),
    "one-partial-cell": (4096, set()),
}


def expected(size: int, zero_cells: set[int], seed: int) -> bytes:
    out = bytearray(size)
    for cell in range(0, (size + MB - 1) // MB):
        if cell not in zero_cells:
            n = min(MB, size - cell * MB)
            out[cell * MB:cell * MB + n] = payload(n, seed + cell)
    return bytes(out)


@TYPES
@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_out_of_order_over_several_runs(make: Factory, container: str,
                                                   btype: BlobType, layout: str) -> None:
    size, zero_cells = LAYOUTS[layout]
    if btype is BLOCK and size % MB:
        size += 333                              # block blobs need no 512-byte multiple
    want = expected(size, zero_cells, seed=7)
    cells = [c for c in range(0, (size + MB - 1) // MB) if c not in zero_cells]
    random.Random(layout).shuffle(cells)
    blob = f"dir/{layout}/{btype.name.lower()}.bin"
    for i, cell in enumerate(cells):             # each part from its own "run"
        run = make()
        run.write_part(container, blob, btype, size, cell * MB, want[cell * MB:(cell + 1) * MB])
        if i == 0:
            assert run.size(container, blob) is None
    last = make()
    assert last.size(container, blob) is None and last.list(container) == []
    last.commit(container, blob, btype, size, sorted((c * MB for c in zero_cells), reverse=True))
    fresh = make()
    assert fresh.size(container, blob) == size
    assert fresh.read(container, blob, 0, size) == want
    assert fresh.get(container, blob) == want
    assert fresh.list(container) == [blob]
    for off, n in [(MB - 10, 20), (size - 5, 5), (size - 5, 100), (0, 0), (size, 10)]:
        assert fresh.read(container, blob, off, n) == want[off:off + n]


@TYPES
def test_zero_size_blob(store: Storage, container: str, btype: BlobType) -> None:
    store.commit(container, "empty", btype, 0, [])
    store.write_part(container, "empty2", btype, 0, 0, b"")
    store.commit(container, "empty2", btype, 0, [])
    for name in ("empty", "empty2"):
        assert store.size(container, name) == 0
        assert store.get(container, name) == b""
        assert store.read(container, name, 0, 10) == b""
    assert store.list(container) == ["empty", "empty2"]
    store.commit(container, "empty", btype, 0, [])          # again: fine


@TYPES
def test_rewrites_and_recommits_are_idempotent(make: Factory, container: str,
                                               btype: BlobType) -> None:
    size = 3 * MB
    want = expected(size, {1}, seed=3)
    first = make()
    for _ in range(2):
        first.write_part(container, "f", btype, size, 0, want[:MB])
        first.write_part(container, "f", btype, size, 2 * MB, want[2 * MB:])
    first.commit(container, "f", btype, size, [MB])
    first.commit(container, "f", btype, size, [MB])
    make().commit(container, "f", btype, size, [MB])        # after a crash, another run
    # The whole blob sent again (an import that re-ran after its commit), then committed.
    again = make()
    again.write_part(container, "f", btype, size, 2 * MB, want[2 * MB:])
    again.write_part(container, "f", btype, size, 0, want[:MB])
    again.commit(container, "f", btype, size, [MB])
    assert make().get(container, "f") == want


@TYPES
def test_new_version_replaces_old_and_zero_cells_are_zero(store: Storage, container: str,
                                                          btype: BlobType) -> None:
    old = expected(2 * MB, set(), seed=1)
    store.write_part(container, "v", btype, 2 * MB, 0, old[:MB])
    store.write_part(container, "v", btype, 2 * MB, MB, old[MB:])
    store.commit(container, "v", btype, 2 * MB, [])
    # repair: discard, send the new content (cell 1 now all zeros, never written), commit
    store.discard(container, "v")
    assert store.get(container, "v") == old            # discard keeps the committed blob
    new = payload(MB, 9) + bytes(MB + 512)
    store.write_part(container, "v", btype, len(new), 0, new[:MB])
    store.commit(container, "v", btype, len(new), [MB, 2 * MB])
    assert store.size(container, "v") == len(new)
    assert store.get(container, "v") == new


@TYPES
def test_partial_blobs_are_invisible(store: Storage, container: str, btype: BlobType) -> None:
    store.put(container, "visible", b"x")
    store.write_part(container, "half", btype, 2 * MB, 0, payload(MB, 1))
    assert store.size(container, "half") is None
    assert store.get(container, "half") is None
    assert store.list(container) == ["visible"]
    assert store.list(container, "ha") == []
    with pytest.raises(FileNotFoundError):
        store.read(container, "half", 0, 10)


@TYPES
def test_discard(make: Factory, container: str, btype: BlobType) -> None:
    store = make()
    store.discard(container, "never-written")                 # nothing to forget: fine
    store.write_part(container, "d", btype, 2 * MB, 0, payload(MB, 1))
    store.write_part(container, "d", btype, 2 * MB, MB, payload(MB, 2))
    make().discard(container, "d")
    with pytest.raises(PartsMissing) as ei:
        store.commit(container, "d", btype, 2 * MB, [])
    assert ei.value.exit_code == EXIT_INTEGRITY and ei.value.offsets == [0, MB]
    assert "\n" not in str(ei.value) and "d" in str(ei.value)
    assert store.size(container, "d") is None and store.list(container) == []
    # sent again after the discard: commits normally
    store.write_part(container, "d", btype, 2 * MB, MB, payload(MB, 4))
    store.write_part(container, "d", btype, 2 * MB, 0, payload(MB, 3))
    store.commit(container, "d", btype, 2 * MB, [])
    assert store.get(container, "d") == payload(MB, 3) + payload(MB, 4)


@TYPES
def test_commit_of_a_blob_never_written_is_refused(store: Storage, container: str,
                                                   btype: BlobType) -> None:
    with pytest.raises(PartsMissing) as ei:
        store.commit(container, "ghost", btype, 3 * MB, [MB])
    assert ei.value.offsets == [0, 2 * MB]
    assert store.size(container, "ghost") is None
    store.commit(container, "all-zero", btype, 2 * MB, [0, MB])   # nothing to send: fine
    assert store.get(container, "all-zero") == bytes(2 * MB)


# -- put / get / list -----------------------------------------------------------------------


def test_put_get_list_with_prefixes(make: Factory, container: str) -> None:
    store = make()
    names = ["a/1", "a/2", "ab", "b/c/d.json", "b/cd", ".pipeline-import/s1/drive01.json", "z"]
    for i, name in enumerate(reversed(names)):
        store.put(container, name, f"v{i}".encode())
    store.put(container, "a/1", b"replaced")
    other = make()
    assert other.get(container, "a/1") == b"replaced"
    assert other.get(container, "missing") is None
    assert other.get(container, "a") is None                  # a "directory" is no blob
    assert other.list(container) == sorted(names)
    assert other.list(container, "a") == ["a/1", "a/2", "ab"]
    assert other.list(container, "a/") == ["a/1", "a/2"]
    assert other.list(container, "b/c") == ["b/c/d.json", "b/cd"]
    assert other.list(container, "b/c/") == ["b/c/d.json"]
    assert other.list(container, ".pipeline-import/") == [".pipeline-import/s1/drive01.json"]
    assert other.list(container, "nothing") == []
    assert other.list(f"t-missing-{uuid.uuid4().hex[:8]}") == []
    assert other.size(container, "z") == 2
    store.put(container, "big", payload(3 * MB, 5))
    assert other.get(container, "big") == payload(3 * MB, 5)


def test_delete_a_committed_blob(make: Factory, container: str) -> None:
    """What prune and forget need of an account: a committed blob gone, absent is fine."""
    store = make()
    store.put(container, "keep", b"k")
    store.put(container, "packs/p1", b"gone")
    store.write_part(container, "packs/p2", BLOCK, 3, 0, b"abc")
    store.commit(container, "packs/p2", BLOCK, 3, [])
    store.delete(container, "packs/p1")
    store.delete(container, "packs/p2")
    store.delete(container, "packs/p1")              # again: nothing to do, no error
    store.delete(container, "never-there")
    other = make()
    assert other.list(container) == ["keep"]
    assert other.get(container, "packs/p1") is None and other.size(container, "packs/p2") is None


def test_names_that_need_url_quoting(store: Storage, container: str) -> None:
    names = ["sp ace/é 日本.txt", "hash#and?query&x=1", "pct%20sign", "plus+semi;colon",
             "quote'\"", "~tilde/.dot", "a" * 200 + "/" + "b" * 200]
    for i, name in enumerate(names):
        store.put(container, name, str(i).encode())
        store.write_part(container, name + ".part", BLOCK, 3, 0, b"abc")
        store.commit(container, name + ".part", BLOCK, 3, [])
    for i, name in enumerate(names):
        assert store.get(container, name) == str(i).encode()
        assert store.read(container, name + ".part", 1, 5) == b"bc"
    assert store.list(container) == sorted(names + [n + ".part" for n in names])
    assert store.list(container, "sp ace/é") == ["sp ace/é 日本.txt", "sp ace/é 日本.txt.part"]


def test_put_is_atomic_under_concurrent_readers(store: Storage, container: str) -> None:
    versions = [bytes([i]) * 4096 for i in range(1, 6)]
    store.put(container, "m", versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = store.get(container, "m")
            assert got in versions
            seen.add(got)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(reader) for _ in range(2)]
        for v in versions[1:]:
            store.put(container, "m", v)
        stop.set()
        for f in futures:
            f.result()
    assert store.get(container, "m") == versions[-1]


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "a-b-c", "0ab", "a" * 63, "data-2024-01"])
def test_good_container_names(name: str) -> None:
    assert check_container_name(name) == name


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Abc", "a_b", "a--b", "-ab", "ab-", "a.b",
                                  ".pipeline-partial", "a b", ""])
def test_bad_container_names(name: str) -> None:
    with pytest.raises(InvalidName) as ei:
        check_container_name(name)
    assert ei.value.exit_code == EXIT_BAD_INPUT and isinstance(ei.value, BadInput)
    assert "\n" not in str(ei.value) and "container name" in str(ei.value)


@pytest.mark.parametrize("name", ["a", "dir/file.txt", ".hidden/x", "a..b", "x/...y", "é/日本",
                                  "a " * 300, "/".join(["s"] * 254), "name with spaces.txt"])
def test_good_blob_names(name: str) -> None:
    assert check_blob_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 1025, "a.", "a/", "a\\b", "a//b", "/abs", "./a",
                                  "a/./b", "../a", "a/../../b", "a/..", "tab\there", "nl\n",
                                  "del\x7f", "c1\x85", "/".join(["s"] * 255), "bad\udcffutf8"])
def test_bad_blob_names(name: str) -> None:
    with pytest.raises(InvalidName) as ei:
        check_blob_name(name)
    assert ei.value.exit_code == EXIT_BAD_INPUT
    msg = str(ei.value)
    assert "\n" not in msg and "blob name" in msg and len(msg) < 300


@pytest.mark.parametrize("call", [
    lambda s, c: s.write_part(c, "../escape", BLOCK, 10, 0, b"x" * 10),
    lambda s, c: s.commit(c, "a//b", BLOCK, 0, []),
    lambda s, c: s.put(c, "a/../../etc", b"x"),
    lambda s, c: s.get(c, "x/"),
    lambda s, c: s.ensure_container("Bad_Name"),
    lambda s, c: s.list("no"),
    lambda s, c: s.size(c, "a\\b"),
])
def test_backends_refuse_bad_names(store: Storage, container: str,
                                   call: Callable[[Storage, str], object]) -> None:
    with pytest.raises(InvalidName) as ei:
        call(store, container)
    assert ei.value.exit_code == EXIT_BAD_INPUT


def test_misaligned_parts_are_bugs(store: Storage, container: str) -> None:
    for args in [(BLOCK, 2 * MB, 512, b"x"), (BLOCK, 2 * MB, 0, b"x" * (MB + 1)),
                 (BLOCK, 10, 0, b"x" * 11), (PAGE, 1000, 0, b"x" * 512),
                 (PAGE, 2 * MB, 0, b"x" * 100)]:
        with pytest.raises(ValueError):
            store.write_part(container, "m", *args)


def test_azure_size_limits_are_the_ones_names_spells() -> None:
    """One rule, one place: the largest blobs Azure holds are names.py's constants (8 TiB
    page blobs, 50,000 blocks of 4000 MiB), which import's checks and the Azure store use."""
    from pipeline import names
    from pipeline.storage import azure, base

    assert base.MAX_BLOB_SIZE == {BlobType.PAGE: 8 << 40, BlobType.BLOCK: 50_000 * (4000 << 20)}
    assert base.MAX_BLOB_SIZE == {BlobType.PAGE: names.MAX_PAGE_BLOB,
                                  BlobType.BLOCK: names.MAX_BLOCK_BLOB}
    assert (base.PAGE, azure.MAX_BLOCKS) == (names.PAGE_SIZE, names.MAX_BLOCKS) == (512, 50_000)


# -- concurrency ----------------------------------------------------------------------------


def test_eight_threads_same_and_different_blobs(make: Factory, container: str) -> None:
    store = make()
    jobs: list[tuple[str, BlobType, int, int]] = []          # blob, type, size, cell
    sizes = {"shared/big.bin": (BLOCK, 16 * MB + 77), "shared/big.img": (PAGE, 16 * MB)}
    for i in range(8):
        sizes[f"own/{i}/deep/er/file{i}"] = (BLOCK if i % 2 else PAGE, 3 * MB + 512 * i)
    for blob, (btype, size) in sizes.items():
        for cell in range((size + MB - 1) // MB):
            jobs.append((blob, btype, size, cell))
            if blob.startswith("shared/"):
                jobs.append((blob, btype, size, cell))      # same part from two threads
    random.Random(1).shuffle(jobs)
    seeds = {blob: n * 100 for n, blob in enumerate(sizes)}
    want = {blob: expected(size, set(), seeds[blob]) for blob, (_, size) in sizes.items()}

    def write(job: tuple[str, BlobType, int, int]) -> None:
        blob, btype, size, cell = job
        store.write_part(container, blob, btype, size, cell * MB,
                         want[blob][cell * MB:(cell + 1) * MB])

    def commit(blob: str) -> None:
        btype, size = sizes[blob]
        store.commit(container, blob, btype, size, [])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, jobs))
        list(pool.map(commit, list(sizes) + ["shared/big.bin", "shared/big.img"]))
    reader = make()
    assert reader.list(container) == sorted(sizes)
    for blob in sizes:
        assert reader.get(container, blob) == want[blob], blob


# -- opening and reachability ---------------------------------------------------------------


def test_open_storage_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        azurite: str) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(BadInput) as ei:
        open_storage(None)
    assert ei.value.exit_code == EXIT_BAD_INPUT and "--to" in str(ei.value)
    for target in (str(tmp_path), f"file://{tmp_path}"):
        s = open_storage(target)
        assert isinstance(s, LocalStorage) and s.name == str(tmp_path)
    with pytest.raises(BadInput):
        open_storage("s3://bucket/x")
    with pytest.raises(BadInput) as ei:
        open_storage("https://acct.blob.core.windows.net/")
    assert "SAS" in str(ei.value)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    s = open_storage(None)
    assert s.name == f"http://127.0.0.1:{port_of(azurite)}/{ACCOUNT}"
    s.check()


@pytest.mark.parametrize("conn", ["AccountName=x;AccountKey={};BlobEndpoint=http://x/y;junk",
                                  "AccountName=x;BlobEndpoint=http://x/y;Key={}"])
def test_malformed_connection_string_never_echoes_it(conn: str) -> None:
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0"
    with pytest.raises(BadInput) as ei:
        open_storage(conn.format(secret))
    assert secret not in str(ei.value) and ei.value.exit_code == EXIT_BAD_INPUT
    assert "connection string" in str(ei.value)


def test_local_root_must_exist_and_be_writable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    s = open_storage(str(missing))
    with pytest.raises(BadInput) as ei:
        s.check()
    assert ei.value.exit_code == EXIT_BAD_INPUT
    assert str(missing) in str(ei.value) and "mkdir -p" in str(ei.value)
    with pytest.raises(BadInput):
        s.put("abc", "x", b"1")                           # never creates ROOT by itself
    assert not missing.exists()


def test_account_url_with_sas(azurite: str) -> None:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(ACCOUNT, ACCOUNT_KEY,
                               ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True,
                                                     list=True, add=True, create=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1))
    url = f"http://127.0.0.1:{port_of(azurite)}/{ACCOUNT}?{sas}"
    s = open_storage(url)
    assert s.name == f"http://127.0.0.1:{port_of(azurite)}/{ACCOUNT}" and "sig" not in s.name
    s.check()
    c = f"t-{uuid.uuid4().hex[:16]}"
    s.ensure_container(c)
    s.put(c, "hello", b"world")
    assert s.get(c, "hello") == b"world"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]                       # closed again on return


@pytest.mark.parametrize("kind", ["connection-string", "sas-url"])
def test_unreachable_account_fails_fast_without_secrets(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded, by count rather than by the clock: two connection tries, each with the
    3 s connect timeout, one backoff of 3 s between them, then one line.  The backoff is
    recorded, not slept (the SDK sleeps through its transport)."""
    port = _closed_port()
    sig = "c2lnbmF0dXJlc2lnbmF0dXJl"
    target = (connection_string(port) if kind == "connection-string" else
              f"http://127.0.0.1:{port}/{ACCOUNT}?sv=2024-08-04&ss=b&srt=sco&sp=rwl&sig={sig}")
    tries: list[tuple[tuple[str, int], float | None]] = []
    sleeps: list[float] = []
    connect = urllib3.util.connection.create_connection

    def counting_connect(address, timeout=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append((address, timeout))
        return connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting_connect)
    monkeypatch.setattr(HttpTransport, "sleep", lambda self, s: sleeps.append(s))
    store = open_storage(target)
    calls = [store.check, lambda: store.write_part("abc", "x", BLOCK, 10, 0, b"x" * 10)]
    for call in calls[:1] if kind == "sas-url" else calls:
        tries.clear()
        sleeps.clear()
        with pytest.raises(StorageUnavailable) as ei:
            call()
        assert tries == [(("127.0.0.1", port), CONNECT_TIMEOUT_S)] * 2
        assert sleeps == [3]
        msg = str(ei.value)
        assert ei.value.exit_code == EXIT_STORAGE
        assert f"127.0.0.1:{port}/{ACCOUNT}" in msg and "connection refused" in msg
        assert "\n" not in msg and ACCOUNT_KEY not in msg and sig not in msg
        assert "sig=" not in msg and "AccountKey" not in msg
        assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_wrong_key_is_refused(azurite: str) -> None:
    wrong = "d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3JvbmdrZXk="
    store = open_storage(azurite.replace(ACCOUNT_KEY, wrong))
    with pytest.raises(StorageUnavailable) as ei:
        store.check()
    assert ei.value.exit_code == EXIT_STORAGE
    msg = str(ei.value)
    assert wrong not in msg and ACCOUNT_KEY not in msg and "refused" in msg
    assert f"127.0.0.1:{port_of(azurite)}/{ACCOUNT}" in msg


# -- backend specifics ----------------------------------------------------------------------


def test_local_layout_modes_and_holes(tmp_path: Path) -> None:
    root = tmp_path / "acct"
    root.mkdir()
    old = os.umask(0o077)
    try:
        s = LocalStorage(root)
        s.check()
        s.ensure_container("cont")
        size = 4 * MB
        s.write_part("cont", "d/e/f.img", PAGE, size, 0, payload(MB, 1))
        partial = root / ".pipeline-partial" / "cont" / "d" / "e" / "f.img"
        assert partial.stat().st_size == size and not (root / "cont" / "d").exists()
        s.commit("cont", "d/e/f.img", PAGE, size, [MB, 2 * MB, 3 * MB])
        s.put("cont", "m/x.json", b"{}")
    finally:
        os.umask(old)
    final = root / "cont" / "d" / "e" / "f.img"
    assert not partial.exists()
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "cont" / "m" / "x.json").stat().st_mode) == 0o600
    for d in (root / "cont", root / "cont" / "d", root / "cont" / "d" / "e", root / "cont" / "m"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert final.stat().st_blocks * 512 < 2 * MB              # zero cells are holes
    assert s.list("cont") == ["d/e/f.img", "m/x.json"]        # nothing from .pipeline-partial


def test_local_refuses_file_directory_clash(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.put("cont", "a", b"file")
    with pytest.raises(BadInput) as ei:
        s.put("cont", "a/b", b"x")
    assert "clashes" in str(ei.value)
    s.put("cont", "d/e", b"x")
    with pytest.raises(BadInput):
        s.put("cont", "d", b"x")


def test_local_segment_too_long_for_the_file_system(tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        LocalStorage(tmp_path).put("cont", "x" * 256, b"x")


def test_azure_block_blob_size_limit(azurite: str) -> None:
    store = open_storage(azurite)
    with pytest.raises(BadInput) as ei:
        store.write_part("cont", "huge", BLOCK, 50_001 * MB, 0, b"x" * MB)
    assert "page" in str(ei.value)


def test_azure_block_ids_are_fixed_width_offsets(azurite: str) -> None:
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.write_part(c, "b", BLOCK, 3 * MB, 2 * MB, b"x" * MB)
    store.write_part(c, "b", BLOCK, 3 * MB, 0, b"y" * MB)
    client = store._blob(c, "b")  # type: ignore[attr-defined]
    _, staged = client.get_block_list("uncommitted")
    assert sorted(b.id for b in staged) == [f"{0:020d}", f"{2 * MB:020d}"]
    store.commit(c, "b", BLOCK, 3 * MB, [MB])
    committed, _ = client.get_block_list("committed")
    assert [b.id for b in committed] == [f"{o:020d}" for o in (0, MB, 2 * MB)]


def test_azure_block_commit_with_a_gap_is_refused(azurite: str) -> None:
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.write_part(c, "gap", BLOCK, 3 * MB + 5, 0, b"x" * MB)
    store.write_part(c, "gap", BLOCK, 3 * MB + 5, 3 * MB, b"x" * 4)   # last cell too short
    with pytest.raises(PartsMissing) as ei:
        store.commit(c, "gap", BLOCK, 3 * MB + 5, [2 * MB])
    assert ei.value.offsets == [MB, 3 * MB]
    assert store.size(c, "gap") is None


def test_azure_page_blob_is_marked_until_commit(azurite: str) -> None:
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.write_part(c, "p", PAGE, 2 * MB, 0, b"x" * MB)
    client = store._blob(c, "p")  # type: ignore[attr-defined]
    props = client.get_blob_properties()
    assert props.size == 2 * MB and props.metadata == {"pipeline_complete": "false"}
    store.commit(c, "p", PAGE, 2 * MB, [MB])
    assert client.get_blob_properties().metadata == {"pipeline_complete": "true"}
    # a new version written in place hides the blob until it is committed again
    open_storage(azurite).write_part(c, "p", PAGE, 2 * MB, MB, b"z" * MB)
    assert store.size(c, "p") is None
    store.commit(c, "p", PAGE, 2 * MB, [])
    assert store.get(c, "p") == b"x" * MB + b"z" * MB


def test_azure_blob_type_change_is_refused(azurite: str) -> None:
    store = open_storage(azurite)
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)
    store.put(c, "was-block", b"x" * 512)
    store.commit(c, "was-page", PAGE, 512, [0])
    with pytest.raises(BadInput) as ei:
        store.write_part(c, "was-block", PAGE, 512, 0, b"y" * 512)
    assert "block blob" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(BadInput) as ei:
        store.write_part(c, "was-page", BLOCK, 512, 0, b"y" * 512)
        store.commit(c, "was-page", BLOCK, 512, [])
    assert "page blob" in str(ei.value)
    assert store.get(c, "was-block") == b"x" * 512 and store.get(c, "was-page") == bytes(512)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "refused"])
def test_local_large_parts_past_the_page_cache_read_back_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """Large parts go past the page cache (O_DIRECT, their whole 4 KiB blocks; the tail and
    small parts buffered); where the file system refuses O_DIRECT (EINVAL) every part is
    written buffered.  Either way the blob reads back byte for byte, unaligned tails and
    rewrites included."""
    import fcntl

    from pipeline.storage import local

    monkeypatch.setattr(local.LocalStorage, "_direct", True)
    if not direct:
        real = fcntl.fcntl

        def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
                raise OSError(22, "Invalid argument")
            return real(fd, cmd, arg)

        monkeypatch.setattr(fcntl, "fcntl", no_direct)
    store = LocalStorage(tmp_path)
    store.ensure_container("cont")
    size = 3 * MB + 12345
    parts = {0: payload(MB, 1), MB: payload(MB, 2), 2 * MB: payload(MB, 3),
             3 * MB: payload(12345, 4)}
    for offset in (2 * MB, 3 * MB, 0, MB):
        store.write_part("cont", "b", BLOCK, size, offset, parts[offset])
    store.write_part("cont", "b", BLOCK, size, MB, parts[MB][:-100] + b"\x07" * 100)  # rewritten
    store.commit("cont", "b", BLOCK, size, [])
    want = parts[0] + parts[MB][:-100] + b"\x07" * 100 + parts[2 * MB] + parts[3 * MB]
    assert store.read("cont", "b", 0, size) == want
    assert local.LocalStorage._direct is direct
    small = LocalStorage(tmp_path)
    small.write_part("cont", "s", BLOCK, 5000, 0, payload(5000, 5))
    small.commit("cont", "s", BLOCK, 5000, [])
    assert small.read("cont", "s", 0, 5000) == payload(5000, 5)
