"""`pipeline repair`: compare the storage account with the journals; re-send what is wrong.

Every blob of the session is checked extent by extent (size, then xxh3-128 of
each 1 MiB cell against the journal).  Blobs that are missing or differ are
sent again from the staging directory over the network, after checking that
the source still matches what was prepared.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

from pipeline import journal
from pipeline.commands import _options
from pipeline.drive import codec, format
from pipeline.errors import EXIT_INTEGRITY, EXIT_STORAGE, BadInput, IntegrityError, Outcome
from pipeline.storage import open_storage
from pipeline.storage.base import Storage

EXITS = (EXIT_INTEGRITY, EXIT_STORAGE)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "repair", help="re-send missing or corrupt blobs from the source",
        description="Compare the storage account against the journals (size and xxh3-128 "
        "of every extent) and re-send from the staging directory only the blobs that are "
        "missing or corrupt.  Prints what it re-sent.")
    p.add_argument("--journal-dir", required=True, metavar="JDIR",
                   help="the session's journal directory (from prep)")
    p.add_argument("--session-id", metavar="ID", help="the session (if JDIR holds several)")
    _options.add_aliased(p, "--source", ("--srcdir",), required=True, metavar="DIR",
                         help="the staging directory prep copied")
    p.add_argument("--to", metavar="STORAGE", help="storage account (as for import)")
    p.add_argument("--dry-run", action="store_true", help="compare only; send nothing")
    p.add_argument("--json", action="store_true", help="JSON Lines: one object per blob")
    p.set_defaults(func=run)


@dataclass
class Expected:
    entry: format.FileEntry
    extents: dict[int, format.Extent]


def expected_blobs(journals: list[journal.Journal]) -> dict[str, Expected]:
    """The newest copy of every file across the session's journals, with its extents."""
    out: dict[str, Expected] = {}
    for j in journals:
        for f in j.files():
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


def compare(store: Storage, container: str, exp: Expected) -> str | None:
    """Why the stored blob differs from the journal, or None when it matches."""
    f = exp.entry
    size = store.size(container, f.blob)
    if size is None:
        return "missing"
    if size != f.size:
        return f"size {size}, expected {f.size}"
    for offset, ext in sorted(exp.extents.items()):
        data = store.read(container, f.blob, offset, ext.raw_len)
        if xxhash.xxh3_128_digest(data) != ext.xxh3:
            return f"extent at {offset} differs (xxh3)"
    return None


def resend(store: Storage, container: str, blob_type: format.BlobType, srcdir: Path,
           exp: Expected) -> int:
    """Upload the file again from staging, checking each cell against the journal."""
    f = exp.entry
    path = srcdir / f.path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{path} is gone from the staging directory; cannot re-send {f.blob}"
                       ) from None
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        raise BadInput(f"{path} changed since it was prepared; cannot re-send {f.blob} "
                       "exactly (prepare it again)")
    store.discard(container, f.blob)
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
            store.write_part(container, f.blob, blob_type, f.size, offset, raw)
            sent += len(raw)
    store.commit(container, f.blob, blob_type, f.size, zero)
    return sent


def run(args: argparse.Namespace) -> Outcome:
    journals = journal.one_session(args.journal_dir, args.session_id)
    session = journals[0].session
    container = session.dstdir.split("/", 1)[0]
    blob_type = format.BlobType(session.blob_type)
    store = open_storage(args.to or os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
    store.check()
    srcdir = Path(args.source)
    if not srcdir.is_dir():
        raise BadInput(f"staging directory {srcdir} does not exist")
    blobs = expected_blobs(journals)
    for j in journals:
        j.close()
    failed, resent, checked = [], 0, 0
    for name, exp in sorted(blobs.items()):
        checked += 1
        why = compare(store, container, exp)
        if why is None:
            continue
        if args.dry_run:
            _say(args.json, {"blob": name, "status": "differs", "reason": why})
            failed.append(name)
            continue
        try:
            sent = resend(store, container, blob_type, srcdir, exp)
        except BadInput as exc:
            _say(args.json, {"blob": name, "status": "failed", "reason": str(exc)})
            failed.append(name)
            continue
        resent += 1
        _say(args.json, {"blob": name, "status": "re-sent", "reason": why, "bytes": sent})
    store.sync()
    summary = f"checked {checked} blob(s), re-sent {resent}"
    if failed:
        raise IntegrityError(f"{summary}; {len(failed)} still differ (first: {failed[0]})")
    _say(args.json, {"status": "summary", "checked": checked, "re_sent": resent})
    return Outcome()


def _say(as_json: bool, obj: dict) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False))
    elif obj.get("status") == "summary":
        print(f"checked {obj['checked']} blob(s), re-sent {obj['re_sent']}; the account now "
              "matches the journals")
    else:
        extra = f" ({obj['bytes']} bytes)" if "bytes" in obj else ""
        print(f"{obj['status']}: {obj['blob']}: {obj['reason']}{extra}")
