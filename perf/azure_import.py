"""``python -m perf.azure_import DATA``: import into Azurite against the SDK's own upload.

Issue 18: import into an Azure account must be at least as fast as uploading the same
files with azure-storage-blob's parallel ``upload_blob(max_concurrency=...)``, same run.
``DATA`` is prepped once (untimed) onto one image drive; then ``--runs`` rounds, in
alternating order, of

- ``import --to Azurite``: ``pipeline import`` of that drive into Azurite;
- ``upload_blob``: a Python process walking ``DATA`` and uploading every file with
  ``BlobClient.upload_blob(f, length=..., overwrite=True, max_concurrency=N)``, ``N``
  files at once (a thread pool of ``N``): the SDK's parallelism within a blob and
  across blobs, the strongest plain use of it.

Each run gets a fresh Azurite (``--inMemoryPersistence``: no disk under it, started
untimed), so neither contender pays for the other's blobs.  Page cache warm (the data
and the drive are read before each run).  Azurite (Node.js, one thread) is slower than
Azure, so this measures the client's requests and their count, not bandwidth: import
sends one request per small file (Put Blob, ``AzureStorage.write_whole``) and a block
and a block list per large one, as ``upload_blob`` does.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf import measure
from perf.measure import Series

AZURITE = Path("/opt/azurite/node_modules/.bin/azurite-blob")
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in Microsoft's docs): not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
IMPORT, UPLOAD = "import --to Azurite", "upload_blob(max_concurrency)"
MiB = 1 << 20

# The baseline, run as its own process (its start-up counts as import's does).
UPLOAD_SCRIPT = r"""
import os, sys
from concurrent.futures import ThreadPoolExecutor
from azure.storage.blob import BlobServiceClient
conn, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
service = BlobServiceClient.from_connection_string(conn)
container = service.get_container_client("upload")
container.create_container()
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
def one(path):
    with open(path, "rb") as f:
        container.get_blob_client(os.path.relpath(path, root)).upload_blob(
            f, length=os.path.getsize(path), overwrite=True, max_concurrency=n)
with ThreadPoolExecutor(n) as pool:
    for _ in pool.map(one, files):
        pass
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def azurite() -> Iterator[str]:
    """A fresh Azurite blob service in memory; yields its connection string."""
    if not AZURITE.exists():
        raise SystemExit(f"perf.azure_import: {AZURITE} is missing; run scripts/install")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="azurite-") as cwd:  # its debug and lock files
        proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--inMemoryPersistence", "--silent", "--skipApiVersionCheck", "--loose",
             "--disableTelemetry"], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("perf.azure_import: azurite-blob did not start") from None
                    time.sleep(0.1)
            yield (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                   f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _warm(*paths: Path) -> None:
    for p in paths:
        subprocess.run(["sh", "-c", f"tar -cf - -C '{p.parent}' '{p.name}' | cat >/dev/null"],
                       check=True)


def measure_azure(data: Path, out: Path, runs: int, concurrency: int, env: dict[str, str],
                  log: Any = print, into: dict[str, Series] | None = None,
                  prefix: str = "") -> dict[str, Any]:
    """Interleaved rounds of both contenders; their series (also put in ``into`` as
    ``prefix + name``) and import's ratio."""
    from perf.quick import prep
    from perf.run import REPO, pipeline_cmd

    nbytes = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    prep(data, out, nbytes)
    series = {k: Series(prefix + k, nbytes) for k in (IMPORT, UPLOAD)}
    if into is not None:
        into.update({prefix + k: v for k, v in series.items()})
    for i in range(runs):
        for key in (IMPORT, UPLOAD) if i % 2 == 0 else (UPLOAD, IMPORT):
            logs = out / "logs"
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir()
            with azurite() as conn:
                argv = (pipeline_cmd("import", "--drive", str(out / "d1.img"), "--journal-dir",
                                     str(out / "j"), "--to", conn, "--log-dir", str(logs),
                                     "--json") if key == IMPORT
                        else [sys.executable, "-c", UPLOAD_SCRIPT, conn, str(data),
                              str(concurrency)])
                _warm(data, out / "d1.img")
                s = measure.run(argv, cwd=REPO, env=env)
            series[key].samples.append(s)
            log(f"  {prefix + key:34s} {s.wall_s:7.2f} s {nbytes / s.wall_s / 1e6:8.1f} MB/s  "
                f"peak RSS {s.peak_rss / MiB:6.1f} MiB  cpu {s.cpu_s:6.1f} s")
    ratio = series[IMPORT].mbps / series[UPLOAD].mbps
    return {"bytes": nbytes, "files": sum(1 for f in data.rglob("*") if f.is_file()),
            "concurrency": concurrency, "ratio": round(ratio, 3),
            "series": {k: s.to_json() for k, s in series.items()},
            "mbps": {k: round(s.mbps, 1) for k, s in series.items()}}


def main(argv: list[str] | None = None) -> int:
    from perf.run import python_env

    p = argparse.ArgumentParser(prog="python -m perf.azure_import",
                                description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=Path("/var/tmp/pipeline-perf/azure"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8,
                   help="upload_blob's max_concurrency and files at once (default 8: import's "
                   "storage threads)")
    args = p.parse_args(argv)
    res = measure_azure(args.data.resolve(), args.out, args.runs, args.concurrency,
                        python_env())
    for k, v in res["mbps"].items():
        print(f"{k:32s} median {v:7.1f} MB/s")
    print(f"import / upload_blob {res['ratio']:.2f}x (target >= 1.0)")
    return 0 if res["ratio"] >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
