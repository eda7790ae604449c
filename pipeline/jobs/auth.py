"""Subscriptions, publish settings files and bearer tokens.

Design: the catalog stores no usable secret.  Creating a subscription makes an
Ed25519 key pair; the *private* key goes only into the customer's publish
settings file (Azure's ``PublishData`` XML, mode 0600, its
``ManagementCertificate`` attribute holding the PKCS#8 key in base64 where Azure
put a PKCS#12 certificate), and the catalog keeps only the *public* key.  A
client turns the file into a short-lived bearer token: a JWT (``alg: EdDSA``)
stating the subscription id, issue and expiry times and a random nonce, signed
with the private key.  The service checks on every request the signature
against the stored public key, the expiry, and that the subscription still
exists.  So a stolen catalog (or a backup of it) cannot mint tokens, a leaked
token expires within the hour, and no token store is needed.  Because the token
is a standard JWT in ``Authorization: Bearer``, the Azure SDK, curl and other
tools pass it unchanged.

What it does not do: revoke one token before it expires (remove the
subscription, or wait), or protect a publish settings file someone copied.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from pipeline import credentials
from pipeline.errors import BadInput
from pipeline.jobs import rules
from pipeline.jobs.catalog import Catalog, Subscription
from pipeline.jobs.errors import BadRequest, Unauthorized

TOKEN_LIFETIME_S = 3600
MAX_TOKEN_LIFETIME_S = 24 * 3600   # refuse tokens a client minted to live longer
CLOCK_SKEW_S = 300                 # tolerated difference between client and service clocks
AUDIENCE = "pipeline-import-service"
MAX_TOKEN_CHARS = 4096
MAX_SETTINGS_BYTES = 64 * 1024
DEFAULT_URL = "https://127.0.0.1:8443"
_RENEW = "get a new token: pipeline jobs token --publish-settings FILE"


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """What a publish settings file says: where the service is and how to sign tokens."""

    url: str
    subscription_id: str
    name: str
    private_key: Ed25519PrivateKey = field(repr=False)


def add_subscription(catalog: Catalog, name: str, out: str | os.PathLike[str],
                     url: str = DEFAULT_URL) -> Subscription:
    """Create a subscription and write its publish settings file ``out`` (0600, new file).

    The file is the only copy of the private key, so it is written first; if the
    catalog then refuses the subscription (name taken), the file is removed.
    """
    name = rules.check_subscription_name(name)
    key = Ed25519PrivateKey.generate()
    sub_id = str(uuid.uuid4())
    write_publish_settings(out, publish_settings_xml(PublishSettings(url, sub_id, name, key)))
    try:
        return catalog.add_subscription(name, public_bytes(key), subscription_id=sub_id)
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise


def reissue_subscription(catalog: Catalog, subscription: str, out: str | os.PathLike[str],
                         url: str = DEFAULT_URL) -> Subscription:
    """A new key pair for a subscription (by id or name), its publish settings file written
    to ``out`` (0600, new file) before the catalog switches keys: from then on tokens
    from the old file fail (401), and the jobs stay as they were."""
    found = next((s for s in catalog.subscriptions()
                  if subscription in (s.name, s.id) or subscription.lower() == s.id), None)
    if found is None:
        raise BadInput(f"subscription {rules.quote(subscription)} does not exist; "
                       "`pipeline service subscription list` shows them")
    key = Ed25519PrivateKey.generate()
    write_publish_settings(out, publish_settings_xml(PublishSettings(url, found.id, found.name,
                                                                     key)))
    try:
        return catalog.replace_subscription_key(found.id, public_bytes(key))
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte public key the catalog stores."""
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def publish_settings_xml(settings: PublishSettings) -> str:
    """Azure's ``PublishData`` shape, so tools that read publish settings files find
    the subscription where they expect it."""
    der = settings.private_key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
    root = ET.Element("PublishData")
    profile = ET.SubElement(root, "PublishProfile", SchemaVersion="2.0",
                            PublishMethod="AzureServiceManagementAPI")
    ET.SubElement(profile, "Subscription", ServiceManagementUrl=settings.url,
                  Id=settings.subscription_id, Name=settings.name,
                  ManagementCertificate=base64.b64encode(der).decode())
    ET.indent(root)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            + ET.tostring(root, encoding="unicode") + "\n")


def write_publish_settings(path: str | os.PathLike[str], xml: str) -> None:
    """Mode 0600, never over an existing file (it may be another subscription's key)."""
    credentials.write_private(path, xml)


