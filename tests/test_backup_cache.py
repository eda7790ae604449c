"""Backup's local tree cache (``backup/cache.py``): a hit neither reads nor decodes the
parent's tree and gives exactly what the repository does; a miss, a damaged or forged
entry, or another repository's entry falls back to the repository (and is rewritten);
a changed file's mode, owner or xattr is still seen when its parent came from the
cache; files 0600 in 0700 directories under $XDG_CACHE_HOME; ``--no-cache`` leaves
no trace."""

from __future__ import annotations

import json
import marshal
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import trio
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import progress
from pipeline.backup import archive, cache
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, hostname
from pipeline.backup.stages.tree import Tree
from tests.backup_helpers import seed_account
from tests.conftest import FAST_ARGON, ROOT
from tests.test_backup_repo import CONTAINER, PASS, backup, describe, make_tree, restore

_REPO = Repository.init(DirBackend(Path(tempfile.mkdtemp()) / "repo"), PASS, FAST_ARGON,
                        lock=None)   # for the tree stage's chunk ids and claims


@pytest.fixture(autouse=True)
def _line_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree chunk per line (in this process): several chunks whatever the line hashes."""
    monkeypatch.setattr(fmt, "TREE_CUT_MASK", 0)


def _seeded(tmp_path: Path, files: int = 40) -> tuple[Path, Repository, fmt.Manifest]:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    for i in range(files):
        (src / "docs" / f"f{i:04d}").write_bytes(b"x" * (i % 7))
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    result = trio.run(backup, repo, src, False)
    assert len(result.manifest.tree) == len(set(result.manifest.tree)) == files + 12
    return src, repo, result.manifest


def _cache(tmp_path: Path, repo: Repository) -> cache.TreeCache:
    tc = cache.for_repository(repo.config.repo_id, repo.crypto.keys.id_key,
                              tmp_path / "cache")
    assert tc is not None
    return tc


def _reads(repo: Repository) -> list[bytes]:
    """The tree chunks read from the repository from now on (a spy on the real read)."""
    seen: list[bytes] = []
    read_run = repo._read_run

    def spy(run: list[tuple[bytes, fmt.IndexEntry]]) -> list[bytes]:
        seen.extend(cid for cid, _ in run)
        return read_run(run)

    repo._read_run = spy  # type: ignore[method-assign]
    return seen


def test_miss_then_hit_give_exactly_the_repositorys_entries(tmp_path: Path) -> None:
    src, repo, manifest = _seeded(tmp_path)
    want = list(repo.tree_lines(manifest))
    tc = _cache(tmp_path, repo)
    reads = _reads(repo)
    assert list(repo.tree_lines(manifest, tc)) == want             # a miss: read, stored
    assert sorted(reads) == sorted(set(manifest.tree)) and tc.written == len(set(manifest.tree))
    assert sorted(os.listdir(tc.dir)) == sorted({c.hex() for c in manifest.tree})
    reads.clear()
    again = _cache(tmp_path, repo)
    assert list(repo.tree_lines(manifest, again)) == want          # a hit: nothing read
    assert reads == [] and again.written == 0
    for path in [tc.dir, tc.dir.parent, tc.dir.parent.parent, tc.dir.parent.parent.parent]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in os.listdir(tc.dir):
        assert stat.S_IMODE((tc.dir / name).stat().st_mode) == 0o600
    assert (tc.dir.parent.parent / "CACHEDIR.TAG").read_bytes().startswith(
        b"Signature: 8a477f597d28d172789f06886806bc55")


def test_damaged_or_forged_entries_are_ignored_and_rewritten(tmp_path: Path) -> None:
    src, repo, manifest = _seeded(tmp_path)
    want = list(repo.tree_lines(manifest))
    tc = _cache(tmp_path, repo)
    list(repo.tree_lines(manifest, tc))
    first, second, third = manifest.tree[:3]
    # a flipped bit in the payload
    path = tc.dir / first.hex()
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    # a forged entry: valid marshal, a changed mode, its MAC made with another key
    forger = cache.TreeCache(tmp_path / "cache", repo.config.repo_id, b"k" * 32)
    chunk, rows, *_ = marshal.loads(zstandard.decompress(
        (tc.dir / second.hex()).read_bytes()[8 + 32:]))
    rows[0] = (rows[0][0], rows[0][1], 0o777, *rows[0][3:])
    forged = zstandard.compress(marshal.dumps((chunk, rows), 4))
    (tc.dir / second.hex()).write_bytes(cache.MAGIC + forger._mac(second, forged) + forged)
    # another chunk's entry (valid MAC for that chunk) under this chunk's name
    (tc.dir / third.hex()).write_bytes((tc.dir / manifest.tree[-1].hex()).read_bytes())
    reads = _reads(repo)
    again = _cache(tmp_path, repo)
    assert list(repo.tree_lines(manifest, again)) == want
    assert sorted(reads) == sorted({first, second, third}) and again.written == 3
    reads.clear()
    assert list(repo.tree_lines(manifest, _cache(tmp_path, repo))) == want and reads == []


def test_entries_read_ahead_vanishing_or_foreign_names_are_misses(tmp_path: Path) -> None:
    """The entries are found by one listing and read ahead in threads: one deleted after
    the listing (a concurrent ``clean``) is read from the repository and written again;
    names that are no id (a temporary file, anything else) are not entries."""
    src, repo, manifest = _seeded(tmp_path)
    want = list(repo.tree_lines(manifest))
    tc = _cache(tmp_path, repo)
    list(repo.tree_lines(manifest, tc))
    (tc.dir / "not-an-id").write_bytes(b"x")
    (tc.dir / ("zz" * 32)).write_bytes(b"x")
    assert tc.present() == set(manifest.tree)
    gone = manifest.tree[2]
    again = _cache(tmp_path, repo)
    read = again.read

    def vanishing(cid: bytes) -> tuple[bytes, float] | None:
        if cid == gone:
            (again.dir / cid.hex()).unlink()
        return read(cid)

    again.read = vanishing  # type: ignore[method-assign]
    reads = _reads(repo)
    assert list(repo.tree_lines(manifest, again)) == want
    assert reads == [gone] and again.written == 1 and (again.dir / gone.hex()).exists()


def test_old_format_or_undecompressable_entries_are_misses(tmp_path: Path) -> None:
    """An entry of the uncompressed format (PLBKTC1, before zstd), or one whose MAC holds
    but whose payload is no zstd frame: read from the repository and written again."""
    src, repo, manifest = _seeded(tmp_path)
    want = list(repo.tree_lines(manifest))
    tc = _cache(tmp_path, repo)
    list(repo.tree_lines(manifest, tc))
    first, second = manifest.tree[:2]
    raw = zstandard.decompress((tc.dir / first.hex()).read_bytes()[8 + 32:])
    (tc.dir / first.hex()).write_bytes(b"PLBKTC1\n" + tc._mac(first, raw) + raw)
    (tc.dir / second.hex()).write_bytes(cache.MAGIC + tc._mac(second, raw) + raw)
    reads = _reads(repo)
    again = _cache(tmp_path, repo)
    assert list(repo.tree_lines(manifest, again)) == want
    assert sorted(reads) == sorted({first, second}) and again.written == 2
    assert all(zstandard.decompress((tc.dir / c.hex()).read_bytes()[8 + 32:]) for c in (
        first, second))


def test_another_repositorys_cache_is_not_used(tmp_path: Path) -> None:
    """Entries are under each repository's id and MAC'd with its key: a second repository
    (or one whose plaintext config claims the first's id) reads its own tree."""
    _, repo, manifest = _seeded(tmp_path)
    list(repo.tree_lines(manifest, _cache(tmp_path, repo)))
    other_src = tmp_path / "other"
    other_src.mkdir()
    make_tree(other_src)
    other = Repository.init(DirBackend(tmp_path / "repo2"), PASS, FAST_ARGON)
    theirs = trio.run(backup, other, other_src, False).manifest
    mine = _cache(tmp_path, repo)
    impostor = cache.TreeCache(tmp_path / "cache", repo.config.repo_id,
                               other.crypto.keys.id_key)
    assert impostor.dir == mine.dir
    for cid in theirs.tree:                    # the first repository's entries, renamed
        (mine.dir / cid.hex()).write_bytes((mine.dir / manifest.tree[0].hex()).read_bytes())
    reads = _reads(other)
    assert list(other.tree_lines(theirs, impostor)) == list(other.tree_lines(theirs))
    assert reads[:len(set(theirs.tree))] == list(dict.fromkeys(theirs.tree))
    assert cache.for_repository("../../etc", b"k" * 32, tmp_path / "cache") is None


def _begin(repo: Repository, src: Path, tc: cache.TreeCache | None) -> archive.Begun:
    stats, warnings = progress.Stats(), []
    parent = archive.find_parent(repo, str(src.resolve()), hostname())
    begun = archive.begin(repo, src.resolve(), stats, warnings.append, parent, cache=tc)
    assert warnings == []
    return begun


def test_changes_seen_against_a_cached_parent(tmp_path: Path) -> None:
    """With the parent's entries from the cache, a chmod, a chown and a new xattr of a file
    in an otherwise unchanged directory are each stored; nothing else changes."""
    src, repo, manifest = _seeded(tmp_path)
    tc = _cache(tmp_path, repo)
    begun = _begin(repo, src, tc)             # fills the cache
    assert begun.done and tuple(begun.tree.ids) == manifest.tree
    reads = _reads(repo)
    begun = _begin(repo, src, _cache(tmp_path, repo))
    assert begun.done and tuple(begun.tree.ids) == manifest.tree and reads == []
    a, b, c = src / "docs" / "f0010", src / "docs" / "f0020", src / "docs" / "f0030"
    os.chmod(a, 0o601)
    os.chown(b, 4321, 4322)
    os.setxattr(c, "user.note", b"new")
    begun = _begin(repo, src, _cache(tmp_path, repo))
    assert reads == [] and begun.rest is None and not begun.done
    result = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(), print,
                      archive.BackupOptions(threads=2), None, begun)
    assert result.chunks_new == 0 and set(result.manifest.tree) != set(manifest.tree)
    nodes = {n.path: n for n in repo.tree(result.manifest)}
    before = {n.path: n for n in repo.tree(manifest)}
    assert nodes["docs/f0010"].mode == 0o601
    assert (nodes["docs/f0020"].uid, nodes["docs/f0020"].gid) == (4321, 4322)
    assert nodes["docs/f0030"].xattrs == [("user.note", b"new")]
    changed = {p for p in nodes if nodes[p] != before[p]}
    assert changed == {"docs/f0010", "docs/f0020", "docs/f0030"}
    trio.run(restore, repo, result.snapshot.hex, tmp_path / "out")
    assert describe(tmp_path / "out") == describe(src)


