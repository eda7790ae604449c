"""The command line: it loads only the module of the command it runs, words every exit
code from one table, and makes SIGTERM and SIGHUP a Ctrl-C."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_declares_its_exit_codes_and_help_lists_them(name: str) -> None:
    """One table (errors.EXIT_CODES) words every code; each command lists its own."""
    from pipeline import errors

    module = importlib.import_module(f"pipeline.commands.{cli.COMMANDS[name]}")
    assert set(module.EXITS) <= set(errors.EXIT_CODES), module.EXITS
    parser = cli.build_parser(name)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = sub.choices[name].format_help()
    assert "any other code means failure" in out
    for code in (*errors.EVERY_COMMAND, *module.EXITS):
        assert f"\n  {code:<4} {errors.EXIT_CODES[code].split()[0]}" in out, (name, code)


def test_an_outcome_is_done_or_done_with_warnings() -> None:
    """A failure is raised (its class picks the code), never returned."""
    from pipeline import errors

    assert errors.Outcome().code == 0 and errors.Outcome(1, "2 skipped").code == 1
    with pytest.raises(ValueError):
        errors.Outcome(errors.EXIT_INTEGRITY, "damaged")


_STOP = """
import signal, sys, time, trio
from pipeline import cli

def ready():
    print("ready", flush=True)

with cli.stop_signals_as_ctrl_c():
    if sys.argv[1] == "plain":               # a plain command, blocked in a system call
        try:
            ready()
            time.sleep(30)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    elif sys.argv[1] == "trio":              # an async one: Trio raises it where it is safe
        async def main():
            ready()
            await trio.sleep(30)
        try:
            trio.run(main)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    else:                                    # a command's own Ctrl-C receiver (prep's)
        async def main():
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                ready()
                async for got in signals:
                    print(signal.Signals(got).name)
                    return
        trio.run(main)
"""


def _wait_asleep(pid: int) -> None:
    """Wait until the child sleeps (state S: after "ready" only time.sleep's system call).
    A signal that lands between CPython's last check for signals and the system call
    runs its handler only when the sleep ends, 30 s later: a race in CPython, not in
    cli; 3 of 300 such signals on a loaded machine (the plain-15 timeout under xdist).
    Trio's modes have no such window: a signal wakes its loop through a wakeup fd."""
    for _ in range(20_000):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "S":
            return
        time.sleep(0.001)
    pytest.fail(f"the child {pid} never went to sleep (state {state})")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("mode", ["plain", "trio", "receiver"])
def test_sigterm_and_sighup_are_a_ctrl_c(mode: str, sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STOP, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    if mode == "plain":
        _wait_asleep(proc.pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == ("SIGINT" if mode == "receiver" else "KeyboardInterrupt")


def test_an_ignored_sighup_stays_ignored() -> None:
    """nohup: the caller asked that a hangup not stop us."""
    code = ("import os, signal\nfrom pipeline import cli\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "with cli.stop_signals_as_ctrl_c():\n"
            "    os.kill(os.getpid(), signal.SIGHUP)\n"
            "print('still here')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)
    assert proc.stdout.strip() == "still here", proc.stderr


# --------------------------------------------------------------------------- a newcomer's typos


@pytest.mark.parametrize(("argv", "hint"), [
    (["improt"], "did you mean import?"),
    (["snapshot"], "did you mean snapshots?"),
    (["backup", "--sorce", "x"], "--sorce is not an option: did you mean --source?"),
    (["prep", "--srcdri", "x", "--journal-dir", "j", "--session-id", "abc"],
     "did you mean --srcdir?"),
    (["prep", "--jornal-dir=j", "--session-id", "abc"], "did you mean --journal-dir?"),
])
def test_typos_get_a_suggestion(argv: list[str], hint: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(hint), err


def test_no_suggestion_for_a_word_like_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["xyzzyqq"])
    assert "did you mean" not in capsys.readouterr().err


def walk(parser: argparse.ArgumentParser, path: str = "pipeline"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if child.prog.endswith(" " + name):  # aliases share the parser
                    yield from walk(child, f"{path} {name}")


def test_every_option_of_every_command_has_help() -> None:
    """`--help` is the manual at 3 a.m.: no option without its line, no command without a
    description, every command's epilog its exit codes."""
    missing = []
    for path, parser in walk(cli.build_parser()):
        if path != "pipeline" and not (parser.description or "").strip():
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                    action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        if "exit codes:" not in (parser.epilog or ""):
            missing.append(f"{path}: no exit-code table")
    assert not missing, "\n".join(missing)


def test_a_secret_file_others_can_read_is_named_with_the_command(tmp_path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    secret.chmod(0o644)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "f").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "backup", "--source", str(tmp_path / "none"),
         "--to", str(tmp_path / "acct"), "--container", "backups",
         "--passphrase-file", str(secret)], capture_output=True, text=True, timeout=120)
    line = (f"pipeline backup: warning: passphrase file {secret} is readable by anyone "
            f"(mode 0644); make it private: chmod 600 {secret}")
    assert line in proc.stderr.splitlines(), proc.stderr
    assert "correct horse" not in proc.stdout + proc.stderr
    secret.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "backup", "--source", str(tmp_path / "none"),
         "--to", str(tmp_path / "acct"), "--container", "backups",
         "--passphrase-file", str(secret)], capture_output=True, text=True, timeout=120)
    assert "warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("command", "old", "new"), [
    (["backup"], "--job-name", "--job"), (["backup"], "--account", "--storage-account"),
    (["drive", "format"], "--job-name", "--job")])
