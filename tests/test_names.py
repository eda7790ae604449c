"""pipeline.names: one set of name rules, so every name prep puts on a drive, import takes.

Issue 15 item 2: a newline, a tab, a backslash, a name that is not UTF-8 or a blob
name over 1024 characters went onto a drive that import then refused whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import journal, names
from pipeline.drive import format
from pipeline.errors import BadInput
from pipeline.jobs import rules
from pipeline.jobs.errors import BadRequest
from pipeline.receive import importer
from pipeline.storage import base, local

from .conftest import FAST_KDF_ARGS, run_cli

# Every character class that has broken a name: controls (C0, DEL, C1), separators, dots,
# backslashes, non-ASCII, and lone surrogates (os.fsdecode of bytes that are not UTF-8).
_chars = st.one_of(
    st.sampled_from(["/", ".", "\\", "\n", "\t", "\x00", "\x7f", "\x85", " ", "\udcff", "a",
                     "é", "東", "\U0001f642"]),
    st.characters(blacklist_categories=()),
)
_segment = st.one_of(st.text(_chars, min_size=0, max_size=12),
                     st.sampled_from([".", "..", "", "x" * 255, "x" * 300]))
_path = st.one_of(
    st.text(_chars, min_size=0, max_size=40),
    st.lists(_segment, min_size=1, max_size=6).map("/".join),
    st.integers(1, 300).map(lambda n: "/".join(["s"] * n)),  # around 254 segments
    st.integers(1000, 1100).map(lambda n: "p" * (n - 2) + "/q"),  # around 1024 characters
)
_vdir = st.sampled_from(["", "vdir/", "a/b c/", "v" * 200 + "/", "日本/"])
_LOCAL = local.LocalStorage("/srv/account")  # _path only checks; nothing is opened


def _plan(blob: str, path: str, size: int = 1) -> Any:
    sb = SimpleNamespace(blob_type=format.BlobType.BLOCK)
    entry = SimpleNamespace(path=path, blob=blob, size=size, attrs=None)
    return SimpleNamespace(container="seed-test", superblock=sb, files={1: entry}, rejected={})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_path, _vdir)
@example("a\nb", "vdir/")
@example("tab\there", "")
@example("back\\slash", "")
@example("bad\udcff", "vdir/")
@example("/".join(["x" * 250] * 4) + "/" + "y" * 30, "")
@example("ends in dot.", "")
def test_every_name_prep_accepts_import_accepts(path: str, vdir: str) -> None:
    """The property the issue asks for: blob_for (what prep keeps) implies the importer's
    check, the backends' check and a valid on-drive FileEntry."""
    try:
        blob = names.blob_for(path, vdir)
    except names.InvalidName as e:
        assert e.why and "\n" not in str(e)  # one line, however odd the name
        if "segment is longer than 255 bytes" not in e.why:  # prep's one rule of its own
            with pytest.raises(names.InvalidName):
                importer.check_names(_plan(vdir + path, path))
        return
    assert blob == vdir + path
    importer.check_names(_plan(blob, path))
    assert base.check_blob_name(blob) == blob  # what local and azure call, re-exported
    format.FileEntry(1, path, blob, 1, 0, 0o644)  # what prep writes on the drive
    if len(os.fsencode(blob)) < 3000:  # the local file system's own PATH_MAX aside
        _LOCAL._path("seed-test", blob)


@given(st.text(_chars, max_size=30), _vdir)
def test_a_directory_refused_means_every_file_under_it_is(name: str, vdir: str) -> None:
    if names.dir_problem(name, vdir) is not None:
        for leaf in ("x", "file.txt", "a/b"):
            with pytest.raises(names.InvalidName):
                names.blob_for(f"{name}/{leaf}", vdir)


def test_backends_use_the_one_rule() -> None:
    assert base.check_blob_name is names.check_blob_name
    assert local.check_blob_name is names.check_blob_name
    assert base.InvalidName is names.InvalidName
    from pipeline.volume import drives

    assert drives.check_dstdir is names.check_dstdir


