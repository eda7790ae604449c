"""`pipeline jobs create|show|list|ship|cancel|keys|log|locations|token`: the customer's
client for the import service (its publish settings; the site has `pipeline site`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline import journal
from pipeline.commands import _options
from pipeline.commands.journal_cmd import part_count, session_part
from pipeline.errors import EXIT_REFUSED, EXIT_STORAGE, BadInput, Outcome
from pipeline.jobs import auth
from pipeline.jobs.client import COPY_LOG_KINDS, ServiceClient, ServiceError
from pipeline.jobs.rules import MAX_DRIVES

EXITS = (EXIT_REFUSED, EXIT_STORAGE)  # exit codes beyond errors.EVERY_COMMAND


def _common(p: argparse.ArgumentParser, job: bool = True) -> None:
    p.add_argument("--publish-settings", required=True, metavar="FILE",
                   help="the subscription's publish settings file")
    p.add_argument("--service", metavar="URL",
                   help="the import service (default: the URL in the publish settings)")
    p.add_argument("--resource-group", metavar="NAME", help="resource group (default pipeline)")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    if job:
        p.add_argument("--job", required=True, metavar="NAME", help="the import job's name")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="create and follow import jobs on the import service",
                       description="Create and follow import jobs on the import service.")
    jsub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    c = jsub.add_parser("create", help="create an import job from prep's journals (or an "
                        "export job: --export)",
                        description="Create an import job whose drive list comes from prep's "
                        "journals, or with --export an export job that brings blobs back on "
                        "empty drives you ship; prints the data center's shipping address.")
    _common(c)
    c.add_argument("--journal-dir", metavar="JDIR",
                   help="prep's journal directory: the drive list comes from it (import)")
    c.add_argument("--export", action="store_true",
                   help="an export job: the site writes the blobs named by --blob-prefix / "
                   "--blob-path onto the empty drives you ship")
    c.add_argument("--blob-prefix", action="append", default=[], metavar="/CONTAINER/PREFIX",
                   help="export every blob whose path starts so (repeat; with --export)")
    c.add_argument("--blob-path", action="append", default=[], metavar="/CONTAINER/BLOB",
                   help="export this blob (repeat; with --export)")
    c.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    c.add_argument("--part", type=int, metavar="N",
                   help=f"a job holds at most {MAX_DRIVES} drives: this job takes the N-th "
                   f"{MAX_DRIVES} of a larger session's drives in drive-number order (as "
                   "`journal export --part`); create one job per part, each with its --job")
    c.add_argument("--location", required=True, metavar="REGION",
                   help="data-center location (see `jobs locations`)")
    c.add_argument("--storage-account", required=True, metavar="NAME",
                   help="the storage account the drives are imported into")
    _options.add_return_arguments(c)
    c.set_defaults(func=run_create)

    for name, helptext, func in (("show", "a job's state, drives and shipping address", run_show),
                                 ("keys", "the drives' recovery passwords", run_keys),
                                 ("cancel", "cancel a job (only before Transferring)",
                                  run_cancel)):
        s = jsub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:])
        _common(s)
        s.set_defaults(func=func)

    s = jsub.add_parser("ship", help="record the carrier and tracking number: job Shipping",
                        description="Record how the drives travel; the job moves to Shipping.  "
                   "Shipping needs the return address and shipping: give the --return-* "
                   "flags unless jobs create (or diskprep) already recorded them; given "
                   "here, they replace those fields.")
    _common(s)
    s.add_argument("--carrier", required=True, help="carrier taking the drives to the site")
    s.add_argument("--tracking", required=True, metavar="NUMBER",
                   help="that shipment's tracking number")
    s.add_argument("--drive-count", type=int, default=None,
                   help="drives in the package (default: every drive of the job)")
    s.add_argument("--ship-date", default=None, metavar="YYYY-MM-DD",
                   help="the day the package left (optional)")
    _options.add_return_arguments(s)
    s.set_defaults(func=run_ship)

    s = jsub.add_parser("log", help="a drive's copy log, as the receiving site handed it in",
                        description="Print a drive's copy log (JSON Lines: every blob ok, "
                        "corrupt or missing, then totals) that the import handed to the "
                        "service: the error log when blobs failed, the verbose log when the "
                        "job's logLevel is Verbose.")
    _common(s)
    s.add_argument("--drive", required=True, metavar="DRIVE-ID", help="the drive's id")
    s.add_argument("--kind", choices=COPY_LOG_KINDS, default="error",
                   help="error (default) or verbose")
    s.set_defaults(func=run_log)

    s = jsub.add_parser("list", help="the subscription's jobs", description="List the jobs.")
    _common(s, job=False)
    s.set_defaults(func=run_list)

    s = jsub.add_parser("locations", help="data-center locations and their addresses",
                        description="Data-center locations, their addresses and carriers.")
    _common(s, job=False)
    s.set_defaults(func=run_locations)

    s = jsub.add_parser("token", help="print a short-lived bearer token for other tools",
                        description="Print a bearer token (valid one hour) for curl or the "
                        "Azure SDK.")
    s.add_argument("--publish-settings", required=True, metavar="FILE",
                   help="the subscription's publish settings file")
    s.set_defaults(func=run_token)


def client(args: argparse.Namespace) -> ServiceClient:
    return ServiceClient.from_file(args.publish_settings, url=args.service,
                                   resource_group=args.resource_group, ca_file=args.ca_file)


def _address(loc: dict[str, Any]) -> str:
    p = loc.get("properties", {})
    lines = [p.get("recipientName", ""), p.get("streetAddress1", ""), p.get("streetAddress2", ""),
             " ".join(filter(None, (p.get("postalCode"), p.get("city"),
                                    p.get("stateOrProvince")))),
             p.get("countryOrRegion", ""), f"phone {p.get('phone', '')}"]
    return "\n".join("    " + x for x in lines if x and x.strip())


def _account_id(svc: ServiceClient, account: str) -> str:
    return (f"/subscriptions/{svc.subscription_id}/resourceGroups/{svc.resource_group}/"
            f"providers/Microsoft.Storage/storageAccounts/{account}")


def _create(args: argparse.Namespace, svc: ServiceClient,
            shipping: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The job created, and for an import job which of the session's drives it holds."""
    if args.export:
        if args.journal_dir or args.session_id or args.part is not None:
            raise BadInput("an export job takes no --journal-dir, --session-id or --part: the "
                           "site writes the drives; "
                           "name the blobs with --blob-prefix / --blob-path")
        if not args.blob_prefix and not args.blob_path:
            raise BadInput("an export job needs --blob-prefix /CONTAINER/PREFIX or --blob-path "
                           "/CONTAINER/BLOB (repeat either)")
        blobs = {k: v for k, v in (("blobPath", args.blob_path),
                                   ("blobPathPrefix", args.blob_prefix)) if v}
        return svc.put(args.job, {"location": args.location, "properties": {
            "storageAccountId": _account_id(svc, args.storage_account), "jobType": "Export",
            "diagnosticsPath": "waimportexport", "logLevel": "Error",
            "export": {"blobList": blobs}, **shipping}}), ""
    if args.blob_prefix or args.blob_path:
        raise BadInput("--blob-prefix and --blob-path are for an export job: add --export")
    if not args.journal_dir:
        raise BadInput("an import job needs --journal-dir JDIR (prep's journals give the "
                       "drive list); an export job needs --export")
    journals = journal.one_session(args.journal_dir, args.session_id)
    try:
        part = session_part(journals, args.part, "create one job per part, each with its own "
                            "--job NAME")
        drives = journal.drive_list(part)
        which = (f"part {args.part} of {part_count(journals)} of session "
                 f"{journals[0].session.session_id}: drives "
                 f"{', '.join(str(j.drive.seq) for j in part)}")
    finally:
        for j in journals:
            j.close()
    return svc.create_import_job(args.job, args.location, args.storage_account, drives,
                                 **shipping), which


