"""`pipeline repair`: compare the storage account with the journals; re-send what is wrong.

Every blob of the session is checked extent by extent (size, then xxh3-128 of
each 1 MiB cell against the journal).  Blobs that are missing or differ are
sent again from the staging directory over the network, after checking that
the source still matches what was prepared.

A dataset's file (format version 2) is checked where import put it: its own
container, blob type, and the name the import's marker recorded (a ``rename``
disposition may have chosen ``name (2).ext``); what is re-sent gets its metadata
and properties again, and a blob whose bytes match but whose attributes do not
gets them back.  A dataset file no import marker names (its drive never imported)
is re-sent only where its disposition allows without a decision of the import's:
absent, or ``overwrite``; an existing blob is kept under ``no-overwrite`` and
refused (one line) under ``rename``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import trio
import xxhash

from pipeline import journal, names, progress
from pipeline.commands import _options
from pipeline.drive import codec, format
from pipeline.drive.attrs import Disposition
from pipeline.errors import EXIT_INTEGRITY, EXIT_STORAGE, BadInput, IntegrityError, Outcome
from pipeline.receive import disposition
from pipeline.storage import open_storage
from pipeline.storage.base import Storage

EXITS = (EXIT_INTEGRITY, EXIT_STORAGE)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "repair", help="re-send missing or corrupt blobs from the source",
        description="Compare the storage account against the journals (size and xxh3-128 "
        "of every extent) and re-send from the staging directory only the blobs that are "
        "missing or corrupt.  Prints what it re-sent.")
    p.add_argument("--journal-dir", metavar="JDIR",
                   help="the session's journal directory (from prep)")
    p.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    _options.add_aliased(p, "--source", ("--srcdir",), metavar="DIR",
                         help="the staging directory prep copied (a --dataset session: "
                         "default /, its files' paths are absolute)")
    p.add_argument("--to", metavar="STORAGE", help="storage account (as for import)")
    p.add_argument("--dry-run", action="store_true", help="compare only; send nothing")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines events on stdout: start, progress, one `blob` event per blob "
                   "that differs, summary, exit")
    e = p.add_argument_group("--export: an export job's returned drives (Azure's RepairExport)")
    e.add_argument("--export", action="store_true",
                   help="compare the files unpacked from an export job's drives (--target) "
                   "with the job's blob list, and fetch what is missing or differs from the "
                   "account (--from)")
    e.add_argument("--job", metavar="NAME", help="the export job")
    e.add_argument("--publish-settings", metavar="FILE",
                   help="the subscription's publish settings file")
    e.add_argument("--service", metavar="URL",
                   help="the service (default: the URL in the publish settings)")
    e.add_argument("--resource-group", metavar="NAME", help="the job's resource group")
    e.add_argument("--ca-file", metavar="PEM", help="CA certificate to trust for https")
    e.add_argument("--from", dest="account", metavar="STORAGE",
                   help="the storage account the blobs were exported from")
    e.add_argument("--target", metavar="DIR", help="where pipeline unpack wrote the files")
    p.set_defaults(func=run)


@dataclass
class Expected:
    entry: format.FileEntry
    extents: dict[int, format.Extent]


def expected_blobs(journals: list[journal.Journal]) -> dict[str, Expected]:
    """The newest copy of every file across the session's journals, with its extents (a
    dataset's file with its attributes; its ``blob`` is then ``container/name``)."""
    out: dict[str, Expected] = {}
    for j in journals:
        for f in disposition.with_attrs(j, {f.file_id: f for f in j.files()}).values():
            cur = out.get(f.blob)
            if cur is None or cur.entry.file_id < f.file_id:
                out[f.blob] = Expected(f, {})
    ids = {e.entry.file_id: e for e in out.values()}
    for j in journals:
        for ext in j.extents():
            exp = ids.get(ext.file_id)
            if exp is not None:
                exp.extents[ext.offset] = ext
    return out


def compare(store: Storage, container: str, exp: Expected, blob: str | None = None
            ) -> str | None:
    """Why the stored blob (``blob``, else the entry's) differs from the journal, or None
    when it matches."""
    f = exp.entry
    blob = f.blob if blob is None else blob
    size = store.size(container, blob)
    if size is None:
        return "missing"
    if size != f.size:
        return f"size {size}, expected {f.size}"
    for offset, ext in sorted(exp.extents.items()):
        data = store.read(container, blob, offset, ext.raw_len)
        if xxhash.xxh3_128_digest(data) != ext.xxh3:
            return f"extent at {offset} differs (xxh3)"
    return None


