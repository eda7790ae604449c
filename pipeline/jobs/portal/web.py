"""Request plumbing shared by every portal page: forms, sessions, CSRF, rendering, errors.

Every page is a plain sync function ``(ctx) -> Response`` run in a worker thread
(the catalog is synchronous, as for the REST API).  ``Portal.endpoint`` wraps it
with what must hold for every page, in this order:

1. POST: the ``Origin``/``Referer`` names this service, else 403; the body is a
   browser form (urlencoded or multipart), at most ``MAX_FORM`` bytes, parsed in
   memory.
2. The page's audience (owner, site, or anyone): no live session of that kind
   -> a GET is redirected to the sign-in page, a POST gets 403.  An owner's
   subscription must still exist; a site session's key must still be the
   current site key.
3. POST: the form's ``csrf`` field matches the session's token, else 403.
4. The page runs; an ``ApiError`` becomes an error page with its status, its
   one-line message in plain words (``forms.plain``) and links onwards, any
   other exception a 500 page that says only "internal error" (the traceback
   goes to the service log, never to the browser).

Every POST answers with a 303 to a GET page (POST-redirect-GET: a reload never
sends a form again).  A refused form travels to that page through the session
(``Ctx.fail`` keeps what was typed and each field's error; ``Ctx.kept_form``
hands them to the page once), and a message through ``Ctx.flash``.

Pages are Jinja2 templates with autoescape on for everything and
``StrictUndefined``.  ``SecurityHeaders`` adds a strict CSP (no script at
all, styles only from /portal/static), ``frame-ancestors 'none'``,
``nosniff``, ``Referrer-Policy: same-origin`` and ``Cache-Control: no-store``
to every portal response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.jobs import rules
from pipeline.jobs.catalog import Catalog
from pipeline.jobs.errors import ApiError, BadRequest, Forbidden, PayloadTooLarge
from pipeline.jobs.model import Job
from pipeline.jobs.portal import forms, sessions, tokens
from pipeline.jobs.portal.countries import COUNTRIES
from pipeline.jobs.portal.sessions import OWNER, SITE, Flash, FormState, PortalSession, SessionStore
from pipeline.jobs.rules import Role

HERE = Path(__file__).parent
MAX_FORM = 512 * 1024   # a drive list of 10 drives is ~4 KiB; a publish settings file < 64 KiB
MAX_FIELDS = 100
MAX_KEPT_FORMS = 20     # refused forms a session keeps for the GET after the redirect
log = logging.getLogger("pipeline.jobs.portal")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """ASGI wrapper: the security headers on every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Ctx:
    """One request as a page sees it (in a worker thread: no awaiting here)."""

    portal: Portal
    request: Request
    session: PortalSession | None
    session_id: str | None
    form: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def params(self) -> Mapping[str, str]:
        return self.request.path_params

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[0].strip() if values else default

    def fields(self, name: str) -> list[str]:
        return self.form.get(name, [])

    def file(self, name: str) -> tuple[str, bytes] | None:
        return self.files.get(name)

    @property
    def owner(self) -> PortalSession:
        assert self.session is not None and self.session.kind == OWNER
        return self.session

    @property
    def role(self) -> Role:
        """The role the signed-in person acts with: the site's session acts as the site."""
        return Role.SITE if self.session is not None and self.session.kind == SITE \
            else Role.CUSTOMER

    def flash(self, text: str, kind: str = "ok", href: str = "", link: str = "") -> None:
        if self.session is not None:
            self.session.flash.append(Flash(kind, text, href, link))

    def fail(self, url: str, values: Mapping[str, Any], errors: Mapping[str, str]) -> Response:
        """POST-redirect-GET for a refused form: keep what was typed and why it was refused
        for the page at ``url``, then redirect there (a reload re-sends nothing)."""
        if self.session is not None:
            kept = self.session.forms
            kept.pop(url, None)
            while len(kept) >= MAX_KEPT_FORMS:
                kept.pop(next(iter(kept)))
            kept[url] = FormState(dict(values), dict(errors))
        return self.redirect(url)

    def kept_form(self) -> FormState:
        """The refused form kept for this page by ``fail`` (once), or an empty one."""
        empty = FormState({}, {})
        if self.session is None:
            return empty
        return self.session.forms.pop(self.request.url.path, empty)

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return self.portal.render(template, self.session, status=status, **values)

    @staticmethod
    def redirect(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def changed(self, job: Job, url: str) -> Response:
        """A stale page's form (If-Match failed): say what the job is now, show it again."""
        self.flash(f"Job {job.ref.name} changed since this page was loaded (in another window, "
                   f"by the receiving site or by the import): it is now {job.state}. Nothing "
                   "was done; check it below and try again.", "error")
        return self.redirect(url)

    def gone(self, name: str, url: str) -> Response:
        """A form for a job deleted meanwhile: name it, and go where it is no longer listed."""
        self.flash(f"Job {name} was deleted elsewhere (in another window or by a client) "
                   "since this page was loaded; nothing was done.", "error")
        return self.redirect(url)


Page = Callable[[Ctx], Response]


def job_url(job: Job, suffix: str = "") -> str:
    ref = job.ref
    return (f"/portal/jobs/{quote(ref.resource_group, safe='')}/{quote(ref.name, safe='')}"
            + suffix)


def site_job_url(job: Job, suffix: str = "") -> str:
    ref = job.ref
    return (f"/portal/site/jobs/{ref.subscription_id}/{quote(ref.resource_group, safe='')}/"
            f"{quote(ref.name, safe='')}" + suffix)


def link(uri: str | None) -> str | None:
    """A log URI as a link target only if it is http(s): never ``javascript:`` or ``data:``."""
    if uri and uri.lower().startswith(("https://", "http://")):
        return uri
    return None


def human_bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def first_error(errors: Mapping[str, str]) -> str | None:
    """The first field with an error (the page focuses it); "_form" is not a field."""
    return next((k for k in errors if k != "_form"), None)


def safe_next(target: str | None, default: str) -> str:
    """Only a path inside the portal: never an absolute URL (no open redirect)."""
    if (target and target.startswith("/portal/") and "//" not in target and "\\" not in target
            and target.isascii() and target.isprintable()):
        return target
    return default


class Portal:
    """The portal's state: catalog, sessions, templates.  ``routes.routes`` wires pages."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.data_dir = catalog.data_dir
        self.sessions = SessionStore()
        self.signin_refusals: dict[str, dict[str, str]] = {}  # sign-in cookie -> errors
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)
        self.env.filters["bytes"] = human_bytes
        self.env.globals.update(job_url=job_url, site_job_url=site_job_url, link=link,
                                rules=rules, JobState=rules.JobState, countries=COUNTRIES,
                                ADDRESS_FIELDS=forms.ADDRESS_FIELDS,
                                country_choice=forms.country_choice, first_error=first_error)

    @property
    def regions(self) -> dict[str, Any]:
        return {r.name: r for r in self.catalog.locations()}

    # ------------------------------------------------------------------ rendering

    def render(self, template: str, session: PortalSession | None, *, status: int = 200,
               **values: Any) -> HTMLResponse:
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        html = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", flash=flash, **values)
        return HTMLResponse(html, status_code=status)

    def error_page(self, status: int, message: str, session: PortalSession | None = None
                   ) -> Response:
        titles = {400: "Bad request", 401: "Not signed in", 403: "Forbidden", 404: "Not found",
                  405: "Method not allowed", 409: "Refused", 412: "Changed meanwhile",
                  413: "Too large", 500: "Internal error", 503: "Busy"}
        return self.render("error.html", session, status=status,
                           title=titles.get(status, "Error"), message=message)

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.sessions.get(Request(scope).cookies.get(sessions.COOKIE))
        response = self.error_page(404, "There is no such page in the portal.", session)
        await response(scope, receive, send)

    # ------------------------------------------------------------------ dispatch

    def endpoint(self, page: Page, audience: str | None, *,
                 signin: bool = False) -> Callable[[Request], Any]:
        """An async Starlette endpoint running ``page`` for ``audience`` (OWNER, SITE or
        None = anyone); ``signin`` checks the sign-in form's double-submit token."""

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            session: PortalSession | None = None
            try:
                response = await self._dispatch(request, page, audience, signin)
            except ApiError as exc:
                session = self.sessions.get(request.cookies.get(sessions.COOKIE))
                response = self.error_page(exc.status, str(exc), session)
            except Exception:
                log.exception("portal: internal error on %s %s", request.method,
                              _printable(request.url.path))
                response = self.error_page(500, "Internal error (a bug); the service log has "
                                           "the details.")
            log.info("portal %s %s %d %.1fms", request.method, _printable(request.url.path),
                     response.status_code, (time.perf_counter() - started) * 1000)
            return response

        return run

    async def _dispatch(self, request: Request, page: Page, audience: str | None,
                        signin: bool) -> Response:
        ctx = Ctx(self, request, None, request.cookies.get(sessions.COOKIE))
        post = request.method == "POST"
        if post:
            if not sessions.same_origin(request):
                raise Forbidden("cross-site form post refused: this form must be sent from the "
                                "portal's own pages")
            ctx.form, ctx.files = await self._read_form(request)
        ctx.session = self.sessions.get(ctx.session_id)
        if audience is not None:
            if (ctx.session is not None and ctx.session.kind == audience
                    and not await run_in_threadpool(self._still_valid, ctx.session)):
                self.sessions.drop(ctx.session_id)
                ctx.session = None
            if ctx.session is None or ctx.session.kind != audience:
                if ctx.session is not None:
                    who = "the receiving site" if audience == SITE else "a subscription's owner"
                    raise Forbidden(f"this page is for {who}; sign out, then sign in with that "
                                    "credential")
                if post:
                    raise Forbidden("your session has ended (or you never signed in); sign in "
                                    "again, then repeat what you did")
                query = {"next": _path(request)}
                if ctx.session_id:  # the browser had a session that is gone: say so
                    query["ended"] = "1"
                return ctx.redirect("/portal/signin?" + urlencode(query))
        if post:
            if signin:
                expected = request.cookies.get(sessions.SIGNIN_COOKIE)
                given = ctx.field("csrf")
                if not expected or not given or expected != given:
                    raise Forbidden("the sign-in form expired or came from elsewhere; reload "
                                    "the sign-in page and try again")
            elif ctx.session is None:
                raise Forbidden("your session has ended (or you never signed in); sign in "
                                "again, then repeat what you did")
            elif not ctx.session.check_csrf(ctx.field("csrf")):
                raise Forbidden("the form's CSRF token is missing or wrong; reload the page "
                                "and try again")
        return await run_in_threadpool(self._run_page, page, ctx)

    def _run_page(self, page: Page, ctx: Ctx) -> Response:
        try:
            return page(ctx)
        except ApiError as exc:
            return self.error_page(exc.status, forms.plain(str(exc)), ctx.session)

    def _still_valid(self, session: PortalSession) -> bool:
        if session.kind == OWNER:
            return self.catalog.subscription(session.subject) is not None
        key = tokens.site_key(self.data_dir)
        return key is not None and tokens.key_fingerprint(key) == session.subject

    async def _read_form(self, request: Request
                         ) -> tuple[dict[str, list[str]], dict[str, tuple[str, bytes]]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise BadRequest("this page takes a form (application/x-www-form-urlencoded or "
                             "multipart/form-data)", "InvalidRequestContent")
        too_large = PayloadTooLarge(f"the form is larger than {MAX_FORM // 1024} KiB",
                                    "RequestEntityTooLarge")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_FORM):
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        # held in memory: parts under 1 MiB never spool to disk, and MAX_FORM is less
        try:
            form = await Request(request.scope, replay).form(
                max_files=2, max_fields=MAX_FIELDS, max_part_size=MAX_FORM)
        except MultiPartException as exc:
            raise BadRequest(f"the form cannot be read: {exc}", "InvalidRequestContent") from None
        fields: dict[str, list[str]] = {}
        files: dict[str, tuple[str, bytes]] = {}
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    content = await value.read()
                    if value.filename or content:
                        files[name] = (value.filename or "", content)
                else:
                    fields.setdefault(name, []).append(value)
        finally:
            await form.close()
        return fields, files


def _path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _printable(path: str) -> str:
    """A path for the log: no control characters (no log injection via %0A), bounded."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path[:200])