def run_create(args: argparse.Namespace) -> Outcome:
    svc = client(args)
    shipping, missing = _options.return_properties(args)
    if shipping and missing:
        raise BadInput(f"a return address is given in full or not at all; add "
                       f"{' '.join(missing)} (or give them later to jobs ship)")
    job, which = _create(args, svc, shipping)
    if args.json:
        print(json.dumps(job, indent=2))
        return Outcome()
    loc = svc.location(args.location)
    if args.export:
        print(f"export job {job['name']} created: {job['properties']['state']}")
        print(f"ship EMPTY drives (see `pipeline export preview` for how many) to "
              f"({loc['name']}):\n{_address(loc)}")
    else:
        print(f"job {job['name']} created: {job['properties']['state']}, "
              f"{len(job['properties']['driveList'])} drive(s)")
        if args.part is not None:
            print(f"  {which} (pack these together)")
        print(f"ship the drives to ({loc['name']}):\n{_address(loc)}")
    print(f"then: pipeline jobs ship --job {job['name']} --carrier CARRIER --tracking NUMBER "
          f"--publish-settings {args.publish_settings}"
          + ("" if not missing else " " + " ".join(f"{f} ..." for f in missing)))
    print(f"portal: {svc.url}/")
    return Outcome()


def run_show(args: argparse.Namespace) -> Outcome:
    svc = client(args)
    job = svc.get(args.job)
    if args.json:
        print(json.dumps(job, indent=2))
        return Outcome()
    p = job["properties"]
    print(f"job {job['name']}  state {p['state']}  {p.get('percentComplete', 0)}% "
          f"location {job['location']}")
    export = p.get("export")
    if export:
        listed = export.get("blobListBlobPath")
        blobs = export.get("blobList", {})
        print("export of " + (f"the blobs listed in {listed}" if listed else ", ".join(
            [f"{x}*" for x in blobs.get("blobPathPrefix", [])] + blobs.get("blobPath", []))))
        if p.get("incompleteBlobListUri"):
            print(f"not exported (did not fit on the drives): {p['incompleteBlobListUri']}")
    pkg = p.get("deliveryPackage")
    if pkg:
        print(f"shipped with {pkg.get('carrierName')} tracking {pkg.get('trackingNumber')}")
    for d in p.get("driveList", []):
        print(f"  drive {d['driveId']}  {d.get('state')}  {d.get('percentComplete', 0)}%  "
              f"{d.get('bytesSucceeded', 0)} bytes"
              + (f"  errors: pipeline jobs log --job {job['name']} --drive {d['driveId']}"
                 if d.get("errorLogUri") else ""))
    info = p.get("shippingInformation")
    if info:
        print("shipping address:\n" + _address({"properties": info}))
    back = p.get("returnPackage")
    if back:
        print(f"drives returned with {back.get('carrierName')} tracking "
              f"{back.get('trackingNumber')} on {back.get('shipDate')} "
              f"({back.get('driveCount')} drive(s))")
    elif p.get("returnAddress"):
        print("return address:\n" + _address({"properties": p["returnAddress"]}))
    return Outcome()


