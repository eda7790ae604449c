"""``pipeline prep --cluster``: one session's shards prepped by every worker at once.

::

    client: walk (count) -> walk (cut: shard.partition) -> plan file (JDIR/SESSION.cluster.json)
       -> one task per worker, pinned by its drives resource (remote.prep_shard)
       -> progress events from every worker, summed into one bar / --json stream
       -> each worker's drives and result -> summary; a lost worker: exit 130, --resume

Each worker writes its drives' journals into the journal directory the client and every
worker share (an NFS or SMB mount, as the staging tree is): the recovery passwords never
travel through Dask.  ``--resume`` reads the plan back and runs every shard again on the
same worker: a finished shard walks and writes nothing; a lost worker's shard continues
from its journals when the worker comes back under the same name with its drives, or
moves to a new worker with ``--move-shard LOST=NEW`` (``_move``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import trio

from pipeline import journal, names, progress
from pipeline.cluster import client as dask_client
from pipeline.cluster import plan as cluster_plan
from pipeline.cluster import remote, shard
from pipeline.cluster.plan import SEQ_STRIDE, ClusterPlan, WorkerShard
from pipeline.drive import format
from pipeline.errors import EXIT_WARNING, BadInput, Interrupted, Outcome
from pipeline.prep import scan
from pipeline.volume import drives, luks2


def _refuse(args: argparse.Namespace) -> None:
    if args.drive:
        raise BadInput("--drive goes to each worker (pipeline worker --drive PATH); leave it "
                       "out with --cluster")
    if getattr(args, "dataset", None) or getattr(args, "driveset", None):
        raise BadInput("--dataset and --driveset are not supported with --cluster yet; give "
                       "--source and --dstdir, and each worker its --drive")
    if args.passphrase_file or args.key_file:
        raise BadInput("--passphrase-file and --key-file are not supported with --cluster "
                       "yet; prep with the recovery passwords only")


def _new_plan(args: argparse.Namespace, described: dict[str, dict[str, Any]]) -> ClusterPlan:
    """Walk the staging tree twice (count, then cut) and give each worker its range."""
    if not args.source:
        raise BadInput("--source is required: the staging directory every worker mounts")
    if not args.dstdir:
        raise BadInput("--dstdir is required: CONTAINER/VIRTUAL/DIR/ in the storage account")
    srcdir, dstdir = str(Path(args.source).resolve()), names.check_dstdir(args.dstdir)
    blob_type = format.BlobType.PAGE if args.blob_type == "page" else format.BlobType.BLOCK
    vdir = names.vdir_of(dstdir)
    total = 0
    for src in scan.scan(srcdir, vdir=vdir):
        page_why = names.page_blob_problem(src.size) if blob_type is format.BlobType.PAGE else None
        if page_why is not None:
            raise BadInput(f"{srcdir}/{src.path}: {page_why}; use --blob-type block")
        total += src.size
    order = sorted(described)
    caps = []
    for name in order:
        got = described[name]["drives"]
        if len(got) >= SEQ_STRIDE - 1:
            raise BadInput(f"worker {name} has {len(got)} drives; at most {SEQ_STRIDE - 2}")
        caps.append(sum(d["capacity"] for d in got))
    cut = shard.partition(((s.path, s.size) for s in scan.scan(srcdir, vdir=vdir)), total, caps)
    workers = [WorkerShard(name, slot, c.lo, c.hi, c.files, c.bytes, cap)
               for slot, (name, c, cap) in enumerate(zip(order, cut, caps, strict=True))]
    return ClusterPlan(args.session_id, srcdir, dstdir, int(blob_type),
                       args.level or 1, args.fill or "sequential", workers)


def _open_plan(args: argparse.Namespace, described: dict[str, dict[str, Any]]
               ) -> ClusterPlan:
    jdir = Path(args.journal_dir)
    if args.resume:
        plan = cluster_plan.load(jdir, args.session_id)
        given = str(Path(args.source).resolve()) if args.source else plan.srcdir
        if given != plan.srcdir:
            raise BadInput(f"--source {args.source} differs from the session's {plan.srcdir}; "
                           "leave it out when resuming")
        if args.move_shard:
            plan = _move(args.move_shard, plan, described, jdir)
        for path in cluster_plan.abandon(jdir, plan):  # a move's, if a crash cut it short
            print(f"pipeline prep: {path.name}: given up with its worker's shard; do not ship "
                  "that drive", file=sys.stderr)
        missing = [w.name for w in plan.workers if w.name not in described]
        if missing:
            raise BadInput(f"worker(s) {', '.join(missing)} of session {args.session_id} are "
                           "not connected; start them again with the same --name and drives")
        return plan
    if args.move_shard:
        raise BadInput("--move-shard moves a lost worker's shard of a session: use it with "
                       "--resume")
    if cluster_plan.plan_path(jdir, args.session_id).exists() or journal.session_journals(
            jdir, args.session_id):
        raise BadInput(f"session {args.session_id} already has journals in {jdir}; continue "
                       "it with --resume, or end it with --abort")
    plan = _new_plan(args, described)
    cluster_plan.save(jdir, plan)
    return plan


def _move(spec: str, plan: ClusterPlan, described: dict[str, dict[str, Any]], jdir: Path
          ) -> ClusterPlan:
    """``--move-shard LOST=NEW``: LOST's slot (its range, numbers and finished drives) given
    to NEW, a connected worker without a shard; LOST's unfinished drives are given up
    (``plan.abandon``) and what they held is written again onto NEW's drives."""
    lost, sep, new = spec.partition("=")
    names_ = [w.name for w in plan.workers]
    if not sep or lost not in names_:
        raise BadInput(f"--move-shard {spec}: give LOST=NEW, LOST one of session "
                       f"{plan.session_id}'s workers ({', '.join(names_)})")
    if lost in described:
        raise BadInput(f"worker {lost} is connected: resume its shard on its own drives "
                       "(leave out --move-shard)")
    if new not in described or new in names_:
        raise BadInput(f"--move-shard {spec}: {new} must be a connected pipeline worker "
                       "without a shard of this session; start it with its own --drive")
    w = plan.worker(lost)
    own = [j for j in journal.session_journals(jdir, plan.session_id) if w.owns(j.drive.seq)]
    last = max((j.drive.seq for j in own), default=0)
    unfinished = [j.drive.seq for j in own if j.drive.state not in ("closed", "full")]
    for j in own:
        j.close()
    moved = w.moved_to(new, last, unfinished)
    plan = dataclasses.replace(plan, workers=[moved if x is w else x for x in plan.workers])
    cluster_plan.save(jdir, plan)  # first: abandon() finishes a rename a crash cut short
    kept = [j.drive.seq for j in own if j.drive.seq not in unfinished]
    print(f"pipeline prep: worker {lost}'s shard moves to {new}: its unfinished drive(s) "
          f"{', '.join(map(str, unfinished)) or 'none'} are given up (do not ship them); "
          f"its finished drive(s) {', '.join(map(str, kept)) or 'none'} stay in the session",
          file=sys.stderr)
    return plan


