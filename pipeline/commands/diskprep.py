"""`pipeline diskprep s:<staging> [p:<publish settings>]`: drives for an offline backup.

The seed's disk preparation: read the offline settings the offline backup left
in the staging location, confirm the import job, ask for drives (another one
whenever one fills), run prep with page blobs into the job's container, then
create the import job on the import service with the drives' journals and say
where to ship them.  Every question has a flag for unattended runs (``--job``,
``--drive``, ``--drive-size``, ``--location``, ``--yes``).

prep runs in this process, given the flags a user would give ``pipeline prep``
(``prep.parse_args``): its progress bar, summary and Ctrl-C handling are exactly
prep's, and ``OutOfDrives`` is the cue to ask for the next drive and resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import errors, journal, progress
from pipeline.backup import offline
from pipeline.commands import _options, prep
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SEED,
    EXIT_NO_SPACE,
    EXIT_OUT_OF_DRIVES,
    EXIT_REFUSED,
    EXIT_STORAGE,
    EXIT_WARNING,
    BadInput,
    Outcome,
    OutOfDrives,
    PipelineError,
    Refused,
)
from pipeline.jobs import rules
from pipeline.jobs.client import ServiceClient, ServiceError
from pipeline.volume import drives

# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_WARNING, EXIT_OUT_OF_DRIVES, EXIT_INTEGRITY, EXIT_REFUSED, EXIT_STORAGE,
         EXIT_NO_SEED, EXIT_NO_SPACE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diskprep", help="prepare drives for an offline backup and create its import job",
        description="Prepare drives for an offline backup: s:<staging location> and, on a copy "
        "machine other than the source machine, p:<publish settings file>.  Checks first that "
        "the import job's name is free on the service (or is this backup's own job); asks "
        "which job, the region and the return address and contact (the --return-* flags), "
        "then which drives (another when one fills) and confirms formatting; then creates the "
        "import job and prints where to ship the drives.  Not on a terminal, every answer "
        "must come as a flag.")
    p.add_argument("locations", nargs="*", metavar="s:STAGING|p:SETTINGS",
                   help="the seed's syntax: s:<staging location> p:<publish settings file>")
    p.add_argument("--staging", metavar="DIR", help="the staging location (same as s:)")
    p.add_argument("--publish-settings", metavar="FILE", help="same as p:")
    p.add_argument("--job", metavar="NAME", help="answer: the import job to prepare for")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="answer: target drive(s), in order (block device or image file)")
    p.add_argument("--drive-size", metavar="SIZE", help="size of new image files, e.g. 2G")
    p.add_argument("--location", metavar="REGION", help="answer: the job's data-center region")
    p.add_argument("--yes", "--silentmode", dest="yes", action="store_true",
                   help="answer yes to the confirmations (job, formatting)")
    p.add_argument("--journal-dir", metavar="JDIR",
                   help="where the drives' journals go (default: the config directory)")
    p.add_argument("--service", metavar="URL", help="import service (default: from p:)")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines events on stdout: diskprep's notes, prep's events, the "
                   "job created, exit; nothing is asked (every answer as a flag)")
    _options.add_return_arguments(p)
    _options.add_kdf_arguments(p)
    p.set_defaults(func=run)


def config_dir() -> Path:
    return offline.config_path().parent


def _split_locations(args: argparse.Namespace) -> tuple[str | None, str | None]:
    staging, settings = args.staging, args.publish_settings
    for item in args.locations:
        kind, sep, value = item.partition(":")
        if not sep or kind.lower() not in ("s", "p") or not value:
            raise BadInput(f"{item!r} is not s:<staging location> or p:<publish settings file>")
        if kind.lower() == "s":
            staging = value
        else:
            settings = value
    return staging, settings


def read_offline(staging: Path) -> dict[str, Any]:
    data = offline.read_staging(staging)
    for key in ("job_name", "subscription", "account", "container", "repository"):
        if not data.get(key):
            raise offline.NoOfflineBackup(f"{offline.staging_file(staging)} lacks {key!r}; run "
                                          "the offline backup again")
    return data


def source_config(staging: Path) -> dict[str, Any] | None:
    """This machine's own record of the offline backup (present on the source machine)."""
    entry = offline.read_config().get(str(staging.resolve()))
    return entry if isinstance(entry, dict) else None


