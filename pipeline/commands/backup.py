"""`pipeline backup`: the initial full backup into a staging location (--offline), then
incremental backups straight into the seeded repository in the storage account."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import credentials, progress
from pipeline.backup import archive, crypto, offline, ui
from pipeline.backup import cache as tree_cache
from pipeline.backup.backend import Backend, DirBackend, StorageBackend
from pipeline.backup.errors import NoRepository
from pipeline.backup.repo import Repository, exists, hostname
from pipeline.backup.walk import WalkAhead, check_source
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
    PipelineError,
    worst,
)
from pipeline.storage import check_container_name, open_storage
from pipeline.storage.local import LocalStorage
from pipeline.volume import luks2

if TYPE_CHECKING:
    from pipeline.backup import schedule
    from pipeline.jobs import auth

_OFFLINE_ONLY = ("staging", "job_name", "subscription", "account", "publish_settings", "service",
                 "ca_file")
JOB_STATE_TIMEOUT = 5.0   # seconds per call: an unreachable import service must not hang us
# schedule.DEFAULT_UNIT_DIR (a test holds them equal): `backup schedule`'s module is imported
# only when it runs, not by every backup (its import was 2 ms of each one's start).
UNIT_DIR = "/etc/systemd/system"


# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_WARNING, EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE, EXIT_NO_SEED, EXIT_NO_SPACE)


USAGE = ("pipeline backup --source DIR --passphrase-file FILE [--offline ... | --to STORAGE] "
         "[options]\n       pipeline backup schedule --source DIR --to STORAGE "
         "--passphrase-file FILE --every WHEN [options]\n       pipeline backup schedule "
         "--list | --remove NAME [--unit-dir DIR]")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backup", help="back up a directory: offline into staging, then online",
        usage=USAGE,
        description="With --offline: check every input, then write the initial full backup "
        "into STAGING/repo and record the offline settings (then: pipeline diskprep "
        "s:STAGING).  Without: back up into the seeded repository in the storage account, "
        "sending only the chunks it does not have; while the seed is not imported yet, it "
        "says the import job's state.  `pipeline backup schedule` runs the online backup "
        "on a systemd timer.")
    # Not required here, so that `backup schedule ...` parses; run() asks for them.
    p.add_argument("--source", metavar="DIR", help="the directory to back up (required)")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help="file holding the backup passphrase (one trailing newline ignored; "
                   "required)")
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
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the local cache of the parent's tree "
                   "($XDG_CACHE_HOME/pipeline/backup, default ~/.cache/pipeline/backup)")
    p.add_argument("--container", metavar="C", help="container of the repository (online: "
                   "default the one recorded by the offline backup of --source)")
    p.add_argument("--level", type=int, default=1, metavar="N", help="zstd level (default 1)")
    _options.add_threads_argument(p, "compression/encryption threads")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    _add_kdf_arguments(p)
    p.set_defaults(func=run)
    _add_schedule(p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                   action=_OptionalCommand))


class _AnyWord(Mapping[str, argparse.ArgumentParser]):
    """The subcommands, as a view that lets any word through argparse's choice check, so
    that ``_OptionalCommand`` decides what a stray word means."""

    def __init__(self, parsers: dict[str, argparse.ArgumentParser]) -> None:
        self.parsers = parsers

    def __getitem__(self, key: str) -> argparse.ArgumentParser:
        return self.parsers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parsers)

    def __len__(self) -> int:
        return len(self.parsers)

    def __contains__(self, key: object) -> bool:
        return True


class _OptionalCommand(argparse._SubParsersAction):
    """``backup``'s one subcommand, ``schedule``, is optional: a stray word is an
    unrecognized argument (so a mistyped option next to it still gets its suggestion,
    as in ``backup --sorce x``), not an invalid choice of subcommand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = _AnyWord(self._name_parser_map)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values[0] not in self._name_parser_map:
            import difflib  # only for a stray word

            near = difflib.get_close_matches(values[0], list(self._name_parser_map), n=1)
            raise argparse.ArgumentError(None, f"unrecognized argument: {values[0]}" + (
                f" (did you mean {near[0]}?)" if near else ""))
        super().__call__(parser, namespace, values, option_string)


