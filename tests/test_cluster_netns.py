"""The cluster across hosts: the scheduler, two workers and the client each in a network
namespace of its own, joined by veth pairs to the scheduler's (the only links; no route
between the others).  prep --cluster, verify --cluster, import --cluster: byte-identical.
The namespaces are created and removed by the test; without `ip` (iproute2) or root it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.test_cluster import (
    Proc,
    check_session,
    cli,
    prep_args,
    round_trip,
    staging,
    start_scheduler,
    start_worker,
)

PORT = 8786  # the scheduler's namespace is its own: no other listener can hold it


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[dict[str, tuple[str, str]]]:
    """name -> (namespace, its address towards the scheduler); 'scheduler' -> (ns, '')."""
    require_root()
    require_tool("ip")
    tag = f"{os.getpid() % 10000}"
    net = 100 + os.getpid() % 100  # 10.NET.N.0/30 per link
    made: list[str] = []
    hosts: dict[str, tuple[str, str]] = {}
    try:
        hub = f"plsch{tag}"
        ip("netns", "add", hub)
        made.append(hub)
        ip("-n", hub, "link", "set", "lo", "up")
        hosts["scheduler"] = (hub, "")
        for n, name in enumerate(("w1", "w2", "client"), start=1):
            ns = f"pl{name}{tag}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            a, b = f"vs{name}{tag}", f"vh{name}{tag}"
            ip("link", "add", a, "netns", hub, "type", "veth", "peer", "name", b, "netns", ns)
            ip("-n", hub, "addr", "add", f"10.{net}.{n}.1/30", "dev", a)
            ip("-n", ns, "addr", "add", f"10.{net}.{n}.2/30", "dev", b)
            ip("-n", hub, "link", "set", a, "up")
            ip("-n", ns, "link", "set", b, "up")
            hosts[name] = (ns, f"10.{net}.{n}")
        yield hosts
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_round_trip_across_network_namespaces(
        tmp_path: Path, namespaces: dict[str, tuple[str, str]]) -> None:
    def inside(name: str) -> list[str]:
        return ["ip", "netns", "exec", namespaces[name][0]]

    procs: list[Proc] = []
    try:
        procs.append(start_scheduler(tmp_path, inside("scheduler"), "0.0.0.0", PORT))
        for name in ("w1", "w2"):
            net = namespaces[name][1]
            procs.append(start_worker(tmp_path, f"tcp://{net}.1:{PORT}", name,
                                      inside(name), host=f"{net}.2"))
        client = inside("client")
        address = f"tcp://{namespaces['client'][1]}.1:{PORT}"
        # the client cannot reach a worker: only the scheduler is on its link
        probe = (f"import socket; socket.create_connection(('{namespaces['w1'][1]}.2', "
                 f"{PORT}), timeout=2)")
        unreachable = subprocess.run([*client, sys.executable, "-c", probe],
                                     capture_output=True, text=True)
        assert "Network is unreachable" in unreachable.stderr, unreachable.stderr
        src = staging(tmp_path)
        cli(*prep_args(address, tmp_path, src), prefix=client)
        check_session(tmp_path)
        round_trip(tmp_path, src, address, prefix=client)
    finally:
        for p in procs:
            p.stop()
