"""The offline backup's settings and checks: what staging holds, what stays on the source.

Two JSON files, read by ``diskprep`` too:

* ``STAGING/pipeline-offline.json`` (no secrets; it travels with the staging data)::

    {"version": 1, "staging": "<abs STAGING>", "repository": "repo", "job_name": NAME,
     "subscription": ID, "account": ACCOUNT, "container": C, "created": "<iso8601>"}

  It is written last, after the snapshot: its presence means the initial backup
  is complete.

* ``$PIPELINE_CONFIG_DIR/offline.json`` (default ``~/.config/pipeline/offline.json``),
  mode 0600, on the source machine only, keyed by the staging path::

    {"<abs STAGING>": {"publish_settings": "<abs path or null>", "container": C,
                       "job_name": NAME, "subscription": ID, "account": ACCOUNT,
                       "source": "<abs source>"}}

The backup passphrase is stored nowhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.errors import EXIT_NO_SEED, BadInput, NoSpace, PipelineError, is_no_space

STAGING_FILE = "pipeline-offline.json"
REPOSITORY = "repo"
CONFIG_FILE = "offline.json"
SAMPLE = 32 << 20               # bytes compressed to sample the ratio (as `pipeline preview`)
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}\Z")


def check_account_name(name: str) -> str:
    if not _ACCOUNT.match(name):
        raise BadInput(f"--storage-account {name!r} is not a storage account name; use 3-24 "
                       "lowercase letters and digits")
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_staging(staging: Path, source: Path) -> Path:
    """An existing, writable directory apart from the source (either inside the other
    would back up the staging copy, or ship the source unencrypted)."""
    s = Path(os.path.abspath(staging))
    if not s.is_dir():
        what = "is not a directory" if s.exists() else "does not exist"
        raise BadInput(f"--staging {s} {what}; create the staging directory first "
                       f"(mkdir -p {s})")
    s = s.resolve()
    if _inside(s, source) or _inside(source, s):
        raise BadInput(f"--staging {s} and --source {source} overlap; put the staging "
                       "location outside the source (and the source outside it)")
    probe = s / f".pipeline-probe-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"--staging {s} is not writable ({exc.strerror}); fix its permissions "
                       "or mount, or give another staging location") from None
    return s


def check_outside(path: str, staging: Path, what: str) -> None:
    """Secrets (publish settings, passphrase) must not sit in the staging data that ships."""
    p = Path(path).resolve()
    if _inside(p, staging):
        raise BadInput(f"{what} {p} is inside the staging location {staging}, which is copied "
                       "onto the drives; move it out of the staging location")


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class Estimate:
    files: int
    bytes: int
    data_bytes: int           # outside holes
    sampled: int
    ratio: float              # stored / raw over the sample (zero cells count 0)
    needed: int               # bytes the repository will take, at most (dedup ignored)


def estimate(source: Path, level: int = 1, sample: int = SAMPLE, free: int | None = None
             ) -> Estimate:
    """Like ``pipeline preview``: holes skipped, zstd ratio sampled over cells spread
    across the tree; dedup is ignored, so the figure errs on the large side.  Only stat:
    no owners or attributes (the backup reads those), and a file is opened for its holes
    only when its allocated blocks say it has some: this walk comes before the backup.

    With ``free`` (the staging location's free bytes) the sample is taken only when it
    decides: when the data would fit stored raw (a chunk is never stored larger than
    raw), no content is read and the ratio counts as 1.0.  Sampled reads are random reads
    of a cold tree, most of this walk's time (0.17 of 0.41 s on 2 GB of real files); then
    the tree is walked a second time for its cells (the first keeps no list per file: 80 ->
    37 ms here on 10,335 files, which every offline backup waits for before it starts).
    The drive modules are imported there: the hourly online backup never needs them."""
    from pipeline.sparse import may_have_holes  # here: an online backup never estimates

    files = total = data = 0
    for path, st in _regular_files(source):
        files += 1
        total += st.st_size
        data += sum(e - s for s, e in _holes(path, st)) if may_have_holes(st) else st.st_size
    stored_raw = _needed(files, data, 1.0)
    if free is not None and free >= stored_raw:
        return Estimate(files, total, data, 0, 1.0, stored_raw)
    raw, stored = _sample(_cells(source), sample, level)   # near the edge: walked again
    ratio = stored / raw if raw else 1.0
    return Estimate(files, total, data, raw, round(ratio, 4), _needed(files, data, ratio))


def _cells(source: Path) -> list[tuple[str, int, int]]:
    """Every cell of data under ``source`` (the drive grid's), for the sample to pick from."""
    from pipeline.drive.format import CELL, grid
    from pipeline.sparse import may_have_holes

    cells: list[tuple[str, int, int]] = []
    for path, st in _regular_files(source):
        for start, end in _holes(path, st) if may_have_holes(st) else [(0, st.st_size)]:
            cells.extend((path, off, min(CELL, end - off)) for off in grid(end, start))
    return cells


def _sample(cells: list[tuple[str, int, int]], sample: int, level: int) -> tuple[int, int]:
    """(raw, stored) bytes over about ``sample`` bytes of cells spread evenly."""
    from pipeline.drive import codec

    step = max(1, math.ceil(sum(c[2] for c in cells) / max(sample, 1)))
    raw = stored = 0
    for path, off, length in cells[::step]:
        fd = _open(path)
        if fd is None:
            continue
        try:
            piece = os.pread(fd, length, off)
        except OSError:
            continue
        finally:
            os.close(fd)
        if piece:
            raw += len(piece)
            stored += len(codec.pack(piece, level).stored)
    return raw, stored


def _needed(files: int, data: int, ratio: float) -> int:
    """The repository's size at most: the data at ``ratio``, plus per chunk, per file and
    per pack overheads, plus 1 MiB."""
    chunks = data // (1 << 20) + files
    return (int(data * ratio * 1.01) + chunks * 200 + files * 300
            + (data // (16 << 20) + 1) * 1024 + (1 << 20))


def _regular_files(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under ``top`` with its lstat; what cannot be listed or stat'ed
    is left out (the backup itself reports it).  Paths as str: a Path made per file was
    half of this walk's time, which every offline backup waits for before it starts."""
    stack = [str(top)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                yield e.path, st


def _holes(path: str, st: os.stat_result) -> list[tuple[int, int]]:
    """The data ranges of a file that has holes; none when it cannot be opened or is no
    longer a regular file; the backup reports it."""
    from pipeline.sparse import data_ranges

    fd = _open(path)
    if fd is None:
        return []
    try:
        return data_ranges(fd, st.st_size)
    except OSError:
        return []
    finally:
        os.close(fd)


def _open(path: str) -> int | None:
    """``path`` opened for reading if it is still a regular file (a device node swapped in
    since its lstat is never opened: ``openfile.open_regular``), else None."""
    from pipeline.backup.openfile import open_regular

    try:
        opened = open_regular(path)
    except OSError:
        return None
    return None if opened is None else opened[0]


def free_bytes(staging: Path) -> int:
    """What an unprivileged writer may still put in ``staging``'s filesystem."""
    st = os.statvfs(staging)
    return st.f_bavail * st.f_frsize


def check_space(staging: Path, est: Estimate) -> None:
    free = free_bytes(staging)
    if free < est.needed:
        raise BadInput(f"--staging {staging} has {_human(free)} free, the backup needs about "
                       f"{_human(est.needed)} ({_human(est.data_bytes)} of data, compressing "
                       f"to {est.ratio:.0%} in a sample); free space or give a larger staging "
                       "location")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------- settings files


class NoOfflineBackup(PipelineError):
    """{}"""

    exit_code = EXIT_NO_SEED


def staging_file(staging: Path) -> Path:
    return staging / STAGING_FILE


def read_staging(staging: Path) -> dict[str, Any]:
    """The offline settings a staging location holds; BadInput saying how to make them."""
    path = staging_file(staging)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoOfflineBackup(f"staging location {staging} holds no offline backup "
                              f"({STAGING_FILE} is missing); start one with: pipeline backup "
                              f"--offline --staging {staging} ...") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} cannot be read ({exc}); run pipeline backup --offline "
                       "into a new staging location") from None
    if not isinstance(obj, dict) or obj.get("version") != 1:
        raise BadInput(f"{path} is not an offline backup record of version 1")
    return obj


def write_staging(staging: Path, job_name: str, subscription: str, account: str,
                  container: str) -> dict[str, Any]:
    obj = {"version": 1, "staging": str(staging), "repository": REPOSITORY,
           "job_name": job_name, "subscription": subscription, "account": account,
           "container": container, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    _write_atomic(staging_file(staging), json.dumps(obj, indent=2) + "\n", 0o600)
    return obj


def config_path() -> Path:
    base = os.environ.get("PIPELINE_CONFIG_DIR")
    return (Path(base) if base else Path.home() / ".config" / "pipeline") / CONFIG_FILE


def read_config() -> dict[str, Any]:
    path = config_path()
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} cannot be read ({exc}); fix or remove it") from None
    if not isinstance(obj, dict):
        raise BadInput(f"{path} is not a JSON object; fix or remove it")
    return obj


def record_config(staging: Path, entry: dict[str, Any]) -> Path:
    """Add or replace this staging location's entry; the file stays mode 0600."""
    path = config_path()
    obj = read_config()
    obj[str(staging)] = entry
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", 0o600)
    return path


def entries_for_source(source: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(s, e) for s, e in read_config().items()
            if isinstance(e, dict) and e.get("source") == str(source)]


def _write_atomic(path: Path, text: str, mode: int) -> None:
    try:
        atomic.replace_file(path.with_name(f".{path.name}.{secrets.token_hex(4)}"), path,
                            text.encode(), mode)
    except OSError as exc:
        if is_no_space(exc):        # the old file (or none) stays: nothing half-recorded
            raise NoSpace(path) from None
        raise


# --------------------------------------------------------------------------- the seed's job

JOB_STATES = ("Creating", "Shipping", "Received", "Transferring", "Packaging", "Completed",
              "Closed", "Canceled")


def entries_for_container(container: str) -> list[tuple[str, dict[str, Any]]]:
    """The offline backups recorded on this machine whose seed goes into ``container``."""
    return [(s, e) for s, e in read_config().items()
            if isinstance(e, dict) and e.get("container") == container]


def job_state_line(job: str, state: str, container: str, where: str, settings: str,
                   percent: int | None = None, partial: str | None = None) -> str:
    """What import job ``job`` in ``state`` means for a repository not (fully) in
    container ``container`` of ``where`` yet, and what to do next: one sentence.
    ``settings``: the publish settings file the job belongs to."""
    head = f"job {job} is {state}"
    if state == "Creating":
        return (f"{head}: the drives have not been shipped yet; ship them with `pipeline jobs "
                f"ship --job {job} --publish-settings {settings} --carrier NAME --tracking "
                "NUMBER`, and run this again once the job is Completed")
    if state == "Shipping":
        return (f"{head}: the seed is not imported yet; the receiving site imports it once "
                "the drives arrive, then run this again")
    if state in ("Received", "Transferring"):
        done = f" ({percent}% copied)" if percent is not None and state == "Transferring" else ""
        what = ("the receiving site has the drives and is importing the seed"
                if state == "Transferring" else
                "the receiving site has the drives; the import starts next")
        return f"{head}{done}: {what}; run this again once the job is Completed"
    if state in ("Packaging", "Completed", "Closed"):
        if partial:
            return (f"{head}: the import is done, yet the repository in container {container} "
                    f"of {where} is incomplete ({partial} missing): see which blobs failed "
                    f"with `pipeline jobs show --job {job} --publish-settings {settings}` and its "
                    "copy logs")
        return (f"{head}: the import is done, so container {container} of {where} is the "
                "wrong one (the seed is not in it): check --container, and --to, against the "
                "container the drives were prepared for")
    if state == "Canceled":
        return (f"{head}: the seed will not be imported through it; make a new seed under a "
                "new job (pipeline backup --offline --job NEW-NAME --staging NEW-DIR ..., then "
                "pipeline diskprep s:NEW-DIR)")
    return f"job {job} is in state {state!r}, which this version of pipeline does not know"