def attrs_differ(store: Storage, container: str, blob: str, exp: Expected) -> str | None:
    """Why a dataset blob's type, metadata or properties are not the file's, or None."""
    want = exp.entry.attrs
    if want is None:
        return None
    try:
        have = store.get_attributes(container, blob)
    except BadInput:  # a local account's attributes file torn by a crash
        return "its attributes are unreadable"
    if have is None:
        return "its attributes are missing"
    if have.blob_type is not format.BlobType(want.blob_type):
        return f"it is a {have.blob_type.name.lower()} blob"
    if have.metadata != dict(want.metadata):
        return "its metadata differ"
    props = dict(want.properties)
    if any(have.properties.get(k) != v for k, v in props.items()) or (
            "Content-MD5" not in have.properties):
        return "its properties differ"
    return None


def resend(store: Storage, container: str, blob_type: format.BlobType, srcdir: Path,
           exp: Expected, blob: str | None = None) -> int:
    """Upload the file again from staging (to ``blob``, else the entry's name), checking
    each cell against the journal; a dataset's file gets its attributes again."""
    f = exp.entry
    blob = f.blob if blob is None else blob
    path = srcdir / f.path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{path} is gone from the staging directory; cannot re-send {f.blob}"
                       ) from None
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        raise BadInput(f"{path} changed since it was prepared; cannot re-send {f.blob} "
                       "exactly (prepare it again)")
    if f.attrs is not None:
        store.ensure_container(container)
        have = store.get_attributes(container, blob)
        if have is not None and have.blob_type is not blob_type:  # no change of type
            store.delete(container, blob)  # in place (as import's overwrite)
    store.discard(container, blob)
    zero = []
    sent = 0
    with open(path, "rb") as fh:
        for offset in range(0, f.size, 1 << 20):
            raw = os.pread(fh.fileno(), min(1 << 20, f.size - offset), offset)
            ext = exp.extents.get(offset)
            if ext is None or xxhash.xxh3_128_digest(raw) != ext.xxh3:
                raise BadInput(f"{path} at {offset} no longer matches the journal; cannot "
                               f"re-send {f.blob} exactly")
            if codec.is_zero(raw):
                zero.append(offset)
                continue
            store.write_part(container, blob, blob_type, f.size, offset, raw)
            sent += len(raw)
    store.commit(container, blob, blob_type, f.size, zero)
    if f.attrs is not None:
        store.set_attributes(container, blob, blob_type, f.attrs.metadata, f.attrs.properties)
    return sent