def _no_questions(text: str) -> str:
    raise EOFError  # --json: stdout is the event stream, nobody answers there


class Terminal:
    """Questions and answers; with --yes or given flags nothing is asked."""

    def __init__(self, ask: Callable[[str], str] = input, interactive: bool | None = None
                 ) -> None:
        self.ask = ask
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def question(self, text: str) -> str:
        try:
            return self.ask(text).strip()
        except EOFError:
            raise BadInput(f"no answer to {text.strip()!r}; give it as a flag for unattended "
                           "runs (--job, --drive, --drive-size, --location, --yes)") from None

    def confirm(self, text: str, default: bool = False) -> bool:
        """Yes or no; anything else asks again.  No answer at all (end of input) is a
        missing confirmation: refused (5), as the exit-code table says."""
        while True:
            try:
                answer = self.ask(f"{text} [{'Y/n' if default else 'y/N'}]: ").strip().lower()
            except EOFError:
                raise Refused(f"no answer to {text!r}; pass --yes to confirm") from None
            if not answer:
                return default
            if answer in ("y", "yes", "n", "no"):
                return answer in ("y", "yes")
            print("answer y or n")


class Notes:
    """diskprep's own lines: printed, or `note` events with --json (then the `job` and
    `exit` events end the stream; prep, run inside, leaves `exit` to diskprep)."""

    def __init__(self, json_mode: bool) -> None:
        self.renderer = progress.JsonRenderer() if json_mode else None

    def __call__(self, line: str) -> None:
        if self.renderer is None:
            print(line)
        else:
            self.renderer.event("note", message=line.strip())

    def event(self, type: str, **fields: Any) -> None:
        if self.renderer is not None:
            self.renderer.event(type, **fields)


async def run(args: argparse.Namespace) -> Outcome:
    notes = Notes(args.json)
    try:
        outcome = await _run(args, notes)
    except BaseException as exc:
        first = errors.worst(exc)
        if isinstance(first, PipelineError):
            notes.event("exit", code=first.exit_code, message=str(first))
        raise
    notes.event("exit", code=outcome.code, message=outcome.message or "done")
    return outcome


async def _run(args: argparse.Namespace, say: Notes) -> Outcome:
    staging_arg, settings_arg = _split_locations(args)
    if not staging_arg:
        raise BadInput("give the staging location: pipeline diskprep s:<staging> "
                       "[p:<publish settings file>]")
    staging = Path(staging_arg).resolve()
    offline = read_offline(staging)
    own = source_config(staging)
    settings_path = settings_arg or (own or {}).get("publish_settings")
    if not settings_path:
        raise BadInput("this is not the source machine of the offline backup: give the "
                       "publish settings file as p:<file>")
    term = Terminal(_no_questions, False) if args.json else Terminal()
    job_name = rules.check_job_name(offline["job_name"])
    say(f"staging location {staging}: offline backup for import job {job_name}")
    say(f"  subscription {offline['subscription']}, storage account {offline['account']}, "
        f"container {offline['container']}")
    if args.job and args.job != job_name:
        raise BadInput(f"--job {args.job}: the offline backup in {staging} is for job "
                       f"{job_name}")
    if not (args.job or args.yes) and not term.confirm(f"Prepare drives for job {job_name}?",
                                                       True):
        raise Refused("stopped: no job chosen")
    client = ServiceClient.from_file(settings_path, url=args.service, ca_file=args.ca_file)
    if client.subscription_id.lower() != offline["subscription"].lower():
        raise BadInput(f"{settings_path} is for subscription {client.subscription_id}, "
                       f"but the offline backup is for {offline['subscription']}; give that "
                       "subscription's publish settings file")
    jdir = Path(args.journal_dir) if args.journal_dir else config_dir() / "journals" / job_name
    existing = client.check_job_name(job_name, _own_drives(jdir, job_name))
    location = _region(args, term, client, existing)
    shipping = _return_address(args, term, (existing or {}).get("properties"))
    jdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    repo = staging / offline["repository"]
    copied = await _prep_until_done(args, term, jdir, job_name, f"pipeline diskprep s:{staging}", [
        "--source", str(repo), "--dstdir", f"{offline['container']}/", "--journal-dir",
        str(jdir), "--session-id", job_name, "--blob-type", "page", *_kdf_flags(args),
        *(["--json"] if args.json else [])])
    if copied.code:  # done with warnings: prep named them; no job until the copy is clean
        return copied
    journals = journal.one_session(jdir, job_name)
    try:
        drive_list = journal.drive_list(journals)
    finally:
        for j in journals:
            j.close()
    try:
        job = client.create_import_job(job_name, location, offline["account"], drive_list,
                                       **shipping)
    except ServiceError as exc:
        raise BadInput(f"the import job {job_name} could not be created: {exc}") from None
    loc = client.location(job["location"])
    p = loc["properties"]
    say(f"import job {job_name} created with {len(drive_list)} drive(s); journals in {jdir}")
    say("ship the drives to:")
    for line in (p.get("recipientName"), p.get("streetAddress1"), p.get("streetAddress2"),
                 " ".join(filter(None, (p.get("postalCode"), p.get("city")))),
                 p.get("countryOrRegion"), f"phone {p.get('phone', '')}"):
        if line:
            say(f"  {line}")
    say(f"then record the carrier and tracking number: {client.url}/portal/ or pipeline jobs "
        f"ship --job {job_name} --publish-settings {settings_path} --carrier C --tracking N")
    say.event("job", name=job_name, location=job["location"], drives=len(drive_list),
              journal_dir=str(jdir), ship_to={k: v for k, v in p.items() if isinstance(v, str)})
    return Outcome()


