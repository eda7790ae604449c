"""Bounded load run against the import service on 127.0.0.1.

``python -m perf.service_load [--jobs 10000] [--clients 50] [--tls] [--profile S]``

What it does, in order:

1. makes a fresh data directory (under ``/var/tmp`` by default: a real disk, so the
   catalog's ``synchronous=FULL`` commits pay for their fsync), creates a subscription
   with ``pipeline service subscription add`` as an operator would, and starts
   ``pipeline service`` on a free port with ``tests.jobservice.ServiceProcess``
   (plain HTTP, or HTTPS with a self-signed certificate under ``--tls``);
2. signs one bearer token from the publish settings file (``auth.token_from_publish_settings``);
3. runs ``--clients`` concurrent clients, each a Trio task with its own ``httpx.AsyncClient``
   holding one keep-alive connection, until ``--jobs`` jobs are through.  Each job is one
   customer's life in the API: ``PUT`` create (1-4 drives, spread over ``--groups``
   resource groups), ``GET`` it (for the ETag), ``PATCH`` delivery package + state Shipping
   with ``If-Match``, ``POST listBitLockerKeys``; every ``--list-every``-th job also lists its
   resource group ``$top=100`` and follows ``nextLink`` up to ``--list-pages`` pages;
4. measures every request (wall time from send to full body, in the client), counts
   every non-2xx answer or wrong body as an error, samples the service's RSS, CPU time and
   established connections, and at the end reads the service's peak RSS (``VmHWM``), the
   catalog's size and its job counts (every job must be Shipping);
5. prints a table and writes ``perf/results/service_load.json`` (``-tls`` and
   ``-profile`` variants for those runs).

Client and service share the machine: the client's own CPU use is reported next to the
service's, so a reader can tell whether the client was the limit.  ``--profile S``
samples the service with ``py-spy record`` for S seconds from ``--profile-after`` seconds on and
adds its top functions to the output (py-spy perturbs the figures: profile in a
separate run; ``--keep`` keeps the raw stacks).  Exit status 0 only if no request failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from pipeline.jobs import auth
from pipeline.jobs.catalog import DB_NAME, Catalog
from tests import jobservice

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
API = "api-version=2016-11-01"
PROVIDER = "providers/Microsoft.ImportExport"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024
OPS = ("PUT create", "GET job", "PATCH ship", "POST listBitLockerKeys", "GET list page")
PROFILE_RATE = 100  # py-spy samples per second
CARRIERS = ("DHL", "FedEx", "TNT", "UPS")  # westeurope's supported carriers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the load


@dataclass
class Load:
    """The run's parameters and what the clients record."""

    url: str
    sub: str
    token: str
    jobs: int
    clients: int
    groups: int
    list_every: int
    list_pages: int
    verify: ssl.SSLContext | bool = True
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    next_job: int = 0
    done_jobs: int = 0
    started: float = 0.0
    finished: float = 0.0

    def job_url(self, i: int) -> str:
        return (f"/subscriptions/{self.sub}/resourceGroups/load-rg-{i % self.groups}/"
                f"{PROVIDER}/jobs/load-{i:06d}?{API}")

    def error(self, op: str, detail: str) -> None:
        self.errors[op] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{op}: {detail[:300]}")


async def _call(load: Load, http: httpx.AsyncClient, op: str, method: str, url: str,
                want: int, **kwargs: Any) -> httpx.Response | None:
    """One timed request; None (and an error counted) unless the status is ``want``."""
    t0 = time.perf_counter()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        load.latencies[op].append((time.perf_counter() - t0) * 1000)
        load.error(op, f"{type(exc).__name__}: {exc}")
        return None
    load.latencies[op].append((time.perf_counter() - t0) * 1000)
    if response.status_code != want:
        load.error(op, f"HTTP {response.status_code} {response.text}")
        return None
    return response


