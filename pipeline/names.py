"""Every name rule, once: containers, blobs, the dstdir, and staging path -> blob name.

Pure (no I/O).  prep, preview, import, the storage backends and the jobs
service all ask this module, so a name prep puts on a drive is a name import
accepts: a drive never carries a file that makes the whole drive unimportable.
prep skips what fails here before anything is written (``blob_for`` /
``dir_problem``); import and the backends refuse it (``check_blob_name``).

Azure's rules (blob names): 1 to 1024 characters, at most 254 path segments,
no name ending in '.' or '/', and '\\' becomes '/' on the way in.  Ours on
top: valid UTF-8 (a staging name Linux gave us as bytes may not be), no
control characters (they cannot travel in a URL or a log line intact), no
empty, '.' or '..' segment (a local directory would resolve them).  Container:
3-63 lowercase letters, digits and single hyphens, starting and ending with a
letter or digit, or ``$root``, Azure's root container (its blobs sit at the
account's top level: no '/' in their names, ``root_blob_problem``; no virtual
directory under it).  Azure's size limits live here too, for the same reason: a page
blob is a multiple of 512 bytes and at most 8 TiB (``page_blob_problem``), asked
by prep (plain and dataset, local and cluster) and by import alike; a block blob is
at most 50,000 blocks (``storage.base.MAX_BLOB_SIZE``, the Azure store's own limit).
"""

from __future__ import annotations

import re

from pipeline.errors import BadInput

__all__ = [
    "MAX_BLOB_NAME",
    "MAX_BLOCKS",
    "MAX_BLOCK_BLOB",
    "MAX_BLOCK_BYTES",
    "MAX_PAGE_BLOB",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_BYTES",
    "PAGE_SIZE",
    "ROOT_CONTAINER",
    "InvalidName",
    "blob_for",
    "blob_problem",
    "check_blob_name",
    "check_container_name",
    "check_dstdir",
    "check_vdir",
    "dir_problem",
    "page_blob_problem",
    "root_blob_problem",
    "show",
    "vdir_of",
]

MAX_BLOB_NAME = 1024
MAX_SEGMENTS = 254
MAX_SEGMENT_BYTES = 255  # NAME_MAX: no staging name is longer; a local import needs it too
MAX_DSTDIR_BYTES = 1024  # the superblock's string limit (format.MAX_SB_STRING_BYTES)
ROOT_CONTAINER = "$root"  # Azure's root container; '$' is in no other container name
PAGE_SIZE = 512  # Azure's page: a page blob's size is a multiple of it
MAX_PAGE_BLOB = 8 << 40  # Azure's largest page blob: 8 TiB
MAX_BLOCKS = 50_000  # Azure's committed blocks per block blob
MAX_BLOCK_BYTES = 4000 << 20  # Azure's largest block: 4000 MiB
MAX_BLOCK_BLOB = MAX_BLOCKS * MAX_BLOCK_BYTES  # Azure's largest block blob (~190.7 TiB)

_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*")
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_CONTAINER_RULE = ("only lowercase letters, digits and single hyphens, starting and ending "
                   "with a letter or digit")


class InvalidName(BadInput):
    """{} name {} breaks Azure's naming rules: {}; rename it"""

    def __init__(self, kind: str, name: str, why: str) -> None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(kind, show(shown), why)
        self.name = name
        self.why = why


def show(name: str) -> str:
    """``name`` quoted for one message line: control characters and backslashes escaped as
    repr does ('a\\nb'), the undecodable bytes of a surrogate-escaped name as \\xNN."""
    out = []
    for ch in name:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's stand-in for a byte that is not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "'":
            out.append("\\'")
        elif ch.isprintable() and ch != "\\":
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "'" + "".join(out) + "'"


# --------------------------------------------------------------------------- containers


def container_problem(name: str) -> str | None:
    """Why Azure refuses ``name`` as a container, or None."""
    if name == ROOT_CONTAINER:
        return None
    if not 3 <= len(name) <= 63:
        return "it must be 3 to 63 characters long"
    if not _CONTAINER.fullmatch(name):
        return _CONTAINER_RULE
    return None


def check_container_name(name: str) -> str:
    """Refuse what Azure would refuse, before any drive data moves."""
    why = container_problem(name)
    if why is not None:
        raise InvalidName("container", name, why)
    return name


# --------------------------------------------------------------------------- blobs


def _chars_problem(text: str) -> str | None:
    """The rules on single characters: UTF-8, no control character, no backslash."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "it is not valid UTF-8"
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        if bad.group() == "\\":
            return "it contains '\\' (Azure turns it into '/')"
        return f"it contains the control character {bad.group()!r}"
    return None


def _segments_problem(text: str) -> str | None:
    """The rules on '/'-separated segments (``text`` without a trailing '/')."""
    if text.count("/") >= MAX_SEGMENTS:
        return f"it has more than {MAX_SEGMENTS} path segments"
    p = f"/{text}/"
    if "//" in p:
        return "it has an empty path segment ('//' or a leading '/')"
    if "/./" in p or "/../" in p:
        return "it has a '.' or '..' path segment"
    return None


def blob_problem(name: str) -> str | None:
    """Why Azure (or this pipeline) refuses ``name`` as a blob name, or None."""
    if not 1 <= len(name) <= MAX_BLOB_NAME:
        return (f"it is {len(name)} characters long; blob names have 1 to {MAX_BLOB_NAME}")
    why = _chars_problem(name)
    if why is not None:
        return why
    if name.endswith((".", "/")):
        return "it ends with '.' or '/'"
    return _segments_problem(name)


def root_blob_problem(container: str, name: str) -> str | None:
    """The root container's own rule (beside ``blob_problem``): no '/' in a name."""
    if container == ROOT_CONTAINER and "/" in name:
        return "a blob in the root container ($root) has no '/' in its name"
    return None