async def run(args: argparse.Namespace) -> Outcome:
    if args.export:
        from pipeline.commands import export  # the export side's repair lives with export

        return await export.run_repair(args)
    if not args.journal_dir:
        raise BadInput("repair needs --journal-dir JDIR and --source STAGING (or --export "
                       "for an export job's drives)")
    journals = journal.one_session(args.journal_dir, args.session_id)
    session = journals[0].session
    container = session.dstdir.split("/", 1)[0]
    blob_type = format.BlobType(session.blob_type)
    blobs = expected_blobs(journals)
    for j in journals:
        j.close()
    dataset = any(e.entry.attrs is not None for e in blobs.values())
    if not args.source and not dataset:
        raise BadInput("repair needs --journal-dir JDIR and --source STAGING (or --export "
                       "for an export job's drives)")
    store = open_storage(args.to or os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    store.check()
    srcdir = Path(args.source or session.srcdir)
    if not srcdir.is_dir():
        raise BadInput(f"staging directory {srcdir} does not exist")
    decided = (await disposition.decided_blobs(store, session.session_id,
                                                trio.CapacityLimiter(1)) if dataset else {})
    stats = progress.Stats(files_total=len(blobs),
                           bytes_total=sum(e.entry.size for e in blobs.values()))
    renderer = progress.make_renderer(args.json)
    renderer.start("repair", storage=store.name, files=stats.files_total,
                   bytes=stats.bytes_total, dry_run=args.dry_run)
    work = _Repair(store, container, blob_type, srcdir, args.dry_run, renderer, stats)
    work.decided = decided
    await progress.with_progress(renderer, stats, lambda: trio.to_thread.run_sync(
        work.all, sorted(blobs.items()), limiter=trio.CapacityLimiter(1)))
    store.sync()
    renderer.update(stats, force=True)
    summary = (f"checked {stats.files_done} blob(s) ({progress.format_size(stats.bytes_read)}, "
               f"{progress.format_duration(stats.elapsed())}, "
               f"{progress.format_rate(stats.rate())}), re-sent {work.resent}")
    if args.json:
        renderer.event("summary", **stats.statistics(), checked=stats.files_done,
                       re_sent=work.resent, failed=work.failed)
    renderer.close()
    if work.failed:
        raise IntegrityError(f"{summary}; {len(work.failed)} still differ "
                             f"(first: {work.failed[0]})")
    if not args.json:
        print(f"{summary}; the account now matches the journals")
    return Outcome()


class _Repair:
    """Each blob compared with the journal and, unless a dry run, sent again from staging;
    one worker thread, the counters read by the progress ticker."""

    def __init__(self, store: Storage, container: str, blob_type: format.BlobType,
                 srcdir: Path, dry_run: bool, renderer: progress.Renderer,
                 stats: progress.Stats) -> None:
        self.store, self.container, self.blob_type = store, container, blob_type
        self.srcdir, self.dry_run, self.renderer, self.stats = srcdir, dry_run, renderer, stats
        self.failed: list[str] = []
        self.resent = 0
        self.decided: dict[int, str] = {}  # a dataset file's blob, as its import decided

    def all(self, blobs: list[tuple[str, Expected]]) -> None:
        for name, exp in blobs:
            self.one(name, exp)
            self.stats.files_done += 1
            self.stats.bytes_read += exp.entry.size

    def target(self, exp: Expected) -> tuple[str, str, format.BlobType]:
        """Where the file's blob is: the session's container, or a dataset file's own
        (the name its import's marker recorded, which a ``rename`` may have changed)."""
        f = exp.entry
        c, blob, btype = disposition.where(f, self.container, self.blob_type)
        got = self.decided.get(f.file_id) if f.attrs is not None else None
        if got is not None:
            dc, _, dname = got.partition("/")
            if dc != c or names.blob_problem(dname) is not None:
                raise IntegrityError(f"an import marker of this session gives {f.blob} the "
                                     f"blob {names.show(got)}, which is not one import "
                                     "chooses; delete the marker and import the drive again")
            blob = dname
        return c, blob, btype

    def one(self, name: str, exp: Expected) -> None:
        c, blob, btype = self.target(exp)
        name = f"{c}/{blob}" if exp.entry.attrs is not None else name
        why = compare(self.store, c, exp, blob)
        attrs_only = False
        if why is None:
            why = attrs_differ(self.store, c, blob, exp)
            attrs_only = why is not None and not why.startswith("it is a ")  # a type: resend
        if why is None:
            return
        undecided = exp.entry.attrs is not None and exp.entry.file_id not in self.decided
        rule = exp.entry.attrs.disposition if exp.entry.attrs is not None else None
        if undecided and why != "missing" and rule is not Disposition.OVERWRITE:
            if rule is Disposition.NO_OVERWRITE:  # as import would: the existing one stays
                self.say({"blob": name, "status": "kept", "reason": "no-overwrite: no import "
                          "of this session wrote it, and the existing blob is kept"})
                return
            self.say({"blob": name, "status": "failed", "reason": "rename: the blob exists "
                      "and no import of this session chose this file's name; import its "
                      "drive (it renames the file), then repair"})
            self.failed.append(name)
            return
        if self.dry_run:
            self.say({"blob": name, "status": "differs", "reason": why})
            self.failed.append(name)
            return
        try:
            if attrs_only:
                f = exp.entry
                assert f.attrs is not None
                self.store.set_attributes(c, blob, btype, f.attrs.metadata, f.attrs.properties)
                sent = 0
            else:
                sent = resend(self.store, c, btype, self.srcdir, exp, blob)
        except BadInput as exc:
            self.say({"blob": name, "status": "failed", "reason": str(exc)})
            self.failed.append(name)
            return
        self.resent += 1
        self.say({"blob": name, "status": "re-sent", "reason": why, "bytes": sent})

    def say(self, obj: dict[str, object]) -> None:
        """A blob's outcome: an event (--json), else a line on stdout."""
        if isinstance(self.renderer, progress.JsonRenderer):
            self.renderer.event("blob", **obj)
            return
        extra = f" ({obj['bytes']} bytes)" if "bytes" in obj else ""
        print(f"{obj['status']}: {obj['blob']}: {obj['reason']}{extra}")
