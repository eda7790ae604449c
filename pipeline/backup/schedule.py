"""Scheduled backups as systemd units: a ``.service`` that runs ``pipeline backup`` once,
and a ``.timer`` that starts it (MARS schedules its own backups; on Linux the idiom is a
timer, so ``systemctl list-timers`` and the journal show them like any other job).

One naming rule: schedule NAME is the pair ``pipeline-backup-NAME.service`` and
``pipeline-backup-NAME.timer``.  The service's ExecStart is the same interpreter and
``python -m pipeline backup`` with absolute paths; nothing secret goes into a unit
(units are world-readable): the passphrase stays in its file, an account key in an
EnvironmentFile only root reads.

Quoting follows systemd.service(5) and systemd.unit(5): ExecStart splits words on
whitespace, unquotes "..." with C escapes, expands ``%`` specifiers and ``$VAR``;
so every word that is not plain is double-quoted with ``\\`` and ``"`` escaped, ``%``
doubled and ``$`` doubled.  ``exec_words`` reads such a line back (``--list``, the
tests); a unit file read back is hostile: bounded, decoded strictly, and shown only
when it parses.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import atomic
from pipeline.errors import BadInput, Caution

if TYPE_CHECKING:
    import subprocess

DEFAULT_UNIT_DIR = "/etc/systemd/system"
PREFIX = "pipeline-backup-"
SHORTHANDS = ("hourly", "daily", "weekly", "monthly")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
# What a calendar expression is made of (systemd.time(7)): weekdays, dates, times,
# ranges, lists, repetitions, a time zone.  Anything else is refused before systemd.
_CALENDAR = re.compile(r"[A-Za-z0-9 *:,./~+_-]{1,200}\Z")
_PLAIN = re.compile(r"[A-Za-z0-9/_.,:=@+-]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECRET = re.compile(r"(?i)(?:AccountKey|SharedAccessSignature)\s*=|[?&]sig=")
MAX_UNIT = 64 << 10           # a unit file read back larger than this is not ours
TOOL_TIMEOUT = 20.0           # seconds for systemd-analyze / systemctl


def unit_names(name: str) -> tuple[str, str]:
    """(service, timer) file names of schedule ``name``."""
    return f"{PREFIX}{name}.service", f"{PREFIX}{name}.timer"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadInput(f"--name {name!r} is not a schedule name; use 1-64 lowercase letters, "
                       "digits, '-' or '_', starting with a letter or digit")
    return name


def check_secret_free(target: str) -> None:
    """A unit is readable by every user: an account key or SAS must not go into one."""
    if _SECRET.search(target):
        raise BadInput("--to holds an account key or SAS token, and a unit file is readable by "
                       "every user: put AZURE_STORAGE_CONNECTION_STRING=... in a file only root "
                       "can read (chmod 600) and give --env-file FILE instead of --to")


def _tool(name: str) -> str | None:
    return shutil.which(name)


def check_calendar(every: str) -> str:
    """``every`` as an OnCalendar value: a shorthand, or an expression systemd-analyze
    accepts.  Without systemd-analyze only the characters are checked (a warning says so)."""
    if every in SHORTHANDS:
        return every
    if not _CALENDAR.match(every) or every.startswith("-") or not every.strip():
        raise BadInput(f"--every {every!r} is not a calendar expression; give hourly, daily, "
                       "weekly or a systemd OnCalendar expression such as 'Mon..Fri 02:30'")
    tool = _tool("systemd-analyze")
    if tool is None:
        warnings.warn(Caution(f"--every {every!r} was not checked: systemd-analyze is not "
                              "installed (Debian package systemd)"), stacklevel=2)
        return every
    proc = _run([tool, "calendar", every])
    if proc.returncode != 0:
        why = _last_line(proc.stderr) or f"exit {proc.returncode}"
        raise BadInput(f"--every {every!r} is not a systemd calendar expression ({why}); give "
                       "hourly, daily, weekly or an expression such as 'Mon..Fri 02:30'")
    return every


def next_run(every: str) -> str | None:
    """When the calendar next elapses, as systemd-analyze says; None when it cannot."""
    tool = _tool("systemd-analyze")
    if tool is None or not _CALENDAR.match(every) or every.startswith("-"):
        return None
    proc = _run([tool, "calendar", every])
    found = re.search(r"^\s*Next elapse:\s*(.+?)\s*$", proc.stdout, re.M)
    return found.group(1) if proc.returncode == 0 and found else None


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    import subprocess  # here: every backup imports this module (its parser), few run tools

    try:
        return subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                              timeout=TOOL_TIMEOUT, env={**os.environ, "SYSTEMD_PAGER": "",
                                                         "SYSTEMD_COLORS": "0"})
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]} timed out")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# --------------------------------------------------------------------------- quoting


def _check_text(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise BadInput(f"{what} {value!r} holds a control character (a newline?), which a "
                       "unit file cannot carry; rename it")
    return value


def exec_quote(word: str) -> str:
    """One ExecStart word, read back by systemd as ``word``."""
    _check_text(word, "path or value")
    if _PLAIN.match(word):
        return word
    escaped = (word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
               .replace("$", "$$"))
    return f'"{escaped}"'


def env_quote(assignment: str) -> str:
    """One Environment= assignment (specifiers expand there; variables do not)."""
    _check_text(assignment, "environment value")
    return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def specifier_escape(text: str) -> str:
    return _check_text(text, "value").replace("%", "%%")


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "s": " ", "a": "\a",
            "b": "\b", "f": "\f", "r": "\r", "v": "\v"}


def exec_words(line: str, dollars: bool = True) -> list[str] | None:
    """The words of an ExecStart (or Environment) value as systemd splits them, with
    ``%%`` and ``$$`` (``dollars``) undone; None when it does not parse."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote = ""
        while i < n and (quote or line[i] not in " \t"):
            c = line[i]
            if c in "\"'" and (not quote or c == quote):
                quote = "" if quote else c
                i += 1
                continue
            if c == "\\":
                if i + 1 >= n or line[i + 1] not in _ESCAPES:
                    return None
                word.append(_ESCAPES[line[i + 1]])
                i += 2
            elif c == "%" or (c == "$" and dollars):
                if i + 1 < n and line[i + 1] == c:
                    word.append(c)
                    i += 2
                else:
                    word.append(c)
                    i += 1
            else:
                word.append(c)
                i += 1
        if quote:
            return None
        words.append("".join(word))
    return words


