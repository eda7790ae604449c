"""``pipeline verify --cluster`` and ``pipeline import --cluster``: each drive read by the
worker that has it attached.

The client reads the session's journals (the shared journal directory), asks every worker
which volumes its drives hold (``events.describe``: the volume uuid in each LUKS2 header),
and gives each worker the drives it has, one task per worker holding all its drives.  A
drive no worker has is named before anything runs.  Import's copy logs come back with the
results and are written into the client's --log-dir, one per drive, as single-machine
import writes them.  The tasks name the storage account by its address only; each worker
brings its own credential for it (``target``): no key crosses Dask's wire.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import trio

from pipeline import journal, progress
from pipeline.cluster import client as dask_client
from pipeline.cluster import receive_remote, target
from pipeline.errors import BadInput, Incomplete, IntegrityError, Interrupted, Outcome
from pipeline.receive import importer
from pipeline.receive.verify import DriveReport


def _assign(journals: list[journal.Journal], described: dict[str, dict[str, Any]]
            ) -> dict[str, list[str]]:
    """Worker name -> the volume uuids of the session's drives attached to it."""
    where = {d["uuid"]: name for name, w in described.items() for d in w["drives"] if d["uuid"]}
    out: dict[str, list[str]] = {}
    missing = []
    for j in journals:
        name = where.get(j.drive.uuid)
        if name is None:
            missing.append(f"drive {j.drive.seq} (volume {j.drive.uuid})")
        else:
            out.setdefault(name, []).append(j.drive.uuid)
    if missing:
        raise BadInput(f"{', '.join(missing)}: attached to no pipeline worker; attach them "
                       "and start `pipeline worker --drive PATH` where they are")
    return out


async def _run(address: str, journals: list[journal.Journal], kind: str,
               fn: Any, args: tuple[Any, ...], renderer: progress.Renderer,
               stats: progress.Stats) -> dict[str, Any]:
    """Every worker's task ``fn(jdir, session, uuids, *args, topic)``; their results."""
    cluster = await trio.to_thread.run_sync(dask_client.Cluster, address)
    try:
        described = await trio.to_thread.run_sync(cluster.workers)
        jobs = _assign(journals, described)
        session_id = journals[0].session.session_id
        jdir = str(journals[0].path.parent.resolve())
        topic = dask_client.topic(kind, session_id)
        futures = {name: cluster.submit(name, len(described[name]["drives"]), fn, jdir,
                                        session_id, uuids, *args, topic)
                   for name, uuids in jobs.items()}
        results, lost = await dask_client.run_tasks(cluster, futures, topic, renderer, stats)
    finally:
        await trio.to_thread.run_sync(cluster.close)
    if lost:
        raise Interrupted(f"worker(s) {', '.join(sorted(lost))} lost mid-run; start them "
                          f"again and run the same {kind} command: it is safe to repeat")
    dask_client.raise_worst(results)
    return results


async def verify_all(address: str, journals: list[journal.Journal],
                     renderer: progress.Renderer, stats: progress.Stats
                     ) -> list[DriveReport]:
    """verify's reports, each drive checked by the worker it is attached to."""
    results = await _run(address, journals, "verify", receive_remote.verify_drives, (),
                         renderer, stats)
    reports = []
    for r in results.values():
        for d in r["reports"]:
            d = dict(d)
            d.pop("ok")
            reports.append(DriveReport(**d))
    return reports


async def import_all(address: str, journals: list[journal.Journal], store_target: str,
                     log_dir: Path, renderer: progress.Renderer, stats: progress.Stats
                     ) -> list[dict[str, Any]]:
    """Import every drive of the session where it is attached, into the account
    ``store_target`` names (its address, no secret: ``target.public_target``); each drive's
    outcome, its copy log written into ``log_dir`` (``copylog-SESSION-driveNN.jsonl``)."""
    results = await _run(address, journals, "import", receive_remote.import_drives,
                         (store_target,), renderer, stats)
    out = []
    for name, r in sorted(results.items()):
        for d in r["drives"]:
            path = importer.log_path(log_dir, d["session_id"], d["seq"])
            path.write_text("\n".join(d.pop("lines")) + "\n", encoding="utf-8")
            out.append({**d, "worker": name, "copy_log": str(path)})
    return sorted(out, key=lambda d: d["seq"])


async def import_run(args: argparse.Namespace) -> Outcome:
    """`pipeline import --cluster ADDRESS --journal-dir J --to STORAGE`: every drive of the
    session, each where it is attached; the copy logs gathered into --log-dir."""
    if not args.journal_dir or args.drive or args.service:
        raise BadInput("import --cluster takes --journal-dir (the shared one) and no --drive "
                       "or --service: each worker imports the session's drives it has")
    store_spec = args.to or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not store_spec:
        raise BadInput("give --to STORAGE: the storage account every worker writes to")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    journals = journal.one_session(args.journal_dir, None)
    try:
        stats = progress.Stats(files_total=sum(j.live_totals()[0] for j in journals),
                               bytes_total=sum(j.live_totals()[1] for j in journals))
        renderer = progress.make_renderer(args.json)
        store_target, store = target.public_target(store_spec)  # no key in store_target
        if store is not None:  # checked here first when the client holds a credential
            store.check()
        renderer.start("import", drives=[j.drive.uuid for j in journals], storage=store_target,
                       files=stats.files_total, bytes=stats.bytes_total)
        done = await progress.with_progress(renderer, stats, lambda: import_all(
            args.cluster, journals, store_target, log_dir, renderer, stats))
    finally:
        for j in journals:
            j.close()
    renderer.update(stats, force=True)
    for d in done:
        t = d["totals"]
        if args.json:
            renderer.event("drive", seq=d["seq"], session_id=d["session_id"], path=d["path"],
                           worker=d["worker"], already_imported=d["already"],
                           copy_log=d["copy_log"], records_from=d["source"],
                           damage=d["damage"], incomplete=d["incomplete"], **t)
        else:
            print(f"drive {d['seq']} of session {d['session_id']} ({d['worker']}: {d['path']}): "
                  + ("already imported; nothing changed" if d["already"] else
                     f"{t['ok'] + t['unvouched']} blob(s) complete, {t['skipped']} waiting "
                     f"for other drives or skipped, {t['corrupt']} corrupt, {t['missing']} "
                     f"missing") + f"; copy log {d['copy_log']}")
    if args.json:
        renderer.event("summary", **stats.statistics(), drives_imported=len(done))
    renderer.close()
    bad = sum(d["totals"]["corrupt"] + d["totals"]["missing"] for d in done)
    if bad:
        raise IntegrityError(f"{bad} blob(s) corrupt or missing; see the copy logs in "
                             f"{log_dir}, then re-send them: pipeline repair --journal-dir "
                             f"{args.journal_dir} --source STAGING --to STORAGE")
    unvouched = [d["path"] for d in done if d["incomplete"]]
    if unvouched:
        raise Incomplete(f"{', '.join(unvouched)}: imported, but cannot vouch that nothing "
                         "is missing; see the copy logs")
    print(f"imported {len(done)} drive(s) on {len({d['worker'] for d in done})} worker(s)",
          file=sys.stderr)
    return Outcome()