async def _one_job(load: Load, http: httpx.AsyncClient, i: int) -> None:
    url = load.job_url(i)
    drives = jobservice.drive_list(1 + i % 4, prefix=f"load{i}")
    body = jobservice.job_body(drives, returnShipping={"carrierName": "DHL",
                                                       "carrierAccountNumber": f"ACC-{i}"})
    if await _call(load, http, "PUT create", "PUT", url, 201, json=body) is None:
        return
    got = await _call(load, http, "GET job", "GET", url, 200)
    if got is None:
        return
    etag = got.headers.get("etag")
    if not etag or len(got.json()["properties"]["driveList"]) != len(drives):
        load.error("GET job", f"no ETag or wrong drive list for job {i}")
        return
    ship = {"properties": {"state": "Shipping", "deliveryPackage": {
        "carrierName": CARRIERS[i % len(CARRIERS)], "trackingNumber": f"TRK{i:09d}",
        "driveCount": len(drives), "shipDate": "2026-11-27"}}}
    patched = await _call(load, http, "PATCH ship", "PATCH", url, 200, json=ship,
                          headers={"If-Match": etag})
    if patched is not None and patched.json()["properties"]["state"] != "Shipping":
        load.error("PATCH ship", f"job {i} is {patched.json()['properties']['state']}")
    keys = await _call(load, http, "POST listBitLockerKeys", "POST",
                       url.replace(f"?{API}", f"/listBitLockerKeys?{API}"), 200)
    if keys is not None:
        found = {k["driveId"]: k["bitLockerKey"] for k in keys.json()["value"]}
        if found != {d["driveId"]: d["bitLockerKey"] for d in drives}:
            load.error("POST listBitLockerKeys", f"job {i}: keys do not match the drives")
    if i % load.list_every == load.list_every - 1:
        page_url: str | None = (f"/subscriptions/{load.sub}/resourceGroups/"
                                f"load-rg-{i % load.groups}/{PROVIDER}/jobs?{API}&$top=100")
        for _ in range(load.list_pages):
            assert page_url is not None
            page = await _call(load, http, "GET list page", "GET", page_url, 200)
            if page is None:
                break
            page_url = page.json().get("nextLink")
            if page_url is None:
                break


async def _client(load: Load) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=load.url, limits=limits, timeout=120,
                                 verify=load.verify,
                                 headers={"Authorization": f"Bearer {load.token}"}) as http:
        while load.next_job < load.jobs:
            i = load.next_job
            load.next_job += 1
            await _one_job(load, http, i)
            load.done_jobs += 1


async def _progress(load: Load) -> None:
    while True:
        await trio.sleep(10)
        elapsed = time.perf_counter() - load.started
        requests = sum(len(v) for v in load.latencies.values())
        log(f"  {elapsed:5.0f} s  {load.done_jobs}/{load.jobs} jobs  {requests} requests "
            f"({requests / elapsed:.0f}/s)  errors {sum(load.errors.values())}")


async def run_load(load: Load) -> None:
    load.started = time.perf_counter()
    async with trio.open_nursery() as outer:
        outer.start_soon(_progress, load)
        async with trio.open_nursery() as nursery:
            for _ in range(load.clients):
                nursery.start_soon(_client, load)
        load.finished = time.perf_counter()
        outer.cancel_scope.cancel()


