"""The portal's two credentials: a publish settings file handed over in a form, and site tokens.

Publish settings upload.  ``settings_from_bytes`` parses the uploaded file in
memory (the portal caps the request body, and Starlette keeps parts under 1 MiB
in memory, so the file never reaches a disk), and ``token_from_settings``
mints one bearer token from it, which the portal then verifies exactly as the
REST API verifies a pasted token.  The private key object lives for that one
request: it is not stored, logged or put in the session, which keeps only the
subscription id.

Site tokens.  The receiving site (the people who unpack drives) is not a
subscription: it sees every subscription's jobs and marks their drives Received
or NeverReceived, and nothing else (never a recovery password).  Its credential
is a site token that ``pipeline service site-token --data DIR`` prints::

    site1.<base64url claims>.<base64url HMAC-SHA256(site key, "site1." + claims)>

The claims are ``aud`` (``pipeline-receiving-site``), ``iat``, ``exp`` and a
random ``jti``.  The key is 32 random bytes in ``DATA/site.key`` (mode 0600),
created on first use and readable only by the service's user: whoever can read
it can make site tokens, as whoever runs the service can.  A token lives
``DEFAULT_SITE_HOURS`` (at most ``MAX_SITE_HOURS``); ``site-token --rotate``
replaces the key, which voids every site token and every site session made
from one (a site session re-checks the key's fingerprint on each request).
HMAC rather than a key pair because the service is both the only signer and
the only verifier.
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
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline import atomic
from pipeline.errors import BadInput
from pipeline.jobs import auth, rules
from pipeline.jobs.errors import BadRequest, Unauthorized

SITE_KEY_NAME = "site.key"
SITE_PREFIX = "site1"
SITE_AUDIENCE = "pipeline-receiving-site"
DEFAULT_SITE_HOURS = 12
MAX_SITE_HOURS = 7 * 24
MAX_SITE_TOKEN_CHARS = 1024
_RENEW_SITE = "ask the service's operator for a new one: pipeline service site-token --data DIR"


# --------------------------------------------------------------------------- publish settings


def settings_from_bytes(data: bytes) -> auth.PublishSettings:
    """A publish settings file's content -> its settings; BadRequest if it is not one.

    The same checks as ``auth.read_publish_settings``, on bytes instead of a path.
    """
    fix = "upload the .publishsettings file `pipeline service subscription add` wrote"
    if len(data) > auth.MAX_SETTINGS_BYTES:
        raise BadRequest(f"the file is larger than {auth.MAX_SETTINGS_BYTES} bytes; {fix}",
                         "InvalidPublishSettings")
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        raise BadRequest(f"the file is not XML; {fix}", "InvalidPublishSettings") from None
    subs = root.findall("./PublishProfile/Subscription") if root.tag == "PublishData" else []
    if len(subs) != 1:
        raise BadRequest(f"the file has {len(subs)} PublishData/PublishProfile/Subscription "
                         f"entries, not one; {fix}", "InvalidPublishSettings")
    sub = subs[0]
    try:
        der = base64.b64decode(sub.get("ManagementCertificate", ""), validate=True)
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadRequest(f"the file's ManagementCertificate is not an Ed25519 key; {fix}",
                         "InvalidPublishSettings")
    sub_id = rules.check_subscription_id(sub.get("Id"))
    return auth.PublishSettings(url=sub.get("ServiceManagementUrl", auth.DEFAULT_URL),
                                subscription_id=sub_id, name=sub.get("Name", ""),
                                private_key=key)


def token_from_settings(data: bytes, lifetime_s: int) -> str:
    """One bearer token from an uploaded publish settings file; the key is then dropped."""
    return auth.make_token(settings_from_bytes(data), lifetime_s=lifetime_s)


# --------------------------------------------------------------------------- site tokens


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
    if iat > clock + auth.CLOCK_SKEW_S or exp - iat > MAX_SITE_HOURS * 3600:
        raise invalid
    return exp, key_fingerprint(key)
