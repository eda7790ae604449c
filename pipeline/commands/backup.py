"""`pipeline backup`: the initial full backup into a staging location (--offline), then
incremental backups straight into the seeded repository in the storage account."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import trio

from pipeline import credentials, progress
from pipeline.backup import archive, offline, ui
from pipeline.backup.backend import DirBackend, StorageBackend
from pipeline.backup.errors import NoRepository
from pipeline.backup.repo import Repository, SnapshotRef, exists, hostname
from pipeline.backup.walk import check_source
from pipeline.commands import _options
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SEED,
    EXIT_NO_SPACE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORAGE,
    EXIT_WARNING,
    BadInput,
    Outcome,
)
from pipeline.jobs import auth, rules
from pipeline.jobs.client import ServiceClient, ServiceUnavailable
from pipeline.storage import check_container_name, open_storage

_OFFLINE_ONLY = ("staging", "job_name", "subscription", "account", "publish_settings", "service",
                 "ca_file")


# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_WARNING, EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE, EXIT_NO_SEED, EXIT_NO_SPACE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backup", help="back up a directory: offline into staging, then online",
        description="With --offline: check every input, then write the initial full backup "
        "into STAGING/repo and record the offline settings (then: pipeline diskprep "
        "s:STAGING).  Without: back up into the seeded repository in the storage account, "
        "sending only the chunks it does not have.")
    p.add_argument("--source", required=True, metavar="DIR", help="the directory to back up")
    p.add_argument("--passphrase-file", required=True, metavar="FILE",
                   help="file holding the backup passphrase (one trailing newline ignored)")
    o = p.add_argument_group("offline backup (the seed)")
    o.add_argument("--offline", action="store_true",
                   help="initial full backup into --staging, to ship on drives")
    o.add_argument("--staging", metavar="S", help="staging location (an existing directory)")
    _options.add_aliased(o, "--job", ("--job-name",), dest="job_name", metavar="NAME",
                         help="the import job's name")
    o.add_argument("--subscription", metavar="ID",
                   help="subscription id (a UUID; default: the one in --publish-settings)")
    _options.add_aliased(o, "--storage-account", ("--account",), dest="account",
                         metavar="NAME", help="storage account name")
    o.add_argument("--publish-settings", metavar="FILE",
                   help="the subscription's publish settings file (stays on this machine): "
                   "the import service is asked first whether the job name is free")
    o.add_argument("--service", metavar="URL",
                   help="the import service (default: the URL in --publish-settings)")
    o.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    n = p.add_argument_group("online backup (after the seed is imported)")
    n.add_argument("--to", metavar="STORAGE",
                   help="storage account: a directory, or an Azure connection string / URL")
    p.add_argument("--container", metavar="C", help="container of the repository (online: "
                   "default the one recorded by the offline backup of --source)")
    p.add_argument("--level", type=int, default=1, metavar="N", help="zstd level (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="compression/encryption threads (default: the number of cores)")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    _options.add_kdf_arguments(p)
    p.set_defaults(func=run)


def _kdf(args: argparse.Namespace) -> Any:
    if args.pbkdf != "argon2id":
        raise BadInput("the backup key file is always protected with argon2id; leave --pbkdf "
                       "out")
    return _options.kdf_from_args(args)


def _opts(args: argparse.Namespace) -> archive.BackupOptions:
    if not 1 <= args.level <= 22:
        raise BadInput(f"--level {args.level} is out of range; zstd levels are 1 to 22")
    threads = args.threads or os.cpu_count() or 2
    if threads < 1:
        raise BadInput("--threads must be at least 1")
    return archive.BackupOptions(level=args.level, threads=threads)


async def run(args: argparse.Namespace) -> Outcome:
    if args.offline:
        return await _offline(args)
    given = [f"--{a.replace('_', '-')}" for a in _OFFLINE_ONLY if getattr(args, a)]
    if given:
        raise BadInput(f"{', '.join(given)} only go with --offline; for the online backup "
                       "give --to STORAGE [--container C]")
    return await _online(args)


# --------------------------------------------------------------------------- offline


def _require(args: argparse.Namespace) -> None:
    needed = ("staging", "job_name", "account", "container",
              *(() if args.publish_settings else ("subscription",)))
    missing = [f"--{a.replace('_', '-')}" for a in needed if not getattr(args, a)]
    if missing:
        raise BadInput(f"--offline needs {', '.join(missing)}")
    if args.to:
        raise BadInput("--to goes with the online backup; --offline writes into --staging")


async def _offline(args: argparse.Namespace) -> Outcome:
    # Every input is checked before anything is written.
    _require(args)
    source = check_source(Path(args.source))
    job = rules.check_job_name(args.job_name)
    given = rules.check_subscription_id(args.subscription) if args.subscription else None
    settings = (auth.read_publish_settings(args.publish_settings, given)
                if args.publish_settings else None)
    subscription = given or (settings.subscription_id if settings else "")
    account = offline.check_account_name(args.account)
    container = check_container_name(args.container)
    staging = offline.check_staging(Path(args.staging), source)
    settings_path = None
    if args.publish_settings:
        offline.check_outside(args.publish_settings, staging, "--publish-settings")
        settings_path = str(Path(args.publish_settings).resolve())
    offline.check_outside(args.passphrase_file, staging, "--passphrase-file")
    secret = credentials.passphrase_file(args.passphrase_file)
    kdf = _kdf(args)
    opts = _opts(args)
    if offline.staging_file(staging).exists():
        rec = offline.read_staging(staging)
        raise BadInput(f"staging location {staging} already holds the offline backup for job "
                       f"{rec.get('job_name')}; prepare the drives with: pipeline diskprep "
                       f"s:{staging} (or give an empty staging location)")
    if settings is not None:  # a taken job name found now, not after the drives ship
        await trio.to_thread.run_sync(_check_job_name, settings, args, job)
    stats = progress.Stats()
    est = await trio.to_thread.run_sync(offline.estimate, source, args.level)
    offline.check_space(staging, est)
    stats.files_total, stats.bytes_total = est.files, est.bytes

    backend = DirBackend(staging / offline.REPOSITORY)
    renderer = progress.make_renderer(args.json)
    renderer.start("backup", mode="offline", source=str(source), staging=str(staging),
                   job_name=job, files=est.files, bytes=est.bytes, estimated=est.needed)

    async def go() -> archive.BackupResult:
        def open_repo() -> Repository:
            if exists(backend):            # an earlier run stopped before its snapshot
                repo = Repository.open(backend, secret.value, args.passphrase_file)
                repo.load_index()
                return repo
            return Repository.init(backend, secret.value, kdf)
        repo = await trio.to_thread.run_sync(open_repo)
        return await archive.run_backup(repo, source, stats, _warner(renderer), opts)

    result = await ui.with_progress(renderer, stats, go)
    backend.close()
    offline.write_staging(staging, job, subscription, account, container)
    cfg = offline.record_config(staging, {
        "publish_settings": settings_path, "container": container, "job_name": job,
        "subscription": subscription, "account": account, "source": str(source)})
    code = EXIT_WARNING if result.warnings else EXIT_OK
    message = (f"snapshot {result.snapshot.hex} in {staging / offline.REPOSITORY}; next: "
               f"pipeline diskprep s:{staging}")
    summary = {**result.summary(), "staging": str(staging), "config": str(cfg)}
    ui.finish(renderer, stats, args.json, summary, code, message,
              progress.format_summary(stats) + [_sent_line(result)])
    return _done(args, result, code, message)


def _check_job_name(settings: auth.PublishSettings, args: argparse.Namespace, job: str) -> None:
    client = ServiceClient(settings, args.service or "", ca_file=args.ca_file)
    try:
        client.check_job_name(job)
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(f"{exc}; it must say whether job name {job} is free (or leave "
                                 "--publish-settings out: diskprep asks it then)") from None


# --------------------------------------------------------------------------- online


def _container_for(source: Path, given: str | None) -> tuple[str, dict[str, Any] | None]:
    entries = offline.entries_for_source(source)
    if given:
        match = next((e for _, e in entries if e.get("container") == given), None)
        return check_container_name(given), match
    containers = {e.get("container") for _, e in entries}
    if not entries:
        raise BadInput(f"give --container: no offline backup of {source} is recorded in "
                       f"{offline.config_path()}")
    if len(containers) > 1:
        raise BadInput(f"{source} has offline backups into containers "
                       f"{', '.join(sorted(map(str, containers)))}; pick one with --container")
    entry = entries[0][1]
    return check_container_name(str(entry.get("container"))), entry


def _missing_seed(backend: StorageBackend, entry: dict[str, Any] | None,
                  partial: str | None = None) -> str:
    job = entry.get("job_name") if entry else None
    wait = (f"wait until import job {job} is Completed (pipeline jobs show --job {job} "
            "--publish-settings FILE)" if job else "wait until its import job is Completed")
    what = (f"the seeded repository in {backend.name} is incomplete ({partial} not imported "
            "yet)" if partial else f"no backup repository in {backend.name} yet")
    return f"{what}: the offline seed must be imported first; {wait}, then run this backup again"


async def _online(args: argparse.Namespace) -> Outcome:
    source = check_source(Path(args.source))
    container, entry = _container_for(source, args.container)
    secret = credentials.passphrase_file(args.passphrase_file)
    opts = _opts(args)
    storage = open_storage(args.to)
    await trio.to_thread.run_sync(storage.check)
    backend = StorageBackend(storage, container)
    stats = progress.Stats()                 # totals: the parent snapshot's, once known
    renderer = progress.make_renderer(args.json)
    renderer.start("backup", mode="online", source=str(source), storage=backend.name)

    async def go() -> archive.BackupResult:
        def open_repo() -> tuple[Repository, SnapshotRef | None]:
            repo = Repository.open(backend, secret.value, args.passphrase_file,
                                   missing=_missing_seed(backend, entry))
            repo.load_index()
            missing, total = repo.missing_packs()
            if missing or not repo.snapshots():
                raise NoRepository(_missing_seed(backend, entry, (
                    f"{missing} of {total} packs" if missing else "the seed's snapshot")))
            return repo, archive.find_parent(repo, str(source), hostname())
        repo, parent = await trio.to_thread.run_sync(open_repo)
        return await archive.run_backup(repo, source, stats, _warner(renderer), opts, parent)

    result = await ui.with_progress(renderer, stats, go)
    code = EXIT_WARNING if result.warnings else EXIT_OK
    message = (f"snapshot {result.snapshot.hex}: sent {result.bytes_sent} bytes "
               f"({result.chunks_new} new chunks) to {backend.name}")
    ui.finish(renderer, stats, args.json, result.summary(), code, message,
              progress.format_summary(stats) + [_sent_line(result)])
    return _done(args, result, code, message)


def _done(args: argparse.Namespace, result: archive.BackupResult, code: int, message: str
          ) -> Outcome:
    """The snapshot id on stdout; the message (already in the `exit` event with --json)."""
    if args.json:
        return Outcome(code)
    print(f"snapshot {result.snapshot.hex}")
    return Outcome(code, message)


def _sent_line(result: archive.BackupResult) -> str:
    return (f"sent     {progress.format_size(result.bytes_sent)}: {result.chunks_new} new "
            f"chunks ({progress.format_size(result.raw_new)} before compression) in "
            f"{result.packs} packs, plus index and snapshot")


def _warner(renderer: progress.Renderer) -> Any:
    def warn(message: str) -> None:
        renderer.event("warning", message=message)
    return warn
