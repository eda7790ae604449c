"""Drive targets: image files and block devices; the safety checks before a format.

A target is opened exclusively (``O_EXCL`` on a block device, which the kernel
refuses while anything holds it; ``flock`` on an image file).  Before anything
is written we refuse, each with one line naming the fix:

* a device that is mounted, holds a mounted partition, is swap, or sits under
  a device-mapper / md holder that is;
* the device (or the image file inside the directory) that holds the staging
  location — we would be overwriting the data we are about to copy;
* a target smaller than :data:`MIN_DRIVE_SIZE`;
* a target that already holds something (a LUKS volume, a partition table, a
  file system) unless the operator confirmed with ``--yes``.

Everything here is synchronous; the Trio stages call it in worker threads.
``DriveCipher`` is the only door to ``xts``/``luks2`` for the rest of the code.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import names
from pipeline.drive import format
from pipeline.drive.format import CorruptRecord
from pipeline.errors import BadInput, IntegrityError, NoSpace, Refused, WrongPassword, is_no_space
from pipeline.names import check_dstdir as check_dstdir  # re-exported: its home was here
from pipeline.volume import luks2, xts

__all__ = ["CorruptRecord"]  # re-exported: callers above this layer catch it from here

MiB = 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
try:  # CDLL: the GIL is let go while the kernel queues the pages
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux/glibc: fdatasync alone still makes it durable
    _sync_file_range = None
MIN_DRIVE_SIZE = 32 * MiB  # LUKS2 header region (16 MiB) + a usable data area
_BLKGETSIZE64 = 0x80081272
_PROBE = 1 * MiB  # bytes inspected at each end for an existing volume

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str) -> int:
    """'2G', '512MiB', '1.5T', '4096' -> bytes (binary units, as dd and truncate use)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise BadInput(f"size {text!r} is not understood; write it like 2G, 500M or 1T")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --------------------------------------------------------------------------
# What the system says about block devices


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _sysfs_dir(rdev: int) -> str:
    return os.path.realpath(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}")


def related_devices(rdev: int) -> dict[str, str]:
    """The device, its partitions and their holders (dm, md), recursively.

    Returns ``{"major:minor": "/dev/name"}``: every device whose use means the
    target is in use.
    """
    out: dict[str, str] = {}
    todo = [_sysfs_dir(rdev)]
    while todo:
        d = todo.pop()
        majmin = _read(os.path.join(d, "dev"))
        if not majmin or majmin in out:
            continue
        out[majmin] = "/dev/" + os.path.basename(d)
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for entry in entries:  # partitions are subdirectories with a 'partition' file
            if os.path.exists(os.path.join(d, entry, "partition")):
                todo.append(os.path.join(d, entry))
        holders = os.path.join(d, "holders")
        if os.path.isdir(holders):
            todo += [os.path.realpath(os.path.join(holders, h)) for h in os.listdir(holders)]
    return out


@dataclass(frozen=True)
class Mount:
    majmin: str
    mountpoint: str
    source: str


def mounts() -> list[Mount]:
    """Parse /proc/self/mountinfo (mount points unescaped)."""
    out = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        out.append(Mount(fields[2], point, rfields[1]))
    return out


def _in_use_by(devs: dict[str, str]) -> str | None:
    """Why one of ``devs`` is busy (mounted or swap), or None."""
    names = set(devs.values())
    for m in mounts():
        if m.majmin in devs or m.source in names:
            dev = devs.get(m.majmin, m.source)
            return f"is mounted ({dev} on {m.mountpoint}); unmount it or pass another --drive"
    for line in _read("/proc/swaps").splitlines()[1:]:
        path = line.split()[0] if line.split() else ""
        try:
            st = os.stat(path)
        except OSError:
            continue
        if f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" in devs:
            return f"is in use as swap ({path}); swapoff it or pass another --drive"
    return None


def _staging_mount(staging: Path) -> Mount | None:
    real = str(staging.resolve())
    best = None
    for m in mounts():
        if (real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")) and (
            best is None or len(m.mountpoint) >= len(best.mountpoint)
        ):
            best = m
    return best


def loop_backing(path: Path) -> str | None:
    """The loop device an image file is attached to, if any."""
    real = str(path.resolve())
    base = Path("/sys/block")
    if not base.is_dir():
        return None
    for dev in sorted(base.glob("loop*")):
        if _read(str(dev / "loop" / "backing_file")) == real:
            return "/dev/" + dev.name
    return None