def _own_drives(jdir: Path, job_name: str) -> set[str]:
    """Volume UUIDs of the drives this machine prepared for the job (its journals)."""
    if not jdir.is_dir():
        return set()
    journals = journal.session_journals(jdir, job_name)
    try:
        return {j.drive.uuid for j in journals}
    finally:
        for j in journals:
            j.close()


def _region(args: argparse.Namespace, term: Terminal, client: ServiceClient,
            existing: dict[str, Any] | None) -> str:
    """The job's region: --location, the existing job's, or asked (checked by the service)."""
    if args.location:
        return args.location
    if existing:
        return existing["location"]
    names = [loc["name"] for loc in client.locations()]
    if not term.interactive:
        raise BadInput(f"give --location REGION (one of {', '.join(names)})")
    answer = term.question(f"Data-center region for the job ({', '.join(names)}): ")
    if answer.lower() not in (n.lower() for n in names):
        raise BadInput(f"region {answer!r} is not one of {', '.join(names)}; run diskprep "
                       "again (or give --location)")
    return answer


def _return_address(args: argparse.Namespace, term: Terminal,
                    current: dict[str, Any] | None) -> dict[str, Any]:
    """Where the drives come back to and how (the seed's "shipping info -> contact
    details"): the --return-* flags, the existing job's, else asked on a terminal."""
    shipping, missing = _options.return_properties(args, current)
    if missing and not term.interactive:
        raise BadInput(f"the job needs a return address and shipping before the drives ship; "
                       f"give {' '.join(missing)} (nothing was written)")
    if missing:
        print("Return address and contact for the drives' way back:")
    for flag in missing:
        suffix = flag.removeprefix("--return-")
        table = {**_options.RETURN_ADDRESS, **_options.RETURN_SHIPPING}
        answer = term.question(f"  {table[suffix][1][0].upper()}{table[suffix][1][1:]}: ")
        if not answer:
            raise BadInput(f"no answer for {flag}; run diskprep again (or give {flag})")
        setattr(args, "return_" + suffix.replace("-", "_"), answer)
    if missing:
        shipping, _ = _options.return_properties(args, current)
    return shipping


async def _prep_until_done(args: argparse.Namespace, term: Terminal, jdir: Path, job_name: str,
                           again: str, base: list[str]) -> Outcome:
    """prep of the staging location onto the drives given or asked for, another drive
    whenever one fills, until every file is on a drive: prep's outcome."""
    queue = list(args.drive)
    resume = bool(journal.session_journals(jdir, job_name))
    while True:
        drive, flags = _next_drive(args, term, queue, _session_drives(jdir, job_name), resume)
        argv = [*base, "--drive", drive, *flags] + (["--resume"] if resume else [])
        resume = True
        prep_args = prep.parse_args(argv)
        prep_args.embedded, prep_args.resume_with = True, again  # diskprep speaks for itself
        try:
            return await prep.run(prep_args)
        except OutOfDrives:
            if args.json and not queue:
                raise OutOfDrives(f"every drive is full; attach another and run: {again} "
                                  "--drive NEW") from None
            print("the drive is full: attach another drive", file=sys.stderr if args.json
                  else sys.stdout)


