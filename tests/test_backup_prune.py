"""prune: what no snapshot uses is freed, what one uses never is, whatever kills it.

Also the helpers the check, forget and lock tests share: a repository in a local
storage account with small chunks and packs (many packs from small trees), a tree
that changes a little each time, and the CLI pointed at it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pipeline.backup import encoding as fmt
from pipeline.backup import prune
from pipeline.backup.backend import StorageBackend
from pipeline.backup.repo import Repository
from pipeline.errors import EXIT_INTEGRITY, EXIT_OK
from pipeline.progress import Stats
from pipeline.storage import open_storage
from tests.conftest import FAST_ARGON, ROOT, run_cli
from tests.test_backup_repo import CONTAINER, PASS, backup, describe, restore

SMALL = fmt.ChunkerParams(min=8 << 10, avg=32 << 10, max=128 << 10)
PACK = 128 << 10


class Repo:
    """A repository in ``tmp/account`` (container ``backups``) and a source tree."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.account = tmp / "account"
        self.account.mkdir(exist_ok=True)
        self.url = f"file://{self.account}"
        self.src = tmp / "src"
        self.src.mkdir(exist_ok=True)
        self.passfile = tmp / "pass"
        self.passfile.write_bytes(PASS + b"\n")
        self.rng = random.Random(7)
        self.states: dict[str, dict] = {}      # snapshot hex -> describe() of its source
        self.n = 0

    def backend(self) -> StorageBackend:
        return StorageBackend(open_storage(self.url), CONTAINER)

    def init(self) -> None:
        open_storage(self.url).ensure_container(CONTAINER)
        Repository.init(self.backend(), PASS, FAST_ARGON, chunker=SMALL, pack_size=PACK).close()

    def open(self, lock: str | None = "shared") -> Repository:
        repo = Repository.open(self.backend(), PASS, "test", lock=lock)  # type: ignore[arg-type]
        repo.load_index()
        return repo

    def change(self) -> None:
        """A few files added, rewritten or removed: some chunks stay, some go."""
        self.n += 1
        r = self.rng
        for i in range(3):
            (self.src / f"f{self.n}-{i}.bin").write_bytes(r.randbytes(r.randrange(1, 120_000)))
        olds = sorted(self.src.glob("f*.bin"))
        for p in r.sample(olds, min(2, len(olds))):
            if r.random() < 0.5:
                p.unlink()
            else:
                p.write_bytes(r.randbytes(r.randrange(1, 90_000)))
        (self.src / "keep.txt").write_text("stays the same\n" * 2000)

    def backup(self) -> str:
        self.change()
        with self.open() as repo:
            result = trio.run(backup, repo, self.src)
        self.states[result.snapshot.hex] = describe(self.src)
        return result.snapshot.hex

    def cli(self, *args: str, code: int | None = EXIT_OK, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--from", self.url, "--container", CONTAINER,
                       "--passphrase-file", str(self.passfile), check_code=code, env=env)

    def verify_all(self) -> None:
        """Every snapshot there restores byte-identical to its source when it was taken."""
        with self.open() as repo:
            refs = repo.snapshots()
            assert {r.hex for r in refs} <= set(self.states)
            for ref in refs:
                out = self.tmp / f"restore-{ref.hex[:12]}-{random.random()}"
                trio.run(restore, repo, ref.hex, out)
                assert describe(out) == self.states[ref.hex], ref.hex

    def forget(self, *ids: str) -> None:
        with self.open("exclusive") as repo:
            prune.forget_snapshots(repo, [r for r in repo.snapshots() if r.hex in ids])
        for i in ids:
            self.states.pop(i)

    def packs(self) -> set[str]:
        return {p.name for p in (self.account / CONTAINER / "data").rglob("*") if p.is_file()}


@pytest.fixture
def r(tmp_path: Path) -> Repo:
    repo = Repo(tmp_path)
    repo.init()
    return repo


def test_prune_frees_what_no_snapshot_uses_and_keeps_the_rest(r: Repo) -> None:
    ids = [r.backup() for _ in range(4)]
    before = r.packs()
    r.forget(ids[0], ids[1])
    dry = r.cli("prune", "--dry-run", "--json")
    assert r.packs() == before and '"dry_run":true' in dry.stdout
    r.cli("prune", "--max-unused", "0%")
    after = r.packs()
    assert after != before and len(after) < len(before) + 2
    with r.open() as repo:
        plan = prune.make_plan(repo, 0)
        assert not plan.changes and plan.unused_bytes == 0   # nothing unused is left
    r.verify_all()
    r.cli("check", "--read-data")
    # a second prune has nothing to do and changes nothing
    r.cli("prune", "--max-unused", "0%")
    assert r.packs() == after