# ----------------------------------------------------------------------- service metrics


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _established(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (server side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                        count += 1
        except FileNotFoundError:
            continue
    return count


class Sampler(threading.Thread):
    """Every 0.5 s: the service's RSS, threads and established connections."""

    def __init__(self, pid: int, port: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.stop = threading.Event()
        self.peak_rss = 0
        self.peak_threads = 0
        self.peak_connections = 0

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peak_rss = max(self.peak_rss, _proc_status(self.pid)["VmRSS"])
                self.peak_threads = max(self.peak_threads,
                                        len(os.listdir(f"/proc/{self.pid}/task")))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            self.peak_connections = max(self.peak_connections, _established(self.port))


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of py-spy's collapsed stacks, and per-thread shares."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        thread, funcs = frames[0], frames[1:]
        threads["trio (main)" if "MainThread" in thread or "(" not in thread
                else "worker threads"] += count
        if funcs:
            self_t[_short(funcs[-1], line=True)] += count
        for f in {_short(f) for f in funcs}:
            incl[f] += count

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(top)] if total else []

    return {"samples": total, "threads": share(threads), "self": share(self_t),
            "inclusive": share(incl)}


def _short(frame: str, line: bool = False) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``, or ``func (file.py:123)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file, _, number = where.rpartition(":") if ":" in where else (where, "", "")
    file = file.rsplit("/", 1)[-1]
    if not file:
        return name
    return f"{name} ({file}:{number})" if line and number else f"{name} ({file})"


# ------------------------------------------------------------------------------ report


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_ms) // 100)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def op_stats(ms: list[float], wall: float) -> dict[str, Any]:
    s = sorted(ms)
    return {"count": len(s), "per_s": round(len(s) / wall, 1),
            "p50_ms": round(percentile(s, 50), 1), "p95_ms": round(percentile(s, 95), 1),
            "p99_ms": round(percentile(s, 99), 1), "max_ms": round(s[-1], 1) if s else 0.0}


def table(result: dict[str, Any]) -> str:
    rows = ["| operation | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in [*result["operations"].items(), ("all", result["overall"])]:
        label = f"**{name}**" if name == "all" else name
        rows.append(f"| {label} | {s['count']} | {s['per_s']:.0f} | {s['p50_ms']:.1f} | "
                    f"{s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.0f} | "
                    f"{s['errors']} |")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PHYS_PAGES") * PAGE
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def _catalog_bytes(data: Path) -> dict[str, int]:
    return {suffix or "db": (data / f"{DB_NAME}{suffix}").stat().st_size
            for suffix in ("", "-wal", "-shm") if (data / f"{DB_NAME}{suffix}").exists()}


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.service_load",
                                description="Bounded load run against the import service on "
                                "127.0.0.1: requests/s and latency per operation.")
    p.add_argument("--jobs", type=int, default=10_000, help="jobs to create (default 10000)")
    p.add_argument("--clients", type=int, default=50,
                   help="concurrent clients, one keep-alive connection each (default 50)")
    p.add_argument("--groups", type=int, default=4, help="resource groups (default 4)")
    p.add_argument("--list-every", type=int, default=10,
                   help="every Nth job also lists its resource group (default 10)")
    p.add_argument("--list-pages", type=int, default=3,
                   help="pages ($top=100) each listing follows via nextLink (default 3)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS (self-signed certificate)")
    p.add_argument("--profile", type=int, metavar="SECONDS", default=0,
                   help="py-spy the service for SECONDS, starting --profile-after seconds "
                   "into the run (pip install py-spy)")
    p.add_argument("--profile-after", type=float, default=20.0, metavar="SECONDS",
                   help="when py-spy starts (default 20)")
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp"),
                   help="where the scratch data directory goes (default /var/tmp: a real "
                   "disk; the catalog fsyncs every commit)")
    p.add_argument("--out", type=Path, help="JSON result (default perf/results/"
                   "service_load[-tls][-profile].json)")
    p.add_argument("--keep", action="store_true", help="keep the data directory and log")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.clients < 1 or args.groups < 1 or args.list_every < 1:
        p.error("--jobs, --clients, --groups and --list-every must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or RESULTS / ("service_load" + ("-tls" if args.tls else "")
                                 + ("-profile" if args.profile else "") + ".json")
    py_spy = shutil.which("py-spy")
    if args.profile and py_spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="pipeline-service-load-", dir=args.data_dir))
    data, settings = scratch / "data", scratch / "load.publishsettings"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "pipeline", "service", "subscription", "add", "load",
                    "--data", str(data), "--out", str(settings), "--url", "http://127.0.0.1"],
                   check=True, cwd=REPO, env=env, capture_output=True)
    tls = jobservice.self_signed_cert(scratch) if args.tls else None
    svc = jobservice.ServiceProcess(data, tls=tls, log_path=scratch / "service.log").start()
    try:
        assert svc.proc is not None
        pid, port = svc.proc.pid, int(svc.url.rsplit(":", 1)[1].split("/")[0])
        settings_parsed = auth.read_publish_settings(settings)
        load = Load(url=svc.url, sub=settings_parsed.subscription_id,
                    token=auth.token_from_publish_settings(settings), jobs=args.jobs,
                    clients=args.clients, groups=args.groups, list_every=args.list_every,
                    list_pages=args.list_pages,
                    verify=ssl.create_default_context(cafile=str(tls[0])) if tls else True)
        log(f"service pid {pid} at {svc.url}, data {data}; {args.clients} clients, "
            f"{args.jobs} jobs over {args.groups} resource groups")
        rss_start = _proc_status(pid)["VmRSS"]
        sampler = Sampler(pid, port)
        sampler.start()
        raws = {"active": scratch / "py-spy-active.txt", "gil": scratch / "py-spy-gil.txt"}
        profiler: list[subprocess.Popen[bytes]] = []
        starter = None
        if args.profile:
            def start_profiler() -> None:
                time.sleep(args.profile_after)
                for mode, raw in raws.items():  # what every busy thread does; who holds the GIL
                    profiler.append(subprocess.Popen(
                        [str(py_spy), "record", "--pid", str(pid), "--duration", str(args.profile),
                         "--rate", str(PROFILE_RATE), "--format", "raw", "--threads",
                         "--nonblocking", "-o", str(raw), *(["--gil"] if mode == "gil" else [])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

            starter = threading.Thread(target=start_profiler, daemon=True)
            starter.start()
        cpu0, self0 = _cpu_seconds(pid), resource.getrusage(resource.RUSAGE_SELF)
        trio.run(run_load, load)
        wall = load.finished - load.started
        cpu_service = _cpu_seconds(pid) - cpu0
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_client = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
        sampler.stop.set()
        sampler.join()
        status = _proc_status(pid)
        catalog_live = _catalog_bytes(data)
        if starter is not None:
            if wall < args.profile_after + args.profile:
                log("the load ended before the profile did: lower --profile-after/--profile "
                    "or raise --jobs")
            starter.join()
        for p in profiler:
            _, err = p.communicate(timeout=args.profile + 60)
            if p.returncode != 0:
                log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        exit_status = svc.stop()
    except BaseException:
        svc.kill()
        log(svc.log()[-3000:])
        raise
    catalog_stopped = _catalog_bytes(data)
    with Catalog.open(data) as catalog:
        stats = catalog.statistics()
    if stats["jobs_by_state"] != {"Shipping": args.jobs}:
        load.error("catalog", f"jobs by state at the end: {stats['jobs_by_state']}")
    if exit_status != 0:
        load.error("service", f"exit status {exit_status} after Ctrl-C")

    operations = {}
    for op in OPS:
        if load.latencies.get(op):
            operations[op] = {**op_stats(load.latencies[op], wall), "errors": load.errors[op]}
    every = [ms for op in OPS for ms in load.latencies.get(op, [])]
    errors = sum(load.errors.values())
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "config": {"jobs": args.jobs, "clients": args.clients, "groups": args.groups,
                   "list_every": args.list_every, "list_pages": args.list_pages,
                   "tls": bool(args.tls), "profiled": bool(args.profile),
                   "http": "HTTP/1.1 keep-alive, one connection per client (httpx on trio)",
                   "catalog": "SQLite WAL, synchronous=FULL, on " + str(args.data_dir)},
        "wall_s": round(wall, 2),
        "jobs_per_s": round(args.jobs / wall, 1),
        "operations": operations,
        "overall": {**op_stats(every, wall), "errors": errors},
        "errors": errors,
        "error_samples": load.error_samples,
        "service": {
            "rss_start_mib": round(rss_start / MiB, 1),
            "peak_rss_mib": round(max(status["VmHWM"], sampler.peak_rss) / MiB, 1),
            "peak_threads": sampler.peak_threads,
            "peak_established_connections": sampler.peak_connections,
            "cpu_s": round(cpu_service, 1),
            "cpu_cores_used": round(cpu_service / wall, 2),
            "cpu_ms_per_request": round(1000 * cpu_service / max(1, len(every)), 2),
        },
        "client": {"cpu_s": round(cpu_client, 1), "cpu_cores_used": round(cpu_client / wall, 2)},
        "catalog": {"bytes_live": catalog_live, "bytes_after_stop": catalog_stopped,
                    "mib_after_stop": round(sum(catalog_stopped.values()) / MiB, 1),
                    "statistics": stats},
    }
    if args.profile and all(raw.exists() for raw in raws.values()):
        result["profile"] = {mode: summarize_profile(raw) for mode, raw in raws.items()}
        result["profile"]["seconds"] = args.profile
        result["profile"]["gil_held_share"] = round(
            result["profile"]["gil"]["samples"] / (PROFILE_RATE * args.profile), 2)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    svc_info = result["service"]
    print(f"\n{args.clients} clients, {args.jobs} jobs, {len(every)} requests in {wall:.1f} s"
          f" ({'HTTPS' if args.tls else 'HTTP'} on 127.0.0.1, {result['machine']['cpus']} cores)")
    print(table(result))
    print(f"service: peak RSS {svc_info['peak_rss_mib']} MiB (start {svc_info['rss_start_mib']}),"
          f" CPU {svc_info['cpu_cores_used']} cores ({svc_info['cpu_ms_per_request']} ms/request),"
          f" {svc_info['peak_threads']} threads, {svc_info['peak_established_connections']} "
          f"connections; client CPU {result['client']['cpu_cores_used']} cores")
    print(f"catalog: {result['catalog']['mib_after_stop']} MiB after stop "
          f"({stats['drives']} drives); jobs {stats['jobs_by_state']}")
    if "profile" in result:
        prof = result["profile"]
        print(f"service profile (py-spy, {args.profile} s): some thread held the GIL "
              f"{100 * prof['gil_held_share']:.0f} % of the time")
        for mode, title in (("active", "busy threads"), ("gil", "GIL holder")):
            print(f" {title}, % of samples: " + ", ".join(
                f"{name} {pct}" for name, pct in prof[mode]["threads"]))
            for name, pct in prof[mode]["self"][:12]:
                print(f"  {pct:5.1f}  {name}")
    print(f"errors: {errors}" + "".join(f"\n  {s}" for s in load.error_samples))
    print(f"written {out}")
    if args.keep:
        print(f"kept {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
