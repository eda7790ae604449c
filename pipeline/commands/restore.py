"""`pipeline restore`: a snapshot back into a directory (the latest unless --snapshot)."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from pipeline import credentials, progress
from pipeline.backup import encoding as fmt
from pipeline.backup import locate, ui
from pipeline.backup.backend import Backend
from pipeline.backup.errors import NoRepository, PartialRestore
from pipeline.backup.repo import Repository, SnapshotRef, find_snapshot
from pipeline.backup.restore import check_target, run_restore
from pipeline.commands import _options
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SEED,
    EXIT_NO_SPACE,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_WARNING,
    Outcome,
)

# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_WARNING, EXIT_INTEGRITY, EXIT_STORAGE, EXIT_NO_SEED, EXIT_NO_SPACE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore", help="restore a backup snapshot into a directory",
        description="Restore a snapshot (the latest unless --snapshot) into --target, which "
        "must be absent or empty.  Each file appears under its name only once it is complete "
        "and checked.  A damaged or missing chunk fails only the files holding it: every "
        "other file is restored, those are named, and the exit code is 4.  If a restore "
        "stops (full disk, Ctrl-C, kill), --target stays marked unfinished and the same "
        "command run again writes it afresh.")
    p.add_argument("--from", dest="source", required=True, metavar="STORAGE",
                   help="storage account (with --container), or a repository directory "
                   "such as STAGING/repo")
    p.add_argument("--container", metavar="C", help="container holding the repository")
    p.add_argument("--snapshot", metavar="ID", help="snapshot id or 8+ leading hex digits "
                   "(default: the latest)")
    p.add_argument("--target", required=True, metavar="DIR", help="new or empty directory")
    p.add_argument("--passphrase-file", required=True, metavar="FILE",
                   help="file holding the backup passphrase")
    _options.add_threads_argument(p, "fetch/decrypt threads")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> Outcome:
    threads = _options.threads_from_args(args)
    target = check_target(Path(args.target))
    secret = credentials.passphrase_file(args.passphrase_file)
    backend = await trio.to_thread.run_sync(locate.open_backend, args.source, args.container)

    def open_repo() -> tuple[Repository, SnapshotRef]:
        try:
            repo = Repository.open(backend, secret.value, args.passphrase_file)
        except NoRepository:
            raise NoRepository(_seed_missing(backend)) from None
        ref = find_snapshot(repo.snapshots(), args.snapshot)
        repo.load_index(skip_damaged=True)   # what the other index files name is restored
        return repo, ref

    repo, ref = await trio.to_thread.run_sync(open_repo)
    stats = progress.Stats()
    renderer = progress.make_renderer(args.json)
    renderer.start("restore", snapshot=ref.hex, storage=backend.name, target=str(target))
    warnings: list[str] = []

    def warn(message: str) -> None:       # what could not be set: named, then exit 1
        warnings.append(message)
        renderer.event("warning", message=message)

    async def go() -> fmt.Manifest:
        try:
            return await run_restore(repo, ref, target, stats, threads, warn)
        except PartialRestore as exc:     # --json: each file, then the exit event
            if not args.json:
                raise
            for f in exc.failed:
                renderer.event("error", message=f.line(), path=f.path, chunk=f.chunk,
                               chunks=f.chunks, reason=f.reason)
            renderer.event("summary", **stats.statistics(), snapshot=ref.hex,
                           target=str(target), restored=exc.restored,
                           failed=[f.path for f in exc.failed])
            raise

    manifest = await progress.with_progress(renderer, stats, go)  # cli names the files not restored
    message = f"restored snapshot {ref.hex} ({manifest.files} files) into {target}"
    summary = {"snapshot": ref.hex, "time": manifest.time, "source": manifest.source,
               "files": manifest.files, "bytes": manifest.bytes, "target": str(target)}
    lines = [f"restored {progress.format_size(stats.bytes_read)} in {stats.files_done} files "
             f"({progress.format_size(stats.zero_bytes)} of it zeros, left as holes), "
             f"{progress.format_duration(stats.elapsed())} wall, "
             f"{progress.format_rate(stats.rate())}"]
    code = EXIT_WARNING if warnings else EXIT_OK
    ui.finish(renderer, stats, args.json, {**summary, "warnings": len(warnings)}, code,
              message, lines)
    return Outcome(code, "" if args.json else message)  # --json: in the `exit` event


def _seed_missing(backend: Backend) -> str:
    """No repository: say the seed's import job state.  Imported here, not at the top:
    the backup command's module (the import service's client) is only needed now."""
    from pipeline.commands.backup import seed_missing
    return seed_missing(backend)