def _add_schedule(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "schedule", help="run the online backup on a systemd timer: write, list or remove",
        description="Write a systemd .service and .timer pair (pipeline-backup-NAME) that runs "
        "this online backup with this Python: every path absolute, the passphrase left in its "
        "file (units are world-readable and hold no secret).  Then enable it: systemctl "
        "daemon-reload && systemctl enable --now pipeline-backup-NAME.timer.  --list shows the "
        "schedules in the unit directory; --remove NAME removes a pair.")
    s.add_argument("--source", metavar="DIR", help="the directory to back up")
    s.add_argument("--to", metavar="STORAGE", help="storage account: a directory, or an Azure "
                   "account URL (a key or SAS goes in --env-file, never in a unit)")
    s.add_argument("--env-file", metavar="FILE", help="root-only file with "
                   "AZURE_STORAGE_CONNECTION_STRING=... (instead of --to): the unit's "
                   "EnvironmentFile")
    s.add_argument("--container", metavar="C", help="container of the repository (default "
                   "the one recorded by the offline backup of --source)")
    s.add_argument("--passphrase-file", metavar="FILE",
                   help="file holding the backup passphrase (the unit names the file)")
    s.add_argument("--every", metavar="WHEN", help="hourly, daily, weekly, or a systemd "
                   "OnCalendar expression such as 'Mon..Fri 02:30'")
    s.add_argument("--name", metavar="NAME", help="schedule name: units pipeline-backup-NAME "
                   "(default: the container)")
    s.add_argument("--unit-dir", metavar="DIR", default=UNIT_DIR,
                   help=f"where the units go (default {UNIT_DIR}; "
                   "~/.config/systemd/user for a user's own timers)")
    s.add_argument("--list", action="store_true",
                   help="list the schedules in --unit-dir: name, source, container, when, next")
    s.add_argument("--remove", metavar="NAME", help="remove schedule NAME's units")
    s.set_defaults(func=run_schedule)


def _add_kdf_arguments(p: argparse.ArgumentParser) -> None:
    """cryptsetup's names; unlike its fixed defaults, the cost is calibrated when none is
    given (``crypto.calibrate_kdf``: the key is derived at every backup, not at boot)."""
    g = p.add_argument_group(
        "key file KDF (argon2id; default: calibrated at --offline to ~0.5 s, as restic's "
        "scrypt, never below RFC 9106's t=3, 64 MiB; recorded in the key file)")
    g.add_argument("--pbkdf", choices=("argon2id",), default="argon2id",
                   help="key derivation (argon2id only)")
    g.add_argument("--pbkdf-memory", type=int, metavar="KIB",
                   help="argon2 memory cost in KiB (default 65536 when another is given)")
    g.add_argument("--pbkdf-time", type=int, metavar="N",
                   help="argon2 passes (default 3 when another is given)")
    g.add_argument("--pbkdf-parallel", type=int, metavar="N",
                   help="argon2 lanes (default 4)")


def _kdf(args: argparse.Namespace) -> luks2.KdfParams | None:
    """The cost given, or None: ``Repository.init`` calibrates it."""
    given = (args.pbkdf_memory, args.pbkdf_time, args.pbkdf_parallel)
    if all(v is None for v in given):
        return None
    floor = crypto.MIN_KDF
    try:
        return luks2.KdfParams(
            type="argon2id", time=floor.time if args.pbkdf_time is None else args.pbkdf_time,
            memory=floor.memory if args.pbkdf_memory is None else args.pbkdf_memory,
            cpus=floor.cpus if args.pbkdf_parallel is None else args.pbkdf_parallel)
    except ValueError as exc:
        raise BadInput(f"key file KDF settings: {exc}") from None


def _opts(args: argparse.Namespace) -> archive.BackupOptions:
    if not 1 <= args.level <= 22:
        raise BadInput(f"--level {args.level} is out of range; zstd levels are 1 to 22")
    threads = _options.threads_from_args(args)
    return archive.BackupOptions(level=args.level, threads=threads)


