"""Portal sessions and CSRF: who is signed in, and whether a form post came from our own pages.

A session lives in the service's memory, keyed by a random 256-bit id that is
the whole content of the cookie (``pipeline_portal``: HttpOnly, SameSite=Strict,
Path=/portal, Secure when the service speaks TLS).  The cookie carries no claim
to check and no API credential: a bearer token or site token is verified once
at sign-in, then dropped, and the session records only what it proved (a
subscription id, or "receiving site").  Memory rather than a signed cookie
because of what a session holds: the create wizard's draft, whose drive list
carries recovery passwords that must never travel in a page or a cookie, and
because sign-out then really ends a session (the id is forgotten server-side,
so a copied cookie stops working).  A restart of the service signs everyone out.

Lifetimes: a session ends at its credential's expiry (a pasted token's ``exp``,
a site token's), after ``MAX_SESSION_S`` at most, and after ``IDLE_S`` without
a request.  The store holds at most ``MAX_SESSIONS``; beyond that the one idle
longest is dropped.

CSRF: each session has a random token that every form carries in a hidden
``csrf`` field; a POST is refused (403) unless the field matches
(``hmac.compare_digest``) *and* its ``Origin`` header (or, without one, its
``Referer``) names this service's own origin.  The sign-in form, which has no
session yet, uses the same check with a short-lived ``pipeline_signin`` cookie
as the token (double submit).  SameSite=Strict alone would stop a browser from
sending the cookie cross-site; the token and the origin check do not rely on
browsers getting that right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "pipeline_portal"
SIGNIN_COOKIE = "pipeline_signin"
COOKIE_PATH = "/portal"
MAX_SESSION_S = 8 * 3600
IDLE_S = 3600
SIGNIN_COOKIE_S = 1800
MAX_SESSIONS = 10_000

OWNER = "owner"
SITE = "site"


@dataclass(frozen=True, slots=True)
class Flash:
    """A message shown once on the next page, with an optional link ("open job X")."""

    kind: str                      # "ok", "warning" or "error"
    text: str
    href: str = ""
    link: str = ""


@dataclass(frozen=True, slots=True)
class FormState:
    """A refused (or left) form, kept for the GET that follows the redirect (POST-redirect-GET):
    what was typed, and each field's error in the order the fields appear."""

    values: dict[str, Any]
    errors: dict[str, str]


@dataclass
class PortalSession:
    """One signed-in browser.  ``draft`` is the create wizard's work in progress (with an
    ``id``, so a form from a stale tab is recognised); ``finished`` says what became of
    earlier drafts (draft id -> (job page, job name), or ("", "") when discarded)."""

    kind: str                      # OWNER or SITE
    subject: str                   # the subscription id, or the site key's fingerprint
    label: str                     # shown in the page header
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = field(default_factory=time.time)
    draft: dict[str, Any] = field(default_factory=dict)
    flash: list[Flash] = field(default_factory=list)  # shown once, on the next page
    forms: dict[str, FormState] = field(default_factory=dict)  # GET path -> refused form
    finished: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __repr__(self) -> str:  # never a session's secrets or draft in a log
        return f"PortalSession({self.kind}, {self.label!r})"

    def check_csrf(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by the SHA-256 of their id (a dump of the store yields no usable cookie)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[bytes, PortalSession] = {}
        self._max = max_sessions

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()

    def create(self, kind: str, subject: str, label: str, expires: float
               ) -> tuple[str, PortalSession]:
        session_id = secrets.token_urlsafe(32)
        session = PortalSession(kind=kind, subject=subject, label=label,
                          expires=min(expires, time.time() + MAX_SESSION_S))
        with self._lock:
            self._purge(time.time())
            if len(self._sessions) >= self._max:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].last_seen)
                del self._sessions[oldest]
            self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> PortalSession | None:
        """The live session for a cookie value, touched; None if unknown or expired."""
        if not session_id or len(session_id) > 100:
            return None
        now = time.time()
        key = self._key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if session.expires <= now or session.last_seen + IDLE_S <= now:
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _purge(self, now: float) -> None:
        dead = [k for k, s in self._sessions.items()
                if s.expires <= now or s.last_seen + IDLE_S <= now]
        for k in dead:
            del self._sessions[k]


def own_origin(request: Request) -> str:
    """This service's origin as the browser sees it: scheme://host[:port] from Host."""
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}".lower()


def same_origin(request: Request) -> bool:
    """Origin (or Referer, if a browser sent no Origin) names this service.  Neither: refuse."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.strip().lower() == own_origin(request)
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == own_origin(request)
    return False


def cookie_options(request: Request, max_age: int | None = None) -> dict[str, Any]:
    return {"path": COOKIE_PATH, "httponly": True, "samesite": "strict",
            "secure": request.url.scheme == "https", "max_age": max_age}
