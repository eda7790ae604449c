"""WAImportExport's /Disposition at import, and where a dataset's file goes.

A file from a dataset (format version 2: its FileEntry carries ``attrs``) names its own
container (``blob`` is ``container/name``), blob type, disposition, metadata and
properties; any other file goes to the drive's container under the superblock's type
(``where``).  Before a part is written, ``resolve`` decides, file by file, what to do
when the blob exists already:

- ``rename``: the existing blob stays; the file is stored as ``name (2).ext`` (the
  first free number), and the copy log says so;
- ``no-overwrite``: the existing blob stays; the file is skipped and logged;
- ``overwrite``: the file replaces it.

A decision is made once: the drive's marker records each file's blob (the renamed
one), so an import resumed after a crash, another drive holding the rest of the
file, or the same drive imported again finds it there and writes to the same
blob.  "Exists" means committed: a blob this session left partial is its own.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from typing import Any

import trio

from pipeline import journal
from pipeline.drive import format
from pipeline.drive.attrs import Disposition
from pipeline.receive.copylog import CopyLog
from pipeline.receive.markers import read_markers
from pipeline.storage.base import Storage

# ``commit.FileOnDrive`` and ``plan.DrivePlan`` are not imported: both modules import this.
FileOnDrive = Any
DrivePlan = Any

__all__ = ["decided_blobs", "journal_attrs", "md5_feed", "properties_of", "renamed", "resolve",
           "where", "with_attrs"]

MAX_RENAMES = 10_000  # "name (N).ext" tried before the file is logged as not written


def where(f: format.FileEntry, container: str, blob_type: format.BlobType
          ) -> tuple[str, str, format.BlobType]:
    """(container, blob name, blob type) the file imports into."""
    if f.attrs is None:
        return container, f.blob, blob_type
    c, _, name = f.blob.partition("/")
    return c, name, format.BlobType(f.attrs.blob_type)


def attrs_problem(f: format.FileEntry, sb: format.Superblock) -> str | None:
    """Why a dataset's file (one with ``attrs``) cannot be imported as recorded, or None:
    prep held it to these rules, so a breach is damage or a forged drive."""
    from pipeline import names
    from pipeline.receive.markers import STATE_CONTAINER
    from pipeline.storage.base import MAX_BLOB_SIZE

    assert f.attrs is not None
    c, name, btype = where(f, "", format.BlobType.BLOCK)
    if sb.version < format.ATTRS_VERSION:
        return "it carries attributes, which a version-1 drive never does"
    if c == STATE_CONTAINER or names.container_problem(c) is not None:
        return f"container {names.show(c)} is not one prep writes"
    why = names.blob_problem(name) or names.root_blob_problem(c, name)
    if why is not None:
        return f"blob {names.show(name)}: {why}"
    if f.size > MAX_BLOB_SIZE[btype]:
        return (f"size {f.size} exceeds the largest {btype.name.lower()} blob Azure holds "
                f"({MAX_BLOB_SIZE[btype]} bytes)")
    if btype is format.BlobType.PAGE:
        return names.page_blob_problem(f.size)
    return None


def renamed(name: str, n: int) -> str:
    """``dir/name.ext`` -> ``dir/name (n).ext`` (WAImportExport's form; a leading dot or no
    dot: the number goes at the end)."""
    head, sep, leaf = name.rpartition("/")
    stem, dot, ext = leaf.rpartition(".")
    leaf = f"{stem} ({n}).{ext}" if dot and stem else f"{leaf} ({n})"
    return head + sep + leaf


def journal_attrs(jrn: journal.Journal, sb: format.Superblock,
                  files: dict[int, format.FileEntry]) -> dict[int, format.FileEntry]:
    """The journal's file entries with their attributes: its table keeps each record's
    bytes, not the attributes, so a version-2 drive's are read back from those bytes
    (the closing index it would write)."""
    if sb.version < format.ATTRS_VERSION:
        return files
    return with_attrs(jrn, files)


def with_attrs(jrn: journal.Journal, files: dict[int, format.FileEntry]
               ) -> dict[int, format.FileEntry]:
    """``journal_attrs`` without a superblock (repair has none): the journal's records
    decoded whatever their version; a version-1 drive's simply carry no attributes.

    The file records are decoded a batch at a time from the journal's rows (each checked
    as the index's decoder checks it), not from the closing index built and decoded
    whole: that held the index's bytes and every file's and extent's record at once
    (issue 18: memory flat in file count)."""
    out = dict(files)
    if not out:  # a drive with nothing on it yet (or void)
        return out
    for batch in jrn.file_records():
        for rec in format.decode_records(b"".join(batch), "the journal's file records"):
            if isinstance(rec, format.FileEntry) and rec.file_id in out:
                out[rec.file_id] = rec
    return out


async def decided_blobs(store: Storage, session_id: str, net: trio.CapacityLimiter
                        ) -> dict[int, str]:
    """File id -> the blob (``container/name``) the session's imports wrote a dataset's
    file to, from their markers (checked as hostile there)."""
    out: dict[int, str] = {}
    for m in await read_markers(store, session_id, net):
        for f in m["files"]:
            out[f["file_id"]] = f["blob"]
    return out


async def resolve(plan: DrivePlan, store: Storage, on_drive: Any,
                  log: CopyLog, net: trio.CapacityLimiter) -> None:
    """Each dataset file's container made, and its blob decided (see the module docstring):
    the decision recorded in ``on_drive`` (``commit.OnDrive``: its blob, renamed or not,
    and the copy log's note), skipped ones dropped from it (logged).  The session's
    markers were read into it already (``commit.what_to_write``)."""
    dataset = {fd.entry.file_id: fd for fd in on_drive.rows("f.attrs IS NOT NULL")}
    if not dataset:
        return
    skips = await trio.to_thread.run_sync(_decide_all, store, dataset, on_drive.decided(),
                                          on_drive.claimed(), limiter=net)
    for fid, fd in dataset.items():
        if fid in skips:
            on_drive.pop(fid)
            log.blob("skipped", fd.entry.blob, skips[fid], fd.entry.size, file_id=fid,
                     **fd.note)
        else:
            on_drive.decide(fd)


def _decide_all(store: Storage, dataset: dict[int, FileOnDrive], earlier: dict[int, str],
                claimed: set[str]) -> dict[int, str]:
    """Every file's decision in one storage thread: the containers made, what is there
    listed once per container (under the names' common directory), a blob's type asked only
    when it exists.  Returns the skipped files and why."""
    by_container: dict[str, list[str]] = {}
    for fd in dataset.values():
        c, name, _ = where(fd.entry, "", format.BlobType.BLOCK)
        by_container.setdefault(c, []).append(name)
    present: set[str] = set()
    for c, blobs in sorted(by_container.items()):
        store.ensure_container(c)
        common = os.path.commonprefix(blobs)  # to a directory: "a (2).txt" is listed too
        present.update(f"{c}/{b}" for b in store.list(c, common[:common.rfind("/") + 1]))
    skips = {}
    for fid, fd in dataset.items():
        why = _decide(store, fd, earlier.get(fid), claimed, present)
        if why is not None:
            skips[fid] = why
    return skips


def _decide(store: Storage, fd: FileOnDrive, earlier: str | None, claimed: set[str],
            present: set[str]) -> str | None:
    """Decide one file (a storage thread); the reason it is skipped, or None."""
    f = fd.entry
    attrs = f.attrs
    assert attrs is not None
    rule = attrs.disposition
    note: dict[str, Any] = {"disposition": rule.word}
    fd.note = note
    if earlier is not None:  # decided by an earlier import of this session: keep to it
        note["action"] = "renamed" if earlier != f.blob else "as decided before"
        if earlier != f.blob:
            note["renamed_from"] = f.blob
            fd.entry = dataclasses.replace(f, blob=earlier)
        return None
    c, name, btype = where(f, "", format.BlobType.BLOCK)
    if f.blob not in present:
        note["action"] = "new"
    elif rule is Disposition.NO_OVERWRITE:
        note["action"] = "kept existing"
        return "no-overwrite: the blob exists already; the existing one is kept"
    elif rule is Disposition.OVERWRITE:
        note["action"] = "overwritten"
        have = store.get_attributes(c, name)
        if have is not None and have.blob_type is not btype:  # Azure cannot turn one type
            store.delete(c, name)  # into the other in place
    else:
        for n in range(2, MAX_RENAMES + 2):
            candidate = renamed(name, n)
            if f"{c}/{candidate}" not in claimed and f"{c}/{candidate}" not in present:
                break
        else:
            note["action"] = "not renamed"
            return f"rename: {MAX_RENAMES} names like {renamed(name, 2)!r} are taken already"
        note["action"] = "renamed"
        note["renamed_from"] = f.blob
        fd.entry = dataclasses.replace(f, blob=f"{c}/{candidate}")
    claimed.add(fd.entry.blob)
    return None


# --------------------------------------------------------------------------- Content-MD5

_ZERO_CELL = bytes(format.CELL)  # a zero cell's bytes, fed to the digest (never written)


def _wants_md5(f: format.FileEntry) -> bool:
    return f.attrs is not None and all(k != "Content-MD5" for k, _ in f.attrs.properties)


def _over_zeros(fd: FileOnDrive, state: list[Any]) -> None:
    """Feed the zero cells at the digest's position (they are never written as parts)."""
    size = fd.entry.size
    while state[1] < size and state[1] in fd.zero:
        n = min(format.CELL, size - state[1])
        state[0].update(_ZERO_CELL[:n])
        state[1] += n


def md5_feed(fd: FileOnDrive, offset: int, raw: bytes) -> None:
    """Content-MD5 of a dataset's file computed from its parts as they are written, when
    its properties file gave none: read back after the commit, it cost most of the ~0.8 ms
    a small blob's attributes took.  Parts that arrive in order stream into ``fd.md5``
    (``[digest, next offset]``); one out of order (several uploader threads, or the file
    split across drives) drops it (``False``), and ``set_attributes`` reads the blob back.

    Safe without a lock: a part is fed only at exactly the digest's position and each
    offset comes once, so a digest that reaches the file's end has every byte once, in
    order; a racing thread at worst drops it."""
    if fd.md5 is False or not _wants_md5(fd.entry):
        return
    state = fd.md5
    if state is None:
        state = fd.md5 = [hashlib.md5(usedforsecurity=False), 0]
    _over_zeros(fd, state)
    if offset != state[1]:
        fd.md5 = False
        return
    state[0].update(raw)
    state[1] += len(raw)


def properties_of(fd: FileOnDrive) -> tuple[tuple[str, str], ...]:
    """The properties to set on a dataset file's blob: its own, plus the Content-MD5 its
    parts gave when they all came here in order (else none: ``set_attributes`` computes
    it from the blob).  The digest is released."""
    f = fd.entry
    assert f.attrs is not None
    props = f.attrs.properties
    state, fd.md5 = fd.md5, None
    if not _wants_md5(f) or state is False:
        return props
    if state is None:  # no part here: a file of zeros (or empty)
        state = [hashlib.md5(usedforsecurity=False), 0]
    _over_zeros(fd, state)
    if state[1] != f.size:
        return props
    return (*props, ("Content-MD5", base64.b64encode(state[0].digest()).decode()))
