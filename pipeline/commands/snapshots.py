"""`pipeline snapshots`: a repository's snapshots, oldest first."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline import credentials
from pipeline.backup import locate
from pipeline.backup.backend import Backend
from pipeline.backup.errors import NoRepository
from pipeline.backup.repo import Repository, exists, list_snapshots
from pipeline.errors import EXIT_INTEGRITY, EXIT_NO_SEED, EXIT_STORAGE, Outcome

EXITS = (EXIT_INTEGRITY, EXIT_STORAGE, EXIT_NO_SEED)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "snapshots", help="list a backup repository's snapshots, oldest first",
        description="List the snapshots, oldest first.  Ids and times need no key; with "
        "--passphrase-file each also shows its source, host, file count and bytes.")
    p.add_argument("--from", dest="source", required=True, metavar="STORAGE",
                   help="storage account (with --container), or a repository directory")
    p.add_argument("--container", metavar="C", help="container holding the repository")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help="file holding the backup passphrase (for source, files and bytes)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=run)


def rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    backend = locate.open_backend(args.source, args.container)
    if args.passphrase_file:
        secret = credentials.passphrase_file(args.passphrase_file)
        try:
            repo = Repository.open(backend, secret.value, args.passphrase_file)
        except NoRepository:
            raise NoRepository(_seed_missing(backend)) from None
        refs = repo.snapshots()
        out = []
        for ref, m in zip(refs, repo.manifests(refs), strict=True):
            out.append({"id": ref.hex, "time": m.time, "hostname": m.hostname,
                        "source": m.source, "files": m.files, "dirs": m.dirs,
                        "bytes": m.bytes, "parent": m.parent})
        return out
    if not exists(backend):
        raise NoRepository(_seed_missing(backend))
    refs = list_snapshots(backend)       # no key: what the names tell (id and time)
    return [{"id": r.hex, "time": r.time.isoformat(timespec="microseconds"), "hostname": None,
             "source": None, "files": None, "dirs": None, "bytes": None, "parent": None}
            for r in refs]


def run(args: argparse.Namespace) -> Outcome:
    found = rows(args)
    if args.json:
        print(json.dumps(found, indent=2))
        return Outcome()
    if not found:
        print("no snapshots")
        return Outcome()
    print(f"{'id':<16}  {'time':<32}  {'files':>8}  {'bytes':>14}  source")
    for r in found:
        files = "-" if r["files"] is None else str(r["files"])
        size = "-" if r["bytes"] is None else str(r["bytes"])
        print(f"{r['id'][:16]:<16}  {r['time']:<32}  {files:>8}  {size:>14}  "
              f"{r['source'] or '-'}")
    return Outcome()


def _seed_missing(backend: Backend) -> str:
    """No repository: say the seed's import job state.  Imported here, not at the top:
    the backup command's module (the import service's client) is only needed now."""
    from pipeline.commands.backup import seed_missing
    return seed_missing(backend)