# --------------------------------------------------------------------------
# The drive itself


class Drive:
    """An open target: pread/pwrite/fdatasync on an exclusively held fd."""

    def __init__(self, path: Path, fd: int, size: int, kind: str, writable: bool) -> None:
        self.path, self.fd, self.size, self.kind, self.writable = path, fd, size, kind, writable

    def pread(self, size: int, offset: int) -> bytes:
        """Read exactly ``size`` bytes (short only at the end of the drive)."""
        parts, got = [], 0
        while got < size:
            chunk = os.pread(self.fd, size - got, offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            self._check_space(exc)
            raise

    def write_behind(self, offset: int, length: int) -> None:
        """Start writing these bytes to the device now, without waiting for them.

        Without it the kernel holds a commit's worth of dirty pages until the
        ``fdatasync``: the drive idles while prep fills them, then prep waits while
        the drive writes.  Only a hint for durability (``fdatasync`` still decides).
        """
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def wait_written(self, offset: int, length: int) -> None:
        """Wait until these bytes have left the page cache for the device.

        The backpressure of a slow drive: buffered writes return at memory speed,
        so without a wait a writer takes data as fast as prep makes it, and in
        parallel fill the drive that commits last ends up with the most to write.
        """
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WAIT)

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:  # delayed allocation reports a full filesystem here
            self._check_space(exc)
            raise

    def _check_space(self, exc: OSError) -> None:
        """An image file is sparse: its host filesystem can fill before the drive does.
        That is no full drive (its size is what was promised) but a full filesystem to
        name, and prep resumes from the journal once there is room."""
        if self.kind == "image" and is_no_space(exc):
            raise NoSpace(self.path, f"drive image {self.path}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
    return struct.unpack("Q", buf)[0]


def open_drive(path: str | os.PathLike[str], *, writable: bool = False) -> Drive:
    """Open an existing image file or block device; exclusive when writable."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"drive {path} does not exist; check the path") from None
    if stat.S_ISBLK(st.st_mode):
        flags = (os.O_RDWR | os.O_EXCL) if writable else os.O_RDONLY
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise Refused(f"{path} is in use by the system (mounted, mapped or held open); "
                              "release it or pass another --drive") from None
            if exc.errno == errno.EACCES:
                raise BadInput(f"{path}: permission denied; run as root") from None
            raise BadInput(f"{path}: {exc.strerror}") from None
        return Drive(path, fd, _block_size(fd), "block", writable)
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"drive {path} is neither a block device nor an image file")
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if writable else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Refused(f"{path} is held open by another pipeline process; "
                      "wait for it to finish or pass another --drive") from None
    return Drive(path, fd, os.fstat(fd).st_size, "image", writable)


def prepare_target(
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    staging: str | os.PathLike[str] | None = None,
    confirmed: bool = False,
) -> Drive:
    """Open ``path`` for formatting after every safety check (see module doc).

    An image file that does not exist is created with ``size`` bytes (sparse).
    """
    path = Path(path)
    exists = path.exists()
    if exists and path.is_block_device():
        if size is not None:
            raise BadInput(f"--drive-size applies to image files; {path} is a block device "
                           "whose size is read from the device")
        devs = related_devices(os.stat(path).st_rdev)
        if staging is not None:  # the more specific reason first
            m = _staging_mount(Path(staging))
            if m and (m.majmin in devs or m.source in devs.values()):
                raise Refused(f"{path} holds the staging location {staging} ({m.source} on "
                              f"{m.mountpoint}); pass a drive that is not the source disk")
        why = _in_use_by(devs)
        if why:
            raise Refused(f"{path} {why}")
    else:
        _check_outside_staging(path, staging)
        if exists:
            backing = loop_backing(path)
            if backing:
                raise Refused(f"{path} is attached to {backing}; "
                              f"detach it (losetup -d {backing}) or pass another --drive")
        elif size is None:
            raise BadInput(f"drive {path} does not exist; give --drive-size to create an "
                           "image file, or the path of a block device")
        else:
            _check_new_image(path, size)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except OSError as exc:
                raise BadInput(f"cannot create {path}: {exc.strerror}") from None
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                os.close(fd)
                path.unlink()
                raise BadInput(f"cannot create {path} of {human(size)}: {exc.strerror}") from None
            os.close(fd)
    drive = open_drive(path, writable=True)
    try:
        if drive.kind == "image" and size is not None and exists and size != drive.size:
            if not confirmed and existing_content(drive):
                raise Refused(f"{path} {existing_content(drive)}; pass --yes to overwrite it")
            os.ftruncate(drive.fd, size)
            drive.size = size
        if drive.size < MIN_DRIVE_SIZE:
            hint = "give a larger --drive-size" if drive.kind == "image" else "use a larger drive"
            raise Refused(f"{path}: {human(drive.size)} is smaller than the minimum volume of "
                          f"{human(MIN_DRIVE_SIZE)}; {hint}")
        if not confirmed:
            what = existing_content(drive)
            if what:
                raise Refused(f"{path} {what}; formatting destroys it: pass --yes to confirm")
    except BaseException:
        drive.close()
        raise
    return drive


def _check_outside_staging(path: Path, staging: str | os.PathLike[str] | None) -> None:
    if staging is not None:
        real, stage = path.resolve(), Path(staging).resolve()
        if real == stage or stage in real.parents:
            raise Refused(f"{path} is inside the staging location {staging}; "
                          "put image drives outside it")


def _check_new_image(path: Path, size: int) -> None:
    """What makes an image file of ``size`` at ``path`` impossible, before creating it."""
    if size < MIN_DRIVE_SIZE:
        raise Refused(f"{path}: {human(size)} is smaller than the minimum volume of "
                      f"{human(MIN_DRIVE_SIZE)}; give a larger --drive-size")
    if not path.parent.is_dir():
        raise BadInput(f"cannot create {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise BadInput(f"cannot create {path}: directory {path.parent} is not writable")


def check_target(
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    staging: str | os.PathLike[str] | None = None,
    confirmed: bool = False,
) -> None:
    """Every check ``prepare_target`` makes, changing nothing: an image file that does
    not exist yet is not created (prep creates it only when it opens that drive, so a
    drive a run never reaches leaves no empty image behind)."""
    p = Path(path)
    if not p.exists() and not p.is_symlink() and size is not None:
        _check_outside_staging(p, staging)
        _check_new_image(p, size)
        return
    prepare_target(p, size=size, staging=staging, confirmed=confirmed).close()


def existing_content(drive: Drive) -> str | None:
    """Describe what the drive already holds, or None if its ends are blank."""
    head = drive.pread(_PROBE, 0)
    if luks2.is_luks(head):
        try:
            vol = luks2.parse_header(drive.pread(2 * luks2.HDR_SIZES[-1], 0))
            return f"already holds a LUKS2 volume (uuid {vol.uuid})"
        except (luks2.NeedMoreData, luks2.CorruptHeader):
            return "already holds a LUKS volume"
    tail = drive.pread(_PROBE, max(0, drive.size - _PROBE))
    if head.count(0) != len(head) or tail.count(0) != len(tail):
        return "is not empty (it holds a partition table, a file system or other data)"
    return None


# --------------------------------------------------------------------------
# Reading the LUKS2 header and unlocking


def read_volume(drive: Drive) -> luks2.Volume:
    """Parse the drive's LUKS2 header (reading more when the header asks for it).

    The device size bounds what the header may name, so a damaged primary sends
    the probe for the secondary copy no further than the drive goes.  Read-only:
    a damaged copy is reported in ``Volume.warnings``, never rewritten here.
    """
    want = min(2 * luks2.HDR_SIZE, drive.size)
    while True:
        blob = drive.pread(want, 0)
        try:
            return luks2.parse_header(blob, drive.size)
        except luks2.NeedMoreData as more:
            if more.size <= want or len(blob) < want:
                raise luks2.CorruptHeader(
                    f"{drive.path}: LUKS2 header is truncated or damaged") from None
            want = min(max(more.size, 2 * want), drive.size)  # probing doubles its reach
        except luks2.CorruptHeader as exc:
            raise luks2.CorruptHeader(f"{drive.path}: {exc}") from None


def unlock(drive: Drive, volume: luks2.Volume, passphrase: bytes,
           what: str = "password") -> tuple[int, bytes]:
    """Try every keyslot; return (slot, volume key) or raise WrongPassword."""
    for ks in sorted(volume.keyslots.values(), key=lambda k: (-k.priority, k.id)):
        if ks.priority == 0:
            continue
        area = drive.pread(ks.material_size, ks.area_offset)
        key = luks2.open_keyslot(volume, ks.id, passphrase, area)
        if key is not None:
            return ks.id, key
    raise WrongPassword(drive.path, what)


@dataclass(frozen=True)
class DriveCipher:
    """Encrypts and decrypts the data area of a LUKS2 volume (data-area offsets)."""

    key: bytes
    segment_offset: int
    sector_size: int
    iv_tweak: int

    @classmethod
    def for_volume(cls, volume: luks2.Volume, key: bytes) -> DriveCipher:
        seg = luks2.check_supported(volume)
        return cls(key, seg.offset, seg.sector_size, seg.iv_tweak)

    def _iv(self, offset: int, length: int) -> int:
        if offset % self.sector_size or length % self.sector_size:
            raise ValueError("data-area I/O must be whole sectors")
        return offset // 512 + self.iv_tweak

    def encrypt(self, data: bytes | memoryview, offset: int) -> bytes:
        return xts.encrypt(self.key, data, self._iv(offset, len(data)), self.sector_size)

    def decrypt(self, data: bytes | memoryview, offset: int) -> bytes:
        return xts.decrypt(self.key, data, self._iv(offset, len(data)), self.sector_size)

    def data_area_size(self, drive_size: int) -> int:
        usable = drive_size - self.segment_offset
        return usable - usable % self.sector_size

    def read(self, drive: Drive, offset: int, size: int) -> bytes:
        """Read and decrypt ``size`` bytes at data-area ``offset`` (whole sectors)."""
        return self.decrypt(self.read_sealed(drive, offset, size), offset)

    def read_sealed(self, drive: Drive, offset: int, size: int) -> bytes:
        """``read`` without the decrypting (import decrypts in its worker threads)."""
        raw = drive.pread(size, self.segment_offset + offset)
        if len(raw) != size:
            raise DriveTruncated(f"{drive.path}: the drive ends at byte {drive.size}, before "
                                 f"data-area bytes [{offset}, +{size}) (a truncated image?)")
        return raw

    def write(self, drive: Drive, offset: int, plain: bytes | memoryview) -> None:
        drive.pwrite(self.encrypt(plain, offset), self.segment_offset + offset)


# --------------------------------------------------------------------------
# A pipeline drive: LUKS2 volume + superblock


class DriveTruncated(IntegrityError):
    """{}"""


def check_session_id(session_id: str) -> str:
    return names.check_session_id(session_id)  # the rule lives in pipeline.names


def new_session_id() -> str:
    return time.strftime("s%Y%m%d-") + secrets.token_hex(3)


@dataclass(frozen=True)
class Identity:
    """Who a drive belongs to: recorded in the superblock and, in the clear, in a LUKS2 token."""

    session_id: str
    job_name: str
    sequence: int
    dstdir: str
    blob_type: format.BlobType = format.BlobType.BLOCK
    version: int = format.FORMAT_VERSION  # the superblock's: a dataset's drive says 2


def format_drive(drive: Drive, keyslots: Sequence[tuple[bytes, luks2.KdfParams]],
                 identity: Identity, uuid: str | None = None) -> tuple[luks2.Volume, DriveCipher]:
    """Write a new LUKS2 volume and an empty pipeline log; return its cipher.

    The superblock goes first, then the header region, then one fdatasync: a
    crash before the header lands leaves no volume that opens at all.
    """
    key = luks2.new_volume_key()
    token = {"session_id": identity.session_id, "job_name": identity.job_name,
             "sequence": identity.sequence, "format_version": identity.version}
    region, volume = luks2.format_volume(key, keyslots, token=token, uuid=uuid,
                                         label=f"{identity.session_id}#{identity.sequence}")
    cipher = DriveCipher.for_volume(volume, key)
    area = cipher.data_area_size(drive.size)
    sb = format.Superblock(
        drive_seq=identity.sequence, volume_uuid=volume.uuid, session_id=identity.session_id,
        job_name=identity.job_name, dstdir=identity.dstdir, blob_type=identity.blob_type,
        created_ns=time.time_ns(), data_area_size=area, version=identity.version,
    )
    cipher.write(drive, 0, format.encode_superblock(sb))
    # A trailer of an earlier volume decrypts to noise under the new key; no wipe needed.
    drive.pwrite(region, 0)
    drive.sync()
    return volume, cipher


def read_superblock(drive: Drive, cipher: DriveCipher) -> format.Superblock:
    """Decrypt and verify sector 0 of the data area."""
    return format.decode_superblock(cipher.read(drive, 0, format.SECTOR))