def test_clean_drops_old_entries_then_the_oldest_beyond_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, repo, manifest = _seeded(tmp_path)
    tc = _cache(tmp_path, repo)
    list(repo.tree_lines(manifest, tc))
    ids = list(dict.fromkeys(manifest.tree))
    now = time.time()
    os.utime(tc.dir / ids[0].hex(), (now, now - cache.MAX_AGE_S - 10))
    for i, cid in enumerate(ids[1:]):
        os.utime(tc.dir / cid.hex(), (now, now - 100 + i))
    (tc.dir / "x.1.ab.tmp").write_bytes(b"")
    os.utime(tc.dir / "x.1.ab.tmp", (now, now - 7200))
    sizes = {cid: (tc.dir / cid.hex()).stat().st_size for cid in ids}
    monkeypatch.setattr(cache, "MAX_BYTES", sum(sizes[c] for c in ids[2:]))
    assert tc.clean(now) == 3          # the old one, the oldest of the rest, the tmp file
    assert sorted(os.listdir(tc.dir)) == sorted(c.hex() for c in ids[2:])


def test_cache_root_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert cache.cache_root() == Path("/x/cache/pipeline/backup")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")           # the spec: ignored
    assert cache.cache_root() == Path.home() / ".cache" / "pipeline" / "backup"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "pipeline" / "backup"


