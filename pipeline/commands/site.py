"""`pipeline site jobs|receive|return|close`: the receiving site's steps of an import job.

The site works with its own credential, a site token (`pipeline service site-token`)
read from --site-token-file, never from the command line.  It sees every
subscription's jobs; a job is found by its name (--subscription / --resource-group
when several subscriptions have one of that name).  The drives themselves are
imported by `pipeline import --service URL --site-token-file FILE --job NAME`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipeline.errors import EXIT_REFUSED, EXIT_STORAGE, BadInput, Outcome
from pipeline.jobs.client import ServiceClient, parse_job_id
from pipeline.jobs.rules import JobState
from pipeline.receive import service_import

EXITS = (EXIT_REFUSED, EXIT_STORAGE)  # exit codes beyond errors.EVERY_COMMAND


def _common(p: argparse.ArgumentParser, job: bool = True) -> None:
    p.add_argument("--service", required=True, metavar="URL", help="the import service")
    p.add_argument("--site-token-file", required=True, metavar="FILE",
                   help="file holding the site token (pipeline service site-token --data DIR)")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    if job:
        p.add_argument("--job", required=True, metavar="NAME", help="the import job's name")
        p.add_argument("--subscription", metavar="ID",
                       help="the job's subscription, when several jobs have its name")
        p.add_argument("--resource-group", metavar="NAME",
                       help="the job's resource group, when several jobs have its name")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("site", help="the receiving site: receive drives, return them, list jobs",
                       description="The receiving site's steps of an import job, with the "
                       "site's own credential (--site-token-file).  Import the drives with "
                       "pipeline import --service URL --site-token-file FILE --job NAME.")
    ssub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    s = ssub.add_parser("jobs", help="every job, its state and what the site does next",
                        description="List every subscription's jobs with their state and "
                        "what comes next (who acts, and the command).")
    _common(s, job=False)
    s.add_argument("--state", metavar="STATE",
                   help=f"only jobs in this state ({', '.join(JobState)})")
    s.set_defaults(func=run_jobs)

    s = ssub.add_parser("receive", help="the package arrived: drives Received, job Received",
                        description="Record the package's arrival: the drives named (default "
                        "every drive not named NeverReceived) are Received and the job moves "
                        "from Shipping to Received.  --undo puts a wrongly marked drive back "
                        "to Specified before its import starts.")
    _common(s)
    s.add_argument("--drive", action="append", default=[], metavar="DRIVE-ID",
                   help="a drive that arrived (repeat; default: every drive of the job)")
    s.add_argument("--never-received", action="append", default=[], metavar="DRIVE-ID",
                   help="a drive missing from the package (repeat)")
    s.add_argument("--undo", action="append", default=[], metavar="DRIVE-ID",
                   help="a drive marked by mistake: back to Specified (repeat)")
    s.set_defaults(func=run_receive)

    s = ssub.add_parser("return", help="the drives went back: return package, job Completed",
                        description="Record the return shipment once the job is Packaging "
                        "(every drive imported): drives ShippedBack, returnPackage with "
                        "carrier and tracking number, job Completed.  The customer sees the "
                        "tracking number in pipeline jobs show.")
    _common(s)
    s.add_argument("--carrier", metavar="NAME",
                   help="carrier of the return shipment (default: the job's return carrier)")
    s.add_argument("--tracking", required=True, metavar="NUMBER",
                   help="the return shipment's tracking number")
    s.add_argument("--ship-date", metavar="YYYY-MM-DD",
                   help="the day the drives left (default today)")
    s.set_defaults(func=run_return)

    s = ssub.add_parser("close", help="close a Completed job",
                        description="Close a Completed job: the site is done with it.")
    _common(s)
    s.set_defaults(func=run_close)


# An export job's site steps where they differ from an import's (service_import.NEXT)
_EXPORT_CMD = ("pipeline export --service URL --site-token-file FILE --job {job} "
               "--from STORAGE --drive PATH ... --journal-dir JDIR")
EXPORT_NEXT: dict[str, tuple[str, str]] = {
    "Received": ("write the blobs onto the empty drives", _EXPORT_CMD),
    "Transferring": ("finish writing the blobs (run the same export again)", _EXPORT_CMD),
}


def _client(args: argparse.Namespace) -> ServiceClient:
    return ServiceClient.from_site_token_file(args.service, args.site_token_file, args.ca_file)


def _located(args: argparse.Namespace) -> tuple[ServiceClient, dict[str, Any]]:
    return service_import.locate(_client(args), args.job, args.subscription,
                                 args.resource_group)


def _print_job(args: argparse.Namespace, job: dict[str, Any], line: str) -> Outcome:
    if args.json:
        print(json.dumps(job, indent=2))
        return Outcome()
    print(line)
    for d in job["properties"].get("driveList", []):
        print(f"  drive {d['driveId']}  {d.get('state')}")
    print(f"next: {summary(job)['nextCommand']}")
    return Outcome()


def run_receive(args: argparse.Namespace) -> Outcome:
    svc, job = _located(args)
    job = service_import.receive(svc, args.job, job, args.drive, args.never_received,
                                 args.undo)
    return _print_job(args, job, f"job {job['name']}: {job['properties']['state']}")


def run_return(args: argparse.Namespace) -> Outcome:
    svc, job = _located(args)
    job = service_import.return_drives(svc, args.job, job, args.carrier, args.tracking,
                                       args.ship_date)
    back = job["properties"].get("returnPackage", {})
    return _print_job(args, job, f"job {job['name']}: {job['properties']['state']}; drives "
                      f"returned with {back.get('carrierName')} tracking "
                      f"{back.get('trackingNumber')}")


def run_close(args: argparse.Namespace) -> Outcome:
    svc, job = _located(args)
    job = service_import.close(svc, args.job, job)
    return _print_job(args, job, f"job {job['name']}: {job['properties']['state']}")


def _state(text: str) -> str:
    for state in JobState:
        if state.value.lower() == text.lower():
            return state.value
    raise BadInput(f"--state {text!r} is not a job state; give one of {', '.join(JobState)}")


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """One job as the site's listing shows it (``--json``: one object each)."""
    props = job.get("properties", {})
    sub, group = parse_job_id(job["id"])
    state = props.get("state", "")
    who, what, _ = service_import.NEXT.get(state, ("-", "", ""))
    command = service_import.next_step(state, job["name"])
    if props.get("jobType") == "Export" and state in EXPORT_NEXT:
        what, command = EXPORT_NEXT[state][0], EXPORT_NEXT[state][1].format(job=job["name"])
    drives = props.get("driveList", [])
    return {"name": job["name"], "subscription": sub, "resourceGroup": group,
            "location": job.get("location"), "state": state, "drives": len(drives),
            "drivesReceived": sum(d.get("state") not in ("Specified", "NeverReceived")
                                  for d in drives),
            "nextBy": who, "next": what,
            "nextCommand": command, "id": job["id"], "jobType": props.get("jobType", "Import")}


def run_jobs(args: argparse.Namespace) -> Outcome:
    query = f"properties/state eq '{_state(args.state)}'" if args.state else None
    rows = [summary(j) for j in _client(args).list_all(query)]
    if args.state:  # the service filtered; a service without $filter is filtered here
        rows = [r for r in rows if r["state"] == _state(args.state)]
    rows.sort(key=lambda r: (r["name"], r["subscription"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return Outcome()
    if not rows:
        print("no jobs" + (f" in state {_state(args.state)}" if args.state else ""))
        return Outcome()
    print(f"{'JOB':<24}  {'STATE':<12}  {'DRIVES':<6}  {'SUBSCRIPTION':<36}  NEXT")
    for r in rows:
        drives = f"{r['drivesReceived']}/{r['drives']}"
        print(f"{r['name']:<24}  {r['state']:<12}  {drives:<6}  {r['subscription']:<36}  "
              f"{r['nextBy']}: {r['next']}")
    return Outcome()