def test_one_name_for_the_job_and_the_account(command: list[str], old: str, new: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert f"{new} NAME" in out and old not in out
    assert _all_dests(cli.build_parser(command[0]), old) == _all_dests(
        cli.build_parser(command[0]), new)  # the old spelling fills the same field


def _all_dests(parser: argparse.ArgumentParser, option: str) -> set[str]:
    return {a.dest for p in walk_parsers(parser) for a in p._actions if option in a.option_strings}


def walk_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from walk_parsers(child)


@pytest.mark.parametrize("command", ["prep", "preview", "repair"])
def test_one_name_per_concept_older_spellings_hidden(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "--source DIR" in out and "--srcdir" not in out
    parser = cli.build_parser(command)
    rest = {"prep": ["--journal-dir", "j", "--session-id", "abc"],
            "preview": ["--drive-size", "1G"], "repair": ["--journal-dir", "j"]}[command]
    args = parser.parse_args([command, "--srcdir", "/staging", *rest])
    assert args.source == "/staging"  # the old spelling still works (scripts, WAImportExport)


def test_readme_exit_codes_are_the_one_table() -> None:
    from pipeline import errors
    readme = (Path(cli.__file__).parent.parent / "README.md").read_text()
    assert errors.exit_code_markdown() in readme


def test_generate_completion_and_man_page_from_the_parser(tmp_path: Path) -> None:
    bash, man = tmp_path / "pipeline.bash", tmp_path / "pipeline.1"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "generate", "--bash-completion",
                           str(bash), "--man", str(man)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # bash completes a command word and an option of that command, as a user's Tab would
    script = (f"source {bash}\n"
              "COMP_WORDS=(pipeline im); COMP_CWORD=1; COMP_LINE='pipeline im'; "
              "COMP_POINT=${#COMP_LINE}; _shtab_pipeline; echo \"${COMPREPLY[@]}\"\n"
              "COMP_WORDS=(pipeline prep --sou); COMP_CWORD=2; COMP_LINE='pipeline prep --sou'; "
              "COMP_POINT=${#COMP_LINE}; _shtab_pipeline; echo \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    first, second = out.stdout.splitlines()[:2]
    assert first.split() == ["import"], out
    assert second.split() == ["--source"], out
    # the man page renders, and names every command and the hidden spellings nowhere
    text = subprocess.run(["groff", "-man", "-Tutf8", str(man)], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    text = re.sub(".\x08", "", text)  # groff's overstrike for bold and underline
    for name in cli.COMMANDS:
        assert f"pipeline {name}" in text, name
    assert "--srcdir" not in man.read_text()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "generate"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "nothing to generate" in proc.stderr
