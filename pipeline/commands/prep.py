"""`pipeline prep`: copy a staging directory onto encrypted drives, resumably."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pipeline import credentials, errors, journal, names, progress
from pipeline.commands import _options
from pipeline.drive import format
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_NO_SPACE,
    EXIT_OK,
    EXIT_OUT_OF_DRIVES,
    EXIT_REFUSED,
    EXIT_WARNING,
    BadInput,
    Interrupted,
    Outcome,
    OutOfDrives,
    PipelineError,
)
from pipeline.prep import dataset, datasetio, scan
from pipeline.prep import pool as drivepool
from pipeline.prep.run import DrivePool, PrepConfig, run_prep
from pipeline.prep.session import Session
from pipeline.prep.write import DriveWriter
from pipeline.volume import drives

REMINDER = ("Store the recovery passwords apart from the drives: whoever holds a drive and "
            "its password reads the data.")


# Exit codes beyond errors.EVERY_COMMAND (cli lists them in --help).
EXITS = (EXIT_WARNING, EXIT_OUT_OF_DRIVES, EXIT_INTEGRITY, EXIT_REFUSED, EXIT_NO_SPACE)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prep", help="copy a staging directory onto encrypted drives",
        description="Copy a staging directory onto LUKS2-encrypted drives: compressed, "
        "hashed, spread over the drives, one journal per drive.  Resumable after any crash.")
    _options.add_aliased(p, "--source", ("--srcdir",), metavar="DIR",
                         help="staging directory to copy (not needed with --resume)")
    p.add_argument("--dstdir", metavar="CONTAINER/VDIR/",
                   help="container and virtual directory the files import into")
    p.add_argument("--dataset", metavar="FILE",
                   help="WAImportExport v2 dataset.csv: many directories and files, each with "
                   "its container, blob type, disposition, metadata and properties "
                   "(instead of --source/--dstdir)")
    p.add_argument("--driveset", metavar="FILE",
                   help="WAImportExport v2 driveset.csv: the drives (block device or image "
                   "path in its first column), as --drive does")
    p.add_argument("--additional-driveset", metavar="FILE",
                   help="with --resume: more drives from a driveset.csv (/AdditionalDriveSet)")
    p.add_argument("--journal-dir", required=True, metavar="JDIR",
                   help="where the per-drive journals live (never on a target drive)")
    p.add_argument("--session-id", required=True, metavar="ID",
                   help="3-30 letters, digits, '_', '-' or '#'")
    p.add_argument("--drive", action="append", default=[], metavar="PATH",
                   help="target drive: block device or image file (repeat for more drives)")
    p.add_argument("--drive-size", metavar="SIZE", help="size of new image files, e.g. 2G")
    p.add_argument("--yes", "--silentmode", dest="yes", action="store_true",
                   help="format drives that hold data without asking")
    p.add_argument("--blob-type", choices=("block", "page"), default=None,
                   help="blob type in the storage account (default block; page needs every "
                   "file size to be a multiple of 512)")
    p.add_argument("--level", type=int, default=None, metavar="N", help="zstd level (default 1)")
    p.add_argument("--fill", choices=("sequential", "parallel"), default=None,
                   help="sequential: next drive when one fills; parallel: all drives at once")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", metavar="FILE",
                   help="also open every drive with this passphrase (keyslot 1)")
    g.add_argument("--key-file", metavar="FILE",
                   help="also open every drive with this key file (keyslot 1)")
    p.add_argument("--memory", default="256M", metavar="SIZE",
                   help="memory budget for data in flight (default 256M)")
    _options.add_threads_argument(p, "compression/encryption threads")
    p.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print the time each pipeline stage was busy (for tuning)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--resume", action="store_true", help="continue the session from its journals")
    m.add_argument("--abort", action="store_true", help="end the session; its drives become void")
    _options.add_kdf_arguments(p)
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="prep on the Dask cluster at this scheduler: every `pipeline worker` "
                   "preps a shard onto its own drives (docs/SCALE.md)")
    p.add_argument("--move-shard", metavar="LOST=NEW",
                   help="with --cluster --resume: worker LOST is gone for good; worker NEW "
                   "(connected, no shard yet) takes its shard onto its own drives, LOST's "
                   "unfinished drives are given up and their files written again")
    p.set_defaults(func=run)


def _rewrite_stale_indexes(pool: DrivePool) -> list[str]:
    """Closed drives whose index lists files superseded since: written again by the pool;
    a drive that cannot be reached is named, to do later."""
    problems = [f"drive {info.seq}'s closing index still lists older copies of files changed "
                f"since ({exc}); attach it at {info.path} and run prep --resume, or import "
                "that drive with its journal" for info, exc in pool.rewrite_stale_indexes()]
    for line in problems:
        print(f"pipeline prep: warning: {line}", file=sys.stderr)
    return problems


def _dataset(args: argparse.Namespace, journals: list[journal.Journal]
             ) -> list[datasetio.Source] | None:
    """The session's dataset: from --dataset when it begins, kept beside the journals for
    --resume (which must not give another); None for a --source/--dstdir session."""
    if args.dataset and (args.source or args.dstdir):
        raise BadInput("--dataset replaces --source and --dstdir; give one or the other")
    if journals:
        if args.dataset:
            raise BadInput(f"--dataset: session {args.session_id} keeps the dataset it began "
                           "with; leave --dataset out when resuming")
        saved = datasetio.load_saved(args.journal_dir, args.session_id)
        if saved is None and journals[0].session.srcdir == "/":
            raise BadInput(f"{datasetio.saved_path(args.journal_dir, args.session_id)} is "
                           "missing: the session's dataset is kept there; restore it from a "
                           "copy of the journal directory")
        return saved
    if not args.dataset:
        return None
    sources, notes = datasetio.load_dataset(args.dataset)
    for note in notes:
        print(f"pipeline prep: note: {note}", file=sys.stderr)
    return sources


def _drives_of(args: argparse.Namespace) -> tuple[list[str], bool, dict[str, str]]:
    """(--drive and the driveset's drives, whether all driveset rows said SilentMode,
    the existing keys of AlreadyEncrypted drives by path)."""
    paths = list(args.drive)
    silent, keys = True, {}
    for flag in ("driveset", "additional_driveset"):
        name = getattr(args, flag, None)
        if not name:
            continue
        if flag == "additional_driveset" and not args.resume:
            raise BadInput("--additional-driveset adds drives to a session: use it with --resume")
        try:
            with open(name, "rb") as f:
                data = f.read(dataset.MAX_INPUT_BYTES + 1)
        except OSError as e:
            raise BadInput(f"--{flag.replace('_', '-')} {name}: {e.strerror}") from None
        for row in dataset.parse_driveset(data, name):
            paths.append(row.path)
            silent = silent and row.silent
            if not row.encrypt:
                keys[str(Path(row.path).resolve())] = row.existing_key
            note = dataset.key_note(row, name)
            if note is not None:
                print(f"pipeline prep: note: {note}", file=sys.stderr)
    return paths, silent and bool(paths), keys


def _config(args: argparse.Namespace, journals: list[journal.Journal]) -> PrepConfig:
    session = journals[0].session if journals else None
    sources = _dataset(args, journals)

    def pick(name: str, given: Any, default: Any) -> Any:
        recorded = getattr(session, name) if session else None
        if given is not None and recorded is not None and given != recorded:
            raise BadInput(f"--{name.replace('_', '-')} {given} differs from the session's "
                           f"{recorded}; leave it out when resuming")
        return given if given is not None else (recorded if recorded is not None else default)

    srcdir = pick("srcdir", str(Path(args.source).resolve()) if args.source else None,
                  "/" if sources else None)
    if srcdir is None:
        raise BadInput("--source is required: the staging directory to copy (or --dataset)")
    dstdir_arg = names.check_dstdir(args.dstdir) if args.dstdir else None
    if sources and session is None:  # the superblock's dstdir: a container of the dataset's
        dstdir_arg = next((s.container + "/" for s in sources  # a named one if any
                           if s.container != names.ROOT_CONTAINER), names.ROOT_CONTAINER + "/")
    elif dstdir_arg is not None and dstdir_arg.startswith(names.ROOT_CONTAINER + "/"):
        raise BadInput("--dstdir $root/: a staging tree's subdirectories cannot go to the root "
                       "container (no '/' in its names); use --dataset with a $root/ row")
    dstdir = pick("dstdir", dstdir_arg, None)
    if dstdir is None:
        raise BadInput("--dstdir is required: CONTAINER/VIRTUAL/DIR/ in the storage account")
    blob = {"block": int(format.BlobType.BLOCK), "page": int(format.BlobType.PAGE)}
    blob_type = pick("blob_type", blob.get(args.blob_type), int(format.BlobType.BLOCK))
    level = pick("level", args.level, 1)
    if not 1 <= level <= 22:
        raise BadInput(f"--level {level} is out of range; zstd levels are 1 to 22")
    secret = None
    if args.passphrase_file:
        secret = credentials.passphrase_file(args.passphrase_file)
    elif args.key_file:
        secret = credentials.key_file(args.key_file)
    threads = _options.threads_from_args(args)
    paths, silent, keys = _drives_of(args)
    return PrepConfig(
        srcdir=Path(srcdir), dstdir=dstdir, jdir=Path(args.journal_dir),
        session_id=args.session_id, drives=paths,
        drive_size=drives.parse_size(args.drive_size) if args.drive_size else None,
        yes=args.yes or silent, blob_type=format.BlobType(blob_type), level=level,
        dataset=sources, existing_keys=keys,
        fill=pick("fill", args.fill, "sequential"), operator_secret=secret,
        kdf=_options.kdf_from_args(args), cpu_threads=threads,
        memory=drives.parse_size(args.memory))


def _prescan(cfg: PrepConfig, stats: progress.Stats) -> None:
    """Page blobs: check ``names.page_blob_problem`` on every file before anything is written
    (files whose names are skipped are not checked: the feeder reports them)."""
    for src in scan.scan(cfg.srcdir, vdir=names.vdir_of(cfg.dstdir)):
        page_why = names.page_blob_problem(src.size)
        if page_why is not None:
            raise BadInput(f"{cfg.srcdir / src.path}: {page_why}; use --blob-type block")
        stats.files_total += 1
        stats.bytes_total += src.size


async def count_totals(cfg: PrepConfig, stats: progress.Stats) -> None:
    """Count the work for progress and ETA while prep runs (block blobs need no pre-check).

    A cold walk of a large tree takes seconds that need not delay the first
    write, so it runs beside the pipeline, in its own process: its lstat calls
    then never hold or wait for this process's GIL.  GNU find does it where
    there is one (``find -H ROOT -type f``: the same regular files as
    ``scan.scan``, at 0.33 core-seconds and 2 MiB for 30,000 files against
    0.76 and 15 MiB for the same walk in Python, ``python -m pipeline.prep.scan``,
    which is what runs if find fails or is missing).  The feeder walks the
    same tree meanwhile, so the disk reads each inode about once.  The totals
    appear when the count is complete (a partial total would make a wrong
    ETA); if the count fails, they stay unknown and the feeder reports the
    cause.  Files skipped for their names are counted too (find cannot tell),
    so the total errs by those few.  Cancelling kills the count.
    """
    root = str(cfg.srcdir)
    find = shutil.which("find")
    if find is not None:  # its lines summed as they come: held whole, 1,000,000 files
        files = size = 0  # made a 43 MiB list (issue 18)
        proc = await trio.lowlevel.open_process(
            [find, "-H", root, "-type", "f", "-printf", "%s\n"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        tail = b""
        try:
            assert proc.stdout is not None
            async with proc.stdout:
                async for chunk in proc.stdout:
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    files, size = files + len(lines), size + sum(map(int, lines))
            await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: the count is killed
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if proc.returncode == 0 and not tail:
            stats.files_total, stats.bytes_total = files, size
            return
    done = await trio.run_process([sys.executable, "-m", "pipeline.prep.scan", root],
                                  capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode == 0:
        files, size = done.stdout.split()
        stats.files_total, stats.bytes_total = int(files), int(size)


def preflight(cfg: PrepConfig, journals: list[journal.Journal]) -> None:
    """Run every new drive through the safety checks before the first one is formatted,
    so a refused drive stops prep before the session has begun."""
    known = {str(Path(j.drive.path).resolve()) for j in journals}
    stagings = [cfg.srcdir] if cfg.dataset is None else [
        s.base if s.is_dir else os.path.dirname(s.base) for s in cfg.dataset]
    seen: set[str] = set()
    for path in cfg.drives:
        real = str(Path(path).resolve())
        if real in seen:
            raise BadInput(f"--drive {path} is given twice")
        seen.add(real)
        if real in known:
            continue
        size = cfg.drive_size if not Path(path).exists() else None
        key = cfg.existing_keys.get(real)  # AlreadyEncrypted: it holds a volume, kept
        for staging in stagings:  # in use, mounted, the source disk: refused all the same
            drives.check_target(path, size=None if key is not None else size,
                                staging=staging, confirmed=cfg.yes or key is not None)
        if key is not None:  # and its key tried before anything starts
            _check_existing_key(path, key, cfg.session_id)


def _check_existing_key(path: str, key: str, session_id: str) -> None:
    """An AlreadyEncrypted drive must be a LUKS2 volume its ExistingBitLockerKey opens; one
    that holds our earlier sessions must be one this session can continue (all closed,
    room left: ``drivepool.continuation`` refuses it otherwise, naming why)."""
    with drives.open_drive(path) as drive:
        try:
            volume = drives.read_volume(drive)
        except errors.IntegrityError as exc:
            raise BadInput(f"{path}: the driveset says AlreadyEncrypted, but it holds no LUKS2 "
                           f"volume ({exc}); say Format,...,Encrypt to have it formatted"
                           ) from None
        _, vkey = drives.unlock(drive, volume, key.encode(),
                                "ExistingBitLockerKey (driveset.csv)")
        drivepool.continuation(path, drive, volume, drives.DriveCipher.for_volume(volume, vkey),
                               session_id)


def keys_command(journals: list[journal.Journal]) -> str:
    """The command that shows these drives' recovery passwords, ready to copy."""
    if not journals:
        return "pipeline keys --journal-dir JDIR"
    j = journals[0]
    return (f"pipeline keys --journal-dir {shlex.quote(str(j.path.parent.resolve()))} "
            f"--session-id {shlex.quote(j.session.session_id)}")


