"""`pipeline service`: run the import service; `pipeline service subscription
add|list|remove|reissue`; `pipeline service site-token`: the receiving site's credential.

The service records the address it actually serves (the bound port, http without TLS)
in ``DATA/service.json`` when it starts, so `subscription add` writes that address
into the publish settings it makes unless --url says otherwise."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import socket
import ssl
import sys
from functools import partial
from pathlib import Path

import trio

from pipeline import atomic, credentials
from pipeline.errors import EXIT_NO_SPACE, EXIT_REFUSED, BadInput, Outcome, Refused, worst
from pipeline.jobs import auth, rules, sitetoken
from pipeline.jobs.catalog import Catalog, Subscription

SERVICE_FILE = "service.json"
EXITS = (EXIT_NO_SPACE, EXIT_REFUSED)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "service", help="run the import service: job catalog and Azure-compatible REST API",
        description="Run the import service: the job catalog (SQLite in --data) behind a REST "
        "API compatible with Azure's Microsoft.ImportExport provider (api-version 2016-11-01). "
        "Binds 127.0.0.1 unless --host says otherwise; Ctrl-C stops it cleanly.  Create a "
        "customer's credentials with `pipeline service subscription add`.")
    parser.add_argument("--data", metavar="DIR",
                        help="the service's data directory (catalog, key file, regions.json); "
                        "created on first start")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8443,
                        help="TCP port (default 8443; 0 picks a free one)")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.set_defaults(func=run_serve)
    ssub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    s = ssub.add_parser("subscription", help="create, list, remove or reissue subscriptions",
                        description="Subscriptions: the customer accounts jobs belong to.")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "add", help="create a subscription and write its publish settings file",
        description="Create a subscription and write its publish settings file (Azure's "
        "PublishData XML, mode 0600).  The file holds the subscription's private key and is "
        "the only copy: whoever holds it can create and read that subscription's jobs, "
        "recovery passwords included.  The catalog keeps only the public key.")
    p.add_argument("name", metavar="NAME", help="1-64 letters, digits, '.', '_' or '-'")
    _data_out_url(p)
    p.set_defaults(func=run_subscription_add)
    p = actions.add_parser("list", help="list subscriptions",
                           description="List subscriptions: id, creation time, name.")
    p.add_argument("--data", required=True, metavar="DIR", help="the service's data directory")
    p.add_argument("--json", action="store_true", help="one JSON object per subscription")
    p.set_defaults(func=run_subscription_list)
    p = actions.add_parser(
        "remove", help="remove a subscription: its publish settings stop working",
        description="Remove a subscription (by name or id) with its jobs: tokens from its "
        "publish settings file are refused from then on.  Refused while one of its jobs is "
        "under way (not Completed, Closed or Canceled) unless --force.  Asks first, unless "
        "--yes.")
    p.add_argument("subscription", metavar="NAME|ID", help="the subscription's name or id")
    p.add_argument("--data", required=True, metavar="DIR", help="the service's data directory")
    p.add_argument("--yes", action="store_true", help="remove without asking")
    p.add_argument("--force", action="store_true",
                   help="remove even while jobs are under way (their drives may be in transit)")
    p.set_defaults(func=run_subscription_remove)
    p = actions.add_parser(
        "reissue", help="a new key for a subscription: a new publish settings file",
        description="Give a subscription a new key pair and write a new publish settings "
        "file (mode 0600); the old file stops working (a lost or leaked file).  Its jobs stay.")
    p.add_argument("subscription", metavar="NAME|ID", help="the subscription's name or id")
    _data_out_url(p)
    p.set_defaults(func=run_subscription_reissue)

    p = ssub.add_parser(
        "site-token", help="print a token for the receiving site (pipeline site, import, portal)",
        description="Print a site token: the receiving site's credential.  With it (in a "
        "file: --site-token-file) `pipeline site` and `pipeline import --service` take the "
        "site's steps of every subscription's jobs (receive, import, return, close), and the "
        "portal's site view (/portal/signin) marks drives and follows the import.  The "
        "recovery passwords it gets are the drives' keys for the import.  The token "
        "is signed (HMAC-SHA256) with DATA/site.key, mode 0600, created on first use; anyone "
        "who can read that file can make site tokens.  No restart is needed.  --rotate "
        "replaces the key: every earlier site token, and every site session signed in with "
        "one, stops working.")
    p.add_argument("--data", required=True, metavar="DIR", help="the service's data directory")
    p.add_argument("--hours", type=float, default=sitetoken.DEFAULT_SITE_HOURS,
                   help=f"how long the token is valid (default {sitetoken.DEFAULT_SITE_HOURS}, "
                   f"at most {sitetoken.MAX_SITE_HOURS})")
    p.add_argument("--rotate", action="store_true",
                   help="new site key first: revokes every site token given out before")
    p.add_argument("--out", metavar="FILE",
                   help="write the token to this new file (mode 0600) instead of stdout: "
                   "the --site-token-file of the site's commands")
    p.set_defaults(func=run_site_token)


def _data_out_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the service's data directory")
    p.add_argument("--out", metavar="FILE",
                   help="publish settings file to write (default NAME.publishsettings)")
    p.add_argument("--url", default=None,
                   help="the service URL clients use (default: the address the service on "
                   f"--data recorded when it started, else {auth.DEFAULT_URL})")


def _check_tls(cert: str | None, key: str | None) -> None:
    if (cert is None) != (key is None):
        raise BadInput("give both --tls-cert and --tls-key, or neither (plain HTTP)")
    if cert is None or key is None:
        return
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise BadInput(f"{flag} {path} does not exist; check the path")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise BadInput(f"--tls-cert {cert} / --tls-key {key} cannot be used ({exc}); give a "
                       "PEM certificate and its private key") from None


async def run_serve(args: argparse.Namespace) -> Outcome:
    if not args.data:
        raise BadInput("--data DIR is required: where the service keeps its catalog")
    if not 0 <= args.port <= 65535:
        raise BadInput(f"--port {args.port} is not a TCP port (0-65535)")
    _check_tls(args.tls_cert, args.tls_key)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    catalog = Catalog.open(args.data)
    from pipeline.jobs import service  # starlette + hypercorn: only when serving

    config = service.hypercorn_config(args.host, args.port, args.tls_cert, args.tls_key)
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                print(f"pipeline service: {signal.Signals(signum).name}, stopping",
                      file=sys.stderr, flush=True)
                stop.set()
                return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            binds = await nursery.start(partial(service.serve, catalog, config,
                                                shutdown_trigger=stop.wait))
            record_url(args.data, binds[0])
            print(f"pipeline service: listening on {' '.join(binds)} (data {args.data})",
                  file=sys.stderr, flush=True)
            await stop.wait()
    except* OSError as group:
        exc = worst(group)  # however deeply grouped, ranked as the cli ranks it
        raise BadInput(f"cannot listen on {args.host}:{args.port}: "
                       f"{getattr(exc, 'strerror', None) or exc}; pick another --port or "
                       "--host") from None
    finally:
        catalog.close()
    print("pipeline service: stopped", file=sys.stderr, flush=True)
    return Outcome()


def advertised(bind: str) -> str:
    """The URL clients use for a bound address: a wildcard host becomes this host's name."""
    scheme, _, rest = bind.partition("://")
    host, _, port = rest.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"{scheme}://{host}:{port}"


