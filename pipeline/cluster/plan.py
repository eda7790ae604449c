"""The session's cluster plan: which worker preps which shard onto which drive numbers.

The client writes it beside the journals (``JDIR/SESSION.cluster.json``, mode 0600) before
the first task runs, and ``prep --cluster --resume`` reads it back, so a resumed run gives
every worker the same range of the walk and the same drive numbers: a worker's journals,
its drives and its shard stay together.  Drive numbers: the worker in slot ``k`` (workers
sorted by name when the session began) numbers its drives from ``k * SEQ_STRIDE + 1`` up,
at most ``SEQ_STRIDE - 1`` of them, so numbers are unique across the session with no
coordination while it runs; file ids likewise start at ``k << FILE_ID_SHIFT``.  No secret
is in it: recovery passwords stay in the journals.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import atomic
from pipeline.errors import BadInput

SEQ_STRIDE = 100
FILE_ID_SHIFT = 40  # 2**40 files per worker; file ids are u64 on the drive
SUFFIX = ".cluster.json"


@dataclass(frozen=True)
class WorkerShard:
    """One worker's part of the session."""

    name: str
    slot: int
    lo: str | None
    hi: str | None
    files: int
    bytes: int
    capacity: int

    @property
    def first_seq(self) -> int:
        return self.slot * SEQ_STRIDE + 1

    def owns(self, seq: int) -> bool:
        return self.first_seq <= seq < self.first_seq + SEQ_STRIDE - 1

    @property
    def file_id_base(self) -> int:
        return self.slot << FILE_ID_SHIFT


@dataclass(frozen=True)
class ClusterPlan:
    """What every worker of a session needs, the same on a resumed run."""

    session_id: str
    srcdir: str
    dstdir: str
    blob_type: int
    level: int
    fill: str
    workers: list[WorkerShard] = field(default_factory=list)

    def worker(self, name: str) -> WorkerShard:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(name)


def plan_path(jdir: str | os.PathLike[str], session_id: str) -> Path:
    return Path(jdir) / f"{session_id}{SUFFIX}"


def save(jdir: str | os.PathLike[str], plan: ClusterPlan) -> Path:
    path = plan_path(jdir, plan.session_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    atomic.replace_file(tmp, path, json.dumps(asdict(plan), indent=1).encode(), 0o600)
    return path


def load(jdir: str | os.PathLike[str], session_id: str) -> ClusterPlan:
    """The plan as saved; a missing or damaged one says what to do."""
    path = plan_path(jdir, session_id)
    try:
        raw = json.loads(path.read_bytes())
        workers = [WorkerShard(**w) for w in raw.pop("workers")]
        return ClusterPlan(**raw, workers=workers)
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist: session {session_id} was not begun with "
                       "prep --cluster (resume it without --cluster), or check "
                       "--journal-dir") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadInput(f"{path} is not a cluster plan ({exc}); restore it from a backup "
                       "of the journal directory") from None
