"""Helpers of the hostile-input harness (issue 15): damage a drive image, run the readers
as a user would, read what they left behind, and craft drives byte by byte.

Everything here reads drives on its own (LUKS2 header, keyslot, data area, segments)
through the sans-I/O layer, never through the importer, so the expectations of the
tests do not come from the code under test.  The raw encoders follow docs/FORMAT.md
field by field: they write what ``pipeline.drive.format``'s encoders refuse to (a NUL in a
name, an extent outside the drive), with valid checksums, so that only the hostile
field is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from pipeline import journal
from pipeline.drive import format
from pipeline.volume import drives, luks2

from .conftest import ROOT

MiB = 1 << 20
CELL = 1 << 20  # the importer's and prep's extent grid (pipeline.prep.read.EXTENT_SIZE)
DATA_OFFSET = luks2.DATA_OFFSET
SECTOR = format.SECTOR
EXIT_BUG = 70


# --------------------------------------------------------------------------- running readers


@dataclass
class Ran:
    """One finished `python -m pipeline` run."""

    args: list[str]
    code: int
    stdout: str
    stderr: str

    def show(self) -> str:
        return (f"$ pipeline {' '.join(self.args)}\nexit {self.code}\n--- stdout\n"
                f"{self.stdout[-1500:]}\n--- stderr\n{self.stderr[-3000:]}")

    def last_error_line(self) -> str:
        lines = [x for x in self.stderr.strip().splitlines() if x.strip()]
        return lines[-1] if lines else ""


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(ROOT)}
    out.pop("PIPELINE_CRASH_AT", None)
    return {**out, **(extra or {})}


def start(args: Sequence[str], cwd: Path, extra_env: dict[str, str] | None = None
          ) -> subprocess.Popen[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                            env=env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str], args: Sequence[str], timeout: float = 120) -> Ran:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Ran(list(args), -9, out, f"{err}\n[harness: killed after {timeout} s: a hang]")
    return Ran(list(args), proc.returncode, out, err)


def run(args: Sequence[str], cwd: Path, timeout: float = 120,
        extra_env: dict[str, str] | None = None) -> Ran:
    return finish(start(args, cwd, extra_env), args, timeout)


def run_many(jobs: dict[str, tuple[list[str], Path]], timeout: float = 120) -> dict[str, Ran]:
    """Run several readers at once, each in a process of its own forked from this one.

    ``cli.main(argv)`` in a fresh child is what ``python -m pipeline`` runs, minus the
    interpreter start and the imports (three quarters of a reader's time on a small
    drive): the child has its own file descriptors, working directory and exit status,
    and a crash or hang in it is seen as one.  Prep, whose fault points are read from
    the environment at import, always runs as a real ``python -m pipeline``.
    """
    _preload()
    children = {k: _fork(a, cwd) for k, (a, cwd) in jobs.items()}
    return {k: _reap(*children[k], jobs[k][0], timeout) for k in jobs}


def _preload() -> None:
    from pipeline import cli
    from pipeline.commands import drive, import_, keys, verify  # noqa: F401

    cli.build_parser()


def _fork(args: list[str], cwd: Path) -> tuple[int, Path]:
    cwd.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="hostile-run-"))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = EXIT_BUG
        try:
            os.chdir(cwd)
            fd1 = os.open(out / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fd2 = os.open(out / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd1, 1)
            os.dup2(fd2, 2)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.argv = ["pipeline", *args]
            os.environ.pop("PIPELINE_CRASH_AT", None)
            from pipeline import cli

            code = cli.main(args)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - cli.main let something through: a bug
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    return pid, out


def _reap(pid: int, out: Path, args: list[str], timeout: float) -> Ran:
    deadline = time.monotonic() + timeout
    note = ""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            note = f"\n[harness: killed after {timeout} s: a hang]"
            break
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    stdout = (out / "stdout").read_text(encoding="utf-8", errors="replace")
    stderr = (out / "stderr").read_text(encoding="utf-8", errors="replace") + note
    shutil.rmtree(out, ignore_errors=True)
    return Ran(list(args), code, stdout, stderr)


def problems_of_any_run(r: Ran) -> list[str]:
    """What no run may ever do: crash (exit 70), print a traceback, hang."""
    out = []
    if r.code == EXIT_BUG:
        out.append("exit 70 (internal error)")
    if "Traceback" in r.stderr:
        out.append("a traceback on stderr")
    if r.code < 0:
        out.append(f"killed by signal {-r.code} (hang or crash)")
    if r.code != 0 and not r.last_error_line():
        out.append(f"exit {r.code} without a word on stderr")
    return out


# --------------------------------------------------------------------------- damage


def copy_image(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def flip(path: Path, offsets: Iterable[int]) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))


def zero(path: Path, offset: int, length: int = SECTOR) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(length))


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- what readers left


def tree(root: Path) -> set[Path]:
    """Every file, link and directory under ``root`` (not following links)."""
    out: set[Path] = set()
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(Path(dirpath) / name)
    return out


def tree_names(root: Path) -> set[str]:
    """:func:`tree` as strings: a whole basetemp late in the suite holds 100,000+ entries,
    and making a Path of each took three quarters of the walk (4.2 s -> 1.1 s a walk)."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(str(root)):
        out.update(f"{dirpath}/{name}" for name in dirnames)
        out.update(f"{dirpath}/{name}" for name in filenames)
    return out


