"""Backup metadata on a real filesystem (a loop-mounted ext4): owners, xattrs, POSIX ACLs,
hard links, sparse files, fifos and device nodes, backed up and restored as root and as
a user; and the incremental rule that a metadata-only change does not read the file.

Needs root, mkfs.ext4, mount, setfacl/getfacl, setpriv and unshare: a missing one fails
the test (scripts/install installs them), never skips it.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import progress
from pipeline.backup import archive, walk
from pipeline.backup import encoding as fmt
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import run_restore
from tests.conftest import FAST_ARGON, ROOT, require_root, require_tool, run_cli
from tests.test_backup_repo import PASS, reopen

MiB = 1 << 20
UID, GID = 1234, 5678                  # no such user or group: restored by number
NOBODY = 65534
ACL_FILE = "u:1234:rw-,g:5678:r--,u:nobody:r--"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ext4() -> Iterator[Path]:
    """A fresh ext4 (xattrs and ACLs on, as by default) mounted from a sparse image, under
    a directory everyone may enter (the user restore runs as nobody); unmounted after."""
    require_root()
    for tool in ("mkfs.ext4", "mount", "umount", "losetup", "setfacl", "getfacl"):
        require_tool(tool)
    base = Path(tempfile.mkdtemp(prefix="pipeline-meta-", dir="/tmp"))
    os.chmod(base, 0o755)
    img, mnt = base / "ext4.img", base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(512 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    proc = subprocess.run(["mount", "-o", "loop,user_xattr,acl", str(img), str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(base)
        pytest.fail(f"cannot loop-mount ext4 ({proc.stderr.strip()}); these tests need root "
                    "and loop devices, as CI has")
    os.chmod(mnt, 0o755)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the tree


def make_meta_tree(src: Path) -> None:
    """Every kind of metadata: owners by number and by name, a setuid file, user.*,
    security.* and trusted.* xattrs, access and default ACLs, a hard-linked pair and a
    triple, a sparse file, a fifo, device nodes, a socket, and fixed times."""
    r = random.Random(7)
    nobody = pwd.getpwnam("nobody")
    for d in ("d/sub", "acl dir", "owned dir"):
        (src / d).mkdir(parents=True)
    for d in (src, src / "d", src / "d/sub", src / "acl dir"):
        os.chmod(d, 0o755)

    def write(rel: str, data: bytes, mode: int) -> Path:
        p = src / rel
        p.write_bytes(data)
        os.chmod(p, mode)
        return p

    os.chown(write("owned.txt", b"owned\n" * 100, 0o640), UID, GID)
    os.chown(write("named.txt", b"nobody's\n", 0o644), nobody.pw_uid, nobody.pw_gid)
    p = write("setuid", b"#!/bin/sh\necho hi\n", 0o755)
    os.chown(p, UID, GID)
    os.chmod(p, 0o6750)                         # after chown, which clears the bits
    p = write("xattrs.bin", r.randbytes(300_000), 0o600)
    for name, value in (("user.comment", b"hi\x00\xff there"), ("user.empty", b""),
                        ("security.pipeline", b"sec"), ("trusted.pipeline", b"tr" * 100)):
        os.setxattr(p, name, value)
    write("acl.txt", b"acl\n", 0o640)
    _run(["setfacl", "-m", ACL_FILE, "acl.txt"], src)
    _run(["setfacl", "-m", "u:1234:rwx", "-d", "-m", "u:1234:rwx,g::r-x,o::---", "acl dir"],
         src)
    write("acl dir/inherited.txt", b"inherits the default ACL\n", 0o640)
    os.chown(src / "owned dir", UID, GID)
    os.chmod(src / "owned dir", 0o2750)
    os.setxattr(src / "owned dir", "user.dir", b"a directory's own")
    write("owned dir/inside", b"x" * 5000, 0o644)
    write("pair-a", r.randbytes(50_000), 0o644)
    os.link(src / "pair-a", src / "d" / "pair-b")
    os.chown(write("t1", r.randbytes(3 * MiB), 0o600), UID, GID)
    os.link(src / "t1", src / "d" / "t2")
    os.link(src / "t1", src / "d" / "sub" / "t3")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(r.randbytes(MiB))
        f.seek(64 * MiB - 3)
        f.write(b"end")
    os.mkfifo(src / "fifo", 0o640)
    os.chown(src / "fifo", UID, GID)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(src / "d" / "blk", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    os.chown(src / "d" / "blk", 0, 6)
    os.symlink("owned.txt", src / "link")
    os.chown(src / "link", UID, GID, follow_symlinks=False)
    with socket.socket(socket.AF_UNIX) as s:    # skipped, with a warning
        s.bind(str(src / "sock"))
    t = 1_650_000_000_000_000_000
    for i, q in enumerate(sorted(src.rglob("*"), key=lambda q: -len(q.parts))):
        os.utime(q, ns=(t + i * 1001, t + i * 1001), follow_symlinks=False)
    os.utime(src, ns=(t - 9, t - 9))


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, (cmd, proc.stderr)
    return proc.stdout


def describe_meta(root: Path, skip: tuple[str, ...] = ("sock",)) -> dict[str, tuple[Any, ...]]:
    """Every attribute a restore must reproduce, from lstat, listxattr/getxattr and the
    content: type and mode bits, owner, mtime, size, device number, xattrs, link count."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, *([] if dirpath != str(root) else ["."])]:
            p = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(p, root)
            if rel in skip:
                continue
            st = os.lstat(p)
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False)
                      for n in sorted(os.listxattr(p, follow_symlinks=False))}
            extra: Any = None
            if stat.S_ISREG(st.st_mode):
                extra = (st.st_size, hashlib.sha256(Path(p).read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            nlink = None if stat.S_ISDIR(st.st_mode) else st.st_nlink
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs, extra, nlink)
    return out


def link_groups(root: Path) -> list[list[str]]:
    """Paths sharing an inode, for every inode with several."""
    by_ino: dict[int, list[str]] = defaultdict(list)
    for p in root.rglob("*"):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            by_ino[st.st_ino].append(p.relative_to(root).as_posix())
    return sorted(sorted(g) for g in by_ino.values() if len(g) > 1)


def getfacl(root: Path, rels: list[str]) -> str:
    return _run(["getfacl", "-n", "-P", "--", *rels], root)


async def backup(repo: Repository, src: Path, parent: bool = True,
                 stats: progress.Stats | None = None) -> tuple[archive.BackupResult, list[str]]:
    warnings: list[str] = []
    ref = (await trio.to_thread.run_sync(archive.find_parent, repo, str(src.resolve()),
                                         socket.gethostname()) if parent else None)
    result = await archive.run_backup(repo, src.resolve(), stats or progress.Stats(),
                                      warnings.append, archive.BackupOptions(threads=2), ref)
    return result, warnings


async def restore(repo: Repository, target: Path, snapshot: str | None = None) -> list[str]:
    warnings: list[str] = []
    ref = find_snapshot(repo.snapshots(), snapshot)
    await run_restore(repo, ref, target, progress.Stats(), 2, warnings.append)
    return warnings


# --------------------------------------------------------------------------- as root


async def test_every_attribute_round_trips_on_ext4(ext4: Path, tmp_path: Path) -> None:
    src, out = ext4 / "src", ext4 / "out"
    src.mkdir()
    make_meta_tree(src)
    before = describe_meta(src)
    repo = Repository.init(DirBackend(tmp_path / "staging" / "repo"), PASS, FAST_ARGON)
    result, warnings = await backup(repo, src)
    assert warnings == ["sock: socket, not backed up"]

    nodes = {n.path: n for n in reopen(DirBackend(tmp_path / "staging" / "repo")).tree(
        result.manifest)}
    assert (nodes["owned.txt"].uid, nodes["owned.txt"].gid) == (UID, GID)
    assert (nodes["owned.txt"].user, nodes["owned.txt"].group) == ("", "")
    assert (nodes["named.txt"].user, nodes["named.txt"].uid) == ("nobody", NOBODY)
    assert nodes["null"].type == "chardev" and nodes["null"].rdev == os.makedev(1, 3)
    assert nodes["fifo"].type == "fifo" and nodes["d/blk"].type == "blockdev"
    assert nodes["d/t2"].links == 3 and nodes["d/t2"].inode == nodes["t1"].inode
    assert [k for k, _ in nodes["acl dir"].xattrs] == [fmt.ACL_ACCESS, fmt.ACL_DEFAULT]

    assert await restore(reopen(DirBackend(tmp_path / "staging" / "repo")), out) == []
    after = describe_meta(out)
    assert after == before
    assert after["setuid"][0] == stat.S_IFREG | 0o6750 and after["owned.txt"][1:3] == (UID, GID)
    assert after["xattrs.bin"][4]["security.pipeline"] == b"sec"
    assert after["xattrs.bin"][4]["trusted.pipeline"] == b"tr" * 100
    # POSIX ACLs as getfacl shows them, the inherited one and the directory's default too
    rels = sorted(r for r in before if r != ".")
    assert getfacl(out, rels) == getfacl(src, rels)
    assert "default:user:1234:rwx" in getfacl(out, ["acl dir"])
    assert "user:1234:rw-" in getfacl(out, ["acl.txt"])
    # hard links are links again, not copies: one inode per group
    assert link_groups(out) == link_groups(src) == [["d/pair-b", "pair-a"],
                                                    ["d/sub/t3", "d/t2", "t1"]]
    assert os.lstat(out / "t1").st_ino == os.lstat(out / "d/sub/t3").st_ino
    # the sparse file is sparse again: 64 MiB long, about 1 MiB on disk
    st = os.stat(out / "sparse.img")
    assert st.st_size == 64 * MiB and st.st_blocks <= os.stat(src / "sparse.img").st_blocks
    assert st.st_blocks * 512 < 2 * MiB
    assert not list(out.rglob(".pipeline-restore*"))


async def test_incremental_metadata_only_change_reads_nothing(ext4: Path,
                                                              tmp_path: Path) -> None:
    """chmod, chown, setfattr, setfacl and a new hard link move a file's ctime but not its
    content: the next backup takes the new metadata without reading the file.  A ctime
    moved with no metadata change (content written, mtime put back) reads it again.  An
    incremental keeps the hard links its parent had."""
    src = ext4 / "src"
    src.mkdir()
    make_meta_tree(src)
    os.unlink(src / "sock")
    repo = Repository.init(DirBackend(tmp_path / "staging" / "repo"), PASS, FAST_ARGON)
    await backup(repo, src)

    os.chmod(src / "pair-a", 0o600)
    os.chown(src / "owned.txt", 4321, 8765)
    os.setxattr(src / "xattrs.bin", "user.comment", b"changed")
    _run(["setfacl", "-m", "u:4321:r--", "acl.txt"], src)
    os.link(src / "named.txt", src / "named.txt.2")   # a new path after an unchanged link
    stats = progress.Stats()
    second, _ = await backup(repo, src, stats=stats)
    assert second.parent is not None
    assert stats.bytes_read == 0 and second.chunks_new == 0    # no file read, no data stored
    before = describe_meta(src)

    # content rewritten in place, same size, mtime put back: ctime alone moved, no
    # metadata explains it: read again
    st = os.stat(src / "owned.txt")
    (src / "owned.txt").write_bytes(b"OWNED\n" * 100)
    os.utime(src / "owned.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    stats = progress.Stats()
    third, _ = await backup(repo, src, stats=stats)
    assert stats.bytes_read == 600
    after_rewrite = describe_meta(src)

    repo = reopen(DirBackend(tmp_path / "staging" / "repo"))
    assert await restore(repo, ext4 / "out2", second.snapshot.hex) == []
    assert describe_meta(ext4 / "out2") == before
    assert link_groups(ext4 / "out2") == [["d/pair-b", "pair-a"], ["d/sub/t3", "d/t2", "t1"],
                                          ["named.txt", "named.txt.2"]]
    assert await restore(repo, ext4 / "out3", third.snapshot.hex) == []
    assert describe_meta(ext4 / "out3") == after_rewrite


# --------------------------------------------------------------------------- as a user


_USER_RESTORE = """
import json, sys
from pathlib import Path
import trio
from pipeline import progress
from pipeline.backup.backend import DirBackend
from pipeline.backup.repo import Repository, find_snapshot
from pipeline.backup.restore import run_restore

async def main() -> None:
    repo = Repository.open(DirBackend(sys.argv[1]), sys.argv[3].encode(), "test")
    repo.load_index()
    warnings: list[str] = []
    ref = find_snapshot(repo.snapshots(), None)
    await run_restore(repo, ref, Path(sys.argv[2]), progress.Stats(), 2, warnings.append)
    print(json.dumps(warnings))

trio.run(main)
"""


def as_nobody(args: list[str], scratch: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as uid and gid 65534 with no groups (setpriv).  Where nobody cannot
    reach this interpreter (pyenv under a private /root), it is bind-mounted at
    ``scratch`` in a mount namespace of its own (unshare -m), with its libpython."""
    require_tool("setpriv")
    drop = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exe = os.path.realpath(sys.executable)
    probe = subprocess.run([*drop, exe, "-c", "import trio"], capture_output=True, env=env)
    if probe.returncode == 0:
        return subprocess.run([*drop, exe, *args], capture_output=True, text=True, env=env,
                              timeout=300)
    require_tool("unshare")
    base = os.path.realpath(sys.base_prefix)
    scratch.mkdir(mode=0o755)
    os.chmod(scratch, 0o755)
    moved = str(scratch / os.path.relpath(exe, base))
    env["LD_LIBRARY_PATH"] = str(scratch / "lib")
    script = f'mount --bind "{base}" "{scratch}" && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *drop, moved, *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_restore_as_a_user_warns_for_what_it_cannot_set(ext4: Path, tmp_path: Path) -> None:
    """As nobody: the files are nobody's (no error), user.* xattrs, ACLs, fifos, modes and
    times are restored; security.* and trusted.* xattrs and device nodes are not, each a
    warning naming it (the command's exit code 1, done with warnings)."""
    src = ext4 / "src"
    src.mkdir()
    make_meta_tree(src)
    before = describe_meta(src)
    repo = Repository.init(DirBackend(tmp_path / "staging" / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src)
    home = ext4 / "user"
    shutil.copytree(tmp_path / "staging" / "repo", home / "repo")
    for p in [home, *home.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    os.chmod(home, 0o755)

    proc = as_nobody(["-c", _USER_RESTORE, str(home / "repo"), str(home / "out"),
                      PASS.decode()], home / "python")
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads(proc.stdout)
    assert sorted(warnings) == [
        "d/blk: block device 7:200 not restored: Operation not permitted (making device "
        "nodes needs root)",
        "null: character device 1:3 not restored: Operation not permitted (making device "
        "nodes needs root)",
        "xattrs.bin: extended attribute security.pipeline not restored (Operation not "
        "permitted)",
        "xattrs.bin: extended attribute trusted.pipeline not restored (Operation not "
        "permitted)",
    ]
    after = describe_meta(home / "out", skip=("sock", "repo"))
    assert set(after) == set(before) - {"null", "d/blk"}
    for rel, (mode, uid, gid, mtime, xattrs, extra, nlink) in after.items():
        want = before[rel]
        assert (uid, gid) == (NOBODY, NOBODY), rel
        assert (mode, mtime, extra, nlink) == (want[0], want[3], want[5], want[6]), rel
        assert xattrs == {k: v for k, v in want[4].items()
                          if not k.startswith(("security.", "trusted."))}, rel
    rels = ["acl.txt", "acl dir", "acl dir/inherited.txt"]
    assert getfacl(home / "out", rels) == getfacl(src, rels).replace(
        "# owner: 0\n# group: 0", "# owner: 65534\n# group: 65534")
    assert stat.S_ISFIFO(os.lstat(home / "out" / "fifo").st_mode)


# --------------------------------------------------------------------------- the rule


def test_unchanged_rule_trusts_a_ctime_only_a_metadata_change_explains() -> None:
    old = fmt.Node("file", "f", 0o644, 10, 5, 20, 7, uid=1, gid=1, content=[(None, 5)])

    def new(**kw: Any) -> fmt.Node:
        fields = {"type": "file", "path": "f", "mode": 0o644, "mtime_ns": 10, "size": 5,
                  "ctime_ns": 20, "inode": 7, "uid": 1, "gid": 1, **kw}
        return fmt.Node(**fields)

    assert walk.unchanged(new(), old)
    assert not walk.unchanged(new(ctime_ns=21), old)                 # unexplained
    for change in ({"mode": 0o600}, {"uid": 2}, {"gid": 3}, {"links": 2, "dev": 1},
                   {"xattrs": [("user.a", b"1")]}):
        assert walk.unchanged(new(ctime_ns=21, **change), old), change
    assert not walk.unchanged(new(ctime_ns=21, mtime_ns=11, mode=0o600), old)
    assert not walk.unchanged(new(ctime_ns=21, size=6, mode=0o600), old)
    legacy = fmt.Node("file", "f", 0o644, 10, 5, 20, 7)              # no owner recorded
    assert walk.unchanged(new(), legacy)
    assert not walk.unchanged(new(ctime_ns=21), legacy)


def test_walk_records_special_files_and_skips_sockets(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
    warnings: list[str] = []
    nodes = {n.path: n for n in walk.walk(tmp_path, warnings.append)}
    assert set(nodes) == {".", "fifo"} and nodes["fifo"].type == "fifo"
    assert warnings == ["sock: socket, not backed up"]
    assert nodes["."].uid == os.getuid() and nodes["."].user == pwd.getpwuid(os.getuid()).pw_name
    assert nodes["."].group == grp.getgrgid(os.getgid()).gr_name


def test_cli_restore_as_a_user_is_done_with_warnings(ext4: Path, tmp_path: Path) -> None:
    """`pipeline restore` as nobody: every warning on stderr naming its entry, the final
    line, and exit 1 (done with warnings); as root the same snapshot restores with 0."""
    src = ext4 / "src"
    src.mkdir()
    make_meta_tree(src)
    os.unlink(src / "sock")
    repo = Repository.init(DirBackend(tmp_path / "staging" / "repo"), PASS, FAST_ARGON)
    trio.run(backup, repo, src)
    home = ext4 / "user"
    shutil.copytree(tmp_path / "staging" / "repo", home / "repo")
    (home / "pass").write_bytes(PASS + b"\n")
    for p in [home, *home.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    os.chmod(home, 0o755)
    args = ["restore", "--from", str(home / "repo"), "--passphrase-file", str(home / "pass")]
    proc = as_nobody(["-m", "pipeline", *args, "--target", str(home / "out")],
                     home / "python")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 6, proc.stderr
    for needle in ("d/blk: block device 7:200 not restored", "null: character device 1:3",
                   "xattrs.bin: extended attribute security.pipeline",
                   "xattrs.bin: extended attribute trusted.pipeline"):
        assert sum(needle in line for line in lines) == 1, (needle, proc.stderr)
    assert lines[-1].startswith("pipeline restore: restored snapshot ")
    run_cli(*args, "--target", str(ext4 / "out"), check_code=0)
    assert describe_meta(ext4 / "out") == describe_meta(src)
