"""Run one command and measure it: wall time, peak RSS, exit code, stdout.

Peak RSS is sampled every 20 ms over the whole process tree (``/proc/PID/task/*/children``,
then ``/proc/PID/status`` of each process), two ways, both kept:

- ``maxrss``: the largest ``VmHWM`` seen, the high-water mark of one process's memory
  since its exec: its peak up to the last sample that saw it, a spike long gone
  included; what a process grows in its last interval is missed (all of it for a
  process shorter than one: ``python -S -c pass`` reads 0.2 MiB, its size just after
  exec); for ``tar | zstd`` the larger of the two, not their sum;
- ``tree_rss``: the largest sum of ``VmRSS`` over the tree at one sample; a lower bound
  on the true peak sum (a spike shorter than the interval can be missed).

The figure reported (``peak_rss``) is the larger of the two.  For ``prep``, ``verify``
and ``import`` (one process) both agree up to sampling.

Why not ``ru_maxrss`` from ``os.wait4``: Linux keeps a process's maxrss across exec
(``exec_mmap`` records the old mm's high-water mark), and the child is forked (or
vforked) from this harness, so its ``ru_maxrss`` is at least the harness's own RSS:
``true`` measured 313 MiB under a 300 MiB harness, and every row of a bench showed
the harness's size.  ``VmHWM`` belongs to the mm, which exec replaces; ``Popen``
returns only once the child has exec'd, so the harness's mm is never sampled.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KiB = 1024


class CommandFailed(RuntimeError):
    pass


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def _status(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of ``pid`` in bytes; zeros when it is gone or has no memory
    (a zombie)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * KiB
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * KiB
    except (OSError, IndexError, ValueError):
        return 0, 0
    return rss, hwm


def tree_memory(pid: int) -> tuple[int, int]:
    """``pid`` and all its descendants now: (bytes resident in all of them together,
    the largest peak of any one of them, ``VmHWM``)."""
    total, largest, todo, seen = 0, 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        rss, hwm = _status(p)
        total += rss
        largest = max(largest, hwm)
        todo += _children(p)
    return total, largest


@dataclass
class Sample:
    """One timed run."""

    wall_s: float
    maxrss: int  # bytes, largest single process's peak (sampled VmHWM; not wait4's)
    tree_rss: int  # bytes, sampled peak of the tree's sum
    rc: int
    cpu_s: float = 0.0  # user + system seconds of the child and its waited-for descendants
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    @property
    def peak_rss(self) -> int:
        return max(self.maxrss, self.tree_rss)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("stdout")
        d.pop("stderr")
        d["peak_rss"] = self.peak_rss
        return d


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        cgroup: Path | None = None, stdout_path: Path | None = None,
        interval: float = 0.02, check: bool = True) -> Sample:
    """Run ``argv`` (a list; use ``["sh", "-c", ...]`` for pipelines) and measure it.

    ``cgroup``: a cgroup directory the command is started in (``cgroup.procs``): the
    child moves itself there before exec, so every descendant starts inside it.
    stdout is kept (``Sample.stdout``) unless ``stdout_path`` is given.
    """
    if cgroup is not None:
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE)
    peak = [0, 0]  # tree sum, largest single VmHWM
    done = threading.Event()

    def sample() -> None:
        while True:  # first at once: a short command is seen at least once
            total, largest = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            if done.wait(interval):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Read the pipes before reaping, or a chatty child blocks on a full pipe.
    captured = b""
    if stdout_path is None:
        assert proc.stdout is not None
        captured = proc.stdout.read()
    assert proc.stderr is not None
    err = proc.stderr.read()
    # wait4's ru_maxrss is not the command's (the module's docstring says why); its
    # CPU times are.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout and proc.stdout.close()
    proc.stderr.close()
    if stdout_path:
        out.close()  # type: ignore[union-attr]
    if check and proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise CommandFailed(f"{' '.join(map(str, argv))[:300]}\n  exit {proc.returncode}: "
                            + "\n  ".join(tail))
    return Sample(wall, peak[1], peak[0], proc.returncode,
                  usage.ru_utime + usage.ru_stime, captured.decode(errors="replace"),
                  err.decode(errors="replace"))


@dataclass
class Series:
    """Repeated runs of one contender over the same input."""

    name: str
    input_bytes: int
    samples: list[Sample] = field(default_factory=list)
    extra: list[dict[str, object]] = field(default_factory=list)  # per run: parsed summaries

    def rates(self) -> list[float]:
        return [self.input_bytes / s.wall_s / 1e6 for s in self.samples]

    @property
    def mbps(self) -> float:
        return statistics.median(self.rates())

    @property
    def mbps_min(self) -> float:
        return min(self.rates())

    @property
    def mbps_max(self) -> float:
        return max(self.rates())

    @property
    def peak_rss(self) -> int:
        return max(s.peak_rss for s in self.samples)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "input_bytes": self.input_bytes,
                "mbps_median": round(self.mbps, 1), "mbps_min": round(self.mbps_min, 1),
                "mbps_max": round(self.mbps_max, 1), "peak_rss": self.peak_rss,
                "runs": [s.to_json() for s in self.samples], "extra": self.extra}


def account_fs(mnt: Path, img: Path, size: str = "8G") -> None:
    """A fresh ext4 (with its journal, as mkfs makes it) mounted at ``mnt``, for import.

    Why not a directory emptied between runs: ext4 does not reuse an inode deleted in
    the last half minute where it keeps no journal (as this machine's root file system),
    and looks at each such inode on every create, so 15,000 files deleted by one run
    made the next run's creates cost 15 s of kernel time (perf: ``recently_deleted``).
    Without root (no mount), a directory it is.
    """
    subprocess.run(["umount", str(mnt)], capture_output=True)
    shutil.rmtree(mnt, ignore_errors=True)
    mnt.mkdir(parents=True)
    img.unlink(missing_ok=True)
    try:
        subprocess.run(["truncate", "-s", size, str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
        # --direct-io: the loop device writes its file past the page cache, as a disk
        # would take them, not cached twice; the mount's loop device goes with umount.
        dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", str(img)],
                             check=True, capture_output=True, text=True).stdout.strip()
        try:
            subprocess.run(["mount", "-o", "loop", dev, str(mnt)], check=True,
                           capture_output=True)
        finally:
            subprocess.run(["losetup", "-d", dev], capture_output=True)  # autoclear on umount
    except (OSError, subprocess.CalledProcessError):
        img.unlink(missing_ok=True)
        return
    os.sync()


def floor_archive(data: Path, archive: Path) -> Path:
    """``tar | zstd -1`` of ``data`` into ``archive``, untimed, once (kept while it exists):
    the input of the write floor (``floor_argv``)."""
    if not archive.exists():
        tmp = archive.with_name(archive.name + ".tmp")
        subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"tar -cf - -C '{data.parent}' '{data.name}' | zstd -1 -T0 -q "
                        f"> '{tmp}'"], check=True)
        tmp.rename(archive)
    return archive


def floor_argv(archive: Path, dest: Path) -> list[str]:
    """The write floor: the tree unpacked from ``archive`` into ``dest`` by
    ``zstd -dc | tar -x``, then ``sync -f`` (import's parts are durable when it ends,
    so the floor's are too).  What a plain extract costs on this file system: import
    writes the same bytes and files, so import / floor is what is ours."""
    return ["bash", "-o", "pipefail", "-c",
            f"zstd -dc -q '{archive}' | tar -xf - -C '{dest}' && sync -f '{dest}'"]