def _session_drives(jdir: Path, job_name: str) -> dict[str, str]:
    """Resolved path -> "drive N (state)" for the drives this session already has."""
    if not jdir.is_dir():
        return {}
    journals = journal.session_journals(jdir, job_name)
    try:
        return {str(Path(j.drive.path).resolve()): f"drive {j.drive.seq} of this job "
                f"({j.drive.state})" for j in journals}
    finally:
        for j in journals:
            j.close()


def _next_drive(args: argparse.Namespace, term: Terminal, queue: list[str],
                used: dict[str, str], resume: bool) -> tuple[str, list[str]]:
    """The next drive and the prep flags it needs.  A wrong answer (a mistyped device, a
    drive already used, no size, "n" to formatting) asks again on a terminal; given as a
    flag, or with no terminal, it is an error naming the fix."""
    while True:
        given = bool(queue)
        drive = queue.pop(0) if given else term.question(
            f"Path of the {'next' if resume else 'target'} drive (block device or image file; "
            "empty to stop): ")
        if not drive:
            raise BadInput("no drive given; run diskprep again to continue (it resumes)")
        try:
            flags = _drive_flags(drive, args, term, used)
            what = _describe(drive, flags)
        except BadInput as exc:
            if given or not term.interactive:
                raise
            print(exc)
            continue
        if args.yes or term.confirm(f"Format {drive} ({what})? Everything on it is lost."):
            return drive, [*flags, "--yes"]
        if given or not term.interactive:
            raise Refused(f"{drive} not formatted; pass --yes to format it, or another --drive")
        print(f"{drive} left as it is; give another drive")


def _drive_flags(drive: str, args: argparse.Namespace, term: Terminal,
                 used: dict[str, str]) -> list[str]:
    """Check the answer; an image file to create gets its --drive-size (asked if needed)."""
    path = Path(drive)
    if str(path.resolve()) in used:
        raise BadInput(f"{drive} is already {used[str(path.resolve())]}; attach another drive")
    if path.exists():
        return []
    if path.resolve().parts[1:2] == ("dev",):
        raise BadInput(f"{drive} does not exist; check the device name (lsblk lists the drives)")
    if not path.parent.is_dir():
        raise BadInput(f"{drive}: directory {path.parent} does not exist; check the path")
    size = args.drive_size
    while size is None:
        answer = term.question(f"{drive} does not exist; size of the image file to create "
                               "(e.g. 2G): ")
        try:
            if drives.parse_size(answer) >= drives.MIN_DRIVE_SIZE:
                size = answer
                break
            print(f"{answer}: smaller than the minimum volume of "
                  f"{drives.human(drives.MIN_DRIVE_SIZE)}")
        except BadInput as exc:
            print(f"{answer!r}: {exc}" if answer else "give a size, e.g. 2G")
        if not term.interactive:
            raise BadInput(f"give --drive-size for the new image file {drive}")
    return ["--drive-size", size]


def _describe(drive: str, flags: list[str]) -> str:
    """What the operator is about to erase: size, model, what is on it."""
    if "--drive-size" in flags:
        return f"a new image file of {flags[flags.index('--drive-size') + 1]}"
    with drives.open_drive(drive) as d:
        content = drives.existing_content(d) or "blank"
        parts = [drives.human(d.size)]
        if d.kind == "block":
            sysfs = Path("/sys/class/block") / Path(drive).resolve().name
            model = _read_text(sysfs / "device" / "model")
            if model:
                parts.append(model)
            children = sorted(p.name for p in sysfs.glob(f"{sysfs.name}*") if p.is_dir())
            if children:
                parts.append(f"partitions {', '.join(children)}")
        else:
            parts.append("image file")
        return ", ".join([*parts, content.removeprefix("is ").removeprefix("already ")])


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _kdf_flags(args: argparse.Namespace) -> list[str]:
    return ["--pbkdf", args.pbkdf, "--pbkdf-memory", str(args.pbkdf_memory), "--pbkdf-time",
            str(args.pbkdf_time), "--pbkdf-parallel", str(args.pbkdf_parallel),
            "--pbkdf-force-iterations", str(args.pbkdf_force_iterations)]
