"""Helpers to run the import service in tests and load runs (as ``trio.testing`` is to trio).

``ServiceProcess`` starts ``python -m pipeline service`` in a subprocess on a
free port and knows its URL and log; ``self_signed_cert`` makes a certificate
for 127.0.0.1; ``drive_list``/``job_body`` build valid PUT bodies by hand
(``pipeline journal export`` gives the real drive list), with a return address
and return carrier unless told otherwise (Shipping needs them); ``site_token``
(or ``ServiceProcess.site_token()``) makes the receiving site's credential for a
data directory, before or while the service runs.  It lives under tests/
because nothing in the package uses it; perf/ imports it from here too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]


def recovery_password() -> str:
    """A random password of the BitLocker shape (each group a multiple of 11)."""
    return "-".join(f"{11 * secrets.randbelow(65536):06d}" for _ in range(8))


def drive_list(count: int, prefix: str = "drive") -> list[dict[str, Any]]:
    return [{"driveId": f"{prefix}-{i}-{secrets.token_hex(4)}", "bitLockerKey": recovery_password(),
             "manifestFile": f"/index@{4096 * (i + 1)}+4096",
             "manifestHash": secrets.token_hex(32), "driveHeaderHash": secrets.token_hex(32)}
            for i in range(count)]


RETURN_ADDRESS = {"recipientName": "Ops Team", "streetAddress1": "1 Backup Way",
                  "city": "Lisboa", "postalCode": "1000-001", "countryOrRegion": "PT",
                  "phone": "+351 21 000 0000", "email": "ops@example.com"}
RETURN_SHIPPING = {"carrierName": "UPS", "carrierAccountNumber": "A1B2C3"}  # every location


def job_body(drives: list[dict[str, Any]], location: str = "westeurope",
             **properties: Any) -> dict[str, Any]:
    """A PUT body; a property given as None is left out (``returnAddress=None``)."""
    props = {"storageAccountId": "/subscriptions/00000000-0000-0000-0000-000000000000/"
             "resourceGroups/seed/providers/Microsoft.Storage/storageAccounts/seedacct",
             "jobType": "Import", "diagnosticsPath": "waimportexport", "logLevel": "Verbose",
             "backupDriveManifest": False, "driveList": drives,
             "returnAddress": RETURN_ADDRESS, "returnShipping": RETURN_SHIPPING}
    props.update(properties)
    return {"location": location,
            "properties": {k: v for k, v in props.items() if v is not None}}


def site_token(data: Path, hours: float = 12) -> str:
    """A site token for the service on ``data`` (creates the site key on first use), as
    ``pipeline service site-token --data DATA`` prints it."""
    from pipeline.jobs import sitetoken
    return sitetoken.make_site_token(data, hours=hours)


def site_headers(data: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {site_token(data)}"}


def subscription_settings(svc: ServiceProcess, out: Path, subscription_id: str,
                          name: str = "ops") -> Path:
    """A subscription with a fixed id on the running service ``svc`` and its publish
    settings file ``out`` (naming ``svc.url``): for tests whose ids are constants."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pipeline.jobs import auth
    from pipeline.jobs.catalog import Catalog
    key = Ed25519PrivateKey.generate()
    with Catalog.open(svc.data) as catalog:
        catalog.add_subscription(name, auth.public_bytes(key), subscription_id=subscription_id)
    auth.write_publish_settings(out, auth.publish_settings_xml(
        auth.PublishSettings(svc.url, subscription_id, name, key)))
    return out


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(cert.pem, key.pem) for ``host``: clients verify against cert.pem itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "service-cert.pem", directory / "service-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


class ServiceProcess:
    """``python -m pipeline service --data DIR --port 0`` in a subprocess.

    ``url`` is read from the service's "listening on" line; stderr (the request
    log) goes to ``log_path``.  ``kill()`` is ``kill -9``; ``stop()`` is Ctrl-C.
    """

    def __init__(self, data: Path, *, tls: tuple[Path, Path] | None = None,
                 log_path: Path | None = None, timeout_s: float = 30.0) -> None:
        self.data = data
        self.tls = tls
        self.log_path = log_path or data.parent / f"{data.name}-service.log"
        self.timeout_s = timeout_s
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    def start(self) -> ServiceProcess:
        args = [sys.executable, "-m", "pipeline", "service", "--data", str(self.data),
                "--port", "0"]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log,
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + self.timeout_s
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                f.seek(start)
                found = re.search(r"listening on (\S+)", f.read())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the service did not start; its log: {self.log()[-2000:]}")

    def site_token(self, hours: float = 12) -> str:
        """The receiving site's token for this service (valid at once: no restart)."""
        return site_token(self.data, hours)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout_s: float = 20.0) -> int:
        """Ctrl-C and wait: the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self.kill()
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
