"""The import service's REST API: Azure's ``Microsoft.ImportExport`` resource provider.

Why Starlette under Hypercorn's trio worker: the project's runtime is Trio, and
Starlette is a thin ASGI toolkit built on anyio, so it runs on Trio unchanged;
Hypercorn is the ASGI server with a native Trio worker (``hypercorn.trio.serve``:
uvicorn is asyncio-only), TLS and HTTP/2.  FastAPI would add pydantic models and
OpenAPI generation, but the request and response shapes are fixed by Azure's
spec and checked in ``model``, and the portal only needs Starlette's templates
on top.  Routing is ours (below), on the *raw* path: ``%2F`` in a name must be a
400 for that name, not a different route, and ARM's literal path segments are
case-insensitive.

Endpoints (``?api-version=`` 2016-11-01, 2020-08-01 or 2021-01-01; every
request needs ``Authorization: Bearer TOKEN``: a subscription's JWT, see
``auth``, or the receiving site's ``site1.`` token, see ``sitetoken``)::

    GET    /providers/Microsoft.ImportExport/operations
    GET    /providers/Microsoft.ImportExport/locations
    GET    /providers/Microsoft.ImportExport/locations/{location}
    GET    /providers/Microsoft.ImportExport/jobs            site only: every subscription's
    GET    /subscriptions/{sub}/providers/Microsoft.ImportExport/jobs
    GET    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ImportExport/jobs
           (the three listings: $filter, $top, $skipToken; nextLink carries them on)
    PUT    .../resourceGroups/{rg}/providers/Microsoft.ImportExport/jobs/{job}  customer (201 new)
    GET    .../jobs/{job}
    PATCH  .../jobs/{job}                                each field by its role (``rules``)
    DELETE .../jobs/{job}                                customer; Creating, Completed, Canceled
    POST   .../jobs/{job}/listBitLockerKeys
    PUT    .../jobs/{job}/copyLogs/{driveId}/{error|verbose}   site only; body <= 64 MiB JSONL
    GET    .../jobs/{job}/copyLogs/{driveId}/{error|verbose}   application/x-ndjson

Roles.  A subscription's token (the **customer**) sees its own subscription
only, and may create, delete, and PATCH what Azure lets a customer PATCH:
tags, cancelRequested, state Shipping, returnAddress, returnShipping,
deliveryPackage, logLevel, backupDriveManifest, and a drive's identity while
Creating.  The **site** token sees every subscription's jobs (a subscription
that does not exist is 404), reads recovery passwords to unlock drives, and
PATCHes the site's steps: job states past Shipping (and back to Shipping to
undo a wrong mark), drive states, copy progress and log URIs, returnPackage; it
uploads copy logs.  It never creates, replaces or deletes a job.  A change that
is the other role's is 403 ``AuthorizationFailed`` naming whose it is (checked
before the state machine, so the answer does not depend on the job's state).

Bodies are Azure's shapes (``model``); errors are ARM's ``{"error": {"code",
"message"}}``: 401 bad or missing token, 403 the other role's step, 404 unknown
resource *and* another subscription's (a token for subscription A never learns
whether B's job exists), 400 malformed JSON, invalid names, API version or
``$filter``, or Shipping without the return address, return carrier and
delivery package, 405, 409 refused state change (with the reason), 412
``If-Match`` mismatch, 413 body over 1 MiB (64 MiB for a copy log).  Job
GET/PUT/PATCH return an ``ETag``; PUT, PATCH and DELETE honour ``If-Match`` and
PUT ``If-None-Match: *``.  The token is checked before any body is read.

Recovery passwords appear only in ``listBitLockerKeys`` responses: never in
job bodies (``model.Job`` holds none), error messages, or the log, which has
one line per request (method, path, status, time) and no bodies.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pipeline.jobs import auth, filter, rules, sitetoken
from pipeline.jobs.catalog import MAX_COPY_LOG, MAX_TOP, Catalog
from pipeline.jobs.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from pipeline.jobs.model import PROVIDER, Job, JobRef
from pipeline.jobs.portal.routes import routes as portal_routes
from pipeline.jobs.rules import Role

API_VERSIONS = ("2016-11-01", "2020-08-01", "2021-01-01")
MAX_BODY = 1 << 20
MAX_PATH = 2048
log = logging.getLogger("pipeline.jobs.service")


def _operation(name: str, resource: str, operation: str, description: str) -> dict[str, Any]:
    return {"name": f"{PROVIDER}/{name}",
            "display": {"provider": "Microsoft Import/Export", "resource": resource,
                        "operation": operation, "description": description}}


OPERATIONS = [
    _operation("locations/read", "Locations", "Get Locations",
               "Lists the data centers drives can be shipped to, with their addresses."),
    _operation("jobs/read", "Jobs", "Get Jobs", "Gets or lists import jobs."),
    _operation("jobs/write", "Jobs", "Create or Update Job",
               "Creates an import job, or updates its shipping and state."),
    _operation("jobs/delete", "Jobs", "Delete Job", "Deletes an import job."),
    _operation("jobs/listBitLockerKeys/action", "Jobs", "List BitLocker Keys",
               "Gets the recovery passwords of the job's drives."),
]


@dataclass
class Call:
    """One authenticated request as the handlers see it (they run in a worker thread)."""

    method: str
    params: dict[str, str]
    query: QueryParams
    headers: Headers
    raw_body: bytes
    base_url: str
    path: str
    api_version: str = ""
    subscription_id: str = ""     # the customer's; "" for the site
    role: Role = Role.CUSTOMER

    def json(self) -> Any:
        return parse_json(self.raw_body)

    def ref(self) -> JobRef:
        return JobRef.parse(self.params["sub"], self.params["rg"], self.params["job"])


Handler = Callable[["Api", Call], Response]

_PREFIX = ("providers", PROVIDER)
_JOBS = ("subscriptions", "{sub}", "resourceGroups", "{rg}", *_PREFIX, "jobs")
ROUTES: list[tuple[tuple[str, ...], dict[str, str]]] = [
    ((*_PREFIX, "operations"), {"GET": "operations"}),
    ((*_PREFIX, "locations"), {"GET": "locations"}),
    ((*_PREFIX, "locations", "{location}"), {"GET": "location"}),
    ((*_PREFIX, "jobs"), {"GET": "list_all"}),
    (("subscriptions", "{sub}", *_PREFIX, "jobs"), {"GET": "list_jobs"}),
    (_JOBS, {"GET": "list_jobs"}),
    ((*_JOBS, "{job}"), {"GET": "get_job", "PUT": "put_job", "PATCH": "patch_job",
                         "DELETE": "delete_job"}),
    ((*_JOBS, "{job}", "listBitLockerKeys"), {"POST": "list_keys"}),
    ((*_JOBS, "{job}", "copyLogs", "{drive}", "{kind}"), {"GET": "get_copy_log",
                                                           "PUT": "put_copy_log"}),
]


def split_path(raw_path: bytes) -> list[str]:
    """Percent-decode each segment of the raw path separately, so ``a%2Fb`` stays one
    segment (and then fails the name rules) instead of becoming two."""
    if len(raw_path) > MAX_PATH:
        raise BadRequest(f"the request path is longer than {MAX_PATH} bytes", "InvalidPath")
    path = raw_path.split(b"?", 1)[0]
    if path.endswith(b"/") and len(path) > 1:
        path = path[:-1]
    segments = path.split(b"/")[1:]
    try:
        return [unquote_to_bytes(s).decode("utf-8") for s in segments]
    except UnicodeDecodeError:
        raise BadRequest("the request path is not valid UTF-8 after percent-decoding",
                         "InvalidPath") from None


def match(segments: list[str]) -> tuple[dict[str, str], dict[str, str]] | None:
    """(path parameters, method -> handler name) for the route, or None."""
    for pattern, methods in ROUTES:
        if len(pattern) != len(segments):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want.lower() != got.lower():
                break
        else:
            return params, methods
    return None


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("the request needs a JSON body", "InvalidRequestContent")

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 JSON", "InvalidRequestContent") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply", "InvalidRequestContent") from None
    except ValueError as exc:  # the message names a position, never the content
        raise BadRequest(f"the request body is not valid JSON: {str(exc)[:100]}",
                         "InvalidRequestContent") from None


def _json(body: Any, status: int = 200, job: Job | None = None) -> Response:
    response = JSONResponse(body, status_code=status)
    if job is not None:
        response.headers["ETag"] = job.etag
    return response


class Api:
    """The request handlers over one catalog; ``create_app`` mounts it."""

    def __init__(self, catalog: Catalog, max_body: int = MAX_BODY) -> None:
        self.catalog = catalog
        self.max_body = max_body

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets here
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)

    async def endpoint(self, request: Request) -> Response:
        started = time.perf_counter()
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        call: Call | None = None
        try:
            found = match(split_path(raw_path))
            if found is None:
                raise NotFound("no such resource: this service serves "
                               f"/providers/{PROVIDER} and /subscriptions/{{id}}/.../{PROVIDER}",
                               "NotFound")
            params, methods = found
            if request.method not in methods:
                raise MethodNotAllowed(f"{request.method} is not supported here; use "
                                       f"{' or '.join(methods)}", "MethodNotAllowed")
            # cheap 401 before anything else; the token itself is checked in a thread,
            # before any body is read (a copy log may be 64 MiB: strangers send none)
            auth.bearer_token(request.headers.get("authorization"))
            name = methods[request.method]
            call = Call(method=request.method, params=params, query=request.query_params,
                        headers=request.headers, raw_body=b"", base_url=str(request.base_url),
                        path=raw_path.decode("ascii", "replace").split("?")[0])
            await run_in_threadpool(self._authorize, call)
            if name == "put_copy_log":  # refuse before 64 MiB arrive
                rules.check_role("copy log", call.role, "uploading a copy log")
            if request.method in ("PUT", "PATCH", "POST"):
                limit = MAX_COPY_LOG if name == "put_copy_log" else self.max_body
                call.raw_body = await self._body(request, limit)
            handler: Handler = getattr(Api, "_" + name)
            response = await run_in_threadpool(handler, self, call)
        except ApiError as exc:
            response = _json(exc.body(), exc.status)
            if isinstance(exc, Unauthorized):
                response.headers["WWW-Authenticate"] = 'Bearer realm="pipeline"'
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                log.warning("catalog busy on %s %s", request.method, _printable(raw_path))
            else:
                log.exception("catalog error on %s %s", request.method, _printable(raw_path))
            response = _json({"error": {"code": "ServerBusy", "message": "the catalog is busy "
                                        "or unavailable; retry in a few seconds"}}, 503)
            response.headers["Retry-After"] = "5"
        except Exception:
            log.exception("internal error on %s %s", request.method, _printable(raw_path))
            response = _json({"error": {"code": "InternalServerError",
                                        "message": "internal error (a bug); the service log "
                                        "has the details"}}, 500)
        response.headers["x-ms-request-id"] = str(uuid.uuid4())
        response.headers["Cache-Control"] = "no-store"
        log.info("%s %s %d %.1fms%s", request.method, _printable(raw_path),
                 response.status_code, (time.perf_counter() - started) * 1000,
                 "" if call is None or not call.api_version else
                 f" sub={call.subscription_id}" if call.role == Role.CUSTOMER else " site")
        return response

    async def _body(self, request: Request, limit: int) -> bytes:
        too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes",
                                    "RequestEntityTooLarge")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadRequest("Content-Length is not a number", "InvalidRequest")
            if int(length) > limit:
                raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _authorize(self, call: Call) -> None:
        """Worker thread: authenticate (a subscription's JWT or a site token), check the
        API version and that the path's subscription is one the caller may see."""
        token = auth.bearer_token(call.headers.get("authorization"))

        def public_key(sub: str) -> bytes | None:
            found = self.catalog.subscription(sub)
            return None if found is None else found.public_key

        if sitetoken.is_site_token(token):
            sitetoken.verify_site_token(self.catalog.data_dir, token)
            call.role = Role.SITE
        else:
            call.subscription_id = auth.verify_token(token, public_key)
        version = call.query.get("api-version")
        if version is None:
            raise BadRequest("the api-version query parameter is missing; add "
                             f"?api-version={API_VERSIONS[0]}", "MissingApiVersionParameter")
        if version not in API_VERSIONS:
            raise BadRequest(f"api-version {rules.quote(version)} is not supported; use "
                             f"{' or '.join(API_VERSIONS)}", "InvalidApiVersionParameter")
        call.api_version = version
        if "sub" in call.params:
            sub = rules.check_subscription_id(call.params["sub"])
            if call.role == Role.SITE:  # every subscription's jobs, of subscriptions that exist
                if self.catalog.subscription(sub) is None:
                    raise NotFound(f"subscription {sub} does not exist", "SubscriptionNotFound")
            elif sub != call.subscription_id:
                # as if it did not exist: never confirm another subscription's resources
                if "job" in call.params:
                    raise NotFound(f"{call.ref()} does not exist", "ResourceNotFound")
                raise NotFound(f"subscription {sub} does not exist", "SubscriptionNotFound")

    # ------------------------------------------------------------------ handlers

    def _operations(self, call: Call) -> Response:
        return _json({"value": OPERATIONS})

    def _locations(self, call: Call) -> Response:
        return _json({"value": [r.to_api() for r in self.catalog.locations()]})

    def _location(self, call: Call) -> Response:
        return _json(self.catalog.location(call.params["location"]).to_api())

    def _list_jobs(self, call: Call) -> Response:
        group = rules.check_resource_group(call.params["rg"]) if "rg" in call.params else None
        sub = rules.check_subscription_id(call.params["sub"])
        return self._page(call, sub, group)

    def _list_all(self, call: Call) -> Response:
        """The receiving site's view: every subscription's jobs (ids name their own)."""
        rules.check_role("list every subscription", call.role,
                         "listing every subscription's jobs")
        return self._page(call, None, None)

    def _page(self, call: Call, sub: str | None, group: str | None) -> Response:
        text = call.query.get("$filter")
        where = filter.parse(text) if text is not None else None
        top_text = call.query.get("$top", str(MAX_TOP))
        if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
            raise BadRequest(f"$top must be an integer from 1 to {MAX_TOP}", "InvalidTop")
        page = self.catalog.list_jobs(sub, group, top=int(top_text), where=where,
                                      skip_token=call.query.get("$skipToken"))
        body: dict[str, Any] = {"value": [j.to_resource() for j in page.jobs]}
        if page.next_token is not None:
            query = {"api-version": call.api_version, "$top": top_text,
                     "$skipToken": page.next_token}
            if text is not None:
                query["$filter"] = text
            body["nextLink"] = f"{call.base_url.rstrip('/')}{call.path}?{urlencode(query)}"
        return _json(body)

    def _get_job(self, call: Call) -> Response:
        job = self.catalog.get_job(call.ref())
        return _json(job.to_resource(), job=job)

    def _put_job(self, call: Call) -> Response:
        ref = call.ref()
        rules.check_role("create", call.role, "creating or replacing a job")
        if_none_match = call.headers.get("if-none-match")
        if if_none_match not in (None, "*"):
            raise BadRequest("If-None-Match supports only '*' (create, never replace)",
                             "InvalidRequest")
        job, created = self.catalog.put_job(ref, call.json(),
                                            if_match=call.headers.get("if-match"),
                                            if_none_match=if_none_match == "*")
        return _json(job.to_resource(), 201 if created else 200, job=job)

    def _patch_job(self, call: Call) -> Response:
        job = self.catalog.update_job(call.ref(), call.json(),
                                      if_match=call.headers.get("if-match"), role=call.role)
        return _json(job.to_resource(), job=job)

    def _delete_job(self, call: Call) -> Response:
        ref = call.ref()
        rules.check_role("delete", call.role, "deleting a job")
        self.catalog.delete_job(ref, if_match=call.headers.get("if-match"))
        return Response(status_code=200)

    def _list_keys(self, call: Call) -> Response:
        keys = self.catalog.bitlocker_keys(call.ref())
        return _json({"value": [{"bitLockerKey": key, "driveId": drive_id}
                                for drive_id, key in keys]})

    def _get_copy_log(self, call: Call) -> Response:
        ref, drive, kind = call.ref(), call.params["drive"], call.params["kind"]
        data = self.catalog.copy_log(ref, drive, kind)
        if data is None:
            raise NotFound(f"drive {rules.quote(drive)} of {ref} has no {kind} copy log "
                           "(yet): the site uploads it when it has imported the drive",
                           "CopyLogNotFound")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in drive)
        return Response(data, media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{ref.name}-{safe}-{kind}.jsonl"'})

    def _put_copy_log(self, call: Call) -> Response:
        self.catalog.put_copy_log(call.ref(), call.params["drive"], call.params["kind"],
                                  call.raw_body, role=call.role)
        return Response(status_code=204)


def _printable(raw_path: bytes) -> str:
    """The path for the log: ASCII, escaped, bounded (no log injection via the URL)."""
    text = raw_path.split(b"?", 1)[0].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text[:300]


def create_app(catalog: Catalog, *, max_body: int = MAX_BODY) -> Starlette:
    """The ASGI app.  Every request that no Starlette route claims goes to the API,
    which routes on the raw path itself (Starlette's router matches the decoded
    path, where ``%2F`` is a slash and ``%0A`` matches no route at all).  The portal's
    routes (``/portal/...`` and ``GET /``) come first; see ``pipeline.jobs.portal``."""
    api = Api(catalog, max_body)
    app = Starlette()
    app.router.default = api.asgi
    app.router.routes.extend(portal_routes(catalog, api.asgi))  # /portal/..., GET / -> portal
    return app


def hypercorn_config(host: str, port: int, certfile: str | None = None,
                     keyfile: str | None = None) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = None                       # Api.endpoint logs one line per request
    config.errorlog = logging.getLogger("pipeline.jobs.hypercorn")
    config.graceful_timeout = 5.0
    config.include_server_header = False
    return config


async def serve(catalog: Catalog, config: Config, *,
                shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown_trigger`` returns; ``task_status`` gets the bound URLs."""
    await hypercorn_serve(create_app(catalog), config,  # type: ignore[arg-type]
                          shutdown_trigger=shutdown_trigger, task_status=task_status)
