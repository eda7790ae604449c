"""Data-center locations: where drives are shipped, and which carriers deliver there.

The shipped ``regions.json`` (next to this module) is copied into the service's
data directory on first start and read from there, so a site edits its own copy
and an upgrade never overwrites it.  The file has Azure's ``LocationsResponse``
shape plus a ``comment``; it is checked in full when loaded, so a typo stops the
service with the entry and field named instead of surfacing in a customer's job.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BadInput
from pipeline.jobs import rules
from pipeline.jobs.errors import BadRequest

SHIPPED = Path(__file__).with_name("regions.json")
FILE_NAME = "regions.json"
PREFIX = "/providers/Microsoft.ImportExport/locations/"
TYPE = "Microsoft.ImportExport/locations"
_REQUIRED = ("recipientName", "streetAddress1", "city", "postalCode", "countryOrRegion", "phone")
_OPTIONAL = ("streetAddress2", "stateOrProvince", "additionalShippingInformation")
# the ShippingInformation a job carries: the address to send the drives to
_SHIPPING_FIELDS = ("recipientName", "streetAddress1", "streetAddress2", "city",
                    "stateOrProvince", "postalCode", "countryOrRegion", "phone")


@dataclass(frozen=True, slots=True)
class Region:
    """One location, exactly as the REST API returns it."""

    name: str
    properties: Mapping[str, Any]

    @property
    def id(self) -> str:
        return PREFIX + self.name

    @property
    def supported_carriers(self) -> tuple[str, ...]:
        return tuple(self.properties["supportedCarriers"])

    def shipping_information(self) -> dict[str, Any]:
        """The job's ``shippingInformation``: where the customer sends the drives."""
        return {k: self.properties[k] for k in _SHIPPING_FIELDS if k in self.properties}

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": TYPE,
                "properties": json.loads(json.dumps(self.properties))}


def install(data_dir: Path) -> Path:
    """Copy the shipped file into ``data_dir`` unless the site already has its own."""
    target = data_dir / FILE_NAME
    if not target.exists():
        tmp = target.with_suffix(".json.tmp")
        shutil.copyfile(SHIPPED, tmp)
        os.replace(tmp, target)
    return target


def load(path: Path) -> dict[str, Region]:
    """Read and check a regions file; BadInput names the entry and field at fault."""
    fix = f"fix {path}, or delete it to get the shipped copy back"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc}); {fix}") from None
    entries = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{path} has no \"value\" list of locations; {fix}")
    regions: dict[str, Region] = {}
    for i, entry in enumerate(entries, 1):
        region = _check_entry(entry, f"{path}: location #{i}", fix)
        if region.name in regions:
            raise BadInput(f"{path}: location #{i} repeats the name {region.name}; {fix}")
        regions[region.name] = region
    for region in regions.values():
        for alt in region.properties["alternateLocations"]:
            if not alt.startswith(PREFIX) or alt[len(PREFIX):] not in regions:
                raise BadInput(f"{path}: location {region.name} lists alternate location "
                               f"{alt!r}, which is not in the file; {fix}")
    return regions


def _check_entry(entry: Any, where: str, fix: str) -> Region:
    if not isinstance(entry, dict) or not isinstance(entry.get("properties"), dict):
        raise BadInput(f"{where} is not an object with \"properties\"; {fix}")
    name = entry.get("name")
    try:
        key = rules.location_key(name)
    except BadRequest:
        key = None
    if not isinstance(name, str) or key != name:
        raise BadInput(f"{where}: name {name!r} must be 1-40 lowercase letters and digits; {fix}")
    if entry.get("id", PREFIX + name) != PREFIX + name or entry.get("type", TYPE) != TYPE:
        raise BadInput(f"{where}: id must be {PREFIX + name} and type {TYPE}; {fix}")
    props = entry["properties"]
    for field in _REQUIRED + _OPTIONAL:
        value = props.get(field)
        if (field in _REQUIRED or value is not None) and (not isinstance(value, str)
                                                           or not value.strip()):
            raise BadInput(f"{where} ({name}): properties.{field} must be a non-empty string; "
                           f"{fix}")
    for field in ("supportedCarriers", "alternateLocations"):
        value = props.get(field)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v.strip() for v in value)):
            raise BadInput(f"{where} ({name}): properties.{field} must be a non-empty list of "
                           f"strings; {fix}")
    unknown = sorted(set(props) - set(_REQUIRED + _OPTIONAL)
                     - {"supportedCarriers", "alternateLocations"})
    if unknown:
        raise BadInput(f"{where} ({name}): unknown field properties.{unknown[0]}; {fix}")
    return Region(name=name, properties=props)