def _summary(pool: DrivePool, stats: progress.Stats) -> dict[str, Any]:
    """The `summary` event's fields.  No recovery password: --json output is usually
    redirected to a file anyone may read; the event names the command that shows them."""
    out = []
    for j in sorted(pool.journals, key=lambda j: j.drive.seq):
        c = j.counts()
        out.append({"seq": j.drive.seq, "path": j.drive.path, "state": j.drive.state,
                    "uuid": j.drive.uuid, "capacity": j.drive.data_area_size,
                    "used": j.drive.log_offset + j.drive.index_length, **c,
                    "journal": str(j.path)})
    return {**stats.statistics(), "drives": out, "keys_command": keys_command(pool.journals)}


def _skipped_summary(skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """The summary's list of entries not copied; a path that is not UTF-8 stays
    surrogate-escaped (JSON writes it as a \\udcXX escape; os.fsencode gives the bytes back)."""
    return {"skipped": [{"path": p, "reason": r} for p, r in skipped]}


def _print_summary(summary: dict[str, Any], stats: progress.Stats,
                   journals: list[journal.Journal], verbose: bool) -> None:
    """The summary on stderr, the drive table on stdout.  The recovery passwords go in
    the table only when stdout is a terminal: redirected to a log, they would sit in a
    file others may read; there the table says how to show them."""
    for line in progress.format_summary(stats, verbose=verbose):
        print(line, file=sys.stderr)
    if summary.get("skipped"):  # named once already, as they were met
        print(f"skipped  {len(summary['skipped'])} staging entries not copied (named above; "
              "recorded in the journals)", file=sys.stderr)
    on_terminal = sys.stdout.isatty()
    passwords = {j.drive.seq: j.recovery_password for j in journals} if on_terminal else {}
    print("drive  state    used / capacity          files  journal"
          + (" / recovery password" if on_terminal else ""))
    for d in summary["drives"]:
        print(f"{d['seq']:>5}  {d['state']:<7}  {drives.human(d['used']):>10} / "
              f"{drives.human(d['capacity']):<10}  {d['files']:>7}  {d['path']}")
        print(f"{'':>45}  {d['journal']}")
        if d["seq"] in passwords:
            print(f"{'':>45}  recovery password: {passwords[d['seq']]}")
    if not on_terminal and summary["drives"]:
        print(f"recovery passwords: not printed (stdout is not a terminal); show them where "
              f"nobody else can see with: {summary['keys_command']}")
    print(f"{REMINDER}  Show them again with: {summary['keys_command']}", file=sys.stderr)


def _abort(args: argparse.Namespace) -> Outcome:
    journals = journal.session_journals(args.journal_dir, args.session_id)
    if not journals:
        raise BadInput(f"no journals of session {args.session_id} in {args.journal_dir}")
    for j in journals:
        j.set_state("void")
        print(f"drive {j.drive.seq} ({j.drive.path}): void")
        j.close()
    print(f"session {args.session_id} aborted: its drives must not be shipped; "
          "format them again for a new session", file=sys.stderr)
    return Outcome()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """prep's arguments from ``argv``, exactly as `pipeline prep ARGV` parses them: diskprep
    runs the prep a user would run with these flags, in its own process."""
    parser = argparse.ArgumentParser(prog="pipeline")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["prep", *argv])


