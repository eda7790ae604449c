"""``pipeline verify --cluster`` and ``pipeline import --cluster``: each drive read by the
worker that has it attached.

The client reads the session's journals (the shared journal directory), asks every worker
which volumes its drives hold (``events.describe``: the volume uuid in each LUKS2 header),
and gives each worker the drives it has, one task per worker holding all its drives.  A
drive no worker has is named before anything runs.  Import's copy logs stay on the workers
until the client fetches them, a part at a time, into its --log-dir, one per drive, as
single-machine import writes them.  The tasks name the storage account by its address only;
each worker brings its own credential for it (``target``): no key crosses Dask's wire.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from pipeline import journal, progress
from pipeline.cluster import client as dask_client
from pipeline.cluster import receive_remote, site_remote, target
from pipeline.errors import BadInput, Incomplete, IntegrityError, Interrupted, Outcome
from pipeline.receive import importer, service_import
from pipeline.receive.verify import DriveReport


def _assign(wanted: dict[str, str], described: dict[str, dict[str, Any]], every: bool = True,
            some: bool = True) -> dict[str, list[str]]:
    """Worker name -> the volume uuids of ``wanted`` (uuid -> the drive named for a message)
    attached to it; with ``every``, a wanted drive attached nowhere is refused; with
    ``some``, none attached at all is."""
    where = {d["uuid"]: name for name, w in described.items() for d in w["drives"] if d["uuid"]}
    out: dict[str, list[str]] = {}
    missing = []
    for uuid, shown in wanted.items():
        name = where.get(uuid)
        if name is None:
            missing.append(shown)
        else:
            out.setdefault(name, []).append(uuid)
    if (missing and every) or (not out and some):
        raise BadInput(f"{', '.join(missing)}: attached to no pipeline worker; attach them "
                       "and start `pipeline worker --drive PATH` where they are")
    return out


def _wanted(journals: list[journal.Journal]) -> dict[str, str]:
    return {j.drive.uuid: f"drive {j.drive.seq} (volume {j.drive.uuid})" for j in journals}


async def run_on_workers(address: str, wanted: dict[str, str], kind: str, label: str,
                         fn: Any, head: tuple[Any, ...], tail: tuple[Any, ...],
                         renderer: progress.Renderer, stats: progress.Stats, *,
                         every: bool = True, some: bool = True, before: Any = None,
                         check: bool = True, logs_into: Path | None = None
                         ) -> dict[str, Any]:
    """Every worker's task ``fn(*head, uuids, *tail, topic)`` on the ``wanted`` drives
    attached to it (``_assign``: ``every``, ``some``; none attached and not ``some``: no
    task, no result); ``before(uuids)`` first; their results (``check``: the
    worst error among them raised; else the caller's to raise, ``dask_client.raise_worst``).
    ``logs_into``: each imported drive's copy log fetched from its worker into that
    directory (``fetch_logs``) while the cluster is still connected."""
    cluster = await trio.to_thread.run_sync(dask_client.Cluster, address)
    try:
        described = await trio.to_thread.run_sync(cluster.workers)
        jobs = _assign(wanted, described, every, some)
        if not jobs:
            return {}
        if before is not None:
            await trio.to_thread.run_sync(before, [u for us in jobs.values() for u in us])
        topic = dask_client.topic(kind, label)
        futures = {name: cluster.submit(name, len(described[name]["drives"]), fn, *head,
                                        uuids, *tail, topic)
                   for name, uuids in jobs.items()}
        results, lost = await dask_client.run_tasks(cluster, futures, topic, renderer, stats)
        if logs_into is not None:
            await trio.to_thread.run_sync(fetch_logs, cluster, described, results, logs_into)
    finally:
        await trio.to_thread.run_sync(cluster.close)
    if lost:
        raise Interrupted(f"worker(s) {', '.join(sorted(lost))} lost mid-run; start them "
                          f"again and run the same {kind} command: it is safe to repeat")
    if check:
        dask_client.raise_worst(results)
    return results


def _head(journals: list[journal.Journal]) -> tuple[str, str]:
    """The tasks' first arguments: the shared journal directory and the session."""
    return str(journals[0].path.parent.resolve()), journals[0].session.session_id


async def verify_all(address: str, journals: list[journal.Journal],
                     renderer: progress.Renderer, stats: progress.Stats
                     ) -> list[DriveReport]:
    """verify's reports, each drive checked by the worker it is attached to."""
    results = await run_on_workers(address, _wanted(journals), "verify", _head(journals)[1],
                                   receive_remote.verify_drives, _head(journals), (),
                                   renderer, stats)
    reports = []
    for r in results.values():
        for d in r["reports"]:
            d = dict(d)
            d.pop("ok")
            reports.append(DriveReport(**d))
    return reports


async def import_all(address: str, journals: list[journal.Journal], store_target: str,
                     log_dir: Path, renderer: progress.Renderer, stats: progress.Stats,
                     again: Sequence[str] = (), how: str = "pipeline import --cluster "
                     "ADDRESS --journal-dir JDIR --to STORAGE --again --drive DRIVE"
                     ) -> list[dict[str, Any]]:
    """Import every drive of the session where it is attached, into the account
    ``store_target`` names (its address, no secret: ``target.public_target``); each drive's
    outcome, its copy log written into ``log_dir`` (``copylog-SESSION-driveNN.jsonl``), the
    logs of the drives that finished written before a failure is raised.

    ``again`` (import --again --drive DRIVE): those drives are imported once more first,
    each by its worker, and only then the others, as before: the parts they send again
    are staged before another drive's commit needs them (run at once on two workers, a
    commit could look for them before they are sent).  ``how``: the command a line on
    missing parts names (``_raise_worst``)."""
    wanted, head = _wanted(journals), _head(journals)
    done: list[dict[str, Any]] = []
    first: dict[str, int] = {}
    if again:
        named = await _resolve(address, again, wanted)
        results = await run_on_workers(address, named, "import", head[1],
                                       receive_remote.import_drives, head,
                                       (store_target, True), renderer, stats, check=False,
                                       logs_into=log_dir)
        done += _drives(results)
        _raise_worst(results, how)
        first = {n: getattr(stats, n) for n in _COUNTED}  # the next run's folding restarts
        wanted = {u: shown for u, shown in wanted.items() if u not in named}
    if wanted:
        results = await run_on_workers(address, wanted, "import", head[1],
                                       receive_remote.import_drives, head,
                                       (store_target, False), renderer, stats, check=False,
                                       logs_into=log_dir)
        done += _drives(results)
        for n, v in first.items():
            setattr(stats, n, getattr(stats, n) + v)
        _raise_worst(results, how)
    return sorted(done, key=lambda d: d["seq"])


_COUNTED = ("bytes_read", "bytes_written", "bytes_stored", "zero_bytes", "extents",
            "files_done")
"""The counters a run of tasks folds from its workers (``dask_client.Progress``)."""


async def _resolve(address: str, named: Sequence[str], wanted: dict[str, str]
                   ) -> dict[str, str]:
    """The drives ``named`` (--drive: a volume uuid, or a drive's path as its worker holds
    it) among ``wanted`` (uuid -> shown), by asking the workers: uuid -> shown.  A name that
    is no drive of the session, or the path of drives on several workers, is BadInput."""
    cluster = await trio.to_thread.run_sync(dask_client.Cluster, address)
    try:
        described = await trio.to_thread.run_sync(cluster.workers)
    finally:
        await trio.to_thread.run_sync(cluster.close)
    held = [(name, d) for name, w in sorted(described.items()) for d in w["drives"]
            if d["uuid"] in wanted]
    out: dict[str, str] = {}
    for x in named:
        found = [(name, d) for name, d in held if x in (d["uuid"], d["path"])]
        if not found:
            shown = "; ".join(f"{d['uuid']} ({name}: {d['path']})" for name, d in held[:8])
            raise BadInput(f"--drive {x}: no drive of the session with that volume uuid or "
                           f"path is attached to a pipeline worker; the session's drives "
                           f"attached: {shown or 'none'}")
        if len(found) > 1:
            raise BadInput(f"--drive {x}: drives on several workers have that path; give "
                           "its volume uuid: "
                           + ", ".join(f"{d['uuid']} ({name})" for name, d in found))
        out[found[0][1]["uuid"]] = wanted[found[0][1]["uuid"]]
    return out


PART = 1 << 20
"""Bytes of a worker's copy log fetched at a time: what either side holds of it."""


def fetch_logs(cluster: dask_client.Cluster, described: dict[str, dict[str, Any]],
               results: dict[str, Any], log_dir: Path) -> None:
    """Each drive's copy log (kept on its worker: ``receive_remote.import_one``) copied into
    ``log_dir`` (``copylog-SESSION-driveNN.jsonl``), each drive's outcome given its
    ``copy_log`` and ``worker``.  A log that cannot be copied (its worker gone, the log
    directory full) is named on stderr with the account's copy of it (stored by the worker
    before), and the outcome names no log: the drive is in, the import goes on.  The log
    of a drive whose import failed (``failed``) is fetched the same way and named on
    stderr: the operator needs it most then, and on one machine it stays in --log-dir."""
    for name, r in sorted(results.items()):
        for d in r.get("failed", []):
            path = importer.log_path(log_dir, d["session_id"], d["seq"])
            try:
                fetch_log(cluster.client, described[name]["address"], d["log_file"], path)
            except (OSError, TimeoutError, KeyError, ValueError) as exc:
                print(f"pipeline import: the copy log of drive {d['seq']}, whose import "
                      f"failed, could not be copied from worker {name} into {path} "
                      f"({str(exc) or type(exc).__name__}); it stays on that machine: "
                      f"{d['log_file']}", file=sys.stderr)
            else:
                print(f"pipeline import: drive {d['seq']}'s import failed on worker {name} "
                      f"({d['path']}); its copy log is {path}", file=sys.stderr)
        for d in r.get("drives", []):
            path = importer.log_path(log_dir, d["session_id"], d["seq"])
            d["worker"], d["copy_log"] = name, str(path)
            why = d.pop("not_stored", "")
            if why:  # said as pipeline import says it: the local log is the record
                print(f"pipeline import: worker {name} could not store the copy log of drive "
                      f"{d['seq']} in the account ({why}); it is in {path}", file=sys.stderr)
            try:
                fetch_log(cluster.client, described[name]["address"], d.pop("log_file"), path)
            except (OSError, TimeoutError, KeyError, ValueError) as exc:
                d["copy_log"] = ""
                print(f"pipeline import: the copy log of drive {d['seq']} could not be copied "
                      f"from worker {name} into {path} ({str(exc) or type(exc).__name__}); the "
                      f"account holds it: {importer.STATE_CONTAINER}/"
                      + importer.state_name(d["session_id"], f"copylog-drive-{d['seq']:02d}"
                                            ".jsonl"), file=sys.stderr)


def fetch_log(client: Any, address: str, remote: str, local: Path) -> None:
    """A worker's kept copy log ``remote`` into ``local`` a ``PART`` at a time (Dask's
    ``Client.run`` on that worker: memory flat in the log's size), then removed there.  A
    copy cut short is removed here: no partial log in --log-dir."""
    try:
        with open(local, "wb") as out:
            offset = 0
            while True:
                part = client.run(receive_remote.read_log_part, remote, offset, PART,
                                  workers=[address])[address]
                out.write(part)
                offset += len(part)
                if len(part) < PART:
                    break
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    client.run(receive_remote.drop_log, remote, workers=[address])


def _drives(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each drive's outcome (``fetch_logs``'s), by drive number."""
    return sorted((d for r in results.values() for d in r.get("drives", [])),
                  key=lambda d: d["seq"])


async def site_import(args: argparse.Namespace, site: Any, store_target: str, log_dir: Path,
                      renderer: progress.Renderer, stats: progress.Stats
                      ) -> list[dict[str, Any]]:
    """`import --cluster --service`: job ``args.job``'s drives attached to the workers, each
    imported where it is with that worker's own site credential (``site_remote``); the
    client (``site``: its own) moves the drives to Transferring first and the job on after.

    ``--again --drive DRIVE``: those drives first, each imported once more by its worker,
    then the others, as ``import_all`` does.  A drive already Completed stays Completed (its
    outcome stands, as with ``pipeline import --service --again``): the state machine has
    no way back to Transferring, and needs none.  The job must still be at the site
    (``JobImport.connect``: Shipping, Received or Transferring), else refused naming its
    state."""
    where = (args.job, args.subscription, args.resource_group)
    job = await trio.to_thread.run_sync(service_import.JobImport.connect, site, *where)
    wanted = {d["driveId"]: f"drive {d['driveId']} of job {args.job}"
              for d in job.job["properties"]["driveList"] if d.get("state") != "NeverReceived"}
    how = (f"pipeline import --cluster {args.cluster} --service {args.service} --job {args.job} "
           "--site-token-file FILE --to STORAGE --again --drive DRIVE: each such drive by its "
           "volume uuid or its path on its worker")
    done: list[dict[str, Any]] = []
    again = getattr(args, "again", False)
    if again:
        named = await _resolve(args.cluster, args.drive, wanted)
        results = await run_on_workers(args.cluster, named, "import", args.job,
                                       site_remote.import_job_drives, where,
                                       (store_target, True), renderer, stats,
                                       before=job.start, check=False, logs_into=log_dir)
        done += _drives(results)
        _raise_worst(results, how)
        first = {n: getattr(stats, n) for n in _COUNTED}
        wanted = {u: shown for u, shown in wanted.items() if u not in named}
    else:
        first = {}
    if wanted:  # after --again, none of the others may be attached yet
        results = await run_on_workers(args.cluster, wanted, "import", args.job,
                                       site_remote.import_job_drives, where,
                                       (store_target, False), renderer, stats, every=False,
                                       some=not again, before=job.start, check=False,
                                       logs_into=log_dir)
        done += _drives(results)
        for n, v in first.items():
            setattr(stats, n, getattr(stats, n) + v)
        _raise_worst(results, how)
    job = await trio.to_thread.run_sync(service_import.JobImport.connect, site, *where)
    await trio.to_thread.run_sync(job.finish, args.return_tracking)  # every drive in: onwards
    return sorted(done, key=lambda d: d["seq"])


def check_args(args: argparse.Namespace) -> None:
    """What `import --cluster` cannot take, refused before anything is asked of the
    service or the workers."""
    again = getattr(args, "again", False)
    if again and not args.drive:
        raise BadInput("import --cluster --again needs --drive DRIVE (repeat for more): the "
                       "drive to import again, by its volume uuid or its path on its worker; "
                       "the others are imported as before")
    if args.drive and not again:
        raise BadInput("import --cluster takes --drive only with --again (a drive to import "
                       "again): each worker imports the drives attached to it")


async def import_run(args: argparse.Namespace, site: Any = None) -> Outcome:
    """`pipeline import --cluster ADDRESS (--journal-dir J | --service URL --job NAME) --to
    STORAGE`: every drive of the session (or the job's drives attached to the workers), each
    where it is attached; the copy logs gathered into --log-dir.  ``site``: the import
    service's client (``--site-token-file``), with --service.  ``--again --drive DRIVE``:
    those drives imported once more, first (``import_all``)."""
    check_args(args)
    if args.service and site is None:
        raise BadInput("import --cluster --service needs --site-token-file FILE: the client's "
                       "site credential (each worker has its own)")
    again = getattr(args, "again", False)
    store_spec = args.to or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not store_spec:
        raise BadInput("give --to STORAGE: the storage account every worker writes to")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    renderer = progress.make_renderer(args.json)
    store_target, store = target.public_target(store_spec)  # no key in store_target
    if store is not None:  # checked here first when the client holds a credential
        store.check()
    if site is not None:
        stats = progress.Stats()
        renderer.start("import", job=args.job, storage=store_target)
        done = await progress.with_progress(renderer, stats, lambda: site_import(
            args, site, store_target, log_dir, renderer, stats))
        return _report(args, done, renderer, stats, log_dir)
    journals = journal.one_session(args.journal_dir, getattr(args, "session_id", None))
    try:
        totals = [j.live_totals() for j in journals]  # one pass over each journal
        stats = progress.Stats(files_total=sum(f for f, _ in totals),
                               bytes_total=sum(b for _, b in totals))
        renderer.start("import", drives=[j.drive.uuid for j in journals], storage=store_target,
                       files=stats.files_total, bytes=stats.bytes_total)
        done = await progress.with_progress(renderer, stats, lambda: import_all(
            args.cluster, journals, store_target, log_dir, renderer, stats,
            args.drive if again else (),
            f"pipeline import --cluster {args.cluster} --journal-dir {args.journal_dir} --to "
            "STORAGE --again --drive DRIVE: each such drive by its volume uuid or its path "
            "on its worker"))
    finally:
        for j in journals:
            j.close()
    return _report(args, done, renderer, stats, log_dir)


_LOCAL_AGAIN = "(pipeline import --again)"
"""How ``storage.PartsMissing`` says to send parts again on one machine; a worker's message
comes back as text, and the client says it the cluster's way (``_raise_worst``)."""


def _raise_worst(results: dict[str, Any], how: str) -> None:
    """``dask_client.raise_worst``, a worker's line on missing parts naming ``how`` (the
    command that sends them again from here) instead of the one-machine command."""
    for r in results.values():
        if r.get("code") and _LOCAL_AGAIN in r.get("message", ""):
            r["message"] = r["message"].replace(_LOCAL_AGAIN, f"({how})")
    dask_client.raise_worst(results)


def _report(args: argparse.Namespace, done: list[dict[str, Any]],
            renderer: progress.Renderer, stats: progress.Stats, log_dir: Path) -> Outcome:
    """Each drive's line (or --json event), the summary, and the outcome."""
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
                             f"{args.journal_dir or 'JDIR'} --source STAGING --to STORAGE")
    unvouched = [d["path"] for d in done if d["incomplete"]]
    if unvouched:
        raise Incomplete(f"{', '.join(unvouched)}: imported, but cannot vouch that nothing "
                         "is missing; see the copy logs")
    print(f"imported {len(done)} drive(s) on {len({d['worker'] for d in done})} worker(s)",
          file=sys.stderr)
    return Outcome()