# --------------------------------------------------------------------------- the pair


@dataclass(frozen=True)
class Schedule:
    """What a schedule runs: every path absolute, nothing secret."""

    name: str
    source: str
    container: str
    passphrase_file: str
    every: str
    to: str | None = None            # None: AZURE_STORAGE_CONNECTION_STRING from env_file
    env_file: str | None = None
    config_dir: str | None = None    # where backup --offline recorded the seed's settings
    python: str = ""
    pythonpath: str = ""

    def argv(self) -> list[str]:
        out = [self.python, "-m", "pipeline", "backup", "--source", self.source]
        if self.to is not None:
            out += ["--to", self.to]
        return out + ["--container", self.container, "--passphrase-file", self.passphrase_file]


def render(s: Schedule) -> tuple[str, str]:
    """(service text, timer text)."""
    service, timer = unit_names(s.name)
    env = [env_quote(f"PYTHONPATH={s.pythonpath}")] if s.pythonpath else []
    if s.config_dir:
        env.append(env_quote(f"PIPELINE_CONFIG_DIR={s.config_dir}"))
    head = (f"# Written by `pipeline backup schedule`; remove with: pipeline backup schedule "
            f"--remove {s.name}\n"
            "# Mode 0644 like every unit: it holds no secret (the passphrase stays in its file,\n"
            "# an account key in the EnvironmentFile), only paths and the schedule.\n")
    lines = [head, "[Unit]",
             f"Description=pipeline backup of {specifier_escape(s.source)} into container "
             f"{s.container}",
             "Wants=network-online.target", "After=network-online.target", "",
             "[Service]", "Type=oneshot",
             # Exit 1 (done with warnings: files skipped) counts as a failure on purpose, so
             # `systemctl --failed` and OnFailure= alerts show it.
             *(f"Environment={e}" for e in env),
             *([f"EnvironmentFile={specifier_escape(s.env_file)}"] if s.env_file else []),
             "ExecStart=" + " ".join(exec_quote(w) for w in s.argv()),
             "Nice=10", "IOSchedulingClass=idle", ""]
    timer_text = "\n".join([
        head, "[Unit]", f"Description=pipeline backup schedule {s.name} ({s.every})", "",
        "[Timer]", f"OnCalendar={s.every}",
        "Persistent=true",             # a run missed while the machine was off runs at boot
        f"Unit={service}", "", "[Install]", "WantedBy=timers.target", ""])
    return "\n".join(lines), timer_text


def verify(service_text: str, timer_text: str, name: str) -> list[str]:
    """``systemd-analyze verify`` of the pair before it is installed: its complaints (none
    when it is happy, and none, with a warning, when the tool is missing)."""
    tool = _tool("systemd-analyze")
    if tool is None:
        warnings.warn(Caution("the units were not checked: systemd-analyze is not installed "
                              "(Debian package systemd)"), stacklevel=2)
        return []
    service, timer = unit_names(name)
    with tempfile.TemporaryDirectory(prefix="pipeline-units-") as tmp:
        for file, text in ((service, service_text), (timer, timer_text)):
            Path(tmp, file).write_text(text)
        proc = _run([tool, "verify", str(Path(tmp, service)), str(Path(tmp, timer))])
    said = [line.strip().replace(tmp + "/", "") for line in
            (proc.stderr + proc.stdout).splitlines() if line.strip()]
    ours = [line for line in said if PREFIX in line]
    if proc.returncode != 0:
        return ours or said[-3:] or [f"systemd-analyze verify exited {proc.returncode}"]
    return ours


