"""What the portal's forms ask and how they say no: field labels, checks that report every
field at once, and the REST API's refusals reworded for people.

The REST API speaks in JSON paths (``properties.returnAddress.postalCode must be
a non-empty string``), which is right for a client and wrong for a page: a page
says "Return address: postal code is required" next to the field.  ``plain``
rewrites any service message that way, so a refusal the portal did not foresee
still reads as words; the portal's own checks (``check_address``,
``check_ship_date``, ...) run first so that every missing field is named in one
go rather than one per submit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta

from pipeline.jobs.portal.countries import country_name, is_country

# The return address's fields, in the order a form shows them: (key, label, required).
ADDRESS_FIELDS = (("recipientName", "Recipient name", True), ("email", "Email", True),
                  ("phone", "Phone", True), ("streetAddress1", "Street address", True),
                  ("streetAddress2", "Street address, line 2", False),
                  ("city", "City", True), ("stateOrProvince", "State or province", False),
                  ("postalCode", "Postal code", True), ("countryOrRegion", "Country", True))
ADDRESS_KEYS = tuple(key for key, _, _ in ADDRESS_FIELDS)
MAX_TEXT = 256            # model.MAX_STRING: the longest string the service stores
MAX_ACCOUNT = 64          # a carrier account or tracking number
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")

# An API path (without "properties.") -> what a person calls it.
LABELS: dict[str, str] = {
    "returnAddress": "Return address",
    **{f"returnAddress.{k}": f"Return address: {label[0].lower() + label[1:]}"
       for k, label, _ in ADDRESS_FIELDS},
    "returnShipping": "Return shipping",
    "returnShipping.carrierName": "Return carrier",
    "returnShipping.carrierAccountNumber": "Return carrier account number",
    "deliveryPackage": "Package",
    "deliveryPackage.carrierName": "Carrier",
    "deliveryPackage.trackingNumber": "Tracking number",
    "deliveryPackage.shipDate": "Ship date",
    "deliveryPackage.driveCount": "Number of drives",
    "returnPackage": "Return package",
    "returnPackage.carrierName": "Return carrier",
    "returnPackage.trackingNumber": "Return tracking number",
    "returnPackage.shipDate": "Return ship date",
    "returnPackage.driveCount": "Number of drives returned",
    "storageAccountId": "Storage account",
    "logLevel": "Copy log",
    "diagnosticsPath": "Copy log folder",
    "driveList": "Drive list",
    "backupDriveManifest": "Backup of the drive manifests",
}
_DRIVE_FIELDS = {"bitLockerKey": "recovery password", "driveId": "drive id",
                 "manifestFile": "manifest file", "manifestHash": "manifest hash",
                 "driveHeaderHash": "drive header hash", "state": "state"}
_PATH = re.compile(r"properties\.([A-Za-z]+)(?:\[(\d+)\])?(?:\.([A-Za-z0-9]+))?")


def _label(match: re.Match[str]) -> str:
    top, index, sub = match.group(1), match.group(2), match.group(3)
    if top == "driveList" and index is not None:
        what = _DRIVE_FIELDS.get(sub or "", sub or "entry")
        return f"Drive {int(index) + 1} in the list: {what}"
    key = f"{top}.{sub}" if sub else top
    return LABELS.get(key, LABELS.get(top, top))


def plain(message: str) -> str:
    """A service message with its JSON paths as words: never ``properties.x.y``."""
    text = re.sub(r"\s*\(properties\.[^)]*\)", "", message)          # "(properties.x: ...)"
    text = re.sub(r"(properties\.[\w.\[\]]+) must be a non-empty string",
                  lambda m: f"{m.group(1)} is required", text)
    text = re.sub(r"(properties\.[\w.\[\]]+) must be at most (\d+) printable characters",
                  lambda m: f"{m.group(1)}: at most {m.group(2)} characters, on one line",
                  text)
    text = _PATH.sub(_label, text)
    text = text.replace(", in this or an earlier request", "")
    return text[:1].upper() + text[1:]


def _text_error(label: str, value: str, required: bool, limit: int = MAX_TEXT) -> str | None:
    if not value:
        return f"{label} is required" if required else None
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{label}: at most {limit} characters, on one line"
    return None


def check_address(values: Mapping[str, str]) -> dict[str, str]:
    """Every problem of a return address, in field order (key -> message)."""
    errors: dict[str, str] = {}
    for key, _, required in ADDRESS_FIELDS:
        value = values.get(key, "")
        label = LABELS[f"returnAddress.{key}"]
        problem = _text_error(label, value, required)
        if problem is None and value and key == "email" and not _EMAIL.match(value):
            problem = f"{label} must look like name@example.com"
        if problem is None and value and key == "countryOrRegion" and not is_country(value):
            problem = "Return address: choose the country from the list"
        if problem is not None:
            errors[key] = problem
    return errors


def address_values(form: Mapping[str, str]) -> dict[str, str]:
    """The address fields given (blank ones left out, as the service wants them absent)."""
    return {k: form[k] for k in ADDRESS_KEYS if form.get(k)}


def check_return_shipping(carrier: str, account: str, carriers: Iterable[str],
                          prefix: str = "") -> dict[str, str]:
    """The return carrier (one of the region's) and its account number, both at once."""
    errors: dict[str, str] = {}
    if not carrier:
        errors[prefix + "carrierName"] = "Return carrier: choose one from the list"
    elif carrier not in carriers:
        errors[prefix + "carrierName"] = (f"Return carrier: {carrier} does not serve this data "
                                          "center; choose one from the list")
    problem = _text_error("Return carrier account number", account, True, MAX_ACCOUNT)
    if problem:
        errors[prefix + "carrierAccountNumber"] = problem
    return errors


def latest_ship_date() -> date:
    """Today somewhere on Earth (UTC+14): a later ship date is in the future for everyone."""
    return (datetime.now(UTC) + timedelta(hours=14)).date()


def check_ship_date(value: str, label: str = "Ship date") -> str | None:
    """None if ``value`` is a day (YYYY-MM-DD) not in the future, else what is wrong."""
    if not value:
        return f"{label} is required: the day the package left"
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return f"{label}: give a date such as {date.today().isoformat()}"
    if day > latest_ship_date():
        return f"{label} cannot be in the future: give the day the package left"
    return None


def check_package(values: Mapping[str, str], carriers: Iterable[str],
                  what: str = "") -> dict[str, str]:
    """A package's carrier, tracking number and ship date, all at once (keys as the form's)."""
    def label(name: str) -> str:  # "Carrier", or "Return carrier" with what="Return"
        return f"{what} {name.lower()}" if what else name

    errors: dict[str, str] = {}
    carrier = values.get("carrierName", "")
    if not carrier:
        errors["carrierName"] = f"{label('Carrier')}: choose one from the list"
    elif carrier not in carriers:
        errors["carrierName"] = (f"{label('Carrier')}: {carrier} does not serve this data "
                                 "center; choose one from the list")
    problem = _text_error(label("Tracking number"), values.get("trackingNumber", ""), True,
                          MAX_ACCOUNT)
    if problem:
        errors["trackingNumber"] = problem
    problem = check_ship_date(values.get("shipDate", ""), label("Ship date"))
    if problem:
        errors["shipDate"] = problem
    return errors


def country_choice(value: str) -> str:
    """The list's name for a stored country ('PT' -> 'Portugal'), for preselecting it."""
    return country_name(value) if value else ""