def run(args: argparse.Namespace) -> Outcome | Callable[[], Awaitable[Outcome]]:
    """Plain, not async: the online backup with nothing to read finishes without Trio
    (``archive.begin``); otherwise cli runs the async rest returned here."""
    missing = [f for f, v in (("--source DIR", args.source),
                              ("--passphrase-file FILE", args.passphrase_file)) if not v]
    if missing:
        raise BadInput(f"backup needs {' and '.join(missing)}")
    if args.offline:
        async def offline() -> Outcome:
            return await _offline(args)
        return offline
    given = [f"--{a.replace('_', '-')}" for a in _OFFLINE_ONLY if getattr(args, a)]
    if given:
        raise BadInput(f"{', '.join(given)} only go with --offline; for the online backup "
                       "give --to STORAGE [--container C]")
    return _online(args)


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
    # Every input is checked before anything is written.  The import service's modules are
    # imported where they are used: the online backup, every hour, needs them only when the
    # seed is missing, and their import is a tenth of its start-up.
    import trio

    from pipeline.jobs import rules

    _require(args)
    source = check_source(Path(args.source))
    job = rules.check_job_name(args.job_name)
    given = rules.check_subscription_id(args.subscription) if args.subscription else None
    settings = None
    if args.publish_settings:       # its certificate modules: only when given
        from pipeline.jobs import auth

        settings = auth.read_publish_settings(args.publish_settings, given)
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
    est = await trio.to_thread.run_sync(offline.estimate, source, args.level, offline.SAMPLE,
                                        offline.free_bytes(staging))
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
        cache = None if args.no_cache else tree_cache.for_repository(   # the online
            repo.config.repo_id, repo.crypto.keys.id_key)             # backups' parent
        return await archive.run_backup(repo, source, stats, _warner(renderer), opts,
                                        cache=cache)

    result = await progress.with_progress(renderer, stats, go)
    backend.close()
    offline.write_staging(staging, job, subscription, account, container)
    cfg = offline.record_config(staging, {
        "publish_settings": settings_path, "container": container, "job_name": job,
        "subscription": subscription, "account": account, "source": str(source),
        # where to ask for the job's state later (online backup, restore): only when given
        **({"service": args.service} if args.service else {}),
        **({"ca_file": str(Path(args.ca_file).resolve())} if args.ca_file else {})})
    code = EXIT_WARNING if result.warnings else EXIT_OK
    message = (f"snapshot {result.snapshot.hex} in {staging / offline.REPOSITORY}; next: "
               f"pipeline diskprep s:{staging}")
    summary = {**result.summary(), "staging": str(staging), "config": str(cfg)}
    ui.finish(renderer, stats, args.json, summary, code, message,
              progress.format_summary(stats) + [_sent_line(result)])
    return _done(args, result, code, message)


def _check_job_name(settings: auth.PublishSettings, args: argparse.Namespace, job: str) -> None:
    from pipeline.jobs.client import ServiceClient, ServiceUnavailable

    client = ServiceClient(settings, args.service or "", ca_file=args.ca_file)
    try:
        client.check_job_name(job)
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(f"{exc}; it must say whether job name {job} is free (or leave "
                                 "--publish-settings out: diskprep asks it then)",
                                 exc.reason) from None


# --------------------------------------------------------------------------- online


def _container_for(source: Path, given: str | None
                   ) -> tuple[str, tuple[str, dict[str, Any]] | None]:
    """The container, and the offline backup recorded for it (staging, entry) if any."""
    entries = offline.entries_for_source(source)
    if given:
        match = next(((s, e) for s, e in entries if e.get("container") == given), None)
        return check_container_name(given), match
    containers = {e.get("container") for _, e in entries}
    if not entries:
        raise BadInput(f"give --container: no offline backup of {source} is recorded in "
                       f"{offline.config_path()}")
    if len(containers) > 1:
        raise BadInput(f"{source} has offline backups into containers "
                       f"{', '.join(sorted(map(str, containers)))}; pick one with --container")
    staging, entry = entries[0]
    return check_container_name(str(entry.get("container"))), (staging, entry)


def _missing_seed(backend: StorageBackend, recorded: tuple[str, dict[str, Any]] | None,
                  partial: str | None = None) -> str:
    """Why the online backup cannot start yet: the import job's state when the service
    recorded for the seed says it, else the generic wait (and why the service was not
    asked)."""
    what = (f"the seeded repository in {backend.name} is incomplete ({partial} not imported "
            "yet)" if partial else f"no backup repository in {backend.name} yet")
    line, note = ask_job(*recorded, backend, partial) if recorded else ("", "")
    if line:
        return f"{what}: {line}"
    job = recorded[1].get("job_name") if recorded else None
    wait = (f"wait until import job {job} is Completed (pipeline jobs show --job {job} "
            "--publish-settings FILE)" if job else "wait until its import job is Completed")
    return (f"{what}: the offline seed must be imported first; {wait}, then run this backup "
            f"again{note}")


def seed_missing(backend: Backend) -> str:
    """`restore`/`snapshots` against an account with no repository: the message, with the
    state of every import job the offline backups on this machine recorded for the
    container (several seeds may go into one), and why a service could not be asked."""
    lines: list[str] = []
    notes: list[str] = []
    if isinstance(backend, StorageBackend):
        for staging, entry in offline.entries_for_container(backend.container):
            if isinstance(entry.get("publish_settings"), str):
                line, note = ask_job(staging, entry, backend)
                lines += [line] if line else []
                notes += [note] if note and note not in notes else []
    from pipeline.backup import locate  # only when there is no repository

    return locate.missing_message(backend, "; ".join(lines)) + "".join(notes)


