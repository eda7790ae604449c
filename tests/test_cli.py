"""The command line loads only the module of the command it runs."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys

import pytest

from pipeline import cli


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_module_registers_its_name(name: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"pipeline.commands.{cli.COMMANDS[name]}").add_parser(sub)
    assert list(sub.choices) == [name]


def test_full_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name


def test_unknown_command_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["nosuch"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "'prep'" in err and "'snapshots'" in err


def test_running_one_command_imports_no_other() -> None:
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "try:\n"
        "    main(['keys', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.commands.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()[-1]
    loaded = ast.literal_eval(out)
    assert "pipeline.commands.keys" in loaded
    assert "pipeline.commands.service" not in loaded
    assert "pipeline.commands.backup" not in loaded


@pytest.mark.parametrize("args", [["--help"], ["prep", "--help"], ["service", "--help"]])
def test_a_reader_that_leaves_the_pipe_is_no_traceback(args: list[str]) -> None:
    """`pipeline ... | head`: the reader is gone before the output is; issue 15 #8."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode in (0, 141)


def test_grouped_errors_are_ranked_like_bare_ones() -> None:
    """A Trio nursery groups what its tasks raise, however deep: the worst decides."""
    from pipeline import errors

    inner = BaseExceptionGroup("a", [ValueError("x"), errors.BadInput("bad")])
    outer = BaseExceptionGroup("b", [inner, errors.IntegrityError("damaged")])
    assert isinstance(errors.worst(outer), errors.IntegrityError)
    assert isinstance(errors.worst(inner), errors.BadInput)
    full = OSError(28, "No space left on device", "/x")
    assert errors.is_no_space(full) and errors.worst(BaseExceptionGroup("c", [full])) is full