def _open_session(args: argparse.Namespace) -> list[journal.Journal]:
    """The session's journals (none for a new session), once the journal directory exists
    and the session is in a state this command may continue."""
    jdir = Path(args.journal_dir)
    if not jdir.is_dir():
        if args.resume:
            raise BadInput(f"journal directory {jdir} does not exist; give the one of the session")
        return []  # made by _make_journal_dir once the inputs are checked
    journals = journal.session_journals(jdir, args.session_id)
    if args.resume and not journals:
        raise BadInput(f"no journals of session {args.session_id} in {jdir}; check "
                       "--journal-dir and --session-id (a session that never began is started "
                       "without --resume)")
    if not args.resume and journals:
        raise BadInput(f"session {args.session_id} already has journals in {jdir}; continue it "
                       "with --resume, or end it with --abort")
    if any(j.drive.state == "void" for j in journals):
        raise BadInput(f"session {args.session_id} was aborted; start a new session")
    return journals


def _make_journal_dir(jdir: Path) -> None:
    """A new session's journal directory (0700), made only once its inputs are checked:
    bad input leaves nothing behind, not even an empty directory."""
    try:
        jdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        if errors.is_no_space(exc):
            raise errors.NoSpace(jdir, f"journal directory {jdir}") from None
        raise BadInput(f"cannot create journal directory {jdir}: {exc.strerror}") from None


