"""Argument groups several commands share (key input, KDF cost); no command logic."""

from __future__ import annotations

import argparse

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


def add_kdf_arguments(parser: argparse.ArgumentParser) -> None:
    """cryptsetup's names for the keyslot KDF cost."""
    g = parser.add_argument_group("keyslot KDF (as cryptsetup luksFormat)")
    g.add_argument("--pbkdf", choices=("argon2id", "argon2i", "pbkdf2"), default="argon2id")
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
