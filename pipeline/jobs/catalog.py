"""The job catalog: subscriptions, resource groups, jobs, their drives, and the regions.

One SQLite file, ``DATA/catalog.db``, in WAL mode with ``synchronous=FULL``, so
a write that returned is on disk: the service answers 2xx only after the
commit, and a ``kill -9`` loses nothing it acknowledged.  The database and its
``-wal``/``-shm`` files are mode 0600, the data directory 0700.

The API is synchronous and thread-safe: each call takes a connection from a
small pool for one transaction; the ASGI app calls it through worker threads,
and the portal or a command may call it directly.  Writers are serialized by
``BEGIN IMMEDIATE`` (a writer waits for the previous one instead of failing),
and every write reads the job, runs the rules (``model``/``rules``) and stores
the result in one transaction, so two concurrent updates never lose a write.
Each job row has an integer ``version``, bumped by every write: it is the ETag,
and ``if_match`` refuses (412) a write based on a stale read.

Public API (everything else is private)::

    Catalog.open(data_dir) -> Catalog          also: with Catalog.open(d) as catalog: ...
    catalog.add_subscription(name, public_key) -> Subscription
    catalog.subscription(subscription_id) -> Subscription | None
    catalog.subscriptions() -> list[Subscription]
    catalog.locations() -> list[Region];  catalog.location(name) -> Region
    catalog.put_job(ref, body, if_match=None, if_none_match=False) -> (Job, created)
    catalog.get_job(ref) -> Job
    catalog.update_job(ref, patch, if_match=None, role=Role.CUSTOMER) -> Job
    catalog.delete_job(ref, if_match=None) -> None
    catalog.list_jobs(subscription_id, resource_group=None, state=None, top=100,
                      skip_token=None, where=None) -> Page      (where: a filter.Expr)
    catalog.put_copy_log(ref, drive_id, kind, data) -> None
    catalog.copy_log(ref, drive_id, kind) -> bytes | None
    catalog.copy_log_kinds(ref, drive_id) -> list[str]
    catalog.remove_subscription(subscription_id, force=False) -> int   (jobs removed)
    catalog.replace_subscription_key(subscription_id, public_key) -> Subscription
    catalog.bitlocker_keys(ref) -> list[(drive_id, recovery_password)]
    catalog.statistics() -> dict

``ref`` is a ``model.JobRef``; ``body``/``patch`` are ARM JSON (the REST API's
PUT/PATCH bodies), so the portal and the CLI go through exactly the rules the
REST API does.  Errors are ``errors.ApiError`` subclasses (status + ARM code).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline import atomic
from pipeline.errors import BadInput, IntegrityError
from pipeline.jobs import filter, model, regions, rules
from pipeline.jobs.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
)
from pipeline.jobs.model import Job, JobDrive, JobRef
from pipeline.jobs.regions import Region
from pipeline.jobs.rules import DriveState, JobState, Role

DB_NAME = "catalog.db"
KEY_NAME = "catalog.key"
COPY_LOG_DIR = "copylogs"
COPY_LOG_KINDS = ("error", "verbose")
MAX_COPY_LOG = 64 << 20
ENDED = frozenset({JobState.COMPLETED, JobState.CLOSED, JobState.CANCELED})
SITE_ACTOR = "receiving-site"
SCHEMA_VERSION = 1
MAX_TOP = 100  # ARM's limit for $top
BUSY_TIMEOUT_S = 30.0
MAX_IDLE_CONNECTIONS = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id          TEXT PRIMARY KEY,          -- lowercase UUID
    name        TEXT NOT NULL UNIQUE,
    public_key  BLOB NOT NULL,             -- raw Ed25519 public key: verifies tokens, signs none
    created     TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS resource_groups (   -- implicit: created by a job's first PUT
    subscription_id TEXT NOT NULL REFERENCES subscriptions(id),
    key         TEXT NOT NULL,             -- lowercase: ARM names are case-insensitive
    name        TEXT NOT NULL,             -- as first written
    PRIMARY KEY (subscription_id, key)
) STRICT;
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY,   -- stable: binds the drives' encrypted keys
    subscription_id TEXT NOT NULL,
    rg_key          TEXT NOT NULL,
    name            TEXT NOT NULL,
    location        TEXT NOT NULL,
    state           TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    version         INTEGER NOT NULL,      -- the ETag; +1 per write
    created         TEXT NOT NULL,
    updated         TEXT NOT NULL,
    tags            TEXT NOT NULL,         -- JSON object
    details         TEXT NOT NULL,         -- JSON: the other JobDetails fields
    UNIQUE (subscription_id, rg_key, name),
    FOREIGN KEY (subscription_id, rg_key) REFERENCES resource_groups(subscription_id, key)
) STRICT;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, subscription_id);
CREATE TABLE IF NOT EXISTS drives (
    job_id          INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    drive_id        TEXT NOT NULL,
    bitlocker_key   BLOB NOT NULL,         -- AES-256-GCM: nonce || ciphertext+tag
    manifest_file   TEXT NOT NULL,
    manifest_hash   TEXT NOT NULL,
    drive_header_hash TEXT,
    state           TEXT NOT NULL,
    copy_status     TEXT,
    percent_complete INTEGER NOT NULL,
    bytes_succeeded INTEGER NOT NULL,
    error_log_uri   TEXT,
    verbose_log_uri TEXT,
    manifest_uri    TEXT,
    PRIMARY KEY (job_id, drive_id)
) STRICT;
CREATE INDEX IF NOT EXISTS drives_by_serial ON drives(drive_id);
CREATE TABLE IF NOT EXISTS copy_logs (     -- the site's copy logs; the bytes are files
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    drive_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,             -- error | verbose
    file        TEXT NOT NULL,             -- random name under DATA/copylogs/
    size        INTEGER NOT NULL,
    updated     TEXT NOT NULL,
    PRIMARY KEY (job_id, drive_id, kind)
) STRICT;
"""

