"""Hostile input, part 1 and 3 of issue 15: damaged drives and crafted drives.

1. The damage matrix.  One real session (two 32 MiB image drives, the first one full
   and spilling onto the second), then for each REGION x DAMAGE, on a fresh copy of
   drive 1, every READER at once.  The table ``EXPECT`` is the spec: the exit code of
   each reader, and what the storage account and the copy log must hold:

   - ALL      every blob drive 1 completes is "ok" ("unvouched" when read by walking the
              log) and byte-identical to staging; the
              one that continues on drive 2 is "skipped"; nothing else in the account.
   - VICTIMS  the blobs with a stored byte in the damage are not "ok" (named "corrupt" or
              "missing" when the reader knows them: journal or closing index), every
              other blob as for ALL.  For ``verify`` the damaged files it names are
              exactly the victims.
   - NONE     nothing in the account, no copy log line says "ok".
   - ANY      the exit code is all that is checked.

   The reasoning behind each row is in the comment above it.  Whatever the row, no
   reader may exit 70, print a traceback, hang, modify the image, or create a file
   outside its --to and --log-dir.

3. Crafted drives (``test_crafted_drive``): a valid LUKS2 volume whose data area is
   written record by record with one hostile field (checksums valid): a session id or
   blob name that climbs out of the directory, NUL and control characters, names too
   long, a blob listed twice or named like the importer's state, extents outside their
   file or the drive, sizes that would make a reader allocate without bound.  Every
   reader must finish in seconds, write nowhere but --to and --log-dir, and either
   refuse the drive (non-zero, its last stderr line naming the problem, nothing
   imported) or import the sound files and name the hostile ones as not "ok".
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.drive import format
from pipeline.volume import luks2

from . import hostile as h
from .conftest import FAST_KDF_ARGS
from .drivedata import read_tree

CONTAINER = "hostile-dmg"
VDIR = "vdir/"
SESSION = "dmg-1"
D = h.DATA_OFFSET


# =========================================================================== 1. damage matrix


def make_staging(root: Path) -> None:
    """A few files of each kind prep stores differently, about 18 MiB stored in all."""
    rng = random.Random(15)
    (root / "big").mkdir(parents=True)
    (root / "small").mkdir()
    (root / "empty").mkdir()
    (root / "big" / "multi.bin").write_bytes(rng.randbytes(3 * h.MiB + 12345))  # RAW x 4
    with open(root / "big" / "sparse.img", "wb") as f:  # holes, ZSTD cells, ZERO cells
        f.truncate(8 * h.MiB)
        f.seek(1 * h.MiB + 4096)
        f.write(rng.randbytes(200_000))
        f.seek(6 * h.MiB)
        f.write(rng.randbytes(700_000))
    (root / "big" / "text.log").write_bytes(  # compressible, several ZSTD cells
        b"".join(f"2026-11-26 line {i} of a log that compresses\n".encode()
                 for i in range(40_000)))
    (root / "big" / "spill.bin").write_bytes(rng.randbytes(14 * h.MiB))  # fills drive 1
    for i in range(20):
        (root / "small" / f"f{i:02d}.txt").write_bytes(rng.randbytes(rng.randrange(1, 9000)))
    (root / "empty" / "zero bytes").write_bytes(b"")


@dataclass
class Session:
    base: Path
    src: Path
    jdir: Path
    staging: dict[str, bytes]  # blob name -> bytes
    drive: h.DriveFacts  # drive 1, the one damaged
    image_size: int

    def __repr__(self) -> str:
        return f"Session({self.base})"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    base = tmp_path_factory.mktemp("hostile-dmg")
    src, jdir = base / "src", base / "j"
    make_staging(src)
    args = ["prep", "--srcdir", str(src), "--dstdir", f"{CONTAINER}/{VDIR}", "--journal-dir",
            str(jdir), "--session-id", SESSION, "--drive-size", "32M", *FAST_KDF_ARGS,
            "--drive", str(base / "d1.img"), "--drive", str(base / "d2.img")]
    ran = h.run(args, cwd=base)
    assert ran.code == 0, ran.show()
    facts = h.session_facts(jdir)
    assert [d.seq for d in facts] == [1, 2], "the session must spill onto a second drive"
    d1 = facts[0]
    assert d1.state == "full" and len(d1.segments) >= 3, d1
    assert d1.blobs_complete() < {f.blob for f in d1.files.values()}, "no file spans drives"
    staging = {VDIR + k: v for k, v in read_tree(src).items()}
    return Session(base, src, jdir, staging, d1, (base / "d1.img").stat().st_size)


# --------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    flips: tuple[int, ...]  # device offsets whose byte is xor-ed with 0xff
    zeros: tuple[int, ...]  # device offsets of 4 KiB blocks written with zeros
    cut: int | None  # image length when truncated at the region's start (None: not a case)


def regions(s: Session) -> dict[str, Region]:
    d = s.drive
    seq, off, length = d.segments[len(d.segments) // 2]  # a DATA segment mid-log
    stored = [e for e in d.extents if e.codec is not format.Codec.ZERO
              and off <= e.location < off + length]
    e = max(stored, key=lambda x: x.stored_len)
    q = format.align_up(e.location)  # a sector inside one extent's stored bytes
    assert q + h.SECTOR <= e.location + e.stored_len, e
    trailer = format.trailer_offset(d.data_area_size)
    assert D + d.data_area_size == s.image_size
    ks = luks2.KEYSLOTS_OFFSET
    hs = luks2.HDR_SIZE
    return {
        "luks-primary": Region((0, 1, 2, 3), (0,), 0),  # binary header, magic first
        "luks-json": Region((4096, 4097, 4140, 4141), (4096,), 4096),
        "luks-secondary": Region((hs, hs + 1, hs + 2, hs + 3), (hs,), hs),
        "luks-both": Region((0, 1, 2, 3, hs, hs + 1, hs + 2, hs + 3), (0, hs), None),
        "keyslots": Region((ks + 4096, ks + 4097, ks + 9000), (ks + 4096,), ks),
        "superblock": Region((D, D + 1, D + 2, D + 3), (D,), D),
        "segment": Region((D + q + 100, D + q + 101, D + q + 2000), (D + q,), D + off),
        "index": Region((D + d.index_offset, D + d.index_offset + 1, D + d.index_offset + 100),
                        (D + d.index_offset,), D + d.index_offset),
        "trailer": Region((D + trailer, D + trailer + 1, D + trailer + 30), (D + trailer,),
                          D + trailer),
    }


def damaged_range(region: Region, damage: str) -> list[tuple[int, int]]:
    """Data-area byte ranges whose plaintext the damage changes.

    AES-XTS: a changed ciphertext byte garbles its 16-byte block and no other; a zeroed
    4 KiB block garbles that whole sector; a cut loses everything after it.
    """
    if damage == "flip":
        return [((p - D) // 16 * 16, (p - D) // 16 * 16 + 16) for p in region.flips if p >= D]
    if damage == "zero":
        return [(p - D, p - D + h.SECTOR) for p in region.zeros if p >= D]
    assert region.cut is not None
    return [(max(region.cut - D, 0), 1 << 62)]


# --------------------------------------------------------------------------- the spec

ALL, VICTIMS, NONE, ANY = "all", "victims", "none", "any"
# A copy log's statuses for a blob the import wrote: "unvouched" when the records came from
# a walk of the log (no intact closing index), so the drive cannot vouch it is the newest.
WRITTEN = ("ok", "unvouched")
READERS = ("verify", "import-journal", "import-password", "info")
Expect = dict[str, tuple[int, str]]


def row(verify: tuple[int, str], import_journal: tuple[int, str],
        import_password: tuple[int, str], info: tuple[int, str]) -> Expect:
    return dict(zip(READERS, (verify, import_journal, import_password, info), strict=True))


# One LUKS2 header copy damaged: the other one opens the volume (cryptsetup does the
# same), so nothing is lost; readers may warn, but every one succeeds.
ONE_HEADER_COPY = row((0, ALL), (0, ALL), (0, ALL), (0, ANY))
# The image ends inside the LUKS2 area (both header copies, or the keyslots, are gone):
# no reader can unlock it.  A truncated image is damage (4), not bad input.
UNOPENABLE = row((4, ANY), (4, NONE), (4, NONE), (4, ANY))
# Keyslot material damaged: the recovery password cannot open the volume.  With the
# journal the password is known to be right, so that is damage (4); from a password
# file it cannot be told from a mistyped password (2, "check the password and the drive").
KEYSLOT = row((4, ANY), (4, NONE), (2, NONE), (2, ANY))
# Closing index or trailer damaged (or cut off).  With the journal nothing is lost: every
# extent is where the journal says, and it checks; verify reports the drive (4) because
# without its journal it could not vouch for itself.  From the drive alone the log scan
# finds every segment, imports everything, and says it cannot vouch (8).  `drive info`
# decodes the closing index the trailer points at: a damaged index is damage (4); a
# trailer that does not read looks like a drive never closed (0); a cut is damage (4).
CLOSING = row((4, VICTIMS), (0, ALL), (8, ALL), (4, ANY))
TRAILER = row((4, VICTIMS), (0, ALL), (8, ALL), (0, ANY))
CLOSING_CUT = row((4, VICTIMS), (0, ALL), (8, ALL), (4, ANY))

EXPECT: dict[tuple[str, str], Expect] = {
    ("luks-primary", "flip"): ONE_HEADER_COPY,
    ("luks-primary", "zero"): ONE_HEADER_COPY,
    ("luks-primary", "truncate"): UNOPENABLE,
    ("luks-json", "flip"): ONE_HEADER_COPY,
    ("luks-json", "zero"): ONE_HEADER_COPY,
    ("luks-json", "truncate"): UNOPENABLE,
    ("luks-secondary", "flip"): ONE_HEADER_COPY,
    ("luks-secondary", "zero"): ONE_HEADER_COPY,
    ("luks-secondary", "truncate"): UNOPENABLE,  # the keyslot area went with it
    ("luks-both", "flip"): UNOPENABLE,
    ("luks-both", "zero"): UNOPENABLE,
    ("keyslots", "flip"): KEYSLOT,
    ("keyslots", "zero"): KEYSLOT,
    ("keyslots", "truncate"): UNOPENABLE,
    # The superblock says which session, drive and container; the journal knows all of
    # it, so an import with the journal loses nothing (the LUKS2 uuid names the drive).
    # From the drive alone the container is unknown: refuse (4).  verify and `drive info`
    # report it (4).
    ("superblock", "flip"): row((4, ANY), (0, ALL), (4, NONE), (4, ANY)),
    ("superblock", "zero"): row((4, ANY), (0, ALL), (4, NONE), (4, ANY)),
    # The whole data area is gone: with the journal every stored blob is named missing
    # (an empty file needs no byte and is still ok); from the drive alone nothing is known.
    ("superblock", "truncate"): row((4, ANY), (4, VICTIMS), (4, NONE), (4, ANY)),
    # Stored bytes of one extent damaged: exactly its file is corrupt, everywhere.
    ("segment", "flip"): row((4, VICTIMS), (4, VICTIMS), (4, VICTIMS), (0, ANY)),
    ("segment", "zero"): row((4, VICTIMS), (4, VICTIMS), (4, VICTIMS), (0, ANY)),
    # The image ends at a segment: with the journal the files stored past the cut are
    # missing (4).  From the drive alone the index and trailer are gone too: the log scan
    # imports what lies before the cut, and every extent it knows of checks, so the drive
    # only cannot vouch for the rest (8).
    ("segment", "truncate"): row((4, VICTIMS), (4, VICTIMS), (8, VICTIMS), (4, ANY)),
    ("index", "flip"): CLOSING,
    ("index", "zero"): CLOSING,
    ("index", "truncate"): CLOSING_CUT,
    ("trailer", "flip"): TRAILER,
    ("trailer", "zero"): TRAILER,
    ("trailer", "truncate"): CLOSING_CUT,
}

CASES = [(region, damage, reader) for (region, damage) in EXPECT for reader in READERS]


# --------------------------------------------------------------------------- one damaged copy


@dataclass
class Case:
    dir: Path
    victims: set[str]  # blobs with a stored byte in the damage
    scan_victims: set[str]  # ... plus those a log scan cannot learn of (entered past a cut)
    verify_victims: set[str]  # ... plus those with an extent recorded past a cut (verify)
    results: dict[str, h.Ran]
    strays: dict[str, set[Path]]  # reader -> files it created outside --to / --log-dir
    image_changed: bool


_cache: dict[tuple[str, str], Case] = {}


def damaged_case(s: Session, region_name: str, damage: str) -> Case:
    """Damage a fresh copy of drive 1 and run all four readers on it at once (cached)."""
    key = (region_name, damage)
    if key in _cache:
        return _cache[key]
    for old in _cache.values():  # one case on disk at a time
        h.rmtree(old.dir)
    _cache.clear()
    region = regions(s)[region_name]
    d = s.drive
    cdir = s.base / "cases" / f"{region_name}-{damage}"
    h.rmtree(cdir)
    cdir.mkdir(parents=True)
    img = cdir / "d1.img"
    h.copy_image(d.path, img)
    if damage == "flip":
        h.flip(img, region.flips)
    elif damage == "zero":
        for p in region.zeros:
            h.zero(img, p)
    else:
        assert region.cut is not None
        h.truncate(img, region.cut)
    before = h.sha256_file(img)
    pw = h.write_password(cdir / "pw", d.password)
    jv, jij = cdir / "j-verify", cdir / "j-import"
    shutil.copytree(s.jdir, jv)
    shutil.copytree(s.jdir, jij)
    dirs = {r: cdir / r for r in READERS}
    for r in ("import-journal", "import-password"):
        (dirs[r] / "acc").mkdir(parents=True)
        (dirs[r] / "logs").mkdir()
    jobs = {
        "verify": (["verify", "--journal-dir", str(jv), "--drive", str(img), "--json"],
                   dirs["verify"]),
        "import-journal": (["import", "--drive", str(img), "--to", str(dirs["import-journal"]
                            / "acc"), "--journal-dir", str(jij), "--log-dir",
                            str(dirs["import-journal"] / "logs"), "--json"],
                           dirs["import-journal"]),
        "import-password": (["import", "--drive", str(img), "--to", str(dirs["import-password"]
                             / "acc"), "--recovery-password-file", str(pw), "--log-dir",
                             str(dirs["import-password"] / "logs"), "--json"],
                            dirs["import-password"]),
        "info": (["drive", "info", str(img), "--recovery-password-file", str(pw), "--json"],
                 dirs["info"]),
    }
    results = h.run_many(jobs, timeout=60)
    strays = {}
    for r, rdir in dirs.items():
        allowed = (rdir / "acc", rdir / "logs")
        strays[r] = {p for p in h.tree(rdir) if p not in allowed
                     and not any(a in p.parents for a in allowed)}
    top = {p.name for p in cdir.iterdir()}
    extra = top - {"d1.img", "pw", "j-verify", "j-import", *READERS}
    if extra:  # someone wrote beside the image
        strays["(beside the image)"] = {cdir / x for x in extra}
    for j in (jv, jij):
        new = {p.name for p in j.iterdir()} - {p.name for p in s.jdir.iterdir()}
        new = {x for x in new if not x.endswith(("-wal", "-shm"))}
        if new:
            strays[f"(in {j.name})"] = {j / x for x in new}
    lo_hi = damaged_range(region, damage)
    victims = set().union(*(d.blobs_stored_in(lo, hi) for lo, hi in lo_hi)) if lo_hi else set()
    scan_victims, verify_victims = set(victims), set(victims)
    if damage == "truncate" and region.cut is not None and region.cut >= D:
        first_lost = [seq for seq, off, _ in d.segments if off >= region.cut - D]
        if first_lost:  # records past the cut are gone too (a ZERO extent's among them)
            recorded = d.blobs_recorded_from(min(first_lost))
            scan_victims |= d.blobs_entered_from(min(first_lost)) | recorded
            verify_victims |= recorded
    case = Case(cdir, victims, scan_victims, verify_victims, results, strays,
                h.sha256_file(img) != before)
    _cache[key] = case
    return case


# --------------------------------------------------------------------------- checks


def check_import(s: Session, case: Case, reader: str, outcome: str, scan: bool) -> list[str]:
    """What the account and the copy log hold, against the outcome of the table."""
    rdir = case.dir / reader
    got = h.account_blobs(rdir / "acc", CONTAINER)
    entries = h.copy_log_entries(rdir / "logs")
    status = h.statuses(entries)
    bad: list[str] = []
    for blob, data in got.items():  # whatever is visible is complete and right
        if s.staging.get(blob) != data:
            bad.append(f"account holds {blob} with bytes that differ from staging")
    for blob, st in status.items():
        if st in WRITTEN and got.get(blob) != s.staging.get(blob):
            bad.append(f"copy log says {blob} {st} but the account does not hold it intact")
    if outcome == NONE:
        if got:
            bad.append(f"nothing should be imported, the account holds {sorted(got)}")
        return bad
    complete = s.drive.blobs_complete()
    every = {f.blob for f in s.drive.files.values()}
    victims = (case.scan_victims if scan else case.victims) if outcome == VICTIMS else set()
    wrong: dict[str, list[str]] = {}
    for blob in sorted(every):
        st = status.get(blob)
        if blob in victims:
            if st in WRITTEN or blob in got:
                wrong.setdefault("damaged, yet imported", []).append(blob)
            elif not scan and st not in ("corrupt", "missing"):
                wrong.setdefault("damaged, not named corrupt or missing", []).append(
                    f"{blob} ({st})")
        elif blob in complete:
            # From a log scan the drive cannot vouch that a copy is the newest: "unvouched".
            if st != ("unvouched" if scan else "ok") or blob not in got:
                wrong.setdefault("intact on the drive, not imported", []).append(
                    f"{blob} ({st})")
        elif st != "skipped" or blob in got:
            wrong.setdefault("continues on drive 2, not 'skipped'", []).append(f"{blob} ({st})")
    bad += [f"{what}: {', '.join(blobs)}" for what, blobs in wrong.items()]
    if set(got) - every:
        bad.append(f"account holds blobs not on the drive: {sorted(set(got) - every)}")
    return bad


def check_verify(s: Session, case: Case, outcome: str) -> list[str]:
    ran = case.results["verify"]
    if outcome in (NONE, ANY):
        return []
    try:
        events = [json.loads(line) for line in ran.stdout.splitlines()]
        reports = next(e["reports"] for e in events if e["type"] == "summary")
    except (json.JSONDecodeError, StopIteration, KeyError):
        return [f"verify --json printed no summary event with the reports: "
                f"{ran.stdout[-300:]!r}"]
    mine = [r for r in reports if r.get("seq") == s.drive.seq]
    if len(mine) != 1:
        return [f"verify reported {len(mine)} entries for drive {s.drive.seq}"]
    named = set(mine[0].get("damaged", {}))
    want = {b.removeprefix(VDIR) for b in case.verify_victims} if outcome == VICTIMS else set()
    if named != want:
        return [f"verify names damaged files {sorted(named)}, the damage hit {sorted(want)}"]
    return []


@pytest.mark.parametrize(("region", "damage", "reader"), CASES,
                         ids=[f"{r}-{d}-{x}" for r, d, x in CASES])
def test_damage_matrix(session: Session, region: str, damage: str, reader: str) -> None:
    code, outcome = EXPECT[(region, damage)][reader]
    case = damaged_case(session, region, damage)
    ran = case.results[reader]
    bad = h.problems_of_any_run(ran)
    if ran.code != code:
        bad.append(f"exit {ran.code}, the spec says {code}")
    if case.image_changed:
        bad.append("a reader modified the drive image")
    for who, paths in case.strays.items():
        if paths and who in (reader, "(beside the image)", "(in j-verify)", "(in j-import)"):
            bad.append(f"{who} created files outside --to/--log-dir: {sorted(map(str, paths))}")
    if reader.startswith("import"):
        bad += check_import(session, case, reader, outcome,
                            scan=reader == "import-password" and code == 8)
    elif reader == "verify":
        bad += check_verify(session, case, outcome)
    assert not bad, "\n".join([f"{region} / {damage} / {reader}:", *bad, ran.show()])


# =========================================================================== 3. crafted drives

TOKEN = f"PWNED-{os.getpid()}"
UP = "../" * 16  # more than any temporary directory is deep: climbs to /
PASSWORD = luks2.new_recovery_password()
REFUSE, PARTIAL, CLEAN = "refuse", "partial", "clean"


@dataclass
class Crafting:
    """One crafted drive: how to make it, and which outcomes the spec accepts.

    REFUSE: non-zero, nothing imported, the last stderr line names the problem (one of
    ``words``).  PARTIAL: the sound files imported and "ok", the hostile ones named
    not "ok" and absent, exit in ``codes``.  CLEAN: every file imported, exit 0.
    """

    drive: dict[str, Any] = field(default_factory=dict)  # craft_drive keywords
    hostile: list[h.CraftFile] = field(default_factory=list)
    accept: tuple[str, ...] = (REFUSE, PARTIAL)
    codes: tuple[int, ...] = (1, 4, 8)  # exit codes PARTIAL accepts
    # REFUSE: the last stderr line names one of these
    words: tuple[str, ...] = ("blob", "name", "path", "extent", "segment", "record", "index")


def _hostile(blob: str | bytes, data: bytes = b"hostile bytes\n", path: str | bytes = "h.txt",
             **kw: Any) -> h.CraftFile:
    """A hostile file in DATA segment 1, apart from the sound ones in segment 0, so that a
    reader that rejects its segment still has the sound files to import."""
    return h.CraftFile(path=path, blob=blob, data=data, segment=1, **kw)


def _sound(vdir: str) -> list[h.CraftFile]:
    """Files prep could have written: blob = the dstdir's virtual directory + path (so a
    hostile dstdir makes hostile blob names too)."""
    rng = random.Random(1515)
    return [h.CraftFile("a.txt", vdir + "a.txt", rng.randbytes(3000)),
            h.CraftFile("dir/b.bin", vdir + "dir/b.bin", rng.randbytes(h.MiB + 500)),
            h.CraftFile("c.txt", vdir + "c.txt", b"hello\n")]


CRAFTED: dict[str, Crafting] = {
    # The crafting itself is sound: a clean import, then one without a closing index.
    "sound": Crafting(accept=(CLEAN,)),
    "sound-never-closed": Crafting(drive={"close": False}, accept=(PARTIAL,), codes=(8,)),
    # The superblock: every string names files and blobs the importer writes.
    "session-traversal": Crafting(drive={"session_id": f"x/{UP}tmp/{TOKEN}"},
                                  accept=(REFUSE,), words=("session",)),
    "session-newline": Crafting(drive={"session_id": "abc\ndef"}, accept=(REFUSE,),
                                words=("session",)),
    "session-nul": Crafting(drive={"session_id": b"ab\0cd"}, accept=(REFUSE,),
                            words=("session", "superblock")),
    "session-escape": Crafting(drive={"session_id": "s\x1b[2J\x1b]0;x\x07"}, accept=(REFUSE,),
                               words=("session",)),
    "session-1024-bytes": Crafting(drive={"session_id": "s" * 1024}, accept=(REFUSE,),
                                   words=("session",)),
    "job-traversal": Crafting(drive={"job_name": f"{UP}tmp/{TOKEN}"}, accept=(REFUSE, CLEAN),
                              words=("job",)),
    "dstdir-container-dotdot": Crafting(drive={"dstdir": f"{UP}tmp/{TOKEN}/"},
                                        accept=(REFUSE,), words=("container", "dstdir")),
    "dstdir-vdir-dotdot": Crafting(drive={"dstdir": f"crafted/{UP}tmp/{TOKEN}/"},
                                   accept=(REFUSE,), words=("dstdir", "blob", "directory")),
    "dstdir-control": Crafting(drive={"dstdir": "crafted/v\x01dir/"}, accept=(REFUSE,),
                               words=("dstdir", "blob", "control", "directory")),
    "container-of-importer-state": Crafting(drive={"dstdir": "waimportexport/vdir/"},
                                            accept=(REFUSE,),
                                            words=("waimportexport", "container")),
    # FileEntry blob names, each beside sound files.
    "blob-dotdot": Crafting(hostile=[_hostile("..")]),
    "blob-traversal": Crafting(hostile=[_hostile(f"vdir/{UP}tmp/{TOKEN}")]),
    "blob-absolute": Crafting(hostile=[_hostile(f"/tmp/{TOKEN}")]),
    "blob-nul": Crafting(hostile=[_hostile(b"vdir/a\0b")]),
    "blob-control": Crafting(hostile=[_hostile("vdir/a\x01b\nc")]),
    "blob-1025-chars": Crafting(hostile=[_hostile("vdir/" + "x" * 1020)]),
    "blob-segment-300-bytes": Crafting(hostile=[_hostile("vdir/" + "y" * 300)]),
    "blob-twice": Crafting(hostile=[_hostile("vdir/dup.txt", b"one\n", "dup.txt"),
                                    _hostile("vdir/dup.txt", b"two\n", "dup.txt")]),
    "blob-like-importer-marker": Crafting(hostile=[_hostile(
        ".pipeline-import/crafted-1/drive-01.json", b'{"state": "done", "files": []}',
        ".pipeline-import/crafted-1/drive-01.json")]),
    "path-dotdot": Crafting(hostile=[_hostile("vdir/x", path=f"{UP}tmp/{TOKEN}")]),
    # Extents that lie about where they belong.
    "extent-past-file-size": Crafting(hostile=[_hostile("vdir/e.txt", b"e" * 100,
                                                        "e.txt", extent_offset_shift=h.MiB)]),
    "extent-outside-drive": Crafting(hostile=[_hostile("vdir/o.txt", b"o" * 100, "o.txt",
                                                       location_override=1 << 40)]),
    "extent-in-superblock": Crafting(hostile=[_hostile("vdir/s.txt", b"s" * 100, "s.txt",
                                                       location_override=0)]),
    # Sizes and counts that would make a reader allocate or loop without bound.
    "file-size-2-62": Crafting(hostile=[_hostile("vdir/huge.bin", b"u" * 100, "huge.bin",
                                                 size=1 << 62)], codes=(0, 1, 4, 8)),
    "index-record-count-2-32": Crafting(drive={"index_record_count": (1 << 32) - 1},
                                        accept=(REFUSE, PARTIAL), codes=(8,),
                                        words=("index", "record")),
    "data-area-2-50": Crafting(drive={"data_area_size": 1 << 50}, accept=(REFUSE, PARTIAL),
                               codes=(4, 8), words=("superblock", "data area", "truncat")),
    "trailer-index-length-2-40": Crafting(drive={"trailer": {"index_length": 1 << 40}},
                                          accept=(REFUSE, PARTIAL), codes=(8,),
                                          words=("trailer", "index")),
    "trailer-points-at-data": Crafting(drive={"trailer": {"index_offset": h.SECTOR}},
                                       accept=(REFUSE, PARTIAL), codes=(8,),
                                       words=("trailer", "index")),
}


def _escapes(before: set[str], after: set[str], allowed: Sequence[Path]) -> set[Path]:
    return {p for p in map(Path, after - before)
            if not any(a == p or a in p.parents for a in allowed)}


def _pwned() -> set[str]:
    return {str(p) for root in (Path("/tmp"), Path("/")) for p in root.glob(f"*{TOKEN}*")}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_drive(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    spec = CRAFTED[name]
    base = tmp_path_factory.mktemp("crafted")
    dstdir = spec.drive.get("dstdir", "crafted/vdir/")
    container, _, vdir = dstdir.partition("/")
    sound = _sound(vdir)
    files = sound + [dataclasses.replace(f) for f in spec.hostile]
    img = base / "crafted.img"
    h.craft_drive(img, PASSWORD, files, **spec.drive)
    pw = h.write_password(base / "pw", PASSWORD)
    acc, logs = base / "D", base / "L"
    acc.mkdir()
    logs.mkdir()
    watched = tmp_path_factory.getbasetemp()
    before, pwned_before = h.tree_names(watched), _pwned()
    results = h.run_many({
        "import": (["import", "--drive", str(img), "--to", str(acc), "--recovery-password-file",
                    str(pw), "--log-dir", str(logs), "--json"], base / "cwd-import"),
        "info": (["drive", "info", str(img), "--recovery-password-file", str(pw), "--json"],
                 base / "cwd-info"),
    }, timeout=60)
    bad: list[str] = []
    escaped = _escapes(before, h.tree_names(watched), (acc, logs, base / "cwd-import",
                                                 base / "cwd-info"))
    escaped |= {Path(p) for p in _pwned() - pwned_before}
    escaped |= {p for d in ("cwd-import", "cwd-info") for p in h.tree(base / d)}
    if escaped:
        bad.append(f"files written outside --to and --log-dir: {sorted(map(str, escaped))}")
    for who, ran in results.items():
        bad += [f"{who}: {p}" for p in h.problems_of_any_run(ran)]
    ran = results["import"]
    got = {c.name: h.account_blobs(acc, c.name) for c in acc.iterdir()
           if c.is_dir() and not c.name.startswith(".") and c.name != "waimportexport"}
    got = {f"{c}/{b}": v for c, blobs in got.items() for b, v in blobs.items()}
    status = h.statuses(h.copy_log_entries(logs))
    want_sound = {f"{container}/{f.blob}": f.data for f in sound}
    hostile_blobs = {f.blob if isinstance(f.blob, str) else f.blob.decode("utf-8", "replace")
                     for f in spec.hostile}
    outcomes = []
    if ran.code not in (0, h.EXIT_BUG) and not got and not set(WRITTEN) & set(status.values()):
        line = ran.last_error_line().lower()
        outcomes.append(REFUSE if any(w in line for w in spec.words)
                        else f"refused, but the last stderr line names none of {spec.words}")
    elif ran.code == 0 and got == {**want_sound, **{
            f"{container}/{f.blob}": f.data for f in spec.hostile if isinstance(f.blob, str)}}:
        outcomes.append(CLEAN)
    if ran.code in spec.codes and {k: got.get(k) for k in want_sound} == want_sound and all(
            status.get(f.blob) in WRITTEN for f in sound) and not any(
            status.get(b) in WRITTEN for b in hostile_blobs) and set(got) <= set(want_sound):
        outcomes.append(PARTIAL)
    if not set(outcomes) & set(spec.accept):
        bad.append(f"outcome {outcomes or 'none of the accepted ones'}; the spec accepts "
                   f"{list(spec.accept)} (PARTIAL with exit {list(spec.codes)}); account holds "
                   f"{sorted(got)}, copy log {status}")
    info = results["info"]
    if info.code == 0:
        try:
            json.loads(info.stdout)
        except json.JSONDecodeError:
            bad.append("drive info --json exit 0 without a JSON document on stdout")
    assert not bad, "\n".join([f"crafted drive {name}:", *bad, ran.show(), info.show()])