def test_cli_uses_the_cache_unless_no_cache(tmp_path: Path) -> None:
    src, repo, _ = _seeded(tmp_path, files=10)
    account = tmp_path / "account"
    backend = seed_account(tmp_path / "repo", account, CONTAINER)
    (tmp_path / "pass").write_bytes(PASS + b"\n")
    home = tmp_path / "xdg"
    trees = home / "pipeline" / "backup" / repo.config.repo_id / "trees"

    def run(*extra: str) -> dict[str, object]:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "backup", "--source", str(src), "--to",
             str(account), "--container", CONTAINER, "--passphrase-file",
             str(tmp_path / "pass"), "--json", *extra], capture_output=True, text=True,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(home),
                           "PIPELINE_CONFIG_DIR": str(tmp_path / "config")}, timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return next(x for x in map(json.loads, proc.stdout.splitlines())
                    if x.get("type") == "summary")

    assert run("--no-cache")["chunks_new"] == 0 and not home.exists()
    assert run()["chunks_new"] == 0
    online = Repository.open(backend, PASS, "pass", lock=None)
    newest = online.manifest(online.snapshots()[-1])       # cut as this process does not
    assert sorted(os.listdir(trees)) == sorted({c.hex() for c in newest.tree})
    for p in trees.iterdir():
        p.write_bytes(b"garbage")                               # damaged: ignored
    assert run()["chunks_new"] == 0
    assert all(p.read_bytes().startswith(cache.MAGIC) for p in trees.iterdir())


