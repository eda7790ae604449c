"""Review of today's backup readers under permissions a user cannot pass (run as root,
the checks themselves run in a forked child that became ``nobody``: root reads through
any mode).  A directory that cannot be listed and a file that cannot be opened are
warnings through WalkAhead, the read-ahead and the reader; a tree cache entry that
cannot be read is a miss, and ``put`` writes it again."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfastcdc  # noqa: F401 - imported before the child drops root (/root is 0700)
import pytest

import pipeline.drive.codec  # noqa: F401 - as pyfastcdc
import pipeline.prep.read  # noqa: F401 - as pyfastcdc
from pipeline.backup import cache, walk
from pipeline.backup import encoding as fmt
from pipeline.backup.stages import readahead
from pipeline.backup.stages.messages import NodeBatch
from tests.backup_helpers import nobody_may_enter

NOBODY = 65534


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory nobody may enter (pytest's tmp_path is root's alone)."""
    with nobody_may_enter("pipeline-review-perms-", "it drops to nobody in a child") as d:
        yield d
        for sub, dirs, files in os.walk(d):
            for x in dirs + files:
                os.chmod(os.path.join(sub, x), 0o700, follow_symlinks=False)


def _as_nobody(fn: Any) -> Any:
    """``fn()`` in a forked child running as nobody; its JSON answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: nothing may raise out of it
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            with os.fdopen(w, "w") as out:
                json.dump(fn(), out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text
    return json.loads(text)


def test_unreadable_directory_and_file_are_warnings(shared: Path) -> None:
    src = shared / "src"
    (src / "closed").mkdir(parents=True)
    (src / "closed" / "inside").write_bytes(b"x")
    (src / "secret").write_bytes(b"s" * 100)
    (src / "plain").write_bytes(b"p" * 100)
    os.chmod(src, 0o755)
    os.chmod(src / "plain", 0o644)
    os.chmod(src / "closed", 0o000)
    os.chmod(src / "secret", 0o000)

    def check() -> dict[str, Any]:
        warned: list[str] = []
        nodes = list(walk.WalkAhead(src).nodes(warned.append))
        files = [n for n in nodes if n.type == "file"]
        batch = NodeBatch(0, [walk.Walked(n, False) for n in files])
        asked = readahead.ask(str(src), batch)
        reader = walk.FileReader(fmt.ChunkerParams(min=256, avg=1024, max=4096), 0,
                                 lambda b: bytes(32))
        read = {n.path: reader.read(src / n.path, n, lambda *a: None, warned.append)
                for n in files}
        return {"paths": [n.path for n in nodes], "warned": warned, "asked": asked,
                "read": read}

    got = _as_nobody(check)
    assert got == {"paths": [fmt.ROOT, "closed", "plain", "secret"],
                   "warned": ["closed: cannot list the directory (Permission denied); skipped",
                              "secret: cannot read (Permission denied); skipped"],
                   "asked": 1, "read": {"plain": True, "secret": False}}


def test_an_unreadable_cache_entry_is_a_miss_and_written_again(shared: Path) -> None:
    root = shared / "pipeline" / "backup"        # as cache_root(): it chmods .../pipeline
    tc = cache.TreeCache(root, "0123456789abcdef" * 2, b"k" * 32)
    cid = bytes(range(32))
    tc.put(cid, b"line\n", [fmt.Node("file", "a", size=1)])
    for d in (root.parent, root, tc.dir.parent, tc.dir):
        os.chown(d, NOBODY, NOBODY)
    path = tc.dir / cid.hex()
    os.chmod(path, 0o000)                         # root's, unreadable to nobody

    def check() -> dict[str, Any]:
        missed = tc.get(cid) is None
        tc.put(cid, b"line\n", [fmt.Node("file", "a", size=1)])
        got = tc.get(cid)
        return {"missed": missed, "again": None if got is None else [
            (n.path, line.decode()) for n, line in got]}

    assert _as_nobody(check) == {"missed": True, "again": [["a", "line\n"]]}
    assert path.stat().st_uid == NOBODY           # nobody's own entry replaced root's
