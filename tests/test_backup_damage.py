"""A restore from a damaged repository: every file that can be restored is, byte for byte,
the others are named and absent (no short file under a final name), exit 4.

The expectation is computed from the index, not from the code under test: which
chunks the damage touches, which files hold them, and whether the tree itself is
lost (then nothing is written and the error is one line).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import progress
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.errors import CorruptRepository, PartialRestore
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import MARKER, TEMP_NAME, run_restore
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK, worst
from tests.conftest import FAST_ARGON, ROOT, run_cli
from tests.test_backup_repo import PASS, backup, describe, make_tree, reopen

MiB = 1 << 20
SMALL = fmt.ChunkerParams(min=16 << 10, avg=64 << 10, max=256 << 10)


@dataclass(frozen=True)
class Built:
    src: Path
    repo: Path
    before: dict[str, tuple[object, ...]]
    packs: list[Path]                          # sorted by name
    entries: dict[bytes, list[fmt.IndexEntry]]  # pack id -> its chunks
    files: dict[str, set[bytes]]               # path -> its data chunks
    tree: set[bytes]                           # the snapshot's tree chunks


def _build(root: Path) -> Built:
    """make_tree plus some multi-chunk files, small chunks and small packs: many packs,
    files spread over several of them, chunks shared between files."""
    src = root / "src"
    src.mkdir()
    r = random.Random(7)
    for i in range(5):
        (src / f"multi{i}.bin").write_bytes(r.randbytes(400_000 + i * 50_000))
    shared = r.randbytes(300_000)
    (src / "copy-a.bin").write_bytes(shared)
    (src / "copy-b.bin").write_bytes(shared + b"tail")
    make_tree(src)                   # last: it fixes every mtime
    repo_dir = root / "repo"
    repo = Repository.init(DirBackend(repo_dir), PASS, FAST_ARGON, chunker=SMALL,
                           pack_size=512 << 10)
    trio.run(backup, repo, src)
    repo = reopen(DirBackend(repo_dir))
    manifest = repo.manifest(find_snapshot(repo.snapshots(), None))
    nodes = list(repo.tree(manifest))
    entries: dict[bytes, list[fmt.IndexEntry]] = {}
    for e in repo.index.values():
        entries.setdefault(e.pack, []).append(e)
    files = {n.path: {c for c, _ in n.content if c is not None} for n in nodes
             if n.type == "file"}
    packs = sorted(p for p in (repo_dir / "data").rglob("*") if p.is_file())
    return Built(src, repo_dir, describe(src), packs, entries, files, set(manifest.tree))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("damage"))


def _copy(b: Built, where: Path) -> Path:
    repo = where / "repo"
    shutil.copytree(b.repo, repo)
    return repo


def _damage(b: Built, repo: Path, pack: int, kind: str, at: float) -> set[bytes]:
    """Damage one pack of the copy ``repo``; returns the ids of the chunks it spoils."""
    original = b.packs[pack]
    path = repo / original.relative_to(b.repo)
    pid = bytes.fromhex(path.name)
    chunks = b.entries.get(pid, [])
    size = path.stat().st_size
    offset = min(int(at * size), size - 1)
    if kind == "missing":
        path.unlink()
        return {e.id for e in chunks}
    data = bytearray(path.read_bytes())
    if kind == "flipped":
        data[offset] ^= 0x5A
        path.write_bytes(bytes(data))
        return {e.id for e in chunks if e.offset <= offset < e.offset + e.length}
    assert kind == "truncated"
    path.write_bytes(bytes(data[:offset]))
    return {e.id for e in chunks if e.offset + e.length > offset}


def _restore(repo_dir: Path, target: Path) -> BaseException | None:
    repo = Repository.open(DirBackend(repo_dir), PASS, "test")
    repo.load_index(skip_damaged=True)
    ref = find_snapshot(repo.snapshots(), None)
    try:
        trio.run(run_restore, repo, ref, target, progress.Stats(), 3)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return worst(exc)
    return None


def _leftovers(target: Path) -> list[Path]:
    return [p for p in target.rglob("*") if TEMP_NAME.match(os.fsencode(p.name))
            or p.name == MARKER]


def check_damage(b: Built, where: Path, pack: int, kind: str, at: float) -> None:
    repo = _copy(b, where)
    spoiled = _damage(b, repo, pack, kind, at)
    target = where / "out"
    error = _restore(repo, target)
    if spoiled & b.tree:                       # the file list itself is lost
        assert isinstance(error, CorruptRepository) and error.exit_code == EXIT_INTEGRITY
        assert not isinstance(error, PartialRestore)
        assert not target.exists()             # nothing written
        return
    lost = {path for path, chunks in b.files.items() if chunks & spoiled}
    if lost:
        assert isinstance(error, PartialRestore), error
        assert error.exit_code == EXIT_INTEGRITY
        assert {f.path for f in error.failed} == lost
        for f in error.failed:
            assert 1 <= f.chunk <= f.chunks and f.reason
            assert f.line().startswith(f"{f.path}: chunk {f.chunk} of {f.chunks} unreadable")
        assert error.restored == len(b.files) - len(lost)
    else:
        assert error is None, error
    expected = {k: v for k, v in b.before.items() if k not in lost}
    assert describe(target) == expected       # byte-identical, modes, mtimes, symlinks
    assert _leftovers(target) == []


@pytest.mark.parametrize("kind", ["missing", "flipped", "truncated"])
def test_each_damage_kind_fails_only_the_files_that_hold_it(built: Built, tmp_path: Path,
                                                          kind: str) -> None:
    # a pack without tree chunks, damaged in its first chunk's middle: some files lost
    pack = next(i for i, p in enumerate(built.packs)
                if not {e.id for e in built.entries[bytes.fromhex(p.name)]} & built.tree)
    first = min(built.entries[bytes.fromhex(built.packs[pack].name)], key=lambda e: e.offset)
    size = built.packs[pack].stat().st_size
    check_damage(built, tmp_path, pack, kind, (first.offset + first.length // 2) / size)


def test_damaged_tree_is_one_error_and_writes_nothing(built: Built, tmp_path: Path) -> None:
    pack = next(i for i, p in enumerate(built.packs)
                if {e.id for e in built.entries[bytes.fromhex(p.name)]} & built.tree)
    check_damage(built, tmp_path, pack, "missing", 0.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["missing", "flipped", "truncated"]),
       at=st.floats(0.0, 1.0))
def test_any_damage_to_one_pack(built: Built, data: st.DataObject, kind: str,
                                at: float) -> None:
    pack = data.draw(st.integers(0, len(built.packs) - 1), label="pack")
    with tempfile.TemporaryDirectory() as where:
        check_damage(built, Path(where), pack, kind, at)


def test_one_damaged_index_file_fails_only_the_chunks_it_alone_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.backup.repo.INDEX_EVERY", 8)   # many index files
    (tmp_path / "b").mkdir()
    b = _build(tmp_path / "b")
    repo = reopen(DirBackend(b.repo))
    named: dict[str, set[bytes]] = {}
    for name in repo.backend.list(fmt.INDEX):
        data = repo.backend.get(name)
        assert data is not None
        plain = repo.crypto.open_file(fmt.INDEX_MAGIC, data, name)
        named[name] = {e.id for e in fmt.decode_index(plain)}
    assert len(named) > 3
    victim = next(n for n, ids in named.items() if not ids & b.tree)
    others = set().union(*(ids for n, ids in named.items() if n != victim))
    unindexed = named[victim] - others
    lost = {path for path, chunks in b.files.items() if chunks & unindexed}
    assert lost
    path = b.repo / victim
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    error = _restore(b.repo, tmp_path / "out")
    assert isinstance(error, PartialRestore)
    assert {f.path for f in error.failed} == lost
    assert all("index file damaged" in f.reason for f in error.failed)
    assert describe(tmp_path / "out") == {k: v for k, v in b.before.items() if k not in lost}


# --------------------------------------------------------------------------- the CLI


def _restore_args(repo: Path, target: Path, passfile: Path, *more: str) -> list[str]:
    return ["restore", "--from", str(repo), "--target", str(target), "--passphrase-file",
            str(passfile), *more]


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    p = tmp_path / "pass"
    p.write_bytes(PASS + b"\n")
    return p


def test_cli_names_each_lost_file_then_exits_4(built: Built, tmp_path: Path,
                                                passfile: Path) -> None:
    repo = _copy(built, tmp_path)
    pack = next(i for i, p in enumerate(built.packs)
                if not {e.id for e in built.entries[bytes.fromhex(p.name)]} & built.tree)
    spoiled = _damage(built, repo, pack, "missing", 0.0)
    lost = sorted(path for path, chunks in built.files.items() if chunks & spoiled)
    assert lost

    proc = run_cli(*_restore_args(repo, tmp_path / "out", passfile), check_code=EXIT_INTEGRITY)
    lines = proc.stderr.strip().splitlines()
    named = [ln.removeprefix("pipeline restore: ").split(": chunk ")[0] for ln in lines[:-1]]
    assert sorted(named) == lost, proc.stderr
    assert all("is missing from" in ln and " unreadable" in ln for ln in lines[:-1])
    assert lines[-1].startswith(f"pipeline restore: {len(lost)} of {len(built.files)} files "
                                "could not be restored")
    assert describe(tmp_path / "out") == {k: v for k, v in built.before.items()
                                          if k not in lost}

    proc = run_cli(*_restore_args(repo, tmp_path / "out2", passfile, "--json"),
                   check_code=EXIT_INTEGRITY)
    events = [json.loads(ln) for ln in proc.stdout.splitlines()]
    errors = [e for e in events if e["type"] == "error"]
    assert sorted(e["path"] for e in errors) == lost
    summary = next(e for e in events if e["type"] == "summary")
    assert sorted(summary["failed"]) == lost
    assert summary["restored"] == len(built.files) - len(lost)
    assert events[-1]["type"] == "exit" and events[-1]["code"] == EXIT_INTEGRITY


@pytest.mark.parametrize("what", ["snapshots", "index"])
def test_cli_damaged_snapshot_or_index_is_one_line(built: Built, tmp_path: Path,
                                                   passfile: Path, what: str) -> None:
    repo = _copy(built, tmp_path)
    for p in (repo / what).iterdir():          # every one of them (one snapshot here)
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))
    proc = run_cli(*_restore_args(repo, tmp_path / "out", passfile), check_code=EXIT_INTEGRITY)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- killed midway


def _kill_midway(cmd: list[str], target: Path) -> bool:
    """Start the restore, SIGKILL it once its first file is in place; True if it was still
    running then (else it finished first)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *cmd], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if target.is_dir() and any(p.name.startswith("f") for p in target.iterdir()):
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode == -signal.SIGKILL


