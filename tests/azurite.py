"""Azurite, Microsoft's Azure Blob emulator: one process for the whole run
(``azurite_server``), and ``azurite``, its account emptied for each module.

scripts/install puts it in /opt/azurite (npm).  Where it is missing the tests
that need it fail loudly, never skip: a skip in CI would hide an untested backend.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

AZURITE_BIN = Path("/opt/azurite/node_modules/.bin/azurite-blob")
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in Microsoft's docs): not a secret.
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
START_TIMEOUT_S = 60


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    if AZURITE_BIN.exists():
        return str(AZURITE_BIN)
    found = shutil.which("azurite-blob")
    if found is None:
        pytest.fail(f"azurite-blob is not installed ({AZURITE_BIN} is missing); run "
                    "scripts/install (npm install --prefix /opt/azurite azurite@3). "
                    "The Azure backend tests must not skip.")
    return found


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"azurite-blob exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"azurite-blob did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s: "
                f"{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start azurite-blob on a free loopback port; yield its connection string.  Once per
    run: test modules importing ``azurite`` each had their own (14 processes, 1-4 s to
    start each here, all held to the end); only this plugin's definition is session-wide."""
    binary = _binary()
    location = tmp_path_factory.mktemp("azurite")
    log = location / "azurite.log"
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--location", str(location), "--silent", "--skipApiVersionCheck", "--loose",
             "--disableTelemetry"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        _wait_listening(proc, port, log)
        yield connection_string(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def azurite(azurite_server: str) -> str:
    """The session's Azurite with its account emptied (every container deleted, staged
    blocks with them), so each module starts as on an emulator of its own: modules
    share container names ("expire", "cont") and the importer's state container."""
    clear_account(azurite_server)
    return azurite_server


def clear_account(conn: str) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(conn)
    for container in service.list_containers():
        service.delete_container(container.name)
    left = [c.name for c in service.list_containers()]
    assert not left, f"Azurite kept containers {left} after they were deleted"
