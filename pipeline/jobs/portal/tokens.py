"""The portal's two credentials: a publish settings file handed over in a form, and site tokens.

Publish settings upload.  ``settings_from_bytes`` parses the uploaded file in
memory (the portal caps the request body, and Starlette keeps parts under 1 MiB
in memory, so the file never reaches a disk), and ``token_from_settings``
mints one bearer token from it, which the portal then verifies exactly as the
REST API verifies a pasted token.  The private key object lives for that one
request: it is not stored, logged or put in the session, which keeps only the
subscription id.

Site tokens live in ``pipeline.jobs.sitetoken`` (the REST API verifies them
too); the names below are re-exported from there for the portal's modules.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.jobs import auth, rules
from pipeline.jobs.errors import BadRequest
from pipeline.jobs.sitetoken import (
    DEFAULT_SITE_HOURS,
    MAX_SITE_HOURS,
    SITE_KEY_NAME,
    SITE_PREFIX,
    is_site_token,
    key_fingerprint,
    make_site_token,
    rotate_site_key,
    site_key,
    site_key_path,
    verify_site_token,
)

__all__ = ["DEFAULT_SITE_HOURS", "MAX_SITE_HOURS", "SITE_KEY_NAME", "SITE_PREFIX",
           "is_site_token", "key_fingerprint", "make_site_token", "rotate_site_key",
           "settings_from_bytes", "site_key", "site_key_path", "token_from_settings",
           "verify_site_token"]

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
