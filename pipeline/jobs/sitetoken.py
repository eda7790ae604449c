"""Site tokens: the receiving site's credential, for the REST API and the portal alike.

The receiving site (the people who unpack drives and import them) is not a
subscription: it sees every subscription's jobs, makes the site's steps of the
job lifecycle (``rules.Role.SITE``: receive, mark drives, import, return the
package, complete and close) and reads recovery passwords to unlock drives; it
never creates or deletes a job, nor changes what is the customer's.  Its
credential is a site token that ``pipeline service site-token --data DIR``
prints::

    site1.<base64url claims>.<base64url HMAC-SHA256(site key, "site1." + claims)>

The claims are ``aud`` (``pipeline-receiving-site``), ``iat``, ``exp`` and a
random ``jti``.  The key is 32 random bytes in ``DATA/site.key`` (mode 0600),
created on first use and readable only by the service's user: whoever can read
it can make site tokens, as whoever runs the service can.  A token lives
``DEFAULT_SITE_HOURS`` (at most ``MAX_SITE_HOURS``); ``site-token --rotate``
replaces the key, which voids every site token and every site session made
from one (a site session re-checks the key's fingerprint on each request, and
the REST API reads the key on each request).  HMAC rather than a key pair
because the service is both the only signer and the only verifier.

A site token is sent as ``Authorization: Bearer site1....``; the ``site1.``
prefix tells it from a subscription's JWT (whose first part is base64 JSON,
never ``site1``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.errors import BadInput
from pipeline.jobs.auth import CLOCK_SKEW_S
from pipeline.jobs.errors import Unauthorized

SITE_KEY_NAME = "site.key"
SITE_PREFIX = "site1"
SITE_AUDIENCE = "pipeline-receiving-site"
DEFAULT_SITE_HOURS = 12
MAX_SITE_HOURS = 7 * 24
MAX_SITE_TOKEN_CHARS = 1024
_RENEW_SITE = "ask the service's operator for a new one: pipeline service site-token --data DIR"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def site_key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SITE_KEY_NAME


def site_key(data_dir: str | os.PathLike[str], *, create: bool = False) -> bytes | None:
    """The site key, or None if no site token was ever made (then none is valid)."""
    path = site_key_path(data_dir)
    if not path.exists():
        if not create:
            return None
        atomic.write_key(path, replace=False)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    key = path.read_bytes()
    if len(key) != 32:
        raise BadInput(f"{path} holds {len(key)} bytes, not a 32-byte key; delete it and run "
                       "`pipeline service site-token --rotate` for a new one")
    return key


def rotate_site_key(data_dir: str | os.PathLike[str]) -> None:
    """A new site key: every site token and site session made before stops working."""
    atomic.write_key(site_key_path(data_dir), replace=True)


def key_fingerprint(key: bytes) -> str:
    """Identifies a key generation in a session without holding the key."""
    return hashlib.sha256(b"pipeline-site-key/" + key).hexdigest()[:32]


def _mac(key: bytes, signing_input: str) -> bytes:
    return hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()


def make_site_token(data_dir: str | os.PathLike[str], *, hours: float = DEFAULT_SITE_HOURS,
                    now: float | None = None) -> str:
    """A site token valid ``hours``; creates the site key on first use."""
    if not 0 < hours <= MAX_SITE_HOURS:
        raise BadInput(f"--hours {hours:g} is out of range; give more than 0 and at most "
                       f"{MAX_SITE_HOURS}")
    key = site_key(data_dir, create=True)
    assert key is not None
    issued = int(time.time() if now is None else now)
    claims = {"aud": SITE_AUDIENCE, "iat": issued, "exp": issued + int(hours * 3600),
              "jti": secrets.token_hex(16)}
    body = f"{SITE_PREFIX}.{_b64(json.dumps(claims).encode())}"
    return f"{body}.{_b64(_mac(key, body))}"


def is_site_token(token: str) -> bool:
    return token.startswith(SITE_PREFIX + ".")


def verify_site_token(data_dir: str | os.PathLike[str], token: str, *,
                      now: float | None = None) -> tuple[int, str]:
    """(expiry, key fingerprint) of a valid site token, else Unauthorized saying what to do."""
    invalid = Unauthorized("the site token is not valid for this service; " + _RENEW_SITE,
                           "InvalidSiteToken")
    parts = token.strip().split(".")
    if len(token) > MAX_SITE_TOKEN_CHARS or len(parts) != 3 or parts[0] != SITE_PREFIX:
        raise invalid
    key = site_key(data_dir)
    if key is None:
        raise invalid
    try:
        given = _unb64(parts[2])
        claims: Any = json.loads(_unb64(parts[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise invalid from None
    if not hmac.compare_digest(given, _mac(key, f"{parts[0]}.{parts[1]}")):
        raise invalid
    if not isinstance(claims, dict) or claims.get("aud") != SITE_AUDIENCE:
        raise invalid
    iat, exp = claims.get("iat"), claims.get("exp")
    if (not isinstance(iat, int) or not isinstance(exp, int) or isinstance(iat, bool)
            or isinstance(exp, bool)):
        raise invalid
    clock = time.time() if now is None else now
    if exp <= clock:
        raise Unauthorized("the site token has expired; " + _RENEW_SITE, "ExpiredSiteToken")
    if iat > clock + CLOCK_SKEW_S or exp - iat > MAX_SITE_HOURS * 3600:
        raise invalid
    return exp, key_fingerprint(key)
