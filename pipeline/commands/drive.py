"""`pipeline drive info|unlock|format`: inspect and prepare a single drive."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pipeline import credentials, names
from pipeline.commands import _options
from pipeline.drive import format
from pipeline.errors import (
    EXIT_INTEGRITY,
    EXIT_NO_SPACE,
    EXIT_REFUSED,
    BadInput,
    IntegrityError,
    Outcome,
)
from pipeline.volume import drives, luks2, sessions

EXITS = (EXIT_INTEGRITY, EXIT_REFUSED, EXIT_NO_SPACE)  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("drive", help="inspect, unlock or format one drive",
                            description="Inspect, unlock or format one drive.")
    dsub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    p = dsub.add_parser("info", help="show the LUKS2 header, keyslots and drive identity",
                        description="Show the LUKS2 header, keyslots and the drive's identity; "
                        "with a password, also the verified superblock inside the volume.")
    p.add_argument("path", metavar="PATH", help="image file or block device")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _options.add_unlock_arguments(p, required=False)
    p.set_defaults(func=run_info)

    p = dsub.add_parser("unlock", help="check a password: which keyslot opens",
                        description="Check a recovery password, passphrase or key file "
                        "against the drive and say which keyslot it opens. "
                        "The volume key is printed only with --show-key.")
    p.add_argument("path", metavar="PATH", help="image file or block device")
    _options.add_unlock_arguments(p)
    p.add_argument("--show-key", action="store_true",
                   help="print the volume key (hex): anyone holding it reads the drive")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_unlock)

    p = dsub.add_parser("format", help="create an empty pipeline drive (LUKS2 volume)",
                        description="Create an empty pipeline drive: a LUKS2 volume whose "
                        "keyslot 0 opens with a new recovery password, and optionally keyslot 1 "
                        "with your passphrase or key file.")
    p.add_argument("path", metavar="PATH", help="image file (created) or block device")
    p.add_argument("--drive-size", metavar="SIZE", help="create an image file of SIZE (e.g. 2G)")
    p.add_argument("--yes", "--silentmode", dest="yes", action="store_true",
                   help="do not ask before formatting a drive that holds data")
    p.add_argument("--staging", metavar="DIR",
                   help="staging location: refuse the drive that holds it")
    p.add_argument("--session-id", default=None, help="session id recorded on the drive")
    _options.add_aliased(p, "--job", ("--job-name",), dest="job_name", default="",
                         metavar="NAME", help="import job name recorded on the drive")
    p.add_argument("--dstdir", default="seed/", metavar="CONTAINER/VDIR/",
                   help="where the drive's files import to (default seed/)")
    p.add_argument("--save-recovery-password", metavar="FILE",
                   help="write the new recovery password to FILE (mode 0600) "
                   "instead of printing it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", metavar="FILE", help="keyslot 1: operator passphrase")
    g.add_argument("--key-file", metavar="FILE", help="keyslot 1: key file (every byte counts)")
    _options.add_kdf_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_format)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _text_info(info: dict[str, Any]) -> str:
    lines = [
        f"LUKS2 volume  {info['uuid']}  (header copy used: {info['header_copy']} at "
        f"{info['header_offset']}, seqid {info['seqid']})",
        f"data segment  {info['segment']['cipher']}, sector {info['segment']['sector_size']}, "
        f"offset {info['segment']['offset']}, size {info['segment']['size']}",
    ]
    for ks in info["keyslots"]:
        cost = (f"iterations {ks['iterations']}" if ks["kdf"] == "pbkdf2" else
                f"time {ks['time']}, memory {ks['memory_kib']} KiB, cpus {ks['cpus']}")
        role = {0: "recovery password", 1: "operator passphrase / key file"}.get(ks["id"], "")
        lines.append(f"keyslot {ks['id']}     {ks['kdf']} ({cost}), "
                     f"{ks['key_size_bits']}-bit key  {role}")
    if info.get("drive"):
        d = info["drive"]
        lines.append(f"drive         session {d.get('session_id')!r}, job {d.get('job_name')!r}, "
                     f"drive #{d.get('sequence')}")
    if "superblock" in info:
        sb = info["superblock"]
        lines.append(f"superblock    verified: format v{sb['format_version']}, session "
                     f"{sb['session_id']!r}, drive #{sb['drive_seq']}, data area "
                     f"{drives.human(sb['data_area_size'])}")
        found = info.get("sessions")
        if isinstance(found, str):
            lines.append(f"sessions      {found}")
        elif found:
            lines += [f"session       {s['session_id']!r}, drive #{s['drive_seq']}, "
                      f"{s['dstdir']}, from offset {s['first_offset']}"
                      + ("" if s["closed"] else " (not closed)")
                      + (f"; its closing index is damaged: {s['index_problem']}"
                         if s["index_problem"] else "")
                      + (f"; index {_text_index(s['index'])}" if s["index"] else "")
                      for s in found]
        elif "closed" in info:  # one session: the drive's own closing index
            if info["index"]:
                lines.append(f"index         {_text_index(info['index'])}")
            elif info["index_problem"]:
                lines.append(f"index         damaged: {info['index_problem']}")
            else:
                lines.append("index         none: the drive was not closed (no valid trailer)")
    elif "superblock_error" in info:
        lines.append(f"superblock    {info['superblock_error']}")
    else:
        lines.append("superblock    encrypted (give --recovery-password-file to read it)")
    lines += [f"warning       {w}" for w in info["warnings"]]
    return "\n".join(lines)


def _text_index(index: dict[str, Any]) -> str:
    return (f"{index['files']} files, {index['file_bytes']} bytes, sha256 {index['sha256']} "
            f"(offset {index['offset']}, length {index['length']})")


def _index(drive: drives.Drive, cipher: drives.DriveCipher, trailer: format.Trailer,
           start: int) -> dict[str, Any]:
    """The closing index ``trailer`` points at, decoded (CorruptRecord when it does not):
    how many files it lists, their bytes (a file continuing on another drive counts
    whole), and the sha256 of its bytes, which a job's ``manifestHash`` must equal."""
    blob = cipher.read(drive, trailer.index_offset, trailer.index_length)
    files = format.decode_index(blob, trailer, start).files
    return {"offset": trailer.index_offset, "length": trailer.index_length,
            "files": len(files), "file_bytes": sum(f.size for f in files),
            "sha256": hashlib.sha256(blob).hexdigest()}