def account_blobs(account: Path, container: str) -> dict[str, bytes]:
    """The committed blobs of one container of a local account, by blob name.

    The importer's own state (markers and copy logs: ``.pipeline-import/`` in the
    container, or a state container of its own) is not a blob of the drive.
    """
    base = account / container
    out: dict[str, bytes] = {}
    if not base.is_dir():
        return out
    for p in base.rglob("*"):
        name = p.relative_to(base).as_posix()
        if p.is_file() and not name.startswith(".pipeline-import/"):
            out[name] = p.read_bytes()
    return out


def copy_log_entries(log_dir: Path) -> list[dict]:
    out: list[dict] = []
    for p in sorted(log_dir.glob("copylog-*.jsonl")):
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def statuses(entries: list[dict]) -> dict[str, str]:
    """Blob name -> its last status in the copy log(s)."""
    out: dict[str, str] = {}
    for e in entries:
        if e.get("type") == "blob":
            out[e["blob"]] = e["status"]
    return out


# --------------------------------------------------------------------------- a session's facts


@dataclass
class DriveFacts:
    """One drive of a session, as its journal and its (intact) bytes say."""

    seq: int
    path: Path
    password: str
    state: str
    data_area_size: int
    index_offset: int
    index_length: int
    segments: list[tuple[int, int, int]]
    files: dict[int, format.FileEntry]
    extents: list[format.Extent]
    file_segment: dict[int, int] = field(default_factory=dict)  # file id -> seq of its entry
    # (file id, offset) -> seq of the segment recording the extent (ZERO extents too)
    extent_segment: dict[tuple[int, int], int] = field(default_factory=dict)

    def blobs_complete(self) -> set[str]:
        """Blobs whose every 1 MiB cell is on this drive (the rest continue on another)."""
        cells: dict[int, set[int]] = {}
        for e in self.extents:
            cells.setdefault(e.file_id, set()).update(
                range(e.offset, e.offset + e.raw_len, CELL))
        return {f.blob for fid, f in self.files.items()
                if set(range(0, f.size, CELL)) <= cells.get(fid, set())}

    def blobs_stored_in(self, lo: int, hi: int) -> set[str]:
        """Blobs with stored bytes in data-area [lo, hi)."""
        return {self.files[e.file_id].blob for e in self.extents
                if e.codec is not format.Codec.ZERO
                and e.location < hi and e.location + e.stored_len > lo}

    def blobs_recorded_from(self, seq: int) -> set[str]:
        """Blobs with an extent (stored or ZERO) recorded in segment ``seq`` or later: a drive
        cut there no longer carries the record, so a reader of the drive cannot deliver it."""
        return {self.files[fid].blob for (fid, _), s in self.extent_segment.items()
                if s >= seq and fid in self.files}

    def blobs_entered_from(self, seq: int) -> set[str]:
        """Blobs whose FileEntry is first recorded in segment ``seq`` or later."""
        return {self.files[fid].blob for fid, s in self.file_segment.items() if s >= seq}


