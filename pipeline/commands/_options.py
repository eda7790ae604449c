"""Argument groups several commands share (key input, KDF cost, return address); no command
logic."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipeline import credentials
from pipeline.errors import BadInput
from pipeline.volume import luks2


def add_unlock_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--recovery-password-file", metavar="FILE",
                       help="file holding the drive's 48-digit recovery password")
    group.add_argument("--passphrase-file", metavar="FILE",
                       help="file holding the operator passphrase (one trailing newline ignored)")
    group.add_argument("--key-file", metavar="FILE",
                       help="key file: every byte counts, as with cryptsetup --key-file")


def unlock_secret(args: argparse.Namespace) -> credentials.Secret | None:
    if getattr(args, "recovery_password_file", None):
        return credentials.recovery_password_file(args.recovery_password_file)
    if getattr(args, "passphrase_file", None):
        return credentials.passphrase_file(args.passphrase_file)
    if getattr(args, "key_file", None):
        return credentials.key_file(args.key_file)
    return None


def add_aliased(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str,
                aliases: tuple[str, ...], *, required: bool = False, dest: str | None = None,
                **kwargs: object) -> None:
    """``name`` with its help; each older spelling in ``aliases`` still works but is not
    shown (one name per concept in --help: ``--source``, ``--job``, ``--storage-account``).
    ``required`` holds for the name or any alias."""
    group = parser.add_mutually_exclusive_group(required=required)
    dest = dest or name.lstrip("-").replace("-", "_")
    group.add_argument(name, dest=dest, **kwargs)  # type: ignore[arg-type]
    hidden = {k: v for k, v in kwargs.items() if k in ("type", "metavar", "action")}
    for alias in aliases:
        group.add_argument(alias, dest=dest, help=argparse.SUPPRESS, **hidden)  # type: ignore[arg-type]


MAX_THREADS = 256      # each is an OS thread holding buffers: a typo of 100000 is refused


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         what: str) -> None:
    """``--threads N`` (what they do: ``what``), read by ``threads_from_args``."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"{what} (default: the number of cores; 1 to {MAX_THREADS})")


def threads_from_args(args: argparse.Namespace) -> int:
    """--threads as given, or the number of cores: one rule for every command."""
    if args.threads is None:
        return os.cpu_count() or 2
    if not 1 <= args.threads <= MAX_THREADS:
        raise BadInput(f"--threads {args.threads}: give 1 to {MAX_THREADS}")
    return args.threads


def add_kdf_arguments(parser: argparse.ArgumentParser) -> None:
    """cryptsetup's names for the keyslot KDF cost."""
    g = parser.add_argument_group("keyslot KDF (as cryptsetup luksFormat)")
    g.add_argument("--pbkdf", choices=("argon2id", "argon2i", "pbkdf2"), default="argon2id",
                   help="key derivation for the keyslots (default argon2id)")
    g.add_argument("--pbkdf-memory", type=int, default=262144, metavar="KIB",
                   help="argon2 memory cost in KiB (default 262144 = 256 MiB)")
    g.add_argument("--pbkdf-time", type=int, default=4, metavar="N",
                   help="argon2 passes (default 4)")
    g.add_argument("--pbkdf-parallel", type=int, default=4, metavar="N",
                   help="argon2 lanes (default 4)")
    g.add_argument("--pbkdf-force-iterations", type=int, default=600_000, metavar="N",
                   help="pbkdf2 iterations (default 600000)")


def kdf_from_args(args: argparse.Namespace) -> luks2.KdfParams:
    try:
        return luks2.KdfParams(type=args.pbkdf, time=args.pbkdf_time, memory=args.pbkdf_memory,
                               cpus=args.pbkdf_parallel, iterations=args.pbkdf_force_iterations)
    except ValueError as exc:
        raise BadInput(f"keyslot KDF settings: {exc}") from None


# --------------------------------------------------------------------------- return address

# flag suffix -> (Azure's returnAddress field, one-line help, required for shipping)
RETURN_ADDRESS = {
    "name": ("recipientName", "who receives the drives back (contact name)", True),
    "street": ("streetAddress1", "street address for the drives' return", True),
    "city": ("city", "city of the return address", True),
    "postal-code": ("postalCode", "postal code of the return address", True),
    "country": ("countryOrRegion", "country of the return address (ISO code, e.g. PT)", True),
    "phone": ("phone", "contact phone for the return shipment", True),
    "email": ("email", "contact email for the return shipment", True),
    "state": ("stateOrProvince", "state or province of the return address (optional)", False),
}
RETURN_SHIPPING = {
    "carrier": ("carrierName", "carrier that brings the drives back", True),
    "account": ("carrierAccountNumber", "your account number with that carrier", True),
}


def add_return_arguments(parser: argparse.ArgumentParser) -> None:
    """The return address and shipping (Azure's returnAddress, returnShipping): jobs create,
    jobs ship and diskprep take the same flags."""
    g = parser.add_argument_group("return address and shipping (needed before Shipping)")
    for table in (RETURN_ADDRESS, RETURN_SHIPPING):
        for suffix, (_, text, _) in table.items():
            g.add_argument(f"--return-{suffix}", metavar=suffix.upper().replace("-", "_"),
                           help=text)


def return_flag(suffix: str) -> str:
    return f"--return-{suffix}"


def return_properties(args: argparse.Namespace, current: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], list[str]]:
    """(returnAddress/returnShipping properties, the flags still missing): the flags given,
    over what the job already holds (``current``: its properties), so a PUT that replaces
    the job keeps them."""
    current = current or {}
    props: dict[str, Any] = {}
    missing: list[str] = []
    for key, table in (("returnAddress", RETURN_ADDRESS), ("returnShipping", RETURN_SHIPPING)):
        value = dict(current.get(key) or {})
        given = False
        for suffix, (field, _, required) in table.items():
            flag = getattr(args, "return_" + suffix.replace("-", "_"), None)
            if flag is not None and flag.strip():
                value[field], given = flag.strip(), True
            if required and not value.get(field):
                missing.append(return_flag(suffix))
        if given or value:
            props[key] = value
    return props, missing