_DRIVE_COLUMNS = ("drive_id", "manifest_file", "manifest_hash", "drive_header_hash", "state",
                  "copy_status", "percent_complete", "bytes_succeeded", "error_log_uri",
                  "verbose_log_uri", "manifest_uri")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A customer account.  Only the public key is stored: the catalog can check tokens
    but cannot make one."""

    id: str
    name: str
    public_key: bytes = field(repr=False)
    created: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a job listing; pass ``next_token`` back as ``skip_token`` for the next."""

    jobs: list[Job]
    next_token: str | None


class KeyBox:
    """Encrypts recovery passwords at rest (AES-256-GCM, key in ``DATA/catalog.key``, 0600).

    Protects against leaks of the catalog alone: a copied ``catalog.db`` or
    ``-wal`` file, a database backup or dump, a support bundle, or the disk
    holding the database without the key file yield no recovery password.
    Keep the key file out of the catalog's backups (or on another volume) and
    that also covers backups of the data directory.  It does not protect
    against whoever can read the key file (the service's user, root) or runs
    code in the service, which must decrypt to answer ``listBitLockerKeys``.
    The job row id and drive id are authenticated data, so a ciphertext copied
    onto another drive's row fails to decrypt instead of unlocking the wrong drive.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeyBox(<key>)"

    @staticmethod
    def _aad(job_id: int, drive_id: str) -> bytes:
        return f"pipeline-catalog/{job_id}/{drive_id}".encode()

    def seal(self, job_id: int, drive_id: str, password: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, password.encode(), self._aad(job_id, drive_id))

    def open(self, job_id: int, drive_id: str, blob: bytes) -> str:
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], self._aad(job_id, drive_id))
        except InvalidTag:
            raise IntegrityError(f"the recovery password of drive {drive_id} does not decrypt "
                                 f"with {KEY_NAME}: the key file was replaced or the catalog "
                                 "row damaged; restore the key file from backup") from None
        return plain.decode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Catalog:
    """The job catalog in ``data_dir``; see the module docstring for the API."""

    def __init__(self, data_dir: Path, region_map: dict[str, Region],
                 keybox: KeyBox | None) -> None:
        """Use ``Catalog.open``; this only wires up what it prepared."""
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self._regions = region_map
        self._box = keybox
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> Catalog:
        """Open (creating on first use) the catalog, its key file and its regions file."""
        data = Path(data_dir)
        try:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise BadInput(f"--data {data} is a file; give a directory") from None
        except OSError as exc:
            raise BadInput(f"cannot create --data {data}: {exc.strerror}") from None
        if not os.access(data, os.W_OK | os.X_OK):
            raise BadInput(f"--data {data} is not writable by this user; fix its permissions")
        region_map = regions.load(regions.install(data))
        db = data / DB_NAME
        fd = os.open(db, os.O_RDWR | os.O_CREAT, 0o600)  # exists before sqlite creates it
        os.close(fd)
        os.chmod(db, 0o600)
        catalog = cls(data, region_map, None)
        try:
            with catalog._write() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise BadInput(f"{db} was written by a newer pipeline (schema {version}); "
                                   "upgrade pipeline to open it")
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                has_keys = conn.execute("SELECT 1 FROM drives LIMIT 1").fetchone() is not None
            catalog._box = KeyBox(_key_file(data, create=not has_keys))
            catalog._fix_modes()
        except BaseException:
            catalog.close()
            raise
        return catalog

    def close(self) -> None:
        """Close idle connections; ones in use close when their transaction ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _keybox(self) -> KeyBox:
        assert self._box is not None, "Catalog.open sets the key"
        return self._box

    def _fix_modes(self) -> None:
        """SQLite gives -wal/-shm the database's mode; make sure anyway (older files)."""
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.db_path}{suffix}")
            if path.exists() and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection from the pool, for one transaction.  Pooled rather than per
        thread: worker threads come and go, and a connection per dead thread would leak."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the catalog is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction at a time in this process.

        SQLite's busy handler makes waiting writers sleep and retry (up to 100 ms a
        try), so under load the lock sat free while unlucky writers kept losing (the
        load run: p99 2 s for PUT/PATCH, 31 of 40 worker threads asleep there).  A
        process lock queues them fairly; BEGIN IMMEDIATE still guards against other
        processes on the same catalog.
        """
        with self._write_lock, self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot of a job and its drives."""
        with self._conn() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ subscriptions

    def add_subscription(self, name: str, public_key: bytes,
                         subscription_id: str | None = None) -> Subscription:
        """Record a subscription and the public key its tokens are checked with."""
        name = rules.check_subscription_name(name)
        if len(public_key) != 32:
            raise BadRequest("an Ed25519 public key has 32 bytes", "InvalidPublicKey")
        sub = Subscription(id=rules.check_subscription_id(subscription_id or str(uuid.uuid4())),
                           name=name, public_key=public_key, created=_now())
        with self._write() as conn:
            taken = conn.execute("SELECT id FROM subscriptions WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                raise Conflict(f"subscription {name} already exists ({taken['id']}); choose "
                               "another name", "SubscriptionExists")
            conn.execute("INSERT INTO subscriptions (id, name, public_key, created) "
                         "VALUES (?, ?, ?, ?)", (sub.id, sub.name, sub.public_key, sub.created))
        return sub

    def remove_subscription(self, subscription_id: str, *, force: bool = False) -> int:
        """Remove a subscription with its jobs; returns how many jobs went.  Refused (409)
        while a job is not Completed, Closed or Canceled (drives may be on the way or in
        the site), unless ``force``.  Its publish settings file stops working at once."""
        sub_id = rules.check_subscription_id(subscription_id)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM subscriptions WHERE id = ?",
                            (sub_id,)).fetchone() is None:
                raise NotFound(f"subscription {sub_id} does not exist", "SubscriptionNotFound")
            active = [r["name"] for r in conn.execute(
                f"SELECT name FROM jobs WHERE subscription_id = ? AND state NOT IN "
                f"({', '.join('?' * len(ENDED))}) ORDER BY name", (sub_id, *ENDED))]
            if active and not force:
                shown = ", ".join(active[:5]) + (", ..." if len(active) > 5 else "")
                raise Conflict(f"subscription {sub_id} has {len(active)} job(s) still under "
                               f"way ({shown}); wait until they are Completed or cancel them, "
                               "or remove it anyway with --force", "SubscriptionHasActiveJobs")
            files = [r["file"] for r in conn.execute(
                "SELECT file FROM copy_logs JOIN jobs ON jobs.id = copy_logs.job_id "
                "WHERE jobs.subscription_id = ?", (sub_id,))]
            count = conn.execute("DELETE FROM jobs WHERE subscription_id = ?",
                                 (sub_id,)).rowcount
            conn.execute("DELETE FROM resource_groups WHERE subscription_id = ?", (sub_id,))
            conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
        self._unlink_logs(files)
        return count

    def replace_subscription_key(self, subscription_id: str, public_key: bytes) -> Subscription:
        """A new public key for a subscription: tokens from the old key fail from now on."""
        if len(public_key) != 32:
            raise BadRequest("an Ed25519 public key has 32 bytes", "InvalidPublicKey")
        sub_id = rules.check_subscription_id(subscription_id)
        with self._write() as conn:
            if conn.execute("UPDATE subscriptions SET public_key = ? WHERE id = ?",
                            (public_key, sub_id)).rowcount != 1:
                raise NotFound(f"subscription {sub_id} does not exist", "SubscriptionNotFound")
        found = self.subscription(sub_id)
        assert found is not None
        return found

    def subscription(self, subscription_id: str) -> Subscription | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM subscriptions WHERE id = ?",
                               (subscription_id.lower(),)).fetchone()
        return None if row is None else Subscription(row["id"], row["name"],
                                                     bytes(row["public_key"]), row["created"])

    def subscriptions(self) -> list[Subscription]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM subscriptions ORDER BY name").fetchall()
        return [Subscription(r["id"], r["name"], bytes(r["public_key"]), r["created"])
                for r in rows]

    # ------------------------------------------------------------------ regions

    def locations(self) -> list[Region]:
        return [self._regions[k] for k in sorted(self._regions)]

    def location(self, name: str) -> Region:
        region = self._regions.get(rules.location_key(name))
        if region is None:
            raise NotFound(f"location {rules.quote(name)} does not exist; use one of: "
                           f"{', '.join(sorted(self._regions))}", "LocationNotFound")
        return region

    # ------------------------------------------------------------------ jobs

    def get_job(self, ref: JobRef) -> Job:
        with self._read() as conn:
            return self._load(conn, self._row(conn, ref))

    def put_job(self, ref: JobRef, body: Any, *, if_match: str | None = None,
                if_none_match: bool = False) -> tuple[Job, bool]:
        """Create a job, or replace one still Creating (ARM PUT).  Returns (job, created).
        Only the customer creates jobs (the REST API refuses a site token)."""
        job, keys = model.parse_new_job(ref, body, self._regions)
        actor = _actor(Role.CUSTOMER, ref.subscription_id)
        job = replace(job, details={**job.details, "systemData": {
            "createdBy": actor[0], "createdByType": actor[1],
            "lastModifiedBy": actor[0], "lastModifiedByType": actor[1]}})
        now = _now()
        with self._write() as conn:
            row = self._row(conn, ref, missing_ok=True)
            if row is None:
                if if_match is not None:
                    raise PreconditionFailed(f"{ref} does not exist, so If-Match cannot match",
                                             "PreconditionFailed")
                group = self._ensure_resource_group(conn, ref)
                job = replace(job, ref=replace(ref, resource_group=group), version=1,
                              created=now, updated=now)
                job_id = conn.execute(
                    "INSERT INTO jobs (subscription_id, rg_key, name, location, state, "
                    "cancel_requested, version, created, updated, tags, details) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ref.subscription_id, ref.resource_group.lower(), ref.name, job.location,
                     job.state.value, 0, job.version, now, now, json.dumps(job.tags),
                     json.dumps(job.details))).lastrowid
                assert job_id is not None
                self._store_drives(conn, job_id, job.drives, keys, old=())
                return job, True
            old = self._load(conn, row)
            if if_none_match:
                raise PreconditionFailed(f"{ref} already exists (If-None-Match: *)",
                                         "PreconditionFailed")
            _check_if_match(old, if_match)
            new = model.replace_job(old, replace(job, ref=old.ref))
            created_by = {k: v for k, v in old.details.get("systemData", {}).items()
                          if k.startswith("created")}
            new = replace(new, details={**new.details, "systemData": {
                **new.details["systemData"], **created_by}})
            new = replace(new, version=old.version + 1, updated=now)
            self._store(conn, row["id"], new, keys, old)
            return new, False

    def update_job(self, ref: JobRef, patch: Any, *, if_match: str | None = None,
                   role: Role = Role.CUSTOMER) -> Job:
        """Apply an ARM PATCH body by ``role`` through the rules (the customer's token by
        default: a site caller says ``role=Role.SITE``); a PATCH that changes nothing is no
        write."""
        with self._write() as conn:
            row = self._row(conn, ref)
            old = self._load(conn, row)
            _check_if_match(old, if_match)
            new, keys = model.apply_update(old, patch, self._regions, role)
            if new == old and not keys:
                return old
            by, by_type = _actor(role, ref.subscription_id)
            new = replace(new, details={**new.details, "systemData": {
                **new.details.get("systemData", {}), "lastModifiedBy": by,
                "lastModifiedByType": by_type}})
            new = replace(new, version=old.version + 1, updated=_now())
            self._store(conn, row["id"], new, keys, old)
            return new

    def delete_job(self, ref: JobRef, *, if_match: str | None = None) -> None:
        with self._write() as conn:
            row = self._row(conn, ref)
            old = self._load(conn, row)
            _check_if_match(old, if_match)
            rules.check_deletable(old.state)
            files = [r["file"] for r in conn.execute(
                "SELECT file FROM copy_logs WHERE job_id = ?", (row["id"],))]
            conn.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
        self._unlink_logs(files)

    def list_jobs(self, subscription_id: str | None, resource_group: str | None = None, *,
                  state: JobState | None = None, top: int = MAX_TOP,
                  skip_token: str | None = None, where: filter.Expr | None = None) -> Page:
        """Jobs in name order, ``top`` at a time, those ``where`` (an OData ``$filter``
        tree) matches.  ``subscription_id=None`` lists every subscription's jobs: for
        site-side tools, never for a customer request."""
        if not 1 <= top <= MAX_TOP:
            raise BadRequest(f"$top must be from 1 to {MAX_TOP}", "InvalidTop")
        conds: list[str] = []
        args: list[Any] = []
        order = ["subscription_id", "rg_key", "name"]
        if subscription_id is not None:
            conds.append("subscription_id = ?")
            args.append(subscription_id.lower())
            order.remove("subscription_id")
            if resource_group is not None:
                conds.append("rg_key = ?")
                args.append(resource_group.lower())
                order.remove("rg_key")
        if state is not None:
            conds.append("state = ?")
            args.append(JobState(state).value)
        if where is not None:
            clause, filter_args = filter.to_sql(where, _FILTER_COLUMNS, _filter_fold)
            conds.append(clause)
            args.extend(filter_args)
        if skip_token is not None:
            after = _decode_token(skip_token, len(order))
            conds.append(f"({', '.join(order)}) > ({', '.join('?' * len(order))})")
            args.extend(after)
        sql = (f"SELECT * FROM jobs {'WHERE ' + ' AND '.join(conds) if conds else ''} "
               f"ORDER BY {', '.join(order)} LIMIT ?")
        with self._read() as conn:
            rows = conn.execute(sql, (*args, top + 1)).fetchall()
            jobs = self._load_many(conn, rows[:top])
        token = None
        if len(rows) > top:
            last = rows[top - 1]
            token = _encode_token([last[c] for c in order])
        return Page(jobs, token)

    def bitlocker_keys(self, ref: JobRef) -> list[tuple[str, str]]:
        """The recovery password of each drive, in drive-list order (listBitLockerKeys)."""
        with self._read() as conn:
            row = self._row(conn, ref)
            drives = conn.execute("SELECT drive_id, bitlocker_key FROM drives WHERE job_id = ? "
                                  "ORDER BY position", (row["id"],)).fetchall()
        return [(d["drive_id"], self._keybox.open(row["id"], d["drive_id"], d["bitlocker_key"]))
                for d in drives]

    # ------------------------------------------------------------------ copy logs

    def put_copy_log(self, ref: JobRef, drive_id: str, kind: str, data: bytes, *,
                     role: Role = Role.CUSTOMER) -> None:
        """Store (or replace) a drive's copy log: the site's, while the job is being copied
        or after.  The bytes go to a new file (fsynced) before the row names it, so a crash
        leaves the old log or the new one, never half of one."""
        rules.check_role("copy log", role, "uploading a copy log")
        kind = _copy_log_kind(kind)
        if len(data) > MAX_COPY_LOG:
            raise PayloadTooLarge(f"a copy log is at most {MAX_COPY_LOG} bytes",
                                  "RequestEntityTooLarge")
        with self._read() as conn:  # fail before writing a file for nothing
            job = self._load(conn, self._row(conn, ref))
        self._copy_log_drive(job, drive_id)
        rules.check_editable("copy log", job.state)
        folder = self.data_dir / COPY_LOG_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        name = f"{uuid.uuid4().hex}.jsonl"
        atomic.replace_file(folder / f".{name}.tmp", folder / name, data, 0o600)
        old: list[str] = []
        try:
            with self._write() as conn:
                row = self._row(conn, ref)
                rules.check_editable("copy log", JobState(row["state"]))
                old = [r["file"] for r in conn.execute(
                    "SELECT file FROM copy_logs WHERE job_id = ? AND drive_id = ? AND kind = ?",
                    (row["id"], drive_id, kind))]
                conn.execute("INSERT OR REPLACE INTO copy_logs (job_id, drive_id, kind, file, "
                             "size, updated) VALUES (?, ?, ?, ?, ?, ?)",
                             (row["id"], drive_id, kind, name, len(data), _now()))
        except BaseException:
            old = [name]
            raise
        finally:
            self._unlink_logs(old)

    def copy_log(self, ref: JobRef, drive_id: str, kind: str) -> bytes | None:
        """A drive's copy log of ``kind``, or None if the site uploaded none."""
        kind = _copy_log_kind(kind)
        with self._read() as conn:
            job = self._load(conn, self._row(conn, ref))
            self._copy_log_drive(job, drive_id)
            found = conn.execute(
                "SELECT copy_logs.file FROM copy_logs JOIN jobs ON jobs.id = copy_logs.job_id "
                "WHERE jobs.subscription_id = ? AND jobs.rg_key = ? AND jobs.name = ? AND "
                "drive_id = ? AND kind = ?", (ref.subscription_id, ref.resource_group.lower(),
                                              ref.name, drive_id, kind)).fetchone()
        if found is None:
            return None
        try:
            return (self.data_dir / COPY_LOG_DIR / found["file"]).read_bytes()
        except FileNotFoundError:  # replaced between the read and now
            return self.copy_log(ref, drive_id, kind)

    def copy_log_kinds(self, ref: JobRef, drive_id: str) -> list[str]:
        """Which copy logs a drive has, in COPY_LOG_KINDS order."""
        with self._read() as conn:
            row = self._row(conn, ref)
            self._copy_log_drive(self._load(conn, row), drive_id)
            kinds = {r["kind"] for r in conn.execute(
                "SELECT kind FROM copy_logs WHERE job_id = ? AND drive_id = ?",
                (row["id"], drive_id))}
        return [k for k in COPY_LOG_KINDS if k in kinds]

    @staticmethod
    def _copy_log_drive(job: Job, drive_id: str) -> None:
        if job.drive(drive_id) is None:
            raise NotFound(f"drive {rules.quote(drive_id)} is not in {job.ref}", "DriveNotFound")

    def _unlink_logs(self, files: Sequence[str]) -> None:
        for name in files:
            (self.data_dir / COPY_LOG_DIR / name).unlink(missing_ok=True)

    def statistics(self) -> dict[str, Any]:
        """Counts for the portal and the logs: jobs by state, subscriptions, drives."""
        with self._read() as conn:
            by_state = dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
            subs = conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
            drives = conn.execute("SELECT count(*) FROM drives").fetchone()[0]
        return {"jobs_by_state": by_state, "subscriptions": subs, "drives": drives}

    # ------------------------------------------------------------------ rows <-> jobs

    def _row(self, conn: sqlite3.Connection, ref: JobRef,
             missing_ok: bool = False) -> sqlite3.Row:
        row = conn.execute(
            "SELECT jobs.*, resource_groups.name AS rg_name FROM jobs JOIN resource_groups "
            "ON resource_groups.subscription_id = jobs.subscription_id "
            "AND resource_groups.key = jobs.rg_key "
            "WHERE jobs.subscription_id = ? AND jobs.rg_key = ? AND jobs.name = ?",
            (ref.subscription_id, ref.resource_group.lower(), ref.name)).fetchone()
        if row is None and not missing_ok:
            raise NotFound(f"{ref} does not exist", "ResourceNotFound")
        return row

    def _ensure_resource_group(self, conn: sqlite3.Connection, ref: JobRef) -> str:
        if conn.execute("SELECT 1 FROM subscriptions WHERE id = ?",
                        (ref.subscription_id,)).fetchone() is None:
            raise NotFound(f"subscription {ref.subscription_id} does not exist",
                           "SubscriptionNotFound")
        conn.execute("INSERT OR IGNORE INTO resource_groups (subscription_id, key, name) "
                     "VALUES (?, ?, ?)",
                     (ref.subscription_id, ref.resource_group.lower(), ref.resource_group))
        return conn.execute("SELECT name FROM resource_groups WHERE subscription_id = ? AND "
                            "key = ?", (ref.subscription_id, ref.resource_group.lower())
                            ).fetchone()["name"]

    def _load(self, conn: sqlite3.Connection, row: sqlite3.Row) -> Job:
        return self._load_many(conn, [row])[0]

    def _load_many(self, conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[Job]:
        if not rows:
            return []
        # a listing has no rg_name column: fetch the display names in one go
        if "rg_name" not in rows[0].keys():  # noqa: SIM118 - `in` on a Row tests values
            groups = {(r["subscription_id"], r["key"]): r["name"] for r in conn.execute(
                f"SELECT * FROM resource_groups WHERE subscription_id IN "
                f"({', '.join('?' * len(rows))})", [r["subscription_id"] for r in rows])}
        else:
            groups = {(r["subscription_id"], r["rg_key"]): r["rg_name"] for r in rows}
        drives: dict[int, list[JobDrive]] = {r["id"]: [] for r in rows}
        for d in conn.execute(f"SELECT * FROM drives WHERE job_id IN "
                              f"({', '.join('?' * len(rows))}) ORDER BY job_id, position",
                              [r["id"] for r in rows]):
            values = {c: d[c] for c in _DRIVE_COLUMNS}
            values["state"] = DriveState(values["state"])
            drives[d["job_id"]].append(JobDrive(**values))
        return [Job(ref=JobRef(r["subscription_id"], groups[(r["subscription_id"], r["rg_key"])],
                               r["name"]),
                    location=r["location"], details=json.loads(r["details"]),
                    drives=tuple(drives[r["id"]]), state=JobState(r["state"]),
                    cancel_requested=bool(r["cancel_requested"]), tags=json.loads(r["tags"]),
                    version=r["version"], created=r["created"], updated=r["updated"])
                for r in rows]

    def _store(self, conn: sqlite3.Connection, job_id: int, job: Job, keys: dict[str, str],
               old: Job) -> None:
        conn.execute("UPDATE jobs SET location = ?, state = ?, cancel_requested = ?, "
                     "version = ?, updated = ?, tags = ?, details = ? WHERE id = ?",
                     (job.location, job.state.value, int(job.cancel_requested), job.version,
                      job.updated, json.dumps(job.tags), json.dumps(job.details), job_id))
        self._store_drives(conn, job_id, job.drives, keys, old.drives)

    def _store_drives(self, conn: sqlite3.Connection, job_id: int, drives: Sequence[JobDrive],
                      keys: dict[str, str], old: Sequence[JobDrive]) -> None:
        known = {d.drive_id for d in old}
        gone = known - {d.drive_id for d in drives}
        for drive_id in gone:  # PUT over a Creating job may drop drives
            conn.execute("DELETE FROM drives WHERE job_id = ? AND drive_id = ?",
                         (job_id, drive_id))
        for position, d in enumerate(drives):
            values = [getattr(d, c) for c in _DRIVE_COLUMNS]
            values[4] = d.state.value
            if d.drive_id in known:
                sets = ", ".join(f"{c} = ?" for c in _DRIVE_COLUMNS[1:])
                conn.execute(f"UPDATE drives SET position = ?, {sets} WHERE job_id = ? AND "
                             "drive_id = ?", (position, *values[1:], job_id, d.drive_id))
                if d.drive_id in keys:
                    conn.execute("UPDATE drives SET bitlocker_key = ? WHERE job_id = ? AND "
                                 "drive_id = ?", (self._keybox.seal(job_id, d.drive_id,
                                                                    keys[d.drive_id]),
                                                  job_id, d.drive_id))
            else:
                sealed = self._keybox.seal(job_id, d.drive_id, keys[d.drive_id])
                conn.execute(f"INSERT INTO drives (job_id, position, bitlocker_key, "
                             f"{', '.join(_DRIVE_COLUMNS)}) VALUES "
                             f"(?, ?, ?, {', '.join('?' * len(_DRIVE_COLUMNS))})",
                             (job_id, position, sealed, *values))


# $filter fields -> SQL expressions, folded as _filter_fold folds the literals
_FILTER_COLUMNS = {"name": "lower(name)", "properties/state": "lower(state)",
                   "properties/jobType": "lower(coalesce(json_extract(details, '$.jobType'), "
                                         "'Import'))",
                   "location": "lower(location)"}


def _filter_fold(field: str, value: str) -> str:
    """As the columns above: ASCII lowercase; a location as its key ('West US' = westus)."""
    folded = filter.ascii_fold(field, value)
    return folded.replace(" ", "") if field == "location" else folded


def _actor(role: Role, subscription_id: str) -> tuple[str, str]:
    """systemData's (by, byType) for a write: the subscription's key, or the site."""
    return (subscription_id, "Key") if role == Role.CUSTOMER else (SITE_ACTOR, "Application")


def _copy_log_kind(kind: str) -> str:
    if kind not in COPY_LOG_KINDS:
        raise NotFound(f"copy log kind {rules.quote(kind)} does not exist; use "
                       f"{' or '.join(COPY_LOG_KINDS)}", "CopyLogNotFound")
    return kind


def _check_if_match(job: Job, if_match: str | None) -> None:
    """``If-Match`` as RFC 9110 has it: ``*`` or a list of ETags (weak ones compare too)."""
    if if_match is None:
        return
    tags = [t.strip().removeprefix("W/") for t in if_match.split(",")]
    if "*" in tags or job.etag in tags:
        return
    raise PreconditionFailed(f"{job.ref} has changed (its ETag is now {job.etag}, not "
                             f"{if_match.strip()[:40]}); GET it again and retry",
                             "PreconditionFailed")


def _encode_token(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode_token(token: str, count: int) -> list[str]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        values = None
    if (not isinstance(values, list) or len(values) != count
            or not all(isinstance(v, str) for v in values)):
        raise BadRequest("$skipToken is not one this service gave out; follow nextLink as "
                         "returned", "InvalidSkipToken")
    return values


def _key_file(data: Path, *, create: bool) -> bytes:
    """The catalog's 32-byte key: created atomically (link) on first use, never replaced."""
    path = data / KEY_NAME
    if not path.exists():
        if not create:
            raise BadInput(f"{path} is missing but the catalog holds encrypted recovery "
                           "passwords; restore the key file from backup")
        atomic.write_key(path, replace=False)  # another process may win: use its key
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    key = path.read_bytes()
    if len(key) != 32:
        raise BadInput(f"{path} holds {len(key)} bytes, not a 32-byte key; restore it from "
                       "backup")
    return key