@dataclass
class _Copy:
    """One prep run: the state its callbacks, its Ctrl-C watcher and its report share."""

    cfg: PrepConfig
    journals: list[journal.Journal]
    renderer: progress.Renderer
    stats: progress.Stats
    counted: bool                       # the totals are known before the copy begins
    json_mode: bool
    verbose: bool = False
    # diskprep runs prep inside itself: it says the next step and ends the event stream
    resume_with: str = ""
    embedded: bool = False
    pool: DrivePool | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    interrupts: list[str] = field(default_factory=list)   # "soft", then "hard"

    def on_skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        self.renderer.event("warning", message=f"skipped {names.show(path)}: {reason}")

    def on_full(self, writer: DriveWriter) -> None:
        info = writer.journal.drive
        self.stats.drives[f"drive {info.seq}"].state = "full"
        self.renderer.event("drive_full", seq=info.seq, path=info.path)

    def on_changed(self, path: str, message: str) -> None:
        self.changed.append(path)
        self.renderer.event("warning", message=message)

    async def watch_sigint(self, stop: trio.CancelScope, everything: trio.CancelScope) -> None:
        """borg's model: the first Ctrl-C finishes what is in flight, the second stops now
        (cli makes SIGTERM and SIGHUP a Ctrl-C too)."""
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if not self.interrupts:
                    self.interrupts.append("soft")
                    stop.cancel()
                    self.renderer.event("warning", message="interrupted: writing and "
                                        "committing what was read; press Ctrl-C again to "
                                        "stop at once")
                else:
                    self.interrupts.append("hard")
                    everything.cancel()

    async def run(self) -> None:
        """The pipeline, beside the ticker, the Ctrl-C watcher and (block blobs) the count."""
        cfg, stats = self.cfg, self.stats
        session = Session(cfg.srcdir, cfg.dstdir, self.journals)
        self.pool = DrivePool(cfg, self.journals, trio.CapacityLimiter(cfg.cpu_threads), stats)
        stop = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.ticker, stats, self.renderer)
            nursery.start_soon(self.watch_sigint, stop, nursery.cancel_scope)
            try:
                async with trio.open_nursery() as work:
                    if not self.counted:
                        work.start_soon(count_totals, cfg, stats)
                    await run_prep(cfg, session, self.pool, stats, self.on_skip,
                                   self.on_changed, self.on_full, stop)
            finally:
                nursery.cancel_scope.cancel()

    @property
    def resume_hint(self) -> str:
        if self.resume_with:
            return self.resume_with
        return (f"pipeline prep --resume --journal-dir {self.cfg.jdir} --session-id "
                f"{self.cfg.session_id}")

    def out_of_drives(self) -> str:
        s = self.stats
        more = " (or --additional-driveset FILE)" if self.cfg.dataset is not None else ""
        return (f"every drive is full after {drives.human(s.bytes_done)} of "
                f"{drives.human(s.bytes_total)}; add drives, then: pipeline prep --resume "
                f"--journal-dir {self.cfg.jdir} --session-id {self.cfg.session_id} --drive NEW"
                + more)

    def failed(self, group: BaseExceptionGroup) -> None:
        """The copy stopped on an error: name the next step, emit the `exit` event."""
        first = errors.worst(group)  # a writer's error arrives inside nested nursery groups
        assert isinstance(first, PipelineError)
        if isinstance(first, errors.NoSpace) and self.pool and self.pool.journals:
            first.next_step(f"continue with: {self.resume_hint}")
        if not self.embedded:
            self.renderer.event("exit", code=first.exit_code, message=str(first))
        self.renderer.close()

    def ending(self, code: int, message: str) -> tuple[int, str]:
        """The exit code and message once the copy returned: interrupted (over a drive that
        filled meanwhile too), done with warnings, or as it came."""
        s = self.stats
        if self.interrupts:
            return EXIT_INTERRUPTED, (
                f"interrupted after {drives.human(s.bytes_done)} of "
                f"{drives.human(s.bytes_total)}"
                + ("; what was read is committed" if self.interrupts == ["soft"] else "")
                + f"; continue with: {self.resume_hint}")
        stale = _rewrite_stale_indexes(self.pool) if self.pool else []
        if code or not (self.changed or self.skipped or stale):
            return code, message
        notes = stale[:]
        if self.changed:
            notes.append(f"{len(self.changed)} file(s) changed while being read (first: "
                         f"{self.changed[0]}); run the same command with --resume to write "
                         "them again")
        if self.skipped:
            notes.append(f"{len(self.skipped)} staging entries skipped (named above; "
                         "recorded in the journals)")
        return EXIT_WARNING, "; ".join(notes)

    def report(self, code: int, message: str) -> None:
        """Record what was skipped, then the summary and (--json) the `exit` event."""
        try:
            for j in self.journals:
                j.set_skipped(self.skipped)
        except errors.NoSpace as exc:  # the drives are done; --resume records this again
            exc.next_step(f"continue with: {self.resume_hint}")
            raise
        self.renderer.update(self.stats, force=True)
        summary = _summary(self.pool, self.stats) if self.pool else {"drives": []}
        summary.update(_skipped_summary(self.skipped))
        if self.json_mode:
            self.renderer.event("summary", **summary)
            if not self.embedded:
                self.renderer.event("exit", code=code, message=message)
            self.renderer.close()
        else:
            self.renderer.close()
            _print_summary(summary, self.stats, self.pool.journals if self.pool else [],
                           self.verbose)
        for j in self.journals:
            j.close()