def _sessions(drive: drives.Drive, cipher: drives.DriveCipher, sb: format.Superblock
              ) -> list[dict[str, Any]] | str:
    """The copy sessions a version-3 drive holds, oldest first (or why they do not read)."""
    try:
        spans = sessions.find(drive, cipher, sb)
    except IntegrityError as exc:
        return f"damaged: {exc}"
    out = []
    for s in spans:
        problem = sessions.index_problem(drive, cipher, sb, s)
        index = None
        if s.index is not None and not problem:  # read as its session's: now what it lists
            offset, length, seq = s.index
            trailer = format.Trailer(sb.drive_seq, sb.data_area_size, offset, length, seq + 1, 0)
            index = _index(drive, cipher, trailer, s.data_offset)
        out.append({"session_id": s.session_id, "drive_seq": s.superblock.drive_seq,
                    "dstdir": s.superblock.dstdir, "format_version": s.superblock.version,
                    "first_offset": s.first_offset, "closed": s.index is not None,
                    "index_problem": problem, "index": index})
    return out


def _closing_index(drive: drives.Drive, cipher: drives.DriveCipher, sb: format.Superblock
                   ) -> dict[str, Any]:
    """A one-session drive's (version 1 or 2) closing index: ``closed`` (a valid trailer),
    ``index`` (what it lists) or ``index_problem`` (why it does not decode: damage).  A
    trailer that does not read is a drive prep never closed, or a damaged trailer: the
    two look alike, and neither loses a file (the log is walked), so it is no error."""
    try:
        trailer = format.decode_trailer(
            cipher.read(drive, format.trailer_offset(sb.data_area_size), format.SECTOR), sb)
    except (IntegrityError, OSError):
        return {"closed": False, "index_problem": "", "index": None}
    try:
        return {"closed": True, "index_problem": "",
                "index": _index(drive, cipher, trailer, format.SECTOR)}
    except (IntegrityError, OSError) as exc:
        return {"closed": True, "index_problem": str(exc), "index": None}