def read_publish_settings(path: str | os.PathLike[str],
                          subscription_id: str | None = None) -> PublishSettings:
    """Parse a publish settings file; with several subscriptions, ``subscription_id`` picks."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_SETTINGS_BYTES:
            raise BadInput(f"{p} is larger than {MAX_SETTINGS_BYTES} bytes; is it a publish "
                           "settings file?")
        credentials.warn_if_exposed(p, "publish settings file")  # it holds the private key
        root = ET.fromstring(p.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"publish settings file {p} does not exist; check the path") from None
    except (OSError, ET.ParseError) as exc:
        raise BadInput(f"publish settings file {p} cannot be read as XML ({exc}); give the "
                       "file `pipeline service subscription add` wrote") from None
    subs = root.findall("./PublishProfile/Subscription") if root.tag == "PublishData" else []
    if subscription_id is not None:
        subs = [s for s in subs if s.get("Id", "").lower() == subscription_id.lower()]
    if len(subs) != 1:
        what = "no" if not subs else "several"
        raise BadInput(f"{p} has {what} matching PublishData/PublishProfile/Subscription "
                       "entries; give the file `pipeline service subscription add` wrote"
                       + (" and the subscription id" if subs else ""))
    sub = subs[0]
    try:
        der = base64.b64decode(sub.get("ManagementCertificate", ""), validate=True)
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"{p}: ManagementCertificate is not an Ed25519 private key; this file "
                       "is not from `pipeline service subscription add`")
    try:
        sub_id = rules.check_subscription_id(sub.get("Id"))
    except BadRequest as exc:
        raise BadInput(f"{p}: {exc}") from None
    return PublishSettings(url=sub.get("ServiceManagementUrl", DEFAULT_URL),
                           subscription_id=sub_id, name=sub.get("Name", ""), private_key=key)


def make_token(settings: PublishSettings, *, lifetime_s: int = TOKEN_LIFETIME_S,
               now: float | None = None) -> str:
    """A signed JWT for ``Authorization: Bearer``, valid ``lifetime_s`` seconds."""
    issued = int(time.time() if now is None else now)
    header = {"alg": "EdDSA", "typ": "JWT"}
    claims = {"aud": AUDIENCE, "sub": settings.subscription_id, "iat": issued,
              "exp": issued + lifetime_s, "jti": secrets.token_hex(16)}
    signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
    signature = settings.private_key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64(signature)}"


def token_from_publish_settings(path: str | os.PathLike[str],
                                subscription_id: str | None = None) -> str:
    """What ``pipeline jobs token --publish-settings FILE`` prints."""
    return make_token(read_publish_settings(path, subscription_id))


def token_expiry(token: str) -> int:
    """The ``exp`` claim (seconds since the epoch), unverified: for clients caching a token."""
    try:
        return int(_claims(token.split(".")[1])["exp"])
    except (IndexError, KeyError, TypeError, ValueError, Unauthorized):
        raise BadInput("not a token from this service; " + _RENEW) from None


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization`` header, or 401 saying what is missing."""
    if not authorization:
        raise Unauthorized("no Authorization header; send 'Authorization: Bearer TOKEN' ("
                           + _RENEW + ")", "AuthenticationFailed")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header is not 'Bearer TOKEN'; " + _RENEW,
                           "InvalidAuthenticationToken")
    return token.strip()


def verify_token(token: str, public_key_for: Callable[[str], bytes | None], *,
                 now: float | None = None) -> str:
    """Check signature, audience, lifetime and subscription; return the subscription id.

    ``public_key_for(subscription_id)`` returns the stored public key, or None
    if the subscription does not exist.  Every failure is 401 with a reason
    that tells the client what to do, never which part of a forged token was
    right.
    """
    invalid = Unauthorized("the bearer token is not valid for this service; " + _RENEW,
                           "InvalidAuthenticationToken")
    parts = token.split(".")
    if len(token) > MAX_TOKEN_CHARS or len(parts) != 3:
        raise invalid
    header = _claims(parts[0])
    if header.get("alg") != "EdDSA":  # no "none", no HMAC-with-the-public-key confusion
        raise invalid
    claims = _claims(parts[1])
    sub = claims.get("sub")
    try:
        sub = rules.check_subscription_id(sub)
    except BadRequest:
        raise invalid from None
    public = public_key_for(sub)
    if public is None:
        raise invalid
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            _unb64(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        raise invalid from None
    iat, exp = claims.get("iat"), claims.get("exp")
    if (claims.get("aud") != AUDIENCE or not isinstance(iat, int) or not isinstance(exp, int)
            or isinstance(iat, bool) or isinstance(exp, bool)):
        raise invalid
    clock = time.time() if now is None else now
    if exp <= clock:
        raise Unauthorized("the bearer token has expired; " + _RENEW,
                           "ExpiredAuthenticationToken")
    if iat > clock + CLOCK_SKEW_S or exp - iat > MAX_TOKEN_LIFETIME_S:
        raise Unauthorized("the bearer token's lifetime is not acceptable (issued in the "
                           "future or valid for more than 24 h); check this machine's clock "
                           "and " + _RENEW, "InvalidAuthenticationToken")
    return sub


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(part: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise Unauthorized("the bearer token is not valid for this service; " + _RENEW,
                           "InvalidAuthenticationToken")
    return value