def test_a_backup_caches_the_tree_it_writes(tmp_path: Path) -> None:
    """The tree a backup writes (the seed's, or an incremental's new chunks) is cached
    as written, equal to what the repository decodes: the next backup reads none of it."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    (src / os.fsdecode(b"not-utf8-\xff\xfe")).write_bytes(b"odd name")
    os.setxattr(src / "empty", "user.k", b"v")
    for i in range(300):
        (src / f"g{i:03d}").write_bytes(b"y" * i)   # a chunk per line (_line_chunks)
    repo = Repository.init(DirBackend(tmp_path / "repo"), PASS, FAST_ARGON)
    tc = _cache(tmp_path, repo)
    first = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(), print,
                     archive.BackupOptions(threads=2), None, None, tc)
    ids = first.manifest.tree
    assert len(ids) >= 3 and tc.written == len(set(ids))
    want = list(repo.tree_lines(first.manifest))
    fresh = _cache(tmp_path, repo)
    reads = _reads(repo)
    assert list(repo.tree_lines(first.manifest, fresh)) == want and reads == []
    (src / "g150").write_bytes(b"changed")
    begun = _begin(repo, src, _cache(tmp_path, repo))
    second = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(), print,
                      archive.BackupOptions(threads=2), None, begun)
    assert reads == [] and second.chunks_new == 1
    cached = list(repo.tree_lines(second.manifest, _cache(tmp_path, repo)))
    assert reads == [] and cached == list(repo.tree_lines(second.manifest))


def test_unchanged_parent_chunks_are_kept_whole_without_hashing(tmp_path: Path) -> None:
    """A no-change backup takes every parent chunk by its id (no chunk id computed); a
    chmod re-cuts only around it, and the tree is the one the plain cutter gives."""
    src, repo, manifest = _seeded(tmp_path)
    _begin(repo, src, _cache(tmp_path, repo))
    hashed: list[int] = []
    chunk_id = repo.crypto.chunk_id

    def spy(data: bytes | memoryview) -> bytes:
        hashed.append(len(data))
        return chunk_id(data)

    repo.crypto.chunk_id = spy  # type: ignore[method-assign]
    begun = _begin(repo, src, _cache(tmp_path, repo))
    assert begun.done and tuple(begun.tree.ids) == manifest.tree and hashed == []
    os.chmod(src / "docs" / "f0020", 0o604)
    begun = _begin(repo, src, _cache(tmp_path, repo))
    assert len(hashed) == 1 and not begun.done and begun.rest is None
    result = trio.run(archive.run_backup, repo, src.resolve(), progress.Stats(), print,
                      archive.BackupOptions(threads=2), None, begun)
    plain = fmt.TreeCutter()
    lines = [line for _, line in repo.tree_lines(result.manifest)]
    cuts = [c for c in map(plain.add, lines) if c is not None] + [plain.finish()]
    assert list(result.manifest.tree) == [chunk_id(c) for c in cuts if c is not None]
    assert sum(a != b for a, b in zip(result.manifest.tree, manifest.tree, strict=True)) == 1


_EDIT = st.sampled_from(["keep", "keep", "keep", "drop", "change", "insert"])


@given(st.lists(_EDIT, min_size=1, max_size=200), st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_tree_keeps_parent_chunks_exactly_where_the_plain_cutter_agrees(
        edits: list[str], mask_bits: int) -> None:
    """Whatever is kept, dropped, changed or inserted, the tree stage's chunks (parent
    chunks kept whole among them) are exactly the plain cutter's over the same lines."""
    mask = (1 << mask_bits) - 1
    old = fmt.TREE_CUT_MASK
    fmt.TREE_CUT_MASK = mask
    try:
        parent_lines = [b'{"path":"p%d"}\n' % i for i in range(len(edits))]
        cutter, parent = fmt.TreeCutter(), []
        for line in parent_lines:
            if (c := cutter.add(line)) is not None:
                parent.append(c)
        if (c := cutter.finish()) is not None:
            parent.append(c)
        ids = [_REPO.crypto.chunk_id(c) for c in parent]
        at = {line: (cid, i, len(c.splitlines()))
              for cid, c in zip(ids, parent, strict=True)
              for i, line in enumerate(c.splitlines(keepends=True))}
        tree = Tree(_REPO, progress.Stats())
        new: list[bytes] = []
        cuts: list[object] = []
        for line, edit in zip(parent_lines, edits, strict=True):
            if edit == "drop":
                continue
            if edit in ("change", "insert"):
                other = line[:-2] + b'x"}\n'
                new.append(other)
                cuts += tree.add(fmt.Node("dir", "x"), other)
            if edit != "change":
                new.append(line)
                cuts += tree.add(fmt.Node("dir", "x"), line, at[line])
        cuts += tree.finish()
        for c in cuts:
            tree.name(c)                                  # type: ignore[arg-type]
        plain = fmt.TreeCutter()
        want = [c for c in map(plain.add, new) if c is not None] + [plain.finish()]
        assert tree.ids == [_REPO.crypto.chunk_id(c) for c in want if c is not None]
    finally:
        fmt.TREE_CUT_MASK = old


