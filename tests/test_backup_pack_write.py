"""A pack is written from its parts, never joined: laid into a page-aligned buffer that
``DirBackend`` reuses and written past the page cache (O_DIRECT), the tail through it.
The bytes on disk are the parts' in order, the name comes only once they are fsynced
(a kill -9 inside the write leaves no file under the repository's names), and a buffer
O_DIRECT refuses (not aligned) is written through the page cache instead."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import blake3
import pytest

from pipeline import atomic
from pipeline.backup.backend import DirBackend
from pipeline.errors import EXIT_OK
from tests.conftest import FAST_KDF_ARGS, run_cli
from tests.test_backup_drop_cache import resident_pages
from tests.test_backup_repo import PASS, describe

MiB = 1 << 20
SUB = "0f8fad5b-d9cb-469f-a165-70867728950e"


def parts_of(seed: int, sizes: list[int]) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(n) for n in sizes]


@pytest.mark.parametrize("sizes", [
    [12, 3 * MiB + 17, 12, 5000, 700, 4096, 32],     # a tail past the last whole block
    [12, 4 * MiB - 12],                               # whole blocks only
    [12, 100, 388],                                   # under one block: no direct write
])
def test_parts_land_whole_and_in_order_past_the_page_cache(tmp_path: Path,
                                                           sizes: list[int]) -> None:
    backend = DirBackend(tmp_path / "repo")
    parts = parts_of(len(sizes), sizes)
    backend.put("data/ab/pack", parts)
    path = tmp_path / "repo" / "data" / "ab" / "pack"
    assert resident_pages(path)[0] == 0              # before it is read back
    assert path.read_bytes() == b"".join(parts)
    assert backend.bytes_sent == sum(sizes) and backend.files_sent == 1
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / ".repo.partial") == []


def test_one_buffer_serves_puts_in_turn_and_each_is_its_own(tmp_path: Path) -> None:
    backend = DirBackend(tmp_path / "repo")
    packs = [parts_of(i, [12, 2 * MiB + 513 * i, 12, 3000]) for i in range(4)]
    for i, parts in enumerate(packs):
        backend.put(f"data/0{i}/p", parts)
    assert len(backend._free) == 1                   # reused, not one per put
    for i, parts in enumerate(packs):
        assert (tmp_path / "repo" / "data" / f"0{i}" / "p").read_bytes() == b"".join(parts)


def test_puts_at_once_from_threads_each_write_their_own_bytes(tmp_path: Path) -> None:
    backend = DirBackend(tmp_path / "repo")
    packs = [parts_of(10 + i, [12, MiB + 4096 * i + 7, 12, 9000]) for i in range(8)]
    threads = [threading.Thread(target=backend.put, args=(f"data/1{i}/p", parts))
               for i, parts in enumerate(packs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, parts in enumerate(packs):
        assert (tmp_path / "repo" / "data" / f"1{i}" / "p").read_bytes() == b"".join(parts)
    assert backend.files_sent == 8


def test_a_buffer_o_direct_refuses_is_written_through_the_page_cache(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 100)       # a bytes object: its data is never page-aligned
    atomic.replace_file(tmp_path / "t", tmp_path / "f", data, 0o600, direct=True)
    assert (tmp_path / "f").read_bytes() == data


def test_a_backup_killed_inside_a_pack_write_leaves_no_pack_half_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    r = random.Random(23)
    for i in range(3):                                # 36 MiB that does not compress: 3 packs
        (src / f"f{i}.bin").write_bytes(r.randbytes(12 * MiB))
    (src / "small.txt").write_text("hello\n" * 1000)
    before = describe(src)
    passfile = tmp_path / "pass"
    passfile.write_bytes(PASS + b"\n")
    passfile.chmod(0o600)
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {"PIPELINE_CONFIG_DIR": str(tmp_path / "config")}
    cmd = ["backup", "--offline", *FAST_KDF_ARGS, "--source", str(src), "--staging",
           str(staging), "--job-name", "seed-1", "--subscription", SUB, "--account",
           "backupacct", "--container", "backups", "--passphrase-file", str(passfile)]

    killed = run_cli(*cmd, env={**env, "PIPELINE_CRASH_AT": "after_direct_write:2"})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    repo = staging / "repo"
    for pack in (repo / "data").rglob("*"):          # every named pack is whole
        if pack.is_file():
            assert blake3.blake3(pack.read_bytes()).hexdigest() == pack.name   # its id
    assert not list((repo / "snapshots").glob("*"))
    run_cli("check", "--from", str(repo), "--passphrase-file", str(passfile), "--read-data",
            env=env, check_code=EXIT_OK)

    run_cli(*cmd, env=env, check_code=EXIT_OK)       # the same command again completes
    run_cli("check", "--from", str(repo), "--passphrase-file", str(passfile), "--read-data",
            env=env, check_code=EXIT_OK)
    out = tmp_path / "out"
    run_cli("restore", "--from", str(staging), "--target", str(out), "--passphrase-file",
            str(passfile), env=env, check_code=EXIT_OK)
    assert describe(out) == before