def test_show_escapes_for_one_line() -> None:
    assert names.show("a\nb") == "'a\\nb'"
    assert names.show("tab\there") == "'tab\\there'"
    assert names.show("back\\slash") == "'back\\\\slash'"
    assert names.show(os.fsdecode(b"bad\xff")) == "'bad\\xff'"
    assert names.show("naïve 東京") == "'naïve 東京'"
    assert names.show("it's") == "'it\\'s'"


@pytest.mark.parametrize(("dstdir", "why"), [
    ("Bad_Container/", "container 'Bad_Container' is invalid"),
    ("seed/a//b/", "empty path segment"),
    ("seed-test/a/../b/", "'.' or '..'"),
    ("seed-test/tab\there/", "control character"),
    ("seed-test/back\\slash/", "contains '\\'"),
    ("seed-test/" + "v" * 256 + "/", "longer than 255 bytes"),
    ("seed-test/" + "v/" * 600, "longer than 1024 bytes"),
])
def test_dstdir_refused(dstdir: str, why: str) -> None:
    with pytest.raises(BadInput, match=None) as ei:
        names.check_dstdir(dstdir)
    assert why in str(ei.value) and "\n" not in str(ei.value)


def test_dstdir_normalised() -> None:
    assert names.check_dstdir(" seed-test/a b/c ") == "seed-test/a b/c/"
    assert names.check_dstdir("seed-test") == "seed-test/"
    assert names.vdir_of("seed-test/a/") == "a/"


def test_service_checks_diagnostics_path_by_the_same_rules() -> None:
    assert rules.check_diagnostics_path("waimportexport") == "waimportexport"
    assert rules.check_diagnostics_path("logs/import/") == "logs/import/"
    for bad in ("a\nb", "a/../b", "back\\slash", "", 7):
        with pytest.raises(BadRequest):
            rules.check_diagnostics_path(bad)


# --------------------------------------------------------------------------- end to end

_BAD = [b"a\nb", b"tab\there", b"back\\slash", b"bad\xff"]
_LONG = b"/".join([b"L" * 250] * 4) + b"/" + b"f" * 100  # 1104 characters + the vdir