def ask_job(staging: str, entry: dict[str, Any], backend: StorageBackend,
            partial: str | None = None) -> tuple[str, str]:
    """(the job's state as a sentence, '') or ('', why the service could not be asked);
    ('', '') when no job or publish settings are recorded.  The answer is hostile:
    only a known state and a percentage in range are believed."""
    from pipeline.jobs.client import ServiceClient, ServiceError, ServiceUnavailable

    job, settings = entry.get("job_name"), entry.get("publish_settings")
    if not isinstance(job, str) or not isinstance(settings, str):
        return "", ""
    service = entry.get("service") if isinstance(entry.get("service"), str) else None
    ca_file = entry.get("ca_file") if isinstance(entry.get("ca_file"), str) else None
    try:
        client = ServiceClient.from_file(settings, url=service, ca_file=ca_file,
                                         timeout=JOB_STATE_TIMEOUT)
    except PipelineError as exc:
        return "", f" (the import service could not be asked: {exc})"
    try:
        answer = client.get(job)
    except ServiceError as exc:
        if exc.status == 404:
            return (f"import job {job} is not on the import service at {client.url}: create it "
                    f"and ship the drives (pipeline diskprep s:{staging}), and run this again once "
                    "it is Completed"), ""
        return "", f" (the import service at {client.url} could not be asked: {exc})"
    except ServiceUnavailable as exc:     # unreachable, or no answer in time
        return "", f" (the import service at {client.url} could not be asked: {exc.reason})"
    except PipelineError as exc:          # the token refused
        return "", f" (the import service at {client.url} could not be asked: {exc})"
    state, percent = _job_state(answer)
    return offline.job_state_line(job, state, backend.container, backend.storage.name, settings,
                                  percent, partial), ""


_PRINTABLE = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,39}\Z")


def _job_state(answer: Any) -> tuple[str, int | None]:
    """(state, percent) out of a job resource from the service, believed only when sane."""
    props = answer.get("properties") if isinstance(answer, dict) else None
    props = props if isinstance(props, dict) else {}
    state = props.get("state")
    if not isinstance(state, str) or not _PRINTABLE.match(state):
        state = "unknown"
    percent = props.get("percentComplete")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        percent = None
    return state, percent


def _online(args: argparse.Namespace) -> Outcome | Callable[[], Awaitable[Outcome]]:
    """Open the repository and walk inline (``archive.begin``); the Outcome when nothing
    needed reading, else the async rest: the pipeline under Trio, from where it stopped."""
    source = check_source(Path(args.source))
    ahead = WalkAhead(source)   # the walk's disk waits overlap the repository's opening
    try:
        container, recorded = _container_for(source, args.container)
        secret = credentials.passphrase_file(args.passphrase_file)
        opts = _opts(args)
        storage = open_storage(args.to)
        storage.check()
        backend = StorageBackend(storage, container)
        stats = progress.Stats()                 # totals: the parent snapshot's, once known
        renderer = progress.make_renderer(args.json)
        renderer.start("backup", mode="online", source=str(source), storage=backend.name)
    except BaseException:
        ahead.close()
        raise
    try:
        try:
            repo = Repository.open(backend, secret.value, args.passphrase_file)
        except NoRepository:   # only now is the import service asked
            raise NoRepository(_missing_seed(backend, recorded)) from None
        repo.load_index()
        missing, total = repo.missing_packs()
        refs = repo.snapshots()
        if missing or not refs:
            raise NoRepository(_missing_seed(backend, recorded, (
                f"{missing} of {total} packs" if missing else "the seed's snapshot")))
        parent = archive.find_parent(repo, str(source), hostname(), refs)
        cache = None if args.no_cache else tree_cache.for_repository(
            repo.config.repo_id, repo.crypto.keys.id_key)
        begun = archive.begin(repo, source, stats, _warner(renderer), parent, cache=cache,
                              ahead=ahead)
        result = archive.finish_inline(repo, begun) if begun.done else None
    except BaseException as exc:     # as progress.with_progress: the exit event, no bar left
        ahead.close()
        first = worst(exc)
        if isinstance(first, PipelineError):
            renderer.event("exit", code=first.exit_code, message=str(first))
        renderer.close()
        raise
    if result is not None:
        return _online_done(args, backend, renderer, stats, result)

    async def rest() -> Outcome:
        async def go() -> archive.BackupResult:
            return await archive.run_backup(repo, source, stats, _warner(renderer), opts,
                                            begun=begun)
        result = await progress.with_progress(renderer, stats, go)
        return _online_done(args, backend, renderer, stats, result)
    return rest


