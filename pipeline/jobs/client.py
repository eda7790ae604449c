"""A small client for the import service's Microsoft.ImportExport REST API.

Used by ``pipeline jobs …`` on the copy machine and by ``pipeline import
--service`` at the receiving site.  Standard library HTTP (``urllib``): the
calls are few and synchronous, and a token from the publish settings file
goes with each one.  Errors come back as one line naming the job and what
the service said (its ARM error code and message).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import EXIT_STORAGE, BadInput, PipelineError, Refused
from pipeline.jobs import auth

API_VERSION = "2016-11-01"
PROVIDER = "providers/Microsoft.ImportExport"
DEFAULT_RESOURCE_GROUP = "pipeline"


class ServiceUnavailable(PipelineError):
    """{}"""

    exit_code = EXIT_STORAGE


class ServiceError(BadInput):
    """{}"""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class ServiceClient:
    settings: auth.PublishSettings
    url: str = ""
    resource_group: str = DEFAULT_RESOURCE_GROUP
    ca_file: str | None = None
    _token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.url = (self.url or self.settings.url).rstrip("/")

    @classmethod
    def from_file(cls, path: str, *, url: str | None = None, resource_group: str | None = None,
                  ca_file: str | None = None) -> ServiceClient:
        return cls(auth.read_publish_settings(path), url or "",
                   resource_group or DEFAULT_RESOURCE_GROUP, ca_file)

    # -- plumbing ------------------------------------------------------------

    def _job_path(self, name: str = "") -> str:
        base = (f"/subscriptions/{self.settings.subscription_id}/resourceGroups/"
                f"{urllib.parse.quote(self.resource_group, safe='')}/{PROVIDER}/jobs")
        return base + (f"/{urllib.parse.quote(name, safe='')}" if name else "")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
        if not self._token:
            self._token = auth.make_token(self.settings)
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(
            f"{self.url}{path}{sep}api-version={API_VERSION}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if body is not None else {}),
                     **(headers or {})})
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as resp:
                raw = resp.read()
                return (json.loads(raw) if raw else None), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read() or b"{}").get("error", {})
            except ValueError:
                err = {}
            code, message = err.get("code", f"HTTP{exc.code}"), err.get("message", exc.reason)
            if exc.code == 401:
                raise Refused(f"the import service at {self.url} refused the token ({message})"
                              "; check the publish settings file") from None
            raise ServiceError(f"{message} [{code}]", exc.code, code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailable(f"the import service at {self.url} is unreachable "
                                     f"({reason}); check --service and that it runs") from None

    # -- resources -----------------------------------------------------------

    def location(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/{PROVIDER}/locations/{urllib.parse.quote(name)}")[0]

    def locations(self) -> list[dict[str, Any]]:
        return self.request("GET", f"/{PROVIDER}/locations")[0]["value"]

    def get(self, job: str) -> dict[str, Any]:
        return self.request("GET", self._job_path(job))[0]

    def put(self, job: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", self._job_path(job), body)[0]

    def patch(self, job: str, body: dict[str, Any], etag: str | None = None) -> dict[str, Any]:
        headers = {"If-Match": etag} if etag else None
        return self.request("PATCH", self._job_path(job), body, headers)[0]

    def create_import_job(self, job: str, location: str, account: str,
                          drive_list: list[dict[str, str]], **properties: Any) -> dict[str, Any]:
        """PUT a new import job into storage ``account`` (extra ``properties``: return
        address and shipping, ...)."""
        account_id = (f"/subscriptions/{self.settings.subscription_id}/resourceGroups/"
                      f"{self.resource_group}/providers/Microsoft.Storage/"
                      f"storageAccounts/{account}")
        return self.put(job, {"location": location, "properties": {
            "storageAccountId": account_id, "jobType": "Import",
            "diagnosticsPath": "waimportexport", "logLevel": "Verbose",
            "backupDriveManifest": True, "driveList": drive_list, **properties}})

    def list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        path = self._job_path()
        while path:
            page = self.request("GET", path)[0]
            out += page.get("value", [])
            path = _next_path(page.get("nextLink"))
        return out

    def keys(self, job: str) -> list[dict[str, str]]:
        return self.request("POST", self._job_path(job) + "/listBitLockerKeys")[0]["value"]


def _next_path(link: str | None) -> str:
    """The path and query of an ARM nextLink, without its api-version (request() adds it)."""
    if not link:
        return ""
    parts = urllib.parse.urlsplit(link)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "api-version"]
    return parts.path + ("?" + urllib.parse.urlencode(query) if query else "")
