"""The session's cluster plan: which worker preps which shard onto which drive numbers.

The client writes it beside the journals (``JDIR/SESSION.cluster.json``, mode 0600) before
the first task runs, and ``prep --cluster --resume`` reads it back, so a resumed run gives
every worker the same range of the walk and the same drive numbers: a worker's journals,
its drives and its shard stay together.  Drive numbers: the worker in slot ``k`` (workers
sorted by name when the session began) numbers its drives from ``k * SEQ_STRIDE + 1`` up,
at most ``SEQ_STRIDE - 1`` of them, so numbers are unique across the session with no
coordination while it runs; file ids likewise start at ``k << FILE_ID_SHIFT``.  No secret
is in it: recovery passwords stay in the journals.

A lost worker's shard can move to another worker (``prep --cluster --resume --move-shard
LOST=NEW``): the new worker takes the slot, so the numbers stay the slot's; its drives are
numbered past every drive the slot had (``seq_floor``), and the lost worker's unfinished
drives, which cannot be closed without it, are ``abandoned``: their journals are renamed
out of the session (``abandon``) and what they held is written again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipeline import atomic, journal
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
    seq_floor: int = 0  # after a move: the new drives are numbered from here
    abandoned: tuple[int, ...] = ()  # drive numbers given up with a lost worker
    moved_from: tuple[str, ...] = ()  # the workers that held this slot before

    @property
    def first_seq(self) -> int:
        return self.slot * SEQ_STRIDE + 1

    def owns(self, seq: int) -> bool:
        return self.first_seq <= seq < self.first_seq + SEQ_STRIDE - 1

    @property
    def file_id_base(self) -> int:
        return self.slot << FILE_ID_SHIFT

    def moved_to(self, name: str, last_seq: int, unfinished: list[int]) -> WorkerShard:
        """This slot given to worker ``name``: past drive ``last_seq``, ``unfinished`` given up."""
        return replace(self, name=name, seq_floor=max(self.seq_floor, last_seq + 1),
                       abandoned=(*self.abandoned, *unfinished),
                       moved_from=(*self.moved_from, self.name))


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


ABANDONED = ".abandoned"


def abandon(jdir: str | os.PathLike[str], plan: ClusterPlan) -> list[Path]:
    """Rename the journals of every abandoned drive out of the session (``NAME.abandoned``,
    its password kept for the record); idempotent, so a crash between saving the plan and
    renaming is finished by the next run.  The renamed journals."""
    moved = []
    for w in plan.workers:
        for seq in w.abandoned:
            path = journal.journal_path(jdir, plan.session_id, seq)
            for part in (path, path.with_name(path.name + "-wal"),
                         path.with_name(path.name + "-shm")):
                if part.exists():
                    part.rename(part.with_name(part.name + ABANDONED))
                    if part == path:
                        moved.append(part.with_name(part.name + ABANDONED))
    return moved


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
        workers = [WorkerShard(**{**w, "abandoned": tuple(w.get("abandoned", ())),
                                  "moved_from": tuple(w.get("moved_from", ()))})
                   for w in raw.pop("workers")]
        return ClusterPlan(**raw, workers=workers)
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist: session {session_id} was not begun with "
                       "prep --cluster (resume it without --cluster), or check "
                       "--journal-dir") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadInput(f"{path} is not a cluster plan ({exc}); restore it from a backup "
                       "of the journal directory") from None
