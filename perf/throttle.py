"""Loop devices throttled like SATA disks, through a block-I/O cgroup.

Two kernels' ways, whichever this machine offers:

- cgroup v2 ``io.max`` (``MAJ:MIN wbps=N``), after ``+io`` in the parent's
  ``cgroup.subtree_control``; with the memory controller on v2 too, buffered
  writeback is charged to the cgroup that dirtied the pages;
- cgroup v1 ``blkio.throttle.write_bps_device`` (``MAJ:MIN N``).  v1 has no writeback
  attribution: pages written back by the kernel's flusher threads escape the
  limit, but writeback that the process starts itself (``fdatasync``, ``O_DIRECT``)
  is issued from its own context and is throttled.  prep calls ``fdatasync`` every
  few tens of MiB, so its writes should be charged; :meth:`Throttle.charged` reads
  the cgroup's own per-device byte counters so a run can prove it.

Nothing is assumed: :meth:`Throttle.check` measures ``dd`` to a throttled device,
direct and buffered, inside and outside the cgroup, before any figure is believed.
Always used as a context manager: loop devices are detached (``losetup -d``) and the
cgroup removed on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

MB = 10**6


class NoThrottle(RuntimeError):
    """This machine offers no block-I/O throttle we can use (the message says why)."""


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts, *_ = line.split()
            out.append((mnt, fstype, opts))
    return out


def find_controller() -> tuple[str, Path]:
    """("v2", unified root) when the io controller is usable there, else ("v1", blkio root)."""
    tried = []
    for mnt, fstype, _opts in _mounts():
        if fstype == "cgroup2":
            ctl = Path(mnt) / "cgroup.controllers"
            have = ctl.read_text().split() if ctl.exists() else []
            if "io" in have:
                return "v2", Path(mnt)
            tried.append(f"cgroup2 at {mnt} lists controllers {have or 'none'} (no io: it is "
                         "bound to a v1 hierarchy)")
    for mnt, fstype, opts in _mounts():
        if fstype == "cgroup" and "blkio" in opts.split(","):
            if (Path(mnt) / "blkio.throttle.write_bps_device").exists():
                return "v1", Path(mnt)
            tried.append(f"cgroup v1 blkio at {mnt} has no blkio.throttle.* files "
                         "(CONFIG_BLK_DEV_THROTTLING off)")
    raise NoThrottle("; ".join(tried) or "no cgroup v2 io controller and no v1 blkio hierarchy")


def _dev_of(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _dd_rate(text: str) -> float:
    """MB/s from dd's last line ("... copied, 4.12 s, 153 MB/s"): bytes / seconds."""
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", text)
    if not m:
        raise RuntimeError(f"cannot read dd's output: {text.strip()[-200:]}")
    return int(m.group(1)) / float(m.group(2)) / MB


class Throttle:
    """``count`` loop devices of ``size`` bytes each, writes limited to ``bps`` each."""

    def __init__(self, workdir: Path, count: int, size: int, bps: int) -> None:
        self.workdir, self.count, self.size, self.bps = workdir, count, size, bps
        self.devices: list[str] = []
        self.backing: list[Path] = []
        self.kind = ""
        self.root: Path | None = None
        self.cgroup: Path | None = None
        self.enabled_io = False

    # ------------------------------------------------------------------ set-up / tear-down

    def __enter__(self) -> Throttle:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        if os.geteuid() != 0:
            raise NoThrottle("not root: loop devices and cgroups need root")
        self.kind, self.root = find_controller()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            f = self.workdir / f"sata{i}.img"
            with open(f, "wb") as fh:
                fh.truncate(self.size)
            self.backing.append(f)
            dev = subprocess.run(["losetup", "-f", "--show", str(f)], check=True,
                                 capture_output=True, text=True).stdout.strip()
            self.devices.append(dev)
        self.cgroup = self.root / f"pipeline-perf-{os.getpid()}"
        if self.kind == "v2":
            ctl = self.root / "cgroup.subtree_control"
            if "io" not in ctl.read_text().split():
                ctl.write_text("+io")
                self.enabled_io = True
        self.cgroup.mkdir()
        for dev in self.devices:
            if self.kind == "v2":
                (self.cgroup / "io.max").write_text(f"{_dev_of(dev)} wbps={self.bps}")
            else:
                (self.cgroup / "blkio.throttle.write_bps_device").write_text(
                    f"{_dev_of(dev)} {self.bps}")

    def close(self) -> None:
        for dev in self.devices:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.devices = []
        if self.cgroup is not None and self.cgroup.exists():
            for _ in range(50):  # the last member may still be exiting
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        if self.enabled_io and self.root is not None:
            with contextlib.suppress(OSError):
                (self.root / "cgroup.subtree_control").write_text("-io")
        for f in self.backing:
            f.unlink(missing_ok=True)
        self.backing = []

    # ------------------------------------------------------------------ evidence

    def charged(self) -> dict[str, int]:
        """Bytes written per device as the cgroup's own counters saw them (v1 or v2)."""
        assert self.cgroup is not None
        out: dict[str, int] = {}
        names = {_dev_of(d): d for d in self.devices}
        if self.kind == "v2":
            for line in (self.cgroup / "io.stat").read_text().splitlines():
                dev, *fields = line.split()
                kv = dict(f.split("=", 1) for f in fields)
                if dev in names:
                    out[names[dev]] = int(kv.get("wbytes", 0))
        else:
            text = (self.cgroup / "blkio.throttle.io_service_bytes").read_text()
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] == "Write" and parts[0] in names:
                    out[names[parts[0]]] = int(parts[2])
        return out

    def dd(self, dev: str, mbytes: int, mode: str, inside: bool = True) -> float:
        """MB/s of ``dd`` writing ``mbytes`` MiB to ``dev``; mode "direct" or "fdatasync"."""
        flag = "oflag=direct" if mode == "direct" else "conv=fdatasync"
        cmd = f"dd if=/dev/zero of={dev} bs=1M count={mbytes} {flag}"
        if inside:
            assert self.cgroup is not None
            cmd = f"echo $$ > {self.cgroup}/cgroup.procs && {cmd}"
        res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{cmd}: {res.stderr.strip()[-300:]}")
        return _dd_rate(res.stderr)

    def check(self, mbytes: int | None = None) -> dict[str, object]:
        """Does the limit bite?  dd to device 0: direct and buffered, inside and outside."""
        limit = self.bps / MB
        room = self.size >> 20
        mbytes = min(room, mbytes or max(128, int(limit * 2)))  # ~2 s at the limit
        dev = self.devices[0]
        before = self.charged().get(dev, 0)
        res = {
            "limit_mbps": limit,
            "dd_direct_in_cgroup_mbps": round(self.dd(dev, mbytes, "direct"), 1),
            "dd_fdatasync_in_cgroup_mbps": round(self.dd(dev, mbytes, "fdatasync"), 1),
            "dd_fdatasync_outside_mbps": round(self.dd(dev, mbytes, "fdatasync", False), 1),
        }
        res["charged_bytes"] = self.charged().get(dev, 0) - before
        res["written_bytes"] = 2 * mbytes << 20
        direct, buffered = res["dd_direct_in_cgroup_mbps"], res["dd_fdatasync_in_cgroup_mbps"]
        res["bites"] = bool(direct <= limit * 1.15 and buffered <= limit * 1.15)  # type: ignore[operator]
        return res