async def run(args: argparse.Namespace) -> Outcome:
    """`pipeline prep`, and diskprep's prep (see ``parse_args``)."""
    drives.check_session_id(args.session_id)
    if args.abort:
        return _abort(args)
    if getattr(args, "move_shard", None) and not getattr(args, "cluster", None):
        raise BadInput("--move-shard moves a worker's shard: use it with --cluster --resume")
    if getattr(args, "cluster", None):  # the cluster's own path: pipeline/cluster/prep.py
        from pipeline.cluster import prep as cluster_prep
        return await cluster_prep.run(args, _options.kdf_from_args(args))
    journals = _open_session(args)
    cfg = _config(args, journals)
    if not cfg.drives and not args.resume:
        raise BadInput("give at least one --drive (block device or image file)")
    renderer = progress.make_renderer(args.json)
    stats = progress.Stats()
    counted = cfg.blob_type is format.BlobType.PAGE or cfg.dataset is not None
    if cfg.dataset is not None:  # checked when loaded; counted here for progress and ETA
        for src, _, _ in datasetio.walk(cfg.dataset):
            stats.files_total += 1
            stats.bytes_total += src.size
    elif counted:
        _prescan(cfg, stats)
    else:
        scan.scan(cfg.srcdir)  # a missing or unreadable staging root stops prep here
    preflight(cfg, journals)
    _make_journal_dir(cfg.jdir)
    if cfg.dataset is not None and not journals:  # before the first journal: --resume needs it
        datasetio.save(cfg.jdir, cfg.session_id, cfg.dataset)
    renderer.start("prep", session_id=cfg.session_id, srcdir=str(cfg.srcdir),
                   files=stats.files_total if counted else None,
                   bytes=stats.bytes_total if counted else None, fill=cfg.fill)
    current = _Copy(cfg, journals, renderer, stats, counted, args.json,
                    getattr(args, "verbose", False), getattr(args, "resume_with", ""),
                    getattr(args, "embedded", False))
    code, message = EXIT_OK, "done"
    try:
        await current.run()
    except* OutOfDrives:
        code, message = EXIT_OUT_OF_DRIVES, current.out_of_drives()
    except* PipelineError as group:
        current.failed(group)
        raise
    code, message = current.ending(code, message)
    current.report(code, message)
    if code == EXIT_OUT_OF_DRIVES:
        raise OutOfDrives(message)
    if code == EXIT_INTERRUPTED:
        raise Interrupted(message)
    return Outcome(code, message if code else "")