def test_max_unused_decides_what_is_repacked(r: Repo) -> None:
    ids = [r.backup() for _ in range(3)]
    r.forget(ids[0])
    with r.open() as repo:
        lax = prune.make_plan(repo, 100)
        strict = prune.make_plan(repo, 0)
    assert lax.repack == [] and lax.unused_after == lax.unused_bytes - sum(
        e.length for p in lax.delete for e in lax.entries[p])
    assert strict.repack and strict.unused_after == 0
    assert set(strict.delete) == set(lax.delete)


def test_forget_everything_then_prune_leaves_an_empty_valid_repository(r: Repo) -> None:
    ids = [r.backup() for _ in range(2)]
    r.forget(*ids)
    r.cli("prune")
    assert r.packs() == set()
    assert not list((r.account / CONTAINER / "index").glob("*"))
    r.cli("check", "--read-data")
    r.backup()                     # the next backup stores everything again
    r.verify_all()


def test_prune_refuses_on_a_damaged_repository_and_deletes_nothing(r: Repo) -> None:
    ids = [r.backup() for _ in range(3)]
    r.forget(ids[0])
    index = sorted((r.account / CONTAINER / "index").glob("*"))[0]
    index.write_bytes(b"\0" * index.stat().st_size)
    before = r.packs()
    proc = r.cli("prune", code=EXIT_INTEGRITY)
    assert "prune deleted nothing" in proc.stderr and index.name in proc.stderr
    assert r.packs() == before


def _prune_with_crash(r: Repo, point: str, n: int) -> subprocess.CompletedProcess[str]:
    return r.cli("prune", "--max-unused", "0%", code=None,
                 env={"PIPELINE_CRASH_AT": f"{point}:{n}"})


@pytest.mark.parametrize("point", [p for p in prune.POINTS if p.startswith("prune_")])
def test_kill_9_at_every_step_of_prune_loses_nothing(r: Repo, point: str) -> None:
    """Killed at each crash point (first and second time reached), the repository still
    checks clean, every kept snapshot restores, and the next prune finishes the job."""
    ids = [r.backup() for _ in range(4)]
    r.forget(ids[0], ids[2])
    killed = 0
    for n in (1, 2):
        proc = _prune_with_crash(r, point, n)
        if proc.returncode == -signal.SIGKILL:
            killed += 1
            r.cli("check", "--read-data")     # leftovers allowed, damage not
            r.verify_all()
        else:
            assert proc.returncode == EXIT_OK, proc.stderr
    assert killed, f"prune never reached {point}"
    r.cli("prune", "--max-unused", "0%")
    with r.open() as repo:
        assert not prune.make_plan(repo, 0).changes
    r.cli("check", "--read-data")
    r.verify_all()


def test_real_sigkill_at_random_moments_of_prune(r: Repo) -> None:
    """SIGKILL from outside at arbitrary moments (not only at crash points)."""
    ids = [r.backup() for _ in range(5)]
    r.forget(*ids[:3])
    rng = random.Random(3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "prune", "--max-unused", "0%", "--from", r.url,
           "--container", CONTAINER, "--passphrase-file", str(r.passfile)]
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        r.cli("check", "--read-data")
        r.verify_all()
    r.cli("prune", "--max-unused", "0%")
    r.cli("check", "--read-data")
    r.verify_all()


def test_duplicate_chunks_of_concurrent_backups_keep_one_copy(r: Repo) -> None:
    """Two repositories objects back up the same new data at once: both store the
    chunks; prune drops the spare copies and both snapshots still restore."""
    r.backup()
    r.change()

    async def both() -> list[str]:
        out: list[str] = []
        repos = [r.open(), r.open()]

        async def one(repo: Repository) -> None:
            out.append((await backup(repo, r.src)).snapshot.hex)

        async with trio.open_nursery() as nursery:
            for repo in repos:
                nursery.start_soon(one, repo)
        for repo in repos:
            repo.close()
        return out

    for sid in trio.run(both):
        r.states[sid] = describe(r.src)
    with r.open() as repo:
        plan = prune.make_plan(repo, 0)
    assert plan.unused_bytes > 0          # the second copy of each new chunk
    r.cli("prune", "--max-unused", "0%")
    r.cli("check", "--read-data")
    r.verify_all()


def test_execute_keeps_the_index_of_the_open_repository(r: Repo) -> None:
    ids = [r.backup() for _ in range(3)]
    r.forget(ids[1])
    with r.open("exclusive") as repo:
        plan = prune.make_plan(repo, 0)
        prune.execute(repo, plan, Stats())
        names = {fmt.pack_name(e.pack) for e in repo.index.values()}
        assert all(repo.backend.size(n) for n in names)
