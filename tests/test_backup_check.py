"""check: clean is exit 0; every kind of damage is exit 4 and names the pack, the
snapshots and the files it takes chunks from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.backup import check
from pipeline.backup import encoding as fmt
from pipeline.errors import EXIT_BAD_INPUT, EXIT_INTEGRITY, EXIT_OK
from tests.test_backup_prune import Repo


@pytest.fixture
def r(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path)
    repo.init()
    for _ in range(2):
        repo.backup()
    return repo


def data_packs(r: Repo) -> list[tuple[Path, set[str]]]:
    """Each pack file holding file data only (a tree chunk's pack takes whole snapshots)
    and the paths of the files (in any snapshot) with a chunk in it."""
    with r.open() as repo:
        by_chunk: dict[bytes, set[str]] = {}
        for ref in repo.snapshots():
            for node in repo.tree(repo.manifest(ref)):
                for c, _ in node.content:
                    if c is not None:
                        by_chunk.setdefault(c, set()).add(node.path)
        out = []
        for e in repo.index.values():
            path = r.account / "backups" / fmt.pack_name(e.pack)
            found = next((x for x in out if x[0] == path), None)
            if found is None:
                found = (path, set())
                out.append(found)
            found[1].update(by_chunk.get(e.id, set()))
        trees = {fmt.pack_name(e.pack).split("/")[-1] for e in repo.index.values()
                 if e.kind == fmt.KIND_TREE}
    return sorted(x for x in out if x[0].name not in trees)


def test_a_clean_repository_checks_clean(r: Repo) -> None:
    proc = r.cli("check", "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = next(e for e in events if e["type"] == "summary")
    assert summary["problems"] == 0 and summary["snapshots"] == 2 and summary["packs"] > 2
    assert events[-1] == {**events[-1], "type": "exit", "code": 0}
    full = r.cli("check", "--read-data", "--json")
    summary = next(json.loads(line) for line in full.stdout.splitlines()
                   if '"summary"' in line)
    assert summary["packs_read"] == summary["packs"]
    assert "no errors" in r.cli("check").stderr


def test_a_flipped_byte_is_found_by_read_data_and_names_the_files(r: Repo) -> None:
    packs = [(p, files) for p, files in data_packs(r) if files]
    path, files = random.Random(1).choice(packs)
    data = bytearray(path.read_bytes())
    data[40] ^= 0x10
    path.write_bytes(bytes(data))
    r.cli("check", code=EXIT_OK)             # the size is right: structure cannot tell
    proc = r.cli("check", "--read-data", code=EXIT_INTEGRITY)
    assert f"pack data/{path.parent.name}/{path.name}" in proc.stderr
    named = {f for f in files if f in proc.stderr}
    assert named, (files, proc.stderr)
    assert "does not match its name" in proc.stderr
    # the subset syntax finds it when it reads every group
    hits = [r.cli("check", "--read-data-subset", f"{n}/3", code=None).returncode
            for n in (1, 2, 3)]
    assert sorted(hits) == [EXIT_OK, EXIT_OK, EXIT_INTEGRITY]
    r.cli("check", "--read-data-subset", "100%", code=EXIT_INTEGRITY)


def test_a_missing_or_truncated_pack_is_found_without_reading_data(r: Repo) -> None:
    packs = [(p, files) for p, files in data_packs(r) if files]
    for _ in range(6):  # how data falls into packs depends on the repository's chunker seed
        if len(packs) >= 2:
            break
        r.backup()
        packs = [(p, files) for p, files in data_packs(r) if files]
    assert len(packs) >= 2, packs
    (gone, gone_files), (cut, _) = packs[0], packs[1]
    gone.unlink()
    cut.write_bytes(cut.read_bytes()[:-512])
    proc = r.cli("check", "--json", code=EXIT_INTEGRITY)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert any(gone.name in m and "missing" in m for m in errors)
    assert any(cut.name in m and "its index entries say" in m for m in errors)
    assert any(f in m for m in errors for f in gone_files)
    summary = next(e for e in events if e["type"] == "summary")
    assert len(summary["damaged_packs"]) == 2 and summary["affected"]
    assert events[-1]["type"] == "exit" and events[-1]["code"] == EXIT_INTEGRITY


def test_damaged_index_snapshot_and_key_files_are_named(r: Repo) -> None:
    base = r.account / "backups"
    index = sorted((base / "index").iterdir())[0]
    index.write_bytes(index.read_bytes()[:-512] + b"\1" * 512)
    snap = sorted((base / "snapshots").iterdir())[0]
    snap.write_bytes(b"\0" * snap.stat().st_size)
    proc = r.cli("check", code=EXIT_INTEGRITY)
    assert f"index file index/{index.name}" in proc.stderr
    assert f"snapshot {snap.name.split('-')[1][:16]}" in proc.stderr
    # packs the damaged index named are reported as unreferenced, not silently dropped
    assert "unreferenced" in proc.stderr or "no index file" in proc.stderr


def test_leftover_packs_are_reported_not_damage(r: Repo) -> None:
    with r.open() as repo:
        from pipeline.backup.repo import PackBuilder
        b = PackBuilder(1 << 20)
        cid = repo.crypto.chunk_id(b"orphan")
        b.add(fmt.KIND_DATA, cid, repo.crypto.seal_chunk(fmt.KIND_DATA, cid, b"orphan", 1), 6)
        pack = b.finish(repo.crypto)
        repo.backend.put(pack.name, pack.data)
    proc = r.cli("check", "--read-data")
    assert "1 packs no index names" in proc.stderr and pack.name in proc.stderr


@pytest.mark.parametrize("bad", ["0%", "101%", "x", "0/3", "4/3", "5"])
def test_bad_subset_is_one_line(r: Repo, bad: str) -> None:
    proc = r.cli("check", "--read-data-subset", bad, code=EXIT_BAD_INPUT)
    assert "--read-data-subset" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_subset_picks_a_share() -> None:
    packs = [bytes([i]) * 32 for i in range(200)]
    assert len(check.choose(packs, "10%", random.Random(1))) == 20
    groups = [set(check.choose(packs, f"{n}/4")) for n in range(1, 5)]
    assert set().union(*groups) == set(packs) and sum(map(len, groups)) == 200
    assert check.choose(packs, None) == sorted(packs)


def test_a_lost_tree_chunk_names_the_whole_snapshot(r: Repo) -> None:
    with r.open() as repo:
        tree = next(e for e in repo.index.values() if e.kind == fmt.KIND_TREE)
    (r.account / "backups" / fmt.pack_name(tree.pack)).unlink()
    proc = r.cli("check", code=EXIT_INTEGRITY)
    assert "missing" in proc.stderr and "(its whole file tree)" in proc.stderr
