"""An Azure storage account through azure-storage-blob (blocking calls; the importer runs
them in worker threads, and one client serves them all: SDK clients are thread-safe).

Partial state lives in the account itself, so parts may come from other processes or
runs days apart:

* Block blobs: each 1 MiB cell is an uncommitted block whose id names the copy and
  the cell: 9 characters of the copy's tag (a digest of the ``copy`` the caller names:
  the importer's session and file id; zeros when none is named) then the offset in 11
  digits (``_block_id``; 20 characters for every block, as Azure wants; the SDK sends
  it base64-encoded).  Commit stages the zero cells as blocks of zeros with the same
  tag and puts the block list in offset order.  **Azure drops uncommitted blocks 7
  days after they were staged**: an import paused longer must send those parts again
  (commit then raises PartsMissing).  A committed block with the cell's id and size
  stands in for one not staged again (a drive imported again after its commit
  delivers only its own cells), so only a block of the same copy does: an older,
  different copy of the same size committed under the name has other ids, and its
  bytes never fill an expired cell.  With 1 MiB blocks and Azure's 50,000 blocks per
  blob, a block blob stops at 50,000 MiB.
* Page blobs: the first part creates the page blob with its full size and metadata
  ``pipeline_complete=false``; commit clears stale zero cells and sets ``true``.  A page
  blob is written in place, so rewriting a committed one hides it until the next commit.
  Its parts never expire, so no ``copy`` is needed: a cell a drive wrote stays written.

A committed blob is never visible as partial: size/get/list/read skip any blob marked
``pipeline_complete=false`` (our page blobs are made with it, atomically).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import email.utils
import hashlib
import hmac
import http.client
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobServiceClient,
    ContentSettings,
    ExponentialRetry,
)
from azure.storage.blob import BlobType as AzureBlobType
from urllib3.util.retry import Retry

from pipeline.drive.format import BlobType
from pipeline.errors import BadInput
from pipeline.names import MAX_BLOCKS  # Azure's committed blocks per block blob
from pipeline.storage.base import (
    CELL,
    GET_LIMIT,
    BlobInfo,
    BlobTooLarge,
    PartsMissing,
    StorageUnavailable,
    cells_of,
    check_blob_name,
    check_container_name,
    check_part,
    md5_of,
)

COMPLETE = "pipeline_complete"      # metadata key on our blobs
CONNECT_TIMEOUT_S = 3               # two tries 3 s apart: an unreachable account fails in 3-9 s
READ_TIMEOUT_S = 20                 # for an answer to a 1 MiB part or a 50,000-id block list
_CREDENTIAL = re.compile(r"(?i)(?:^|;)\s*(?:AccountKey|SharedAccessSignature|"
                         r"UseDevelopmentStorage)\s*=\s*[^;\s]")
POOL = 32                           # connections kept per host; the importer runs ~4-16 threads
ZERO_STAGERS = 8                    # threads staging zero cells at commit


class AzureStorage:
    """A storage account from a connection string or an account URL with a SAS."""

    # The importer's uploaders (and committers): 8, the storage calls the importer lets be
    # in flight.  Each waits on the service, not on a core: into Azurite, 8 against the
    # default 4 won 4 of 4 interleaved rounds (128 MiB, 3,755 files: 3-20%).
    writers = 8

    def __init__(self, target: str) -> None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=POOL,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        options: dict[str, Any] = {
            "transport": RequestsTransport(session=session, session_owner=True,
                                          connection_timeout=CONNECT_TIMEOUT_S,
                                          read_timeout=READ_TIMEOUT_S),
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2,
                                             random_jitter_range=0, retry_connect=1),
        }
        try:
            if target.lower().startswith(("http://", "https://")):
                if "sig=" not in urllib.parse.urlsplit(target).query:
                    raise BadInput(f"--to {_strip_query(target)}: an account URL needs a SAS "
                                   "(...?sv=...&sig=...); or give a connection string")
                self._service = BlobServiceClient(account_url=target, **options)
            else:
                if not _CREDENTIAL.search(target):
                    raise BadInput("the Azure connection string has no AccountKey or "
                                   "SharedAccessSignature; copy the whole string from the portal")
                self._service = BlobServiceClient.from_connection_string(target, **options)
        except ValueError:
            # The SDK's message may quote the string, key included: say only what is wrong.
            raise BadInput("the Azure connection string or account URL is malformed; copy it "
                           "again from the portal (Access keys, or a SAS URL)") from None
        self.name = _strip_query(self._service.url)
        self._pages_open: set[tuple[str, str]] = set()   # page blobs known to be partial
        self._lock = threading.Lock()
        self._direct = _PutBlob.of(self._service)

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Turn the SDK's network and auth errors into one line naming the account."""
        try:
            yield
        except ClientAuthenticationError as exc:
            raise StorageUnavailable(self.name, f"authentication refused: {_code(exc)}") from None
        except ServiceRequestError as exc:
            raise StorageUnavailable(self.name, _why_unreachable(exc)) from None
        except ServiceResponseError as exc:
            why = (f"no answer within {READ_TIMEOUT_S} s"
                   if "timed out" in str(exc).lower() else "the connection broke off")
            raise StorageUnavailable(self.name, why) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status == 403:
                raise StorageUnavailable(self.name, f"access refused: {_code(exc)}") from None
            if status >= 500:
                raise StorageUnavailable(self.name, f"service error: HTTP {status} {_code(exc)}"
                                         ) from None
            raise

    def _blob(self, container: str, blob: str) -> BlobClient:
        return self._service.get_blob_client(check_container_name(container),
                                             check_blob_name(blob))

    def _where(self, container: str, blob: str) -> str:
        return f"{container}/{blob}"

    def _wrong_type(self, container: str, blob: str, have: str) -> BadInput:
        return BadInput(f"{self.name}: {container}/{blob} already exists as a {have}, which "
                        "cannot be replaced in place; delete it (az storage blob delete) or "
                        "import into another container")

    # -- Storage ----------------------------------------------------------------------------

    def check(self) -> None:
        with self._calls():
            try:
                next(iter(self._service.list_containers(results_per_page=1).by_page()), None)
            except HttpResponseError as exc:
                # Authenticated but not allowed to list (a narrow SAS): still reachable.
                if exc.status_code == 403 and "Mismatch" in _code(exc):
                    return
                raise

    def ensure_container(self, container: str) -> None:
        client = self._service.get_container_client(check_container_name(container))
        with self._calls(), contextlib.suppress(ResourceExistsError):
            client.create_container()

    def write_part(self, container: str, blob: str, blob_type: BlobType, size: int, offset: int,
                   data: bytes, *, copy: str | None = None) -> None:
        check_part(blob_type, size, offset, data)
        client = self._blob(container, blob)
        with self._calls():
            if blob_type is BlobType.BLOCK:
                self._check_block_size(container, blob, size)
                if not data:
                    return              # only a 0-byte blob has an empty part: nothing to stage
                try:
                    client.stage_block(_block_id(offset, copy), data, length=len(data))
                except HttpResponseError as exc:
                    if _code(exc) == "InvalidBlobType":
                        raise self._wrong_type(container, blob, "page blob") from None
                    raise
            else:
                self._open_page_blob(client, container, blob, size)
                if not data:
                    return
                try:
                    client.upload_page(data, offset=offset, length=len(data))
                except ResourceNotFoundError:       # discarded elsewhere since we opened it
                    with self._lock:
                        self._pages_open.discard((container, blob))
                    self._open_page_blob(client, container, blob, size)
                    client.upload_page(data, offset=offset, length=len(data))

    def write_whole(self, container: str, blob: str, blob_type: BlobType, data: bytes) -> None:
        """``write_part`` of the whole blob then ``commit``: a new block blob in one request
        (Put Blob, only if no blob has the name), not three (stage, block list, commit);
        anything else as a part and a commit, whose checks (a blob of the other type is
        refused) then apply."""
        size = len(data)
        check_part(blob_type, size, 0, data)
        if blob_type is BlobType.BLOCK:
            direct = self._direct
            if direct is not None:
                try:
                    status = direct.put(check_container_name(container), check_blob_name(blob),
                                        data)
                except OSError:  # not on a fresh connection: the SDK from now on
                    status, self._direct = 0, None
                if status == 201:
                    return
                if status == 409:
                    pass  # there already (If-None-Match: *): replaced as parts are, below
            client = self._blob(container, blob)
            with self._calls():
                try:
                    client.upload_blob(data, blob_type=AzureBlobType.BLOCKBLOB, length=size,
                                       overwrite=False)  # If-None-Match: *
                    return
                except ResourceExistsError:
                    pass                        # there already: replaced as parts are
        self.write_part(container, blob, blob_type, size, 0, data)
        self.commit(container, blob, blob_type, size, ())

    def _check_block_size(self, container: str, blob: str, size: int) -> None:
        if size > MAX_BLOCKS * CELL:
            raise BadInput(f"{self.name}: {container}/{blob} is {size} bytes; a block blob "
                           f"built from {CELL >> 20} MiB parts stops at {MAX_BLOCKS} MiB "
                           "(Azure's 50,000 blocks); prepare it with --blob-type page")

    def _open_page_blob(self, client: BlobClient, container: str, blob: str, size: int) -> None:
        """Create the partial page blob, or turn a committed one back into a partial one."""
        key = (container, blob)
        with self._lock:
            if key in self._pages_open:
                return
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):   # a racing thread made it first
                client.create_page_blob(size, metadata={COMPLETE: "false"},
                                        match_condition=MatchConditions.IfMissing)
        else:
            if props.blob_type != AzureBlobType.PAGEBLOB:
                raise self._wrong_type(container, blob, "block blob")
            if props.metadata.get(COMPLETE) != "false":
                client.set_blob_metadata({COMPLETE: "false"})
            if props.size != size:
                client.resize_blob(size)
        with self._lock:
            self._pages_open.add(key)

    def commit(self, container: str, blob: str, blob_type: BlobType, size: int,
               zero_offsets: Sequence[int], *, copy: str | None = None) -> None:
        client = self._blob(container, blob)
        with self._calls():
            if blob_type is BlobType.BLOCK:
                self._commit_block(client, container, blob, size, zero_offsets, copy)
            else:
                self._commit_page(client, container, blob, size, zero_offsets)

    def _commit_block(self, client: BlobClient, container: str, blob: str, size: int,
                      zero_offsets: Sequence[int], copy: str | None) -> None:
        self._check_block_size(container, blob, size)
        zeros = sorted(set(zero_offsets))
        try:
            committed, staged = client.get_block_list("all")
        except ResourceNotFoundError:
            committed, staged = [], []
        have = {b.id: b.size for b in committed}
        have.update({b.id: b.size for b in staged})      # Latest: uncommitted wins
        zero_set = set(zeros)
        missing = [o for o in cells_of(size) if o not in zero_set
                   and have.get(_block_id(o, copy)) != min(CELL, size - o)]
        if missing:
            raise PartsMissing(self.name, self._where(container, blob), missing)

        def stage_zero(offset: int) -> None:
            n = min(CELL, size - offset)
            client.stage_block(_block_id(offset, copy), bytes(n), length=n)

        if zeros:
            with ThreadPoolExecutor(min(ZERO_STAGERS, len(zeros))) as pool:
                builtins.list(pool.map(stage_zero, zeros))
        blocks = [BlobBlock(_block_id(o, copy)) for o in cells_of(size)]
        try:
            client.commit_block_list(blocks)
        except HttpResponseError as exc:
            if _code(exc) == "InvalidBlockList":      # parts expired between the two calls
                raise PartsMissing(self.name, self._where(container, blob),
                                   builtins.list(cells_of(size))) from None
            if _code(exc) == "InvalidBlobType":
                raise self._wrong_type(container, blob, "page blob") from None
            raise

    def _commit_page(self, client: BlobClient, container: str, blob: str, size: int,
                     zero_offsets: Sequence[int]) -> None:
        zero_set = set(zero_offsets)
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            missing = [o for o in cells_of(size) if o not in zero_set]
            if missing:
                raise PartsMissing(self.name, self._where(container, blob), missing) from None
            with contextlib.suppress(ResourceExistsError):
                client.create_page_blob(size, metadata={COMPLETE: "true"},
                                        match_condition=MatchConditions.IfMissing)
                return
            props = client.get_blob_properties()
        if props.blob_type != AzureBlobType.PAGEBLOB:
            raise self._wrong_type(container, blob, "block blob")
        if props.size != size:
            client.resize_blob(size)
        # Zero cells hold nothing unless an earlier version wrote there: clear only those.
        runs = builtins.list(_zero_runs(sorted(zero_set), size))
        if runs:
            written = [(r.start, r.end + 1) for r in client.list_page_ranges()]
            for lo, hi in _overlaps(runs, written):
                client.clear_page(offset=lo, length=hi - lo)
        if props.metadata.get(COMPLETE) != "true":
            client.set_blob_metadata({COMPLETE: "true"})
        with self._lock:
            self._pages_open.discard((container, blob))

    def sync(self) -> None:
        """Azure acknowledges a block, page or commit only once it is durable."""

    def discard(self, container: str, blob: str) -> None:
        """Forget parts; a committed blob stays.  Staged blocks of a block blob that also has
        a committed version cannot be dropped alone: they stay until Azure expires them
        (7 days) and never reach a later commit, which lists every cell it writes."""
        client = self._blob(container, blob)
        with self._lock:
            self._pages_open.discard((container, blob))
        with self._calls():
            try:
                props = client.get_blob_properties()
            except ResourceNotFoundError:
                props = None
            if props is not None:
                if _visible(props):
                    return
                with contextlib.suppress(ResourceNotFoundError):
                    client.delete_blob(etag=props.etag,
                                       match_condition=MatchConditions.IfNotModified)
                return
            try:
                _, staged = client.get_block_list("uncommitted")
            except ResourceNotFoundError:
                return
            if staged:
                # Only a commit drops staged blocks: commit an empty, hidden blob, delete it.
                reply = client.commit_block_list([], metadata={COMPLETE: "false"})
                with contextlib.suppress(ResourceNotFoundError):
                    client.delete_blob(etag=reply["etag"],
                                       match_condition=MatchConditions.IfNotModified)

    def size(self, container: str, blob: str) -> int | None:
        client = self._blob(container, blob)
        with self._calls():
            try:
                props = client.get_blob_properties()
            except ResourceNotFoundError:
                return None
        return props.size if _visible(props) else None

    def read(self, container: str, blob: str, offset: int, length: int) -> bytes:
        """Raises FileNotFoundError when the blob is absent or partial."""
        client = self._blob(container, blob)
        with self._calls():
            try:
                props = client.get_blob_properties()
            except ResourceNotFoundError:
                props = None
            if props is None or not _visible(props):
                raise FileNotFoundError(f"{self.name}: {container}/{blob} does not exist")
            length = max(0, min(length, props.size - offset))
            if length == 0:
                return b""
            return client.download_blob(offset=offset, length=length,
                                        etag=props.etag,
                                        match_condition=MatchConditions.IfNotModified).readall()

    def put(self, container: str, blob: str, data: bytes) -> None:
        client = self._blob(container, blob)
        with self._calls():
            client.upload_blob(data, blob_type=AzureBlobType.BLOCKBLOB, overwrite=True,
                               length=len(data))

    def delete(self, container: str, blob: str) -> None:
        client = self._blob(container, blob)
        with self._calls(), contextlib.suppress(ResourceNotFoundError):
            client.delete_blob()

    def get(self, container: str, blob: str, limit: int = GET_LIMIT) -> bytes | None:
        client = self._blob(container, blob)
        with self._calls():
            try:
                stream = client.download_blob()
            except ResourceNotFoundError:
                return None
            if not _visible(stream.properties):
                return None
            if stream.size > limit:         # the first reply says it: read no further
                raise BlobTooLarge(self.name, f"{container}/{blob}", stream.size, limit)
            return stream.readall()

    def list(self, container: str, prefix: str = "") -> builtins.list[str]:
        client = self._service.get_container_client(check_container_name(container))
        with self._calls():
            try:
                return sorted(b.name for b in client.list_blobs(name_starts_with=prefix or None,
                                                                include=["metadata"])
                              if _visible(b))
            except ResourceNotFoundError:
                return []

    # -- blob attributes (WAImportExport's metadata and properties) -------------------------
    # Metadata through set_blob_metadata, properties as ContentSettings (set_http_headers).
    # A page blob's metadata keeps the importer's pipeline_complete=true beside the dataset's:
    # it is what makes the blob visible to size/get/list (see the module docstring).

    def set_attributes(self, container: str, blob: str, blob_type: BlobType,
                       metadata: Sequence[tuple[str, str]],
                       properties: Sequence[tuple[str, str]]) -> None:
        client = self._blob(container, blob)
        props = dict(properties)
        with self._calls():
            have = client.get_blob_properties()
            if "Content-MD5" not in props:
                props["Content-MD5"] = md5_of(
                    lambda offset, n: client.download_blob(offset=offset, length=n).readall(),
                    have.size)
            client.set_http_headers(ContentSettings(
                content_type=props.get("Content-Type"),
                content_encoding=props.get("Content-Encoding"),
                content_language=props.get("Content-Language"),
                cache_control=props.get("Cache-Control"),
                content_md5=bytearray(base64.b64decode(props["Content-MD5"]))))
            meta = dict(metadata)
            if have.blob_type == AzureBlobType.PAGEBLOB:
                meta[COMPLETE] = "true"
            client.set_blob_metadata(meta)

    def get_attributes(self, container: str, blob: str) -> BlobInfo | None:
        client = self._blob(container, blob)
        with self._calls():
            try:
                p = client.get_blob_properties()
            except ResourceNotFoundError:
                return None
        if not _visible(p):
            return None
        cs = p.content_settings
        props = {"Content-Type": cs.content_type, "Content-Encoding": cs.content_encoding,
                 "Content-Language": cs.content_language, "Cache-Control": cs.cache_control,
                 "Content-MD5": base64.b64encode(bytes(cs.content_md5)).decode()
                 if cs.content_md5 else None}
        btype = BlobType.PAGE if p.blob_type == AzureBlobType.PAGEBLOB else BlobType.BLOCK
        return BlobInfo(btype, {k: v for k, v in (p.metadata or {}).items() if k != COMPLETE},
                        {k: v for k, v in props.items() if v})