def run_info(args: argparse.Namespace) -> Outcome:
    secret = _options.unlock_secret(args)
    with drives.open_drive(args.path) as drive:
        if drive.size >= drives.MIN_DRIVE_SIZE and drives.existing_content(drive) is None:
            # zeros at both ends of a whole drive: a wrong path, not damage (a cut image is)
            raise BadInput(f"{args.path} is blank (no volume on it); give a drive that prep or "
                           "`pipeline drive format` prepared")
        volume = drives.read_volume(drive)
        info = volume.summary()
        info["path"] = str(drive.path)
        info["size"] = drive.size
        if secret is not None:
            slot, key = drives.unlock(drive, volume, secret.value, secret.kind)
            info["opened_keyslot"] = slot
            cipher = drives.DriveCipher.for_volume(volume, key)
            try:
                sb = drives.read_superblock(drive, cipher)
                info["superblock"] = {
                    "format_version": sb.version, "drive_seq": sb.drive_seq,
                    "volume_uuid": sb.volume_uuid, "session_id": sb.session_id,
                    "job_name": sb.job_name, "dstdir": sb.dstdir,
                    "blob_type": sb.blob_type.name.lower(), "created_ns": sb.created_ns,
                    "data_area_size": sb.data_area_size,
                    "matches_header": sb.volume_uuid == volume.uuid,
                }
                present = cipher.data_area_size(drive.size)
                if sb.data_area_size > present:
                    info["truncated"] = (f"the drive ends {max(present, 0)} bytes into its "
                                         f"{sb.data_area_size}-byte data area")
                if sb.version == format.SESSIONS_VERSION:  # several copy sessions
                    info["superblock"]["first_version"] = sb.first_version
                    info["sessions"] = _sessions(drive, cipher, sb)
                elif "truncated" not in info:  # a cut drive has no trailer left to read
                    info.update(_closing_index(drive, cipher, sb))
            except IntegrityError as exc:  # a damaged superblock, or none left (a cut image)
                info["superblock_error"] = f"damaged: {exc}"
    if args.json:
        _print_json(info)
    else:
        print(_text_info(info))
    # What it found is printed either way; the exit code says the drive is damaged.
    problem = info.get("superblock_error") or info.get("truncated")  # at most one is found
    if info.get("index_problem"):  # one session: its closing index does not decode
        problem = f"the closing index is damaged: {info['index_problem']}"
    if isinstance(info.get("sessions"), str):  # the chain of sessions does not read
        problem = problem or f"sessions {info['sessions']}"
    elif info.get("sessions"):  # a session's closing index does not read as its own
        bad = [s for s in info["sessions"] if s["index_problem"]]
        if bad:
            problem = problem or (f"the closing index of session {bad[0]['session_id']} is "
                                  f"damaged: {bad[0]['index_problem']}")
    if problem:
        raise IntegrityError(f"{args.path}: {problem}")
    return Outcome()


def run_unlock(args: argparse.Namespace) -> Outcome:
    secret = _options.unlock_secret(args)
    assert secret is not None  # the argument group is required
    with drives.open_drive(args.path) as drive:
        volume = drives.read_volume(drive)
        slot, key = drives.unlock(drive, volume, secret.value, secret.kind)
    for warning in volume.warnings:  # a damaged header copy: the operator should know
        print(f"pipeline drive unlock: warning: {args.path}: {warning}", file=sys.stderr)
    out: dict[str, Any] = {"path": args.path, "uuid": volume.uuid, "keyslot": slot}
    if args.show_key:
        out["volume_key"] = key.hex()
    if args.json:
        _print_json(out)
    else:
        print(f"{args.path}: the {secret.kind} opens keyslot {slot} of LUKS2 volume {volume.uuid}")
        if args.show_key:
            print(f"volume key: {key.hex()}")
    return Outcome()


def run_format(args: argparse.Namespace) -> Outcome:
    size = drives.parse_size(args.drive_size) if args.drive_size else None
    kdf = _options.kdf_from_args(args)
    extra = None
    if args.passphrase_file:
        extra = credentials.passphrase_file(args.passphrase_file)
    elif args.key_file:
        extra = credentials.key_file(args.key_file)
    session = drives.check_session_id(args.session_id or drives.new_session_id())
    dstdir = names.check_dstdir(args.dstdir)
    recovery = luks2.new_recovery_password()
    slots = [(recovery.encode(), kdf)] + ([(extra.value, kdf)] if extra else [])
    identity = drives.Identity(session_id=session, job_name=args.job_name, sequence=1,
                               dstdir=dstdir)
    saved = Path(args.save_recovery_password) if args.save_recovery_password else None
    if saved:  # before the format: a drive whose password was not saved is lost
        credentials.write_private(saved, recovery + "\n")
    try:
        with drives.prepare_target(args.path, size=size, staging=args.staging,
                                   confirmed=args.yes) as drive:
            volume, _cipher = drives.format_drive(drive, slots, identity)
            out: dict[str, Any] = {"path": args.path, "uuid": volume.uuid, "size": drive.size,
                                   "session_id": session, "keyslots": len(slots)}
    except BaseException:
        if saved:
            saved.unlink(missing_ok=True)
        raise
    if not args.save_recovery_password:
        out["recovery_password"] = recovery
    if args.json:
        _print_json(out)
        return Outcome()
    print(f"formatted {args.path}: LUKS2 volume {volume.uuid}, {drives.human(out['size'])}, "
          f"session {session}")
    if args.save_recovery_password:
        print(f"recovery password saved to {args.save_recovery_password} (mode 0600)")
    else:
        print(f"recovery password: {recovery}")
    print("Keep the recovery password apart from the drive: whoever holds both reads the data.",
          file=sys.stderr)
    return Outcome()