def _task(args: argparse.Namespace, plan: ClusterPlan, w: WorkerShard, topic: str,
          kdf: luks2.KdfParams) -> remote.PrepTask:
    return remote.PrepTask(
        jdir=str(Path(args.journal_dir).resolve()), session_id=plan.session_id,
        srcdir=plan.srcdir, dstdir=plan.dstdir, blob_type=plan.blob_type, level=plan.level,
        fill=plan.fill, shard=w, kdf=kdf, yes=args.yes,
        memory=drives.parse_size(args.memory), topic=topic)


def _committed(jdir: str, session_id: str) -> int:
    total = 0
    for j in journal.session_journals(jdir, session_id):
        total += j.live_totals()[1]
        j.close()
    return total


async def run(args: argparse.Namespace, kdf: luks2.KdfParams) -> Outcome:
    """`pipeline prep --cluster ADDRESS` (``kdf``: the keyslot KDF the flags asked for)."""
    drives.check_session_id(args.session_id)
    _refuse(args)
    jdir = Path(args.journal_dir)
    if not jdir.is_dir():
        if args.resume:
            raise BadInput(f"journal directory {jdir} does not exist; give the one of the session")
        jdir.mkdir(mode=0o700, parents=True)
    cluster = await trio.to_thread.run_sync(dask_client.Cluster, args.cluster)
    try:
        described = await trio.to_thread.run_sync(cluster.workers)
        plan = await trio.to_thread.run_sync(_open_plan, args, described)
        stats = progress.Stats(files_total=sum(w.files for w in plan.workers),
                               bytes_total=sum(w.bytes for w in plan.workers))
        stats.skipped_bytes = _committed(args.journal_dir, plan.session_id)
        renderer = progress.make_renderer(args.json)
        renderer.start("prep", session_id=plan.session_id, srcdir=plan.srcdir,
                       files=stats.files_total, bytes=stats.bytes_total, fill=plan.fill,
                       workers=[w.name for w in plan.workers])
        topic = dask_client.topic("prep", plan.session_id)
        futures = {w.name: cluster.submit(w.name, len(described[w.name]["drives"]),
                                          remote.prep_shard,
                                          _task(args, plan, w, topic, kdf))
                   for w in plan.workers}
        results, lost = await progress.with_progress(
            renderer, stats, lambda: _outcome(cluster, futures, topic, renderer, stats, args))
    finally:
        await trio.to_thread.run_sync(cluster.close)
    return _report(results, stats, renderer, args)