def test_concurrent_writers_and_a_reader_see_whole_entries(tmp_path: Path) -> None:
    """Runs writing the same entries while another reads them: each read is a miss or the
    exact entries (written whole, renamed into place), never a torn file."""
    _, repo, manifest = _seeded(tmp_path)
    cid = manifest.tree[3]
    want = [(node, line) for node, line, _ in next(
        e for e in repo.tree_chunks(manifest, None) if e[0][2][0] == cid)]
    chunk = b"".join(line for _, line in want)
    seen: list[object] = []
    done = threading.Event()       # the reader's end, not a clock: CI once ran all 400 reads
                                   # before either writer's first put had landed

    def write() -> None:
        tc = _cache(tmp_path, repo)
        tc.put(cid, chunk, [node for node, _ in want])
        while not done.is_set():
            tc.put(cid, chunk, [node for node, _ in want])

    def read() -> None:
        tc = _cache(tmp_path, repo)
        try:
            while len(seen) < 400 or True not in seen:
                got = tc.get(cid)
                seen.append("miss" if got is None else got == want)
                assert len(seen) < 1_000_000, "no read ever saw the writers' entries"
        finally:
            done.set()

    async def together() -> None:
        async with trio.open_nursery() as nursery:
            for f in (write, write, read):
                nursery.start_soon(trio.to_thread.run_sync, f)

    trio.run(together)
    assert set(seen) <= {"miss", True} and True in seen
    assert os.listdir(_cache(tmp_path, repo).dir) == [cid.hex()]