def _online_done(args: argparse.Namespace, backend: StorageBackend,
                 renderer: progress.Renderer, stats: progress.Stats,
                 result: archive.BackupResult) -> Outcome:
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


# --------------------------------------------------------------------------- schedule


def run_schedule(args: argparse.Namespace) -> Outcome:
    from pipeline.backup import schedule

    unit_dir = Path(os.path.abspath(args.unit_dir))
    creating = ("source", "to", "env_file", "container", "passphrase_file", "every", "name")
    given = [f"--{a.replace('_', '-')}" for a in creating if getattr(args, a)]
    if args.list or args.remove:
        if args.list and args.remove:
            raise BadInput("give --list or --remove NAME, not both")
        if given:
            raise BadInput(f"{', '.join(given)} go with writing a schedule, not with "
                           f"{'--list' if args.list else '--remove'}")
        return _schedule_list(unit_dir) if args.list else _schedule_remove(unit_dir,
                                                                           args.remove)
    spec = _schedule_spec(args)
    if not unit_dir.is_dir():
        raise BadInput(f"--unit-dir {unit_dir} is not a directory; create it or give another")
    service, timer = schedule.write(unit_dir, spec)
    print(service)
    print(timer)
    user = "--user " if ".config/systemd/user" in str(unit_dir) else ""
    return Outcome(EXIT_OK, f"schedule {spec.name} written ({spec.every}); enable it: "
                   f"systemctl {user}daemon-reload && systemctl {user}enable --now {timer.name}")


def _schedule_spec(args: argparse.Namespace) -> schedule.Schedule:
    """Every input checked, every path absolute: what the unit will run."""
    from pipeline.backup import schedule

    needed = [f for f, v in (("--source DIR", args.source), ("--every WHEN", args.every),
                             ("--passphrase-file FILE", args.passphrase_file),
                             ("--to STORAGE or --env-file FILE", args.to or args.env_file))
              if not v]
    if needed:
        raise BadInput(f"backup schedule needs {', '.join(needed)} (or --list, --remove NAME)")
    if args.to and args.env_file:
        raise BadInput("give --to STORAGE or --env-file FILE, not both")
    source = check_source(Path(args.source))
    container, _ = _container_for(source, args.container)
    name = schedule.check_name(args.name or container)
    every = schedule.check_calendar(args.every)
    credentials.passphrase_file(args.passphrase_file)      # exists and holds a passphrase
    passphrase = str(Path(args.passphrase_file).resolve())
    to = env_file = None
    if args.to:
        schedule.check_secret_free(args.to)
        storage = open_storage(args.to)    # the unit runs in /: a directory made absolute
        to = (str(Path(storage.root).resolve()) if isinstance(storage, LocalStorage)
              else args.to)
    else:
        path = Path(args.env_file).resolve()
        if not path.is_file():
            raise BadInput(f"--env-file {path} is not a file; write "
                           "AZURE_STORAGE_CONNECTION_STRING=... into it (chmod 600)")
        credentials.warn_if_exposed(path, "--env-file")
        env_file = str(path)
    package = Path(schedule.__file__).resolve().parents[2]   # this same pipeline
    return schedule.Schedule(
        name=name, source=str(source), container=container, passphrase_file=passphrase,
        every=every, to=to, env_file=env_file, config_dir=str(offline.config_path().parent),
        python=os.path.abspath(sys.executable), pythonpath=str(package))


def _schedule_list(unit_dir: Path) -> Outcome:
    from pipeline.backup import schedule

    found = schedule.listed(unit_dir)
    if not found:
        print(f"no schedules in {unit_dir}")
        return Outcome()
    print(f"{'name':<20}  {'every':<20}  {'next':<28}  {'container':<16}  source")
    for s in found:
        print(f"{s.name:<20}  {s.every or '?':<20}  {s.next or '-':<28}  "
              f"{s.container or '?':<16}  {s.source or '?'}")
    return Outcome()


def _schedule_remove(unit_dir: Path, name: str) -> Outcome:
    from pipeline.backup import schedule

    steps = schedule.remove(unit_dir, schedule.check_name(name))
    then = f"; now run: {' && '.join(steps)}" if steps else " (timer stopped, systemd reloaded)"
    return Outcome(EXIT_OK, f"schedule {name} removed from {unit_dir}{then}")
