"""Hostile input, part 2 of issue 15: crash consistency while staging changes.

One session on image drives: prep is killed (SIGKILL at every point of
``pipeline.faults`` and at seeded random instants), and between two runs the staging
tree changes under it: a file already partly or wholly on a drive is rewritten with
other bytes, among them zeroed 1 MiB cells (the new version stores ZERO extents where
the old one stored data), a file is deleted, one is added; then ``prep --resume``.
At the end the drives are imported

- with the journal,
- without it (recovery password only) with the closing indexes intact,
- without it with every closing index damaged, and with every trailer zeroed (both
  read by walking the log),

and every blob a copy log calls "ok" must be byte-identical to the CURRENT staging
file, never an old version.  A file deleted from staging after prep wrote it stays in the
session (a seed copies what staging held; it deletes nothing, as WAImportExport does): it
may arrive, with the bytes it had last.  A drive that cannot vouch for itself (no intact
closing index) calls what it writes "unvouched": some version staging once held.  Last,
an import killed midway and run again ends with the same account as one that ran through.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from pipeline import faults
from pipeline.drive import format

from . import hostile as h
from .conftest import FAST_KDF_ARGS
from .drivedata import read_tree

CONTAINER = "hostile-crash"
VDIR = "vdir/"
SESSION = "crash-15"
DRIVES = 4
# Every fault point (prep's own list, in its order: the first is met only by a fresh
# session), then a second pwrite; a timed kill after every fourth; (point, n) or None.
_POINTS: list[tuple[str, int] | None] = [
    (p, 2 if p == "after_pwrite" else 1) for p in faults.POINTS] + [("after_pwrite", 1)]
ROUNDS: list[tuple[str, int] | None] = []
for _i, _p in enumerate(_POINTS):
    ROUNDS += [_p, None] if _i % 4 == 3 else [_p]


def make_staging(src: Path, rng: random.Random) -> None:
    (src / "big").mkdir(parents=True)
    (src / "small").mkdir()
    for name, mib in (("a.bin", 3), ("b.bin", 2), ("c.bin", 6), ("d.bin", 5)):
        (src / "big" / name).write_bytes(rng.randbytes(mib * h.MiB + rng.randrange(1, 9999)))
    with open(src / "big" / "sparse.img", "wb") as f:
        f.truncate(4 * h.MiB)
        f.seek(2 * h.MiB)
        f.write(rng.randbytes(300_000))
    for i in range(30):
        (src / "small" / f"f{i:02d}.txt").write_bytes(rng.randbytes(rng.randrange(1, 6000)))


def change_staging(src: Path, rng: random.Random, rnd: int, log: list[str]) -> None:
    """Rewrite a big file (new bytes, some 1 MiB cells zeroed), delete a file, add one."""
    big = sorted((src / "big").glob("*.bin"))
    victim = big[rnd % len(big)]
    size = victim.stat().st_size + rng.choice((-5000, 0, 7000))
    data = bytearray(rng.randbytes(size))
    for cell in range(0, size, h.MiB):
        if rng.random() < 0.5:  # ZERO extents where the old version stored data
            data[cell:cell + h.MiB] = bytes(min(h.MiB, size - cell))
    victim.write_bytes(bytes(data))
    small = sorted((src / "small").glob("*"))
    gone = small[rng.randrange(len(small))]
    gone.unlink()
    new = src / "small" / f"new-{rnd:02d}.bin"
    new.write_bytes(rng.randbytes(rng.choice((1000, 300_000, 1_500_000))))
    stamp = 1_800_000_000_000_000_000 + rnd * 1_000_000_000  # a new mtime, whatever the clock
    for p in (victim, new):
        os.utime(p, ns=(stamp, stamp))
    log.append(f"round {rnd}: rewrote {victim.name}, deleted {gone.name}, added {new.name}")


def test_crash_resume_with_changing_staging_then_import(tmp_path: Path) -> None:
    rng = random.Random(150015)
    src, jdir = tmp_path / "src", tmp_path / "j"
    make_staging(src, rng)
    ever: dict[str, set[bytes]] = {}  # every version each blob ever had in staging
    last: dict[str, bytes] = {}  # the last version each blob had in staging

    def remember() -> None:
        for k, v in read_tree(src).items():
            ever.setdefault(VDIR + k, set()).add(v)
            last[VDIR + k] = v

    remember()
    base = ["prep", "--srcdir", str(src), "--dstdir", f"{CONTAINER}/{VDIR}", "--journal-dir",
            str(jdir), "--session-id", SESSION, "--drive-size", "32M", *FAST_KDF_ARGS]
    for n in range(1, DRIVES + 1):
        base += ["--drive", str(tmp_path / f"d{n}.img")]
    history: list[str] = []
    started = False
    for rnd, kill in enumerate(ROUNDS):
        args = base + (["--resume"] if started else [])
        if kill is None:
            proc = h.start(args, cwd=tmp_path)
            time.sleep(rng.uniform(0.2, 0.8))
            proc.send_signal(signal.SIGKILL)
            ran = h.finish(proc, args)
            what = "timed kill"
        else:
            ran = h.run(args, cwd=tmp_path,
                        extra_env={"PIPELINE_CRASH_AT": f"{kill[0]}:{kill[1]}"})
            what = f"{kill[0]}:{kill[1]}"
        assert ran.code in (0, -signal.SIGKILL), f"round {rnd} ({what}):\n{ran.show()}"
        history.append(f"round {rnd}: {what} -> exit {ran.code}")
        started = started or any(jdir.glob("*.journal"))
        change_staging(src, rng, rnd, history)
        remember()
    killed = [x for x in history if x.endswith(f"exit {-signal.SIGKILL}")]
    assert len(killed) >= 5, "too few runs were killed to test anything:\n" + "\n".join(history)
    final = h.run(base + (["--resume"] if started else []), cwd=tmp_path)
    assert final.code == 0, "\n".join(history) + "\n" + final.show()
    staging = {VDIR + k: v for k, v in read_tree(src).items()}
    deleted = set(ever) - set(staging)
    facts = [d for d in h.session_facts(jdir) if d.state in ("closed", "full")]
    assert len(facts) >= 2, f"the session should fill a drive and spill: {history}"

    problems: list[str] = []

    def check_log(what: str, account: Path, logs: Path) -> None:
        """Every blob a copy log calls ok is the CURRENT staging file, in the account."""
        got = h.account_blobs(account, CONTAINER)
        for blob, st in h.statuses(h.copy_log_entries(logs)).items():
            if st not in ("ok", "unvouched"):
                continue
            if blob not in ever:
                problems.append(f"{what}: {blob} was never in staging, yet imported {st}")
            elif st == "unvouched":
                if got.get(blob) not in ever[blob]:
                    problems.append(f"{what}: {blob} unvouched, holds bytes staging never had")
            elif blob in deleted:
                if got.get(blob) != last[blob]:
                    problems.append(f"{what}: {blob} (deleted from staging) logged ok, the "
                                    "account holds other bytes than it had last")
            elif got.get(blob) != staging[blob]:
                old = got.get(blob) in ever.get(blob, set())
                problems.append(f"{what}: {blob} logged ok, the account holds "
                                f"{'an OLD version' if old else 'other bytes'}")

    def import_(what: str, drives: list[h.DriveFacts], secret: list[str], account: Path,
                logs: Path, images: dict[int, Path] | None = None) -> h.Ran:
        account.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        args = ["import", "--to", str(account), "--log-dir", str(logs), *secret]
        for d in drives:
            args += ["--drive", str((images or {}).get(d.seq, d.path))]
        cwd = logs.parent / f"cwd-{logs.name}"
        ran = h.run_many({what: (args, cwd)})[what]
        problems.extend(f"{what}: {p}" for p in h.problems_of_any_run(ran))
        if h.tree(cwd):
            problems.append(f"{what}: wrote into its working directory: {sorted(h.tree(cwd))}")
        check_log(what, account, logs)
        return ran

    # With the journal: everything, exactly the current staging tree.
    ref = tmp_path / "with-journal"
    ran = import_("import --journal-dir", facts, ["--journal-dir", str(jdir)], ref / "acc",
                  ref / "logs")
    if ran.code != 0:
        problems.append(f"import --journal-dir: exit {ran.code}: {ran.last_error_line()}")
    got = h.account_blobs(ref / "acc", CONTAINER)
    if got != {**{b: last[b] for b in deleted if b in got}, **staging}:
        problems.append(
            f"import --journal-dir: the account is not the current staging tree: missing "
            f"{sorted(set(staging) - set(got))}, extra {sorted(set(got) - set(staging))}, "
            f"differ {sorted(b for b in set(got) & set(staging) if got[b] != staging[b])}")

    # Without the journal, drive by drive (each with its own password), in three states.
    for variant, want in (("index intact", 0), ("index damaged", 8), ("trailer zeroed", 8)):
        vdir = tmp_path / variant.replace(" ", "-")
        images: dict[int, Path] = {}
        for d in facts:
            img = vdir / f"d{d.seq}.img"
            vdir.mkdir(exist_ok=True)
            h.copy_image(d.path, img)
            if variant == "index damaged":
                at = h.DATA_OFFSET + d.index_offset
                h.flip(img, (at, at + 1, at + 100, at + 3000))
            elif variant == "trailer zeroed":
                h.zero(img, h.DATA_OFFSET + format.trailer_offset(d.data_area_size))
            images[d.seq] = img
        for d in facts:
            pw = h.write_password(vdir / f"pw{d.seq}", d.password)
            what = f"import --recovery-password-file, {variant}, drive {d.seq}"
            ran = import_(what, [d], ["--recovery-password-file", str(pw)], vdir / "acc",
                          vdir / f"logs{d.seq}", images)
            if ran.code != want:
                problems.append(f"{what}: exit {ran.code}, the spec says {want}: "
                                f"{ran.last_error_line()}")
        if variant == "index intact":
            got = h.account_blobs(vdir / "acc", CONTAINER)
            if got != {**{b: last[b] for b in deleted if b in got}, **staging}:
                problems.append(f"{variant}: after every drive, the account is not the current "
                                f"staging tree (missing {sorted(set(staging) - set(got))}, "
                                f"extra {sorted(set(got) - set(staging))})")

    # An import killed midway, then run again: the same account as the one that ran through.
    for attempt in range(2):
        kdir = tmp_path / f"killed-{attempt}"
        (kdir / "acc").mkdir(parents=True)
        (kdir / "logs").mkdir()
        args = ["import", "--to", str(kdir / "acc"), "--log-dir", str(kdir / "logs"),
                "--journal-dir", str(jdir), *(x for d in facts for x in ("--drive", str(d.path)))]
        proc = h.start(args, cwd=kdir)
        time.sleep(rng.uniform(0.4, 1.2))
        proc.send_signal(signal.SIGKILL)
        h.finish(proc, args)
        reference = h.account_blobs(ref / "acc", CONTAINER)
        for blob, data in h.account_blobs(kdir / "acc", CONTAINER).items():
            if reference.get(blob) != data:
                problems.append(f"killed import {attempt}: {blob} visible before it was complete "
                                "or with other bytes")
        again = h.run(args, cwd=kdir)
        problems.extend(f"import after a kill: {p}" for p in h.problems_of_any_run(again))
        if h.account_blobs(kdir / "acc", CONTAINER) != reference:
            problems.append(f"killed import {attempt}, run again: the account differs from the "
                            "import that ran through")

    assert not problems, "\n".join([*problems, "--- history", *history])