def record_url(data: str, bind: str) -> None:
    """DATA/service.json: the address this service serves, for `subscription add`."""
    path = Path(data) / SERVICE_FILE
    text = json.dumps({"url": advertised(bind)}) + "\n"
    atomic.replace_file(path.with_name(f".{SERVICE_FILE}.{secrets.token_hex(4)}"), path,
                        text.encode(), 0o644)


def recorded_url(data: str) -> str:
    """The URL the service on ``data`` recorded, else the default (saying so on stderr)."""
    path = Path(data) / SERVICE_FILE
    try:
        url = json.loads(path.read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        url = None
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return url
    print(f"pipeline service: note: no service has started on {data} yet ({path} missing); "
          f"the publish settings say {auth.DEFAULT_URL}: give --url if clients reach it "
          "elsewhere", file=sys.stderr)
    return auth.DEFAULT_URL


def _url_and_out(args: argparse.Namespace, name: str) -> tuple[str, Path]:
    url = args.url or recorded_url(args.data)
    if not url.startswith(("http://", "https://")):
        raise BadInput(f"--url {url} must start with https:// (or http://)")
    out = Path(args.out or f"{name}.publishsettings")
    if out.exists():
        raise BadInput(f"{out} already exists; give another --out (it may hold another "
                       "subscription's key)")
    return url, out


def run_subscription_add(args: argparse.Namespace) -> Outcome:
    name = rules.check_subscription_name(args.name)
    url, out = _url_and_out(args, name)
    with Catalog.open(args.data) as catalog:
        sub = auth.add_subscription(catalog, name, out, url)
    print(f"subscription {name}: {sub.id}")
    print(f"publish settings: {out} for {url} (mode 0600; holds the subscription's key: give "
          "it only to its owner)", file=sys.stderr)
    return Outcome()


def run_subscription_list(args: argparse.Namespace) -> Outcome:
    with Catalog.open(args.data) as catalog:
        for sub in catalog.subscriptions():
            if args.json:
                print(json.dumps({"id": sub.id, "name": sub.name, "created": sub.created}))
            else:
                print(f"{sub.id}  {sub.created}  {sub.name}")
    return Outcome()


def _subscription(catalog: Catalog, given: str) -> Subscription:
    for sub in catalog.subscriptions():
        if given.lower() in (sub.id.lower(), sub.name.lower()):
            return sub
    raise BadInput(f"no subscription {given!r} on this service; see pipeline service "
                   "subscription list --data DIR")


def run_subscription_remove(args: argparse.Namespace) -> Outcome:
    with Catalog.open(args.data) as catalog:
        sub = _subscription(catalog, args.subscription)
        if not args.yes:
            if not sys.stdin.isatty():
                raise Refused(f"removing subscription {sub.name} ({sub.id}) deletes its jobs "
                              "and makes its publish settings useless; confirm with --yes")
            answer = input(f"Remove subscription {sub.name} ({sub.id}) and its jobs? [y/N]: ")
            if answer.strip().lower() not in ("y", "yes"):
                raise Refused(f"subscription {sub.name} not removed")
        count = catalog.remove_subscription(sub.id, force=args.force)
    print(f"subscription {sub.name} ({sub.id}) removed with {count} job(s): its publish "
          "settings no longer work")
    return Outcome()


def run_subscription_reissue(args: argparse.Namespace) -> Outcome:
    with Catalog.open(args.data) as catalog:
        sub = _subscription(catalog, args.subscription)
        url, out = _url_and_out(args, sub.name)
        sub = auth.reissue_subscription(catalog, sub.id, out, url)
    print(f"subscription {sub.name}: {sub.id}")
    print(f"publish settings: {out} for {url} (mode 0600); the subscription's earlier publish "
          "settings no longer work", file=sys.stderr)
    return Outcome()


def run_site_token(args: argparse.Namespace) -> Outcome:
    if not 0 < args.hours <= sitetoken.MAX_SITE_HOURS:
        raise BadInput(f"--hours {args.hours:g} is out of range; give more than 0 and at most "
                       f"{sitetoken.MAX_SITE_HOURS}")
    with Catalog.open(args.data):  # checks (or creates) the data directory as the service does
        pass
    if args.out and Path(args.out).exists():
        raise BadInput(f"--out {args.out} already exists; give a new file name")
    if args.rotate:
        sitetoken.rotate_site_key(args.data)
    token = sitetoken.make_site_token(args.data, hours=args.hours)
    if args.out:
        credentials.write_private(args.out, token + "\n")
    else:
        print(token)
    where = f" in {args.out}" if args.out else ""
    print(f"site token{where}: valid {args.hours:g} h; it reads every subscription's jobs and "
          "their drives' recovery passwords (the import needs them): give it only to the "
          "receiving site"
          + ("; earlier site tokens are revoked" if args.rotate else ""), file=sys.stderr)
    return Outcome()
