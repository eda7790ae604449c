"""A blob's import attributes (WAImportExport v2): type, disposition, metadata, properties.

Pure and free of I/O.  The rules live here once: prep's dataset parser
(``pipeline.prep.dataset``) holds the operator's metadata and properties files to
them, ``format`` holds a drive's FileEntry to them on decoding, and the importer
applies what they allow.  Azure's own limits, so a value that passes here is one
the Blob service accepts:

- metadata names are C# identifiers (a letter or ``_``, then letters, digits and
  ``_``), case-insensitively unique, and names plus values total at most 8 KiB;
  values are printable ASCII (they travel as HTTP headers);
- properties are the five a client may set: Content-Type, Content-Encoding,
  Content-Language, Cache-Control, Content-MD5 (base64 of 16 bytes).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re

__all__ = ["PROPERTIES", "READ_ONLY_PROPERTIES", "BlobAttrs", "Disposition",
           "MAX_METADATA_BYTES", "MAX_PROPERTY_BYTES", "metadata_problem", "property_problem"]

MAX_METADATA_BYTES = 8192
"""Azure's limit on a blob's metadata: every name and value, in bytes, together."""
MAX_PROPERTY_BYTES = 1024
"""Our bound on one property value (Azure's header limits are larger; no real one is)."""
PROPERTIES = ("Content-Type", "Content-Encoding", "Content-Language", "Cache-Control",
              "Content-MD5")
"""The properties a properties file may set, in the order they are stored."""
READ_ONLY_PROPERTIES = ("Last-Modified", "Etag", "Content-Length")
"""Properties WAImportExport's files may list but the service sets itself: ignored, noted."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Reserved by the importer itself (azure.COMPLETE marks a page blob still being written).
_RESERVED = ("pipeline_complete",)


class Disposition(enum.IntEnum):
    """What import does when the blob exists already (``/Disposition``)."""

    RENAME = 1  # keep the existing blob, store the new one as "name (2).ext"
    NO_OVERWRITE = 2  # keep the existing blob, skip the new one
    OVERWRITE = 3  # replace it

    @property
    def word(self) -> str:
        """The dataset.csv spelling: rename, no-overwrite, overwrite."""
        return self.name.lower().replace("_", "-")


def _printable_ascii(value: str) -> bool:
    return value.isascii() and all(" " <= c <= "~" for c in value)


def metadata_problem(pairs: tuple[tuple[str, str], ...]) -> str | None:
    """What makes ``pairs`` no valid blob metadata, or None."""
    seen: set[str] = set()
    total = 0
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            return "metadata names and values must be text"
        if not _NAME.match(name):
            return (f"metadata name {name!r} is not a valid name (a letter or '_', then "
                    "letters, digits or '_')")
        if name.lower() in _RESERVED:
            return f"metadata name {name!r} is reserved for the importer"
        if name.lower() in seen:
            return f"metadata name {name!r} is given twice (names are case-insensitive)"
        seen.add(name.lower())
        if not _printable_ascii(value):
            return f"metadata value of {name!r} must be printable ASCII"
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        return f"metadata is {total} bytes; Azure allows at most {MAX_METADATA_BYTES}"
    return None


def property_problem(name: str, value: str) -> str | None:
    """What makes ``name: value`` no settable blob property, or None."""
    if name not in PROPERTIES:
        return f"{name!r} is not a property that can be set (one of {', '.join(PROPERTIES)})"
    if not isinstance(value, str) or not _printable_ascii(value):
        return f"{name} must be printable ASCII"
    if len(value) > MAX_PROPERTY_BYTES:
        return f"{name} is {len(value)} bytes; at most {MAX_PROPERTY_BYTES}"
    if name == "Content-MD5":
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 16:
            return "Content-MD5 must be the base64 of a 16-byte MD5 digest"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class BlobAttrs:
    """How one file becomes a blob, beyond its bytes.  Hashable: a dataset row's files
    share one, and its encoding is made once (``format``)."""

    blob_type: int  # format.BlobType's value; an int here so this module needs no format
    disposition: Disposition = Disposition.RENAME
    metadata: tuple[tuple[str, str], ...] = ()
    properties: tuple[tuple[str, str], ...] = ()  # in PROPERTIES order, each at most once

    def __post_init__(self) -> None:
        if type(self.blob_type) is not int and not isinstance(self.blob_type, enum.IntEnum):
            raise ValueError(f"blob_type must be an int, got {self.blob_type!r}")
        if self.blob_type not in (1, 2):
            raise ValueError(f"blob_type={self.blob_type} is not BLOCK (1) or PAGE (2)")
        if type(self.disposition) is not Disposition:
            try:
                object.__setattr__(self, "disposition", Disposition(self.disposition))
            except ValueError:
                raise ValueError(f"disposition={self.disposition!r} is not a Disposition"
                                 ) from None
        if not isinstance(self.metadata, tuple) or not isinstance(self.properties, tuple):
            raise ValueError("metadata and properties must be tuples of (name, value)")
        for pair in self.metadata + self.properties:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"{pair!r} is not a (name, value) pair")
        why = metadata_problem(self.metadata)
        if why is not None:
            raise ValueError(why)
        order = [PROPERTIES.index(n) if n in PROPERTIES else -1 for n, _ in self.properties]
        for name, value in self.properties:
            why = property_problem(name, value)
            if why is not None:
                raise ValueError(why)
        if order != sorted(set(order)):
            raise ValueError("properties must be in PROPERTIES order, each at most once")