def session_facts(jdir: Path) -> list[DriveFacts]:
    out = []
    for j in journal.session_journals(jdir):
        d = j.drive
        facts = DriveFacts(
            seq=d.seq, path=Path(d.path), password=j.recovery_password, state=d.state,
            data_area_size=d.data_area_size, index_offset=d.index_offset,
            index_length=d.index_length, segments=j.segments(),
            files={f.file_id: f for f in j.files()}, extents=list(j.extents()),
            extent_segment={(e.file_id, e.offset): s for e, s in j.extents_with_segment()})
        j.close()
        if facts.segments:
            for seq, seg in read_data_segments(facts.path, facts.password, facts.segments):
                for f in seg.files:
                    facts.file_segment.setdefault(f.file_id, seq)
        out.append(facts)
    return out


def unlock(path: Path, password: str) -> tuple[drives.Drive, drives.DriveCipher]:
    """Open an intact drive through the LUKS2 layer alone."""
    drive = drives.open_drive(path)
    volume = luks2.parse_header(drive.pread(2 * luks2.HDR_SIZE, 0))
    for ks in volume.keyslots.values():
        area = drive.pread(ks.material_size, ks.area_offset)
        key = luks2.open_keyslot(volume, ks.id, password.encode(), area)
        if key is not None:
            return drive, drives.DriveCipher.for_volume(volume, key)
    drive.close()
    raise AssertionError(f"{path}: the password opens no keyslot")


def read_data_segments(path: Path, password: str, segments: list[tuple[int, int, int]]
                       ) -> list[tuple[int, format.Segment]]:
    drive, cipher = unlock(path, password)
    try:
        return [(seq, format.decode_segment(cipher.read(drive, off, length), off, seq))
                for seq, off, length in segments]
    finally:
        drive.close()


# --------------------------------------------------------------------------- raw encoders


def xxh3_64(b: bytes) -> int:
    return xxhash.xxh3_64_intdigest(b)


def xxh3_128(b: bytes) -> bytes:
    return xxhash.xxh3_128_digest(b)


def str16(s: str | bytes) -> bytes:
    raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<H", len(raw)) + raw


def sector_with_checksum(body: bytes) -> bytes:
    assert len(body) <= SECTOR - 8, len(body)
    sector = body + bytes(SECTOR - 8 - len(body))
    return sector + struct.pack("<Q", xxh3_64(sector))


def superblock_bytes(*, drive_seq: int, volume_uuid: str, session_id: str | bytes,
                     job_name: str | bytes, dstdir: str | bytes, data_area_size: int,
                     blob_type: int = 1, created_ns: int = 1_790_000_000_000_000_000,
                     version: int = format.FORMAT_VERSION) -> bytes:
    fixed = struct.pack("<8sHHIqQB3s36s", format.SUPERBLOCK_MAGIC, version, 0, drive_seq,
                        created_ns, data_area_size, blob_type, b"\0\0\0",
                        volume_uuid.encode("ascii"))
    return sector_with_checksum(fixed + str16(session_id) + str16(job_name) + str16(dstdir))


def trailer_bytes(*, drive_seq: int, data_area_size: int, index_offset: int, index_length: int,
                  segment_count: int, payload_bytes: int) -> bytes:
    return sector_with_checksum(struct.pack(
        "<8sHHIQQQQQ", format.TRAILER_MAGIC, format.FORMAT_VERSION, 0, drive_seq,
        data_area_size, index_offset, index_length, segment_count, payload_bytes))


def file_record(file_id: int, path: str | bytes, blob: str | bytes, size: int,
                mtime_ns: int = 1_790_000_000_000_000_000, mode: int = 0o100644) -> bytes:
    body = struct.pack("<QQqI", file_id, size, mtime_ns, mode) + str16(path) + str16(blob)
    head = struct.pack("<BI", 1, len(body)) + body
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


def extent_record(file_id: int, offset: int, raw_len: int, codec: int, stored_len: int,
                  digest: bytes, location: int) -> bytes:
    head = struct.pack("<BIQQIBI16sQ", 2, 49, file_id, offset, raw_len, codec, stored_len,
                       digest, location)
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


def segment_bytes(kind: int, seq: int, offset: int, records: Sequence[bytes], payload: bytes,
                  *, record_count: int | None = None) -> bytes:
    """A segment with plain (uncompressed) records, every checksum valid."""
    blob = b"".join(records)
    count = len(records) if record_count is None else record_count
    head = struct.pack("<4sBBHQQIIIIQQ", format.SEGMENT_MAGIC, kind, 0, 0, seq, offset, count,
                       len(blob), len(payload), len(blob), xxh3_64(blob), xxh3_64(payload))
    head += struct.pack("<Q", xxh3_64(head))
    used = len(head) + len(payload) + len(blob)
    return head + payload + blob + bytes(format.align_up(used) - used)