class _PutBlob:
    """Put Blob of a new small block blob (``If-None-Match: *``), sent straight on this
    thread's own kept-alive connection, signed here: the import's one request per small
    file.  Through the SDK a request cost ~2.9 ms of client CPU (its policies, requests,
    urllib3), this way ~0.4 ms (Azurite, 30 KB blobs, one thread), and Azurite itself
    ~2.5-3 ms: on a machine whose cores the client and the service share, that CPU is the
    import's speed.  Only the plain outcomes are handled here (201 made, 409 there
    already); anything else is the SDK's to send again, with its retries and the errors
    ``_calls`` names.  Not used behind a proxy (the SDK's ``requests`` honours one)."""

    def __init__(self, https: bool, host: str, port: int | None, base: str, query: str,
                 account: str, key: bytes | None, version: str) -> None:
        self._https, self._host, self._port = https, host, port
        self._base, self._query = base, query
        self._account, self._key, self._version = account, key, version
        self._local = threading.local()

    @classmethod
    def of(cls, service: BlobServiceClient) -> _PutBlob | None:
        """For this service client, or None where the SDK must send it (a proxy, a
        credential that is neither an account key nor a SAS)."""
        url = urllib.parse.urlsplit(service.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            return None
        proxies = urllib.request.getproxies()
        if url.scheme in proxies and not urllib.request.proxy_bypass(url.hostname):
            return None
        cred = service.credential
        key = getattr(cred, "account_key", None)
        if key is None and (cred is not None or "sig=" not in url.query):
            return None
        return cls(url.scheme == "https", url.hostname, url.port, url.path.rstrip("/") + "/",
                   url.query, service.account_name or "",
                   None if key is None else base64.b64decode(key), service.api_version)

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it is new."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, False
        conn = (http.client.HTTPSConnection if self._https else http.client.HTTPConnection)(
            self._host, self._port, timeout=CONNECT_TIMEOUT_S)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(READ_TIMEOUT_S)
        self._local.conn = conn
        return conn, True

    def put(self, container: str, blob: str, data: bytes) -> int:
        """The HTTP status.  OSError only from a new connection (a kept-alive one the
        service closed is replaced once)."""
        path = f"{self._base}{container}/{urllib.parse.quote(blob, safe='~/')}"
        headers = {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream",
                   "If-None-Match": "*", "x-ms-blob-type": "BlockBlob",
                   "x-ms-date": email.utils.formatdate(usegmt=True),
                   "x-ms-version": self._version}
        if self._key is not None:  # Shared Key: the verb, the 11 standard headers (only
            # Content-Length, -Type and If-None-Match sent), the x-ms- ones, the resource
            sts = (f"PUT\n\n\n{len(data) or ''}\n\napplication/octet-stream\n\n\n\n*\n\n\n"
                   f"x-ms-blob-type:BlockBlob\nx-ms-date:{headers['x-ms-date']}\n"
                   f"x-ms-version:{self._version}\n/{self._account}{path}")
            sig = base64.b64encode(hmac.new(self._key, sts.encode(), hashlib.sha256).digest())
            headers["Authorization"] = f"SharedKey {self._account}:{sig.decode()}"
        target = f"{path}?{self._query}" if self._query else path
        while True:
            conn, new = self._conn()
            try:
                conn.request("PUT", target, body=data, headers=headers)
                with conn.getresponse() as reply:
                    reply.read()
                    if reply.will_close:
                        conn.close()
                    return reply.status
            except (OSError, http.client.HTTPException):
                conn.close()
                if new:
                    raise OSError(f"{self._host}: Put Blob failed") from None


def _block_id(offset: int, copy: str | None = None) -> str:
    """A cell's block id: the copy's tag (9 characters) then the offset (11 digits, enough
    for 50,000 MiB): 20 characters for every block of every version, as Azure wants of a
    blob's ids.  No copy named (repair, export, backup: every cell staged at once) tags
    with zeros, which is the id this module gave before copies were named."""
    return f"{_copy_tag(copy)}{offset:011d}"


def _copy_tag(copy: str | None) -> str:
    """9 base32 characters of the copy's SHA-256 (45 bits; base32 has no '0', so never the
    untagged ``000000000``)."""
    if copy is None:
        return "0" * 9
    return base64.b32encode(hashlib.sha256(copy.encode()).digest()).decode()[:9].lower()


def _visible(props: Any) -> bool:
    """Committed as far as the importer is concerned (see the module docstring): any blob
    but our partial ones (``false``).  A page blob without the mark is someone else's (a
    VHD azcopy uploaded): it exists, so a dataset's no-overwrite or rename keeps it."""
    return (props.metadata or {}).get(COMPLETE) != "false"


def _zero_runs(zeros: Sequence[int], size: int) -> Iterator[tuple[int, int]]:
    """Contiguous [start, end) byte ranges covered by the zero cells."""
    start = end = -1
    for o in zeros:
        if o != end:
            if start >= 0:
                yield start, end
            start = o
        end = min(o + CELL, size)
    if start >= 0:
        yield start, end


def _overlaps(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]
              ) -> Iterator[tuple[int, int]]:
    """Intersections of two sorted lists of disjoint [start, end) ranges."""
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            yield lo, hi
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or exc.reason or "error")


def _strip_query(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _why_unreachable(exc: Exception) -> str:
    """A short reason that never quotes the request URL (it may carry a SAS)."""
    text = str(exc).lower()
    for needle, why in (("refused", "connection refused"),
                        ("timed out", "connection timed out"),
                        ("timeout", "connection timed out"),
                        ("name or service not known", "host not found"),
                        ("nodename nor servname", "host not found"),
                        ("temporary failure in name resolution", "host not found"),
                        ("certificate", "TLS certificate not accepted"),
                        ("ssl", "TLS handshake failed")):
        if needle in text:
            return why
    return "cannot connect"
