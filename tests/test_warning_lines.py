"""A warning names a file, and a file's name is its owner's choice: a newline or an escape
sequence in it must neither split the warning's line nor reach the terminal as such (the
review found backup's walk printing such names raw: a name 'x\\n\\x1b[31mFAKE' drew a red
line of its own).  One rule at the one place lines are made (``progress.describe_event``,
with ``errors.printable``), so prep's, import's and backup's warnings all hold it."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from pipeline import progress
from pipeline.errors import printable
from tests.backup_helpers import backed_up_tree
from tests.test_backup_inline import _begin

EVIL = "evil\n\x1b[31mFAKE: all good"


def test_a_line_is_one_line_and_no_escape_sequence() -> None:
    line = progress.describe_event("warning", {"message": f"{EVIL}: cannot stat; skipped"})
    assert line == "warning: evil\\n\\x1b[31mFAKE: all good: cannot stat; skipped"
    assert progress.describe_event("error", {"message": "a\\b plain"}) == "error: a\\b plain"
    assert printable("caf\udce9") == "caf\\xe9"                # a byte that is not UTF-8


def test_backup_walk_warning_about_a_hostile_name(tmp_path: Path) -> None:
    src, repo = backed_up_tree(tmp_path)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / EVIL))
        begun, _, warnings = _begin(repo, src)
    assert warnings == [f"{EVIL}: socket, not backed up"]       # the data keeps the name
    out = io.StringIO()
    progress.QuietRenderer(out).event("warning", message=warnings[0])
    assert out.getvalue().splitlines() == [
        "warning: evil\\n\\x1b[31mFAKE: all good: socket, not backed up"]
    assert "\x1b" not in out.getvalue()
    assert Path(src / EVIL).exists()