def write(unit_dir: Path, s: Schedule) -> tuple[Path, Path]:
    """Check, then install the pair atomically (timer last: a timer never points at a
    service that is not there yet).  Refused when the name is taken."""
    service_text, timer_text = render(s)
    problems = verify(service_text, timer_text, s.name)
    if problems:
        raise BadInput(f"systemd-analyze verify refused the units: {'; '.join(problems)}")
    paths = tuple(unit_dir / f for f in unit_names(s.name))
    if any(p.exists() for p in paths):
        raise BadInput(f"schedule {s.name} already exists in {unit_dir}; remove it first "
                       f"(pipeline backup schedule --remove {s.name} --unit-dir {unit_dir}) or "
                       "choose another --name")
    for path, text in zip(paths, (service_text, timer_text), strict=True):
        _install(path, text)
    return paths[0], paths[1]


def _install(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # no unit suffix: never loaded
    try:
        atomic.replace_file(tmp, path, text.encode(), 0o644)
    except PermissionError:
        raise BadInput(f"cannot write {path} (permission denied); run as root, or give "
                       "--unit-dir DIR (such as ~/.config/systemd/user)") from None


# --------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class Listed:
    name: str
    source: str | None
    container: str | None
    every: str | None
    next: str | None


def _read_unit(path: Path) -> dict[str, list[str]] | None:
    """``Key=value`` lines of a unit (sections ignored), or None when it is not a unit
    of a sane size and encoding."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_UNIT + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if len(data) > MAX_UNIT:
        return None
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _option(words: list[str], flag: str) -> str | None:
    if flag in words:
        i = words.index(flag)
        return words[i + 1] if i + 1 < len(words) else None
    return None


def _shown(value: str | None) -> str | None:
    return None if value is None or _CONTROL.search(value) else value[:300]


def listed(unit_dir: Path) -> list[Listed]:
    """The schedules in ``unit_dir``: every ``pipeline-backup-NAME.timer`` with a valid
    NAME; what cannot be read shows as unknown (None), never as what it claims."""
    try:
        names = sorted(p.name for p in unit_dir.iterdir())
    except FileNotFoundError:
        raise BadInput(f"--unit-dir {unit_dir} does not exist") from None
    out = []
    for file in names:
        if not (file.startswith(PREFIX) and file.endswith(".timer")):
            continue
        name = file[len(PREFIX):-len(".timer")]
        if not _NAME.match(name):
            continue
        timer = _read_unit(unit_dir / file) or {}
        every = _shown((timer.get("OnCalendar") or [None])[-1])
        service = _read_unit(unit_dir / unit_names(name)[0]) or {}
        words = exec_words((service.get("ExecStart") or [""])[-1]) or []
        if words[1:4] != ["-m", "pipeline", "backup"]:
            words = []
        out.append(Listed(name, _shown(_option(words, "--source")),
                          _shown(_option(words, "--container")), every,
                          next_run(every) if every else None))
    return out


def systemd_is_init() -> bool:
    """sd_booted(3): systemd runs this machine (then systemctl can be asked)."""
    return os.path.isdir("/run/systemd/system")


def remove(unit_dir: Path, name: str) -> list[str]:
    """Remove the pair; the steps that remain for systemd (empty when done here, which is
    only when systemd is PID 1 and the units were in its own directory)."""
    paths = [unit_dir / f for f in unit_names(name)]
    if not any(p.exists() or p.is_symlink() for p in paths):
        raise BadInput(f"no schedule {name} in {unit_dir} (pipeline backup schedule --list "
                       f"--unit-dir {unit_dir} shows them)")
    timer = unit_names(name)[1]
    tool = _tool("systemctl")
    managed = tool is not None and systemd_is_init() and (
        unit_dir.resolve() == Path(DEFAULT_UNIT_DIR).resolve())
    if managed and tool:
        _run([tool, "disable", "--now", timer])
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except PermissionError:
            raise BadInput(f"cannot remove {p} (permission denied); run as root") from None
    atomic.fsync_dir(unit_dir)
    if managed and tool:
        proc = _run([tool, "daemon-reload"])
        if proc.returncode == 0:
            return []
    return [f"systemctl disable --now {timer}", "systemctl daemon-reload"]