def _write(root: Path, rel: bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _prep(src: Path, tmp: Path, session: str, *extra: str) -> Any:
    return run_cli("prep", "--srcdir", str(src), "--dstdir", "seed-test/vdir/", "--journal-dir",
                   str(tmp / f"j-{session}"), "--session-id", session, "--drive",
                   str(tmp / f"{session}.img"), "--drive-size", "40M", *FAST_KDF_ARGS, *extra)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _write(src, b"good.txt", b"hello\n")
    _write(src, b"dir/ok \xc3\xa9", b"ok" * 1000)
    for rel in [*_BAD, _LONG]:
        _write(src, rel, b"refused " + rel)
    return src


def test_prep_skips_names_import_would_refuse_then_import_takes_the_rest(
        tmp_path: Path, staging: Path) -> None:
    proc = _prep(staging, tmp_path, "names-1")
    assert proc.returncode == 1, proc.stderr
    shown = [names.show(os.fsdecode(rel)) for rel in [*_BAD, _LONG]]
    for s in shown:  # each named once, on one line, escaped
        assert proc.stderr.count(s) == 1, (s, proc.stderr)
        [line] = [ln for ln in proc.stderr.splitlines() if s in ln]
        assert line.startswith("warning: skipped ") and "rename it" in line
    assert "skipped  5 staging entries not copied" in proc.stderr
    assert proc.stderr.rstrip().endswith("5 staging entries skipped (named above; recorded "
                                         "in the journals)")
    [j] = journal.session_journals(tmp_path / "j-names-1")
    try:
        recorded = dict(j.skipped())
        assert {p for p, _ in j.skipped()} == {os.fsdecode(r) for r in [*_BAD, _LONG]}
        assert "not valid UTF-8" in recorded[os.fsdecode(b"bad\xff")]
        assert {f.path for f in j.files()} == {"good.txt", "dir/ok é"}
    finally:
        j.close()

    assert run_cli("verify", "--journal-dir", str(tmp_path / "j-names-1")).returncode == 0
    account, logs = tmp_path / "account", tmp_path / "logs"
    account.mkdir()
    logs.mkdir()
    proc = run_cli("import", "--drive", str(tmp_path / "names-1.img"), "--to", str(account),
                   "--journal-dir", str(tmp_path / "j-names-1"), "--log-dir", str(logs))
    assert proc.returncode == 0, proc.stderr
    base_dir = account / "seed-test" / "vdir"
    got = {str(p.relative_to(base_dir)): p.read_bytes() for p in base_dir.rglob("*")
           if p.is_file()}
    assert got == {"good.txt": b"hello\n", "dir/ok é": b"ok" * 1000}


def test_prep_json_lists_the_skipped(tmp_path: Path, staging: Path) -> None:
    proc = _prep(staging, tmp_path, "names-2", "--json")
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == 5 and all(w.startswith("skipped '") for w in warnings)
    summary = next(e for e in events if e["type"] == "summary")
    assert {os.fsencode(s["path"]) for s in summary["skipped"]} == {*_BAD, _LONG}
    assert events[-1]["type"] == "exit" and events[-1]["code"] == 1


def test_prep_of_good_names_only_exits_0(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src, b"good.txt", b"hello\n")
    _write(src, b"odd but fine/'quotes' #%&+= \xc3\xa9", b"x")
    proc = _prep(src, tmp_path, "names-3")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and "staging entries" not in proc.stderr
    [j] = journal.session_journals(tmp_path / "j-names-3")
    try:
        assert j.skipped() == []
    finally:
        j.close()


def test_preview_names_what_prep_would_skip(tmp_path: Path, staging: Path) -> None:
    proc = run_cli("preview", "--srcdir", str(staging), "--drive-size", "40M", "--dstdir",
                   "seed-test/vdir/")
    assert proc.returncode == 1, proc.stderr
    assert "files           2" in proc.stdout and "skipped         5" in proc.stdout
    for rel in [*_BAD, _LONG]:
        assert proc.stdout.count(names.show(os.fsdecode(rel))) == 1
    proc = run_cli("preview", "--srcdir", str(staging), "--drive-size", "40M", "--json")
    assert proc.returncode == 1
    assert len(json.loads(proc.stdout)["skipped"]) == 5


def test_a_bad_name_on_an_old_drive_costs_that_file_only() -> None:
    """A drive prepared before prep applied the name rules may list a name import refuses:
    that file is named missing in the copy log; the drive's other files still import."""
    sb = format.Superblock(1, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "old-1", "",
                           "seed-test/vdir/", format.BlobType.BLOCK, 0, 1 << 30)
    files = {1: format.FileEntry(1, "a\nb", "vdir/a\nb", 10, 0, 0o644),
             2: format.FileEntry(2, "good", "vdir/good", 10, 0, 0o644),
             3: format.FileEntry(3, "elsewhere", "other/elsewhere", 10, 0, 0o644)}
    plan = importer.DrivePlan(sb, files, [], "index")
    importer.check_plan(plan)
    importer.check_names(plan)  # raises for nothing left to import
    assert set(plan.rejected) == {1, 3}
    assert plan.rejected[1][0] == "missing" and "control character" in plan.rejected[1][1]
    assert plan.rejected[3][0] == "corrupt" and "session's directory" in plan.rejected[3][1]


def test_root_container_is_a_container_with_its_own_blob_rule() -> None:
    """``$root`` (Azure's root container) passes every container check; nothing else with
    a '$' does; its blobs have no '/', and it has no virtual directory."""
    assert names.container_problem("$root") is None
    assert names.check_container_name("$root") == "$root"
    for bad in ("$Root", "$roots", "root$", "$", "$logs"):
        assert names.container_problem(bad) is not None, bad
    assert names.root_blob_problem("$root", "a.txt") is None
    assert names.root_blob_problem("$root", "d/a.txt") is not None
    assert names.root_blob_problem("photos", "d/a.txt") is None
    assert names.check_dstdir("$root") == "$root/"
    with pytest.raises(BadInput, match="no virtual directories"):
        names.check_dstdir("$root/v/")
