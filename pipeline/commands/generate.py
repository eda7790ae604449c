"""`pipeline generate`: shell completion scripts and the man page, made from the parser.

As restic's ``generate``: packagers and operators write the files where their system
looks for them.  Both come from ``cli.build_parser()`` (every command, every option,
the hidden older spellings left out of the man page as they are out of --help), so
they say exactly what ``--help`` says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import BadInput, Outcome

EXITS = ()  # exit codes beyond errors.EVERY_COMMAND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="write shell completion scripts and the man page",
        description="Write bash or zsh completion, or the man page, generated from the "
        "command line itself.  FILE - is standard output.  Install, e.g.: pipeline generate "
        "--bash-completion /etc/bash_completion.d/pipeline --man "
        "/usr/local/share/man/man1/pipeline.1")
    p.add_argument("--bash-completion", metavar="FILE", help="write the bash completion here")
    p.add_argument("--zsh-completion", metavar="FILE", help="write the zsh completion here")
    p.add_argument("--man", metavar="FILE", help="write the man page (roff, section 1) here")
    p.set_defaults(func=run)


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}; check the directory") from None


def run(args: argparse.Namespace) -> Outcome:
    if not (args.bash_completion or args.zsh_completion or args.man):
        raise BadInput("nothing to generate: give --bash-completion, --zsh-completion or --man")
    import shtab  # only this command needs them
    from argparse_manpage.manpage import Manpage

    from pipeline import cli
    parser = cli.build_parser()
    if args.bash_completion:
        _write(args.bash_completion, shtab.complete(parser, "bash"))
    if args.zsh_completion:
        _write(args.zsh_completion, shtab.complete(parser, "zsh"))
    if args.man:
        _write(args.man, str(Manpage(parser)))
    return Outcome()