# --------------------------------------------------------------------------- crafted drives


@dataclass
class CraftFile:
    """A file to put on a crafted drive: its records are written as given, hostile or not."""

    path: str | bytes
    blob: str | bytes
    data: bytes
    size: int | None = None  # the FileEntry's size (default len(data))
    file_id: int = 0  # 0: the next one
    segment: int = 0  # which DATA segment holds it
    in_index: bool = True
    extent_offset_shift: int = 0  # added to each extent's file offset
    location_override: int | None = None  # the first extent's location


@dataclass
class Crafted:
    path: Path
    password: str
    data_area_size: int
    uuid: str
    index_offset: int


def craft_drive(path: Path, password: str, files: Sequence[CraftFile], *,
                session_id: str | bytes = "crafted-1", job_name: str | bytes = "",
                dstdir: str | bytes = "crafted/vdir/", drive_seq: int = 1,
                data_area_size: int | None = None, size: int = 32 * MiB,
                index_record_count: int | None = None,
                trailer: dict[str, int] | None = None, close: bool = True,
                kdf: luks2.KdfParams | None = None) -> Crafted:
    """A LUKS2 volume formatted as prep formats one (drives.format_drive), then its
    data area written sector by sector through drives.DriveCipher: the superblock and
    DATA segments from the raw encoders, with every checksum valid; then, when
    ``close``, the closing index and the trailer."""
    from .conftest import FAST_ARGON

    with drives.prepare_target(path, size=size) as drive:
        volume, cipher = drives.format_drive(
            drive, [(password.encode(), kdf or FAST_ARGON)],
            drives.Identity("crafted-1", "", 1, "crafted/vdir/"))
        area = cipher.data_area_size(drive.size)
        cipher.write(drive, 0, superblock_bytes(
            drive_seq=drive_seq, volume_uuid=volume.uuid, session_id=session_id,
            job_name=job_name, dstdir=dstdir,
            data_area_size=area if data_area_size is None else data_area_size))
        offset, next_id = SECTOR, 1
        index_files: list[bytes] = []
        index_extents: list[bytes] = []
        payload_total = 0
        seqs = sorted({f.segment for f in files}) or [0]
        for seq in range(max(seqs) + 1):
            recs: list[bytes] = []
            ext_recs: list[tuple[bytes, bool]] = []
            payload = b""
            for f in files:
                if f.segment != seq:
                    continue
                if not f.file_id:
                    f.file_id = next_id
                next_id = max(next_id, f.file_id) + 1
                size_ = len(f.data) if f.size is None else f.size
                rec = file_record(f.file_id, f.path, f.blob, size_)
                recs.append(rec)
                if f.in_index:
                    index_files.append(rec)
                for k, cell in enumerate(range(0, len(f.data), CELL)):
                    raw = f.data[cell:cell + CELL]
                    loc = offset + format.HEADER_SIZE + len(payload)
                    if k == 0 and f.location_override is not None:
                        loc = f.location_override
                    e = extent_record(f.file_id, cell + f.extent_offset_shift, len(raw),
                                      int(format.Codec.RAW), len(raw), xxh3_128(raw), loc)
                    payload += raw
                    ext_recs.append((e, f.in_index))
            recs += [e for e, _ in ext_recs]
            index_extents += [e for e, keep in ext_recs if keep]
            seg = segment_bytes(int(format.SegmentKind.DATA), seq, offset, recs, payload)
            cipher.write(drive, offset, seg)
            offset += len(seg)
            payload_total += len(payload)
        index_offset = offset
        if close:
            index = segment_bytes(int(format.SegmentKind.INDEX), max(seqs) + 1, offset,
                                  index_files + index_extents, b"",
                                  record_count=index_record_count)
            cipher.write(drive, offset, index)
            tr = {"drive_seq": drive_seq, "data_area_size": area, "index_offset": offset,
                  "index_length": len(index), "segment_count": max(seqs) + 2,
                  "payload_bytes": payload_total, **(trailer or {})}
            cipher.write(drive, format.trailer_offset(area), trailer_bytes(**tr))
        drive.sync()
    return Crafted(path, password, area, volume.uuid, index_offset)


def write_password(path: Path, password: str) -> Path:
    path.write_text(password + "\n")
    return path


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