async def _outcome(cluster: dask_client.Cluster, futures: dict[str, Any], topic: str,
                   renderer: progress.Renderer, stats: progress.Stats,
                   args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The tasks' results; a lost worker is Interrupted, a worker's error raised here."""
    results, lost = await dask_client.run_tasks(cluster, futures, topic, renderer, stats)
    if lost:
        raise Interrupted(
            f"worker(s) {', '.join(sorted(lost))} lost mid-run; their journals keep what they "
            "committed: start them again (same --name, same --drive) and continue with: "
            f"pipeline prep --cluster {args.cluster} --resume --journal-dir "
            f"{args.journal_dir} --session-id {args.session_id}")
    dask_client.raise_worst(results)
    return results, lost


def _report(results: dict[str, Any], stats: progress.Stats, renderer: progress.Renderer,
            args: argparse.Namespace) -> Outcome:
    """The summary (no recovery password: `pipeline keys` shows them) and the outcome."""
    rows = sorted((d for r in results.values() for d in r["drives"]), key=lambda d: d["seq"])
    # each worker names the entries skipped in its range; sorted together here
    skipped = sorted({tuple(s) for r in results.values() for s in r["skipped"]})
    changed = [c for r in results.values() for c in r["changed"]]
    stale = [s for r in results.values() for s in r.get("stale", [])]
    keys = (f"pipeline keys --journal-dir {Path(args.journal_dir).resolve()} "
            f"--session-id {args.session_id}")
    stats.files_done = stats.files_total  # every shard ended well: all of them committed
    renderer.update(stats, force=True)
    notes = stale + ([f"{len(changed)} file(s) changed while being read (first: {changed[0]}); "
                      "run prep --cluster --resume to write them again"] if changed else [])
    if skipped:
        notes.append(f"{len(skipped)} staging entries skipped (recorded in the journals; "
                     f"first: {names.show(skipped[0][0])}: {skipped[0][1]})")
    message = "; ".join(notes)
    if args.json:
        renderer.event("summary", **{**stats.statistics(), "drives": rows}, keys_command=keys,
                       workers={n: r["stats"] for n, r in results.items()},
                       skipped=[{"path": p, "reason": why} for p, why in skipped])
        renderer.event("exit", code=EXIT_WARNING if notes else 0, message=message)
        renderer.close()
    else:
        renderer.close()
        print("drive  state    used / capacity          files  worker  path")
        owner = {d["seq"]: n for n, r in results.items() for d in r["drives"]}
        for d in rows:
            print(f"{d['seq']:>5}  {d['state']:<7}  {drives.human(d['used']):>10} / "
                  f"{drives.human(d['capacity']):<10}  {d['files']:>7}  {owner[d['seq']]}  "
                  f"{d['path']}")
        print(f"recovery passwords: show them where nobody else can see with: {keys}",
              file=sys.stderr)
    return Outcome(EXIT_WARNING, message) if notes else Outcome()