def run_log(args: argparse.Namespace) -> Outcome:
    try:
        data = client(args).get_copy_log(args.job, args.drive, args.kind)
    except ServiceError as exc:
        if exc.status == 404:
            raise BadInput(f"job {args.job} has no {args.kind} log for drive {args.drive} "
                           f"({exc}); an error log exists only when blobs failed, a verbose "
                           "one when the job's logLevel is Verbose") from None
        raise
    sys.stdout.buffer.write(data)
    return Outcome()


def run_list(args: argparse.Namespace) -> Outcome:
    jobs = client(args).list()
    if args.json:
        print(json.dumps(jobs, indent=2))
        return Outcome()
    if not jobs:  # silence would read as a hang or a failure
        print("no jobs in this subscription yet; create one: pipeline jobs create", file=sys.stderr)
    for job in jobs:
        p = job["properties"]
        print(f"{job['name']:<24}  {p['state']:<13}  {len(p.get('driveList', []))} drive(s)  "
              f"{job['location']}")
    return Outcome()


def run_ship(args: argparse.Namespace) -> Outcome:
    svc = client(args)
    current = svc.get(args.job)["properties"]
    shipping, missing = _options.return_properties(args, current)
    if missing:
        raise BadInput(_no_return(args.job, missing))
    if current.get("jobType") == "Export" and not args.drive_count:
        raise BadInput(f"job {args.job} is an export job: give --drive-count N, the empty "
                       "drives in the package")
    pkg: dict[str, Any] = {"carrierName": args.carrier, "trackingNumber": args.tracking,
                           "driveCount": args.drive_count or len(current.get("driveList", []))}
    if args.ship_date:
        pkg["shipDate"] = args.ship_date
    try:
        job = svc.patch(args.job, {"properties": {"deliveryPackage": pkg, "state": "Shipping",
                                                  **shipping}})
    except ServiceError as exc:  # the service's own rule (Azure's): said with our flags
        if exc.status == 400 and "return" in str(exc).lower():
            raise BadInput(_no_return(args.job, [_options.return_flag(x) for x in (
                *_options.RETURN_ADDRESS, *_options.RETURN_SHIPPING) if x != "state"])
                           + f" (the service: {exc})") from None
        raise
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"job {job['name']}: {job['properties']['state']} with {args.carrier}, "
              f"tracking {args.tracking}")
    return Outcome()


def _no_return(job: str, missing: list[str]) -> str:
    return (f"job {job} cannot ship without a return address and return shipping (the drives "
            f"come back to you); give {' '.join(missing)}")


def run_cancel(args: argparse.Namespace) -> Outcome:
    job = client(args).patch(args.job, {"properties": {"cancelRequested": True}})
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(f"job {job['name']}: {job['properties']['state']}")
    return Outcome()


def run_keys(args: argparse.Namespace) -> Outcome:
    keys = client(args).keys(args.job)
    if args.json:
        print(json.dumps(keys, indent=2))
    else:
        for k in keys:
            print(f"{k['driveId']}  {k['bitLockerKey']}")
    return Outcome()


def run_locations(args: argparse.Namespace) -> Outcome:
    locs = client(args).locations()
    if args.json:
        print(json.dumps(locs, indent=2))
        return Outcome()
    for loc in locs:
        carriers = ", ".join(loc["properties"].get("supportedCarriers", []))
        print(f"{loc['name']}  ({carriers})\n{_address(loc)}")
    return Outcome()


def run_token(args: argparse.Namespace) -> Outcome:
    print(auth.token_from_publish_settings(args.publish_settings))
    return Outcome()
