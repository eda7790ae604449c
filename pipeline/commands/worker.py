"""`pipeline worker`: a Dask worker owning this machine's drives (pipeline/cluster)."""

from __future__ import annotations

import argparse

from pipeline.commands import _options
from pipeline.errors import BadInput, Outcome
from pipeline.jobs.client import ServiceClient
from pipeline.volume import drives

EXITS = ()  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker", help="join a Dask cluster as a worker owning this machine's drives",
        description="Start a Dask distributed worker that owns the drives attached to this "
        "machine (declared as a worker resource) and runs prep, verify and import for the "
        "tasks `pipeline prep|verify|import --cluster` give it.  The scheduler is Dask's "
        "own (`dask scheduler`).  Runs until stopped; needs `pip install .[cluster]`.")
    p.add_argument("--scheduler", required=True, metavar="tcp://HOST:PORT",
                   help="the Dask scheduler's address")
    p.add_argument("--name", required=True, metavar="NAME",
                   help="this worker's name: the same after a restart, so that its shard "
                   "and its drives' numbers stay with it")
    p.add_argument("--drive", action="append", default=[], required=True, metavar="PATH",
                   help="a drive attached here: block device or image file (repeat)")
    p.add_argument("--drive-size", metavar="SIZE",
                   help="size of image files that do not exist yet, e.g. 2G")
    _options.add_threads_argument(p, "compression/encryption threads")
    p.add_argument("--storage-key-file", metavar="FILE",
                   help="a file (mode 0600) holding the storage account's connection string "
                   "(with AccountKey) or SAS URL, for `import --cluster`: the client sends "
                   "only the account's address (default: $AZURE_STORAGE_CONNECTION_STRING)")
    p.add_argument("--service", metavar="URL",
                   help="the import service, for `import --cluster --service` (the site): "
                   "this worker takes the job's keys and reports with --site-token-file")
    p.add_argument("--site-token-file", metavar="FILE",
                   help="file holding the site token (pipeline service site-token), with "
                   "--service: it stays on this worker, never in a task")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for an https "
                   "--service")
    p.add_argument("--host", metavar="ADDRESS",
                   help="the address to listen on (default: the one that reaches the "
                   "scheduler)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Outcome:
    from pipeline.cluster import target, worker

    size = drives.parse_size(args.drive_size) if args.drive_size else None
    held = worker.drive_set(args.name, args.drive, size, _options.threads_from_args(args))
    credential = target.read_credential(args.storage_key_file)
    site = None
    if args.service or args.site_token_file:
        if not (args.service and args.site_token_file):
            raise BadInput("give --service URL and --site-token-file FILE together (the "
                           "site's import service and its token)")
        site = ServiceClient.from_site_token_file(args.service, args.site_token_file,
                                                  args.ca_file)
    worker.run(args.scheduler, held, args.host, credential, site)
    return Outcome()