def test_killed_restore_leaves_no_short_file_and_the_rerun_completes(
        tmp_path: Path, passfile: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(11)
    for i in range(120):
        (src / f"f{i:03}.bin").write_bytes(r.randbytes(r.randrange(50_000, 300_000)))
    for i in range(4):
        (src / f"g{i}.bin").write_bytes(r.randbytes(6 * MiB))
    repo_dir = tmp_path / "repo"
    trio.run(backup, Repository.init(DirBackend(repo_dir), PASS, FAST_ARGON), src)
    before = describe(src)
    target = tmp_path / "out"
    cmd = _restore_args(repo_dir, target, passfile, "--threads", "1")
    assert _kill_midway(cmd, target), "the restore finished before it could be killed"

    assert (target / MARKER).is_file()         # marked unfinished
    now, complete = describe(target), 0
    for name, what in now.items():
        if name in (".", MARKER) or TEMP_NAME.match(os.fsencode(name)):
            continue                            # a temporary name, recognizably
        assert what == before[name], name       # content, size, mode, mtime: all or nothing
        complete += 1
    assert complete < len(before) - 1           # it really stopped midway
    # anything else in the target is refused, but this one is the same restore's
    run_cli(*cmd, check_code=EXIT_OK)
    assert describe(target) == before
    assert _leftovers(target) == []


def test_unfinished_restore_of_another_snapshot_is_refused(built: Built, tmp_path: Path,
                                                           passfile: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / MARKER).write_text(json.dumps({"snapshot": "ab" * 32}) + "\n")
    proc = run_cli(*_restore_args(built.repo, target, passfile), check_code=2)
    assert "unfinished restore of snapshot" in proc.stderr
    (target / "mine").write_text("x")
    (target / MARKER).unlink()
    proc = run_cli(*_restore_args(built.repo, target, passfile), check_code=2)
    assert "is not empty" in proc.stderr