def check_blob_name(name: str) -> str:
    """Refuse names Azure rejects or rewrites, and '.'/'..' segments (they escape a directory)."""
    why = blob_problem(name)
    if why is not None:
        raise InvalidName("blob", name, why)
    return name


# --------------------------------------------------------------------------- page blobs


def page_blob_problem(size: int) -> str | None:
    """Why a file of ``size`` bytes cannot be a page blob, or None.  prep refuses such a
    file before anything is written; import refuses it on a drive that carries one."""
    if size % PAGE_SIZE:
        return f"{size} bytes is not a multiple of {PAGE_SIZE}, which page blobs require"
    if size > MAX_PAGE_BLOB:
        return (f"{size} bytes is more than {MAX_PAGE_BLOB} (8 TiB), the largest page blob "
                "Azure holds")
    return None


# --------------------------------------------------------------------------- dstdir


def check_vdir(vdir: str, what: str = "virtual directory") -> str:
    """A blob-name prefix ("" or "a/b/"): plain names separated by single '/'.

    Each segment stays within NAME_MAX bytes, which staging names never exceed,
    so every blob made from it also fits a local directory's file names.
    """
    text = vdir if not vdir or vdir.endswith("/") else vdir + "/"
    why = _chars_problem(text) or (_segments_problem(text[:-1]) if text else None)
    if why is None and len(text) >= MAX_BLOB_NAME:
        why = f"it is {len(text)} characters long, leaving no room under {MAX_BLOB_NAME}"
    if why is None and any(len(s.encode()) > MAX_SEGMENT_BYTES for s in text.split("/")):
        why = f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    if why is not None:
        raise BadInput(f"{what} {show(vdir)}: {why}; use plain names separated by single '/' "
                       "(no '.', '..', '//', '\\' or control characters)")
    return text


def check_dstdir(dstdir: str) -> str:
    """'container/virtual/dir/' with an Azure-valid container name; returned normalised."""
    text = dstdir.strip()
    if not text.endswith("/"):
        text += "/"
    container, _, vdir = text.partition("/")
    if container == ROOT_CONTAINER and vdir:
        raise BadInput(f"dstdir {dstdir!r}: the root container ($root) has no virtual "
                       "directories; give $root/ alone, or a named container")
    if container_problem(container) is not None:
        raise BadInput(f"dstdir {dstdir!r}: container {container!r} is invalid; use 3-63 "
                       "lowercase letters, digits and single hyphens, starting and ending "
                       "with a letter or digit")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DSTDIR_BYTES:
        raise BadInput(f"dstdir {dstdir!r}: it is longer than {MAX_DSTDIR_BYTES} bytes "
                       "(UTF-8); use a shorter virtual directory")
    check_vdir(vdir, f"dstdir {dstdir!r}: the virtual directory")
    return text


def vdir_of(dstdir: str) -> str:
    """The blob-name prefix of a checked dstdir ("container/a/b/" -> "a/b/")."""
    return dstdir.partition("/")[2]


# --------------------------------------------------------------------------- staging paths


def _path_problem(path: str, vdir: str) -> str | None:
    """blob_problem of ``vdir + path``, and no segment over NAME_MAX bytes (no staging name
    is; a longer one could not be imported into a local directory)."""
    why = blob_problem(vdir + path)
    if (why is None and len(path) > MAX_SEGMENT_BYTES // 4  # shorter cannot be too long
            and any(len(s.encode()) > MAX_SEGMENT_BYTES for s in path.split("/"))):
        why = f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return why


def blob_for(path: str, vdir: str = "") -> str:
    """The blob name of staging file ``path`` (relative, '/'-separated) under ``vdir`` (a
    checked dstdir's virtual directory), or InvalidName saying why it cannot be one.

    ``path`` may be surrogate-escaped (os.fsdecode of a name that is not UTF-8):
    that is refused here, like every other name import would refuse.
    """
    blob = vdir + path
    why = _path_problem(path, vdir)
    if why is not None:
        raise InvalidName("blob", blob, why)
    return blob


def dir_problem(path: str, vdir: str = "") -> str | None:
    """Why no file under staging directory ``path`` can have a blob name, or None.

    Checked as the shortest name a file there could have ("PATH/x"), so a bad
    directory is skipped once instead of once per file beneath it.
    """
    prefix = f"{vdir}{path}/"
    if len(prefix) >= MAX_BLOB_NAME:
        return (f"it is {len(prefix)} characters long with the virtual directory, so every "
                f"blob name under it would exceed {MAX_BLOB_NAME}")
    return _path_problem(path + "/x", vdir)


# --------------------------------------------------------------------------- session ids

_SESSION_ID = re.compile(r"[A-Za-z0-9_#-]{3,30}")
SESSION_ID_RULE = "use 3-30 letters, digits, '_', '-' or '#'"


def session_id_problem(session_id: str) -> str | None:
    """Why ``session_id`` is no session id, or None.  It names journal and copy-log files
    and the importer's state, so nothing that could leave a directory gets through."""
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        return SESSION_ID_RULE
    return None


def check_session_id(session_id: str) -> str:
    if session_id_problem(session_id) is not None:
        raise BadInput(f"session id {show(session_id)} is invalid; {SESSION_ID_RULE}")
    return session_id
