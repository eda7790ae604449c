"""A small client for the import service's Microsoft.ImportExport REST API.

Two credentials, two roles (issue 16): the customer's publish settings file
(``pipeline jobs …``, ``diskprep``, ``backup --offline``: a short-lived JWT
signed with the subscription's key) and the receiving site's token (``pipeline
site …``, ``pipeline import --service``: read from a file, sent as it is).  A
customer client is bound to its subscription; a site client finds a job by name
across every subscription (``find``) and then works on a client bound to that
job's subscription and resource group (``bound_to``).

Standard library HTTP (``urllib``): the calls are few and synchronous.  Errors
come back as one line naming the job and what the service said (its ARM error
code and message).  A token is never printed or put in a message.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import credentials
from pipeline.errors import EXIT_STORAGE, BadInput, PipelineError, Refused
from pipeline.jobs import auth, sitetoken

API_VERSION = "2016-11-01"
PROVIDER = "providers/Microsoft.ImportExport"
DEFAULT_RESOURCE_GROUP = "pipeline"
COPY_LOG_KINDS = ("error", "verbose")
MAX_COPY_LOG = 64 << 20        # the service's limit on one copy log (contract item 5)


class ServiceUnavailable(PipelineError):
    """{}"""

    exit_code = EXIT_STORAGE

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message     # why, alone ("timed out", "Connection refused")


class ServiceError(BadInput):
    """{}"""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class JobNameTaken(Refused):
    """{}"""


def read_site_token(path: str) -> str:
    """The site token from ``path`` (one line; never taken from argv, never echoed)."""
    p = Path(path)
    try:
        if p.stat().st_size > sitetoken.MAX_SITE_TOKEN_CHARS + 1:
            raise BadInput(f"--site-token-file {p} is larger than a site token; "
                           "give the file holding what `pipeline service site-token` printed")
        credentials.warn_if_exposed(p, "--site-token-file")
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise BadInput(f"--site-token-file {p} does not exist; save the site token there: "
                       f"pipeline service site-token --data DIR > {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--site-token-file {p} cannot be read ({exc.__class__.__name__}); "
                       "give the file holding what `pipeline service site-token` printed"
                       ) from None
    if not sitetoken.is_site_token(text) or len(text.split()) != 1:
        raise BadInput(f"--site-token-file {p} does not hold a site token; save what "
                       f"`pipeline service site-token --data DIR` prints there")
    return text


@dataclass
class ServiceClient:
    """One credential and where it points.  ``settings`` (customer) or ``site_token``."""

    settings: auth.PublishSettings | None
    url: str = ""
    resource_group: str = DEFAULT_RESOURCE_GROUP
    ca_file: str | None = None
    site_token: str = field(default="", repr=False)
    subscription_id: str = ""
    timeout: float = 60.0          # seconds per call; a short one where a caller must go on
    _token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.settings is not None:
            self.url = self.url or self.settings.url
            self.subscription_id = self.subscription_id or self.settings.subscription_id
        self.url = self.url.rstrip("/")

    @classmethod
    def from_file(cls, path: str, *, url: str | None = None, resource_group: str | None = None,
                  ca_file: str | None = None, timeout: float = 60.0) -> ServiceClient:
        """A customer's client from its publish settings file."""
        return cls(auth.read_publish_settings(path), url or "",
                   resource_group or DEFAULT_RESOURCE_GROUP, ca_file, timeout=timeout)

    @classmethod
    def from_site_token_file(cls, url: str, path: str, ca_file: str | None = None
                             ) -> ServiceClient:
        """The receiving site's client: every subscription's jobs, the site's steps."""
        if not url:
            raise BadInput("give --service URL: the import service the site reports to")
        return cls(None, url, DEFAULT_RESOURCE_GROUP, ca_file, read_site_token(path))

    @property
    def is_site(self) -> bool:
        return bool(self.site_token)

    def bound_to(self, job: dict[str, Any]) -> ServiceClient:
        """A client for the subscription and resource group in ``job``'s id."""
        sub, group = parse_job_id(job.get("id", ""))
        return dataclasses.replace(self, subscription_id=sub, resource_group=group)

    # -- plumbing ------------------------------------------------------------

    def _job_path(self, name: str = "") -> str:
        if not self.subscription_id:
            raise BadInput("no subscription: give --subscription ID (and --resource-group)")
        base = (f"/subscriptions/{self.subscription_id}/resourceGroups/"
                f"{urllib.parse.quote(self.resource_group, safe='')}/{PROVIDER}/jobs")
        return base + (f"/{urllib.parse.quote(name, safe='')}" if name else "")

    def _bearer(self) -> str:
        if self.site_token:
            return self.site_token
        if not self._token:
            assert self.settings is not None
            self._token = auth.make_token(self.settings)
        return self._token

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *, raw: bytes | None = None,
                content_type: str = "application/json") -> tuple[Any, dict[str, str]]:
        """One call: (parsed JSON body or None, response headers); ``raw`` sends bytes."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(
            f"{self.url}{path}{sep}api-version={API_VERSION}", method=method, data=data,
            headers={"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json",
                     **({"Content-Type": content_type} if data is not None else {}),
                     **(headers or {})})
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as resp:
                payload = resp.read()
                if payload and resp.headers.get_content_type() != "application/json":
                    return payload, dict(resp.headers)  # a copy log: JSON Lines, as sent
                return (json.loads(payload) if payload else None), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
            raise ServiceUnavailable(f"the import service at {self.url} is unreachable "
                                     f"({reason}); check --service and that it runs",
                                     reason) from None

    def _error(self, exc: urllib.error.HTTPError) -> PipelineError:
        try:
            err = json.loads(exc.read() or b"{}").get("error", {})
        except (ValueError, AttributeError):
            err = {}
        code, message = err.get("code", f"HTTP{exc.code}"), err.get("message", exc.reason)
        if exc.code == 401:
            fix = ("get a new one: pipeline service site-token --data DIR" if self.site_token
                   else "check the publish settings file")
            return Refused(f"the import service at {self.url} refused the "
                           f"{'site token' if self.site_token else 'token'} ({message}); {fix}")
        return ServiceError(f"{message} [{code}]", exc.code, code)

    def _pages(self, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while path:
            page = self.request("GET", path)[0]
            out += page.get("value", [])
            path = _next_path(page.get("nextLink"))
        return out

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
        account_id = (f"/subscriptions/{self.subscription_id}/resourceGroups/"
                      f"{self.resource_group}/providers/Microsoft.Storage/"
                      f"storageAccounts/{account}")
        return self.put(job, {"location": location, "properties": {
            "storageAccountId": account_id, "jobType": "Import",
            "diagnosticsPath": "waimportexport", "logLevel": "Verbose",
            "backupDriveManifest": True, "driveList": drive_list, **properties}})

    def list(self) -> list[dict[str, Any]]:
        """This subscription's jobs (in the resource group, as the client is bound)."""
        return self._pages(self._job_path())

    def list_all(self, filter: str | None = None) -> list[dict[str, Any]]:
        """Every subscription's jobs (site only): the tenant-wide list, with OData $filter."""
        query = "?" + urllib.parse.urlencode({"$filter": filter}) if filter else ""
        return self._pages(f"/{PROVIDER}/jobs{query}")

    def find(self, name: str, subscription: str | None = None,
             resource_group: str | None = None) -> dict[str, Any]:
        """The job called ``name`` across subscriptions (site); more than one (or none)
        is an error saying which --subscription / --resource-group to give."""
        quoted = name.replace("'", "''")  # OData's escape of a quote in a string literal
        found = [j for j in self.list_all(f"name eq '{quoted}'") if j.get("name") == name]
        if subscription:
            found = [j for j in found if parse_job_id(j["id"])[0].lower() == subscription.lower()]
        if resource_group:
            found = [j for j in found
                     if parse_job_id(j["id"])[1].lower() == resource_group.lower()]
        if not found:
            where = "".join(f" in {w}" for w in (subscription, resource_group) if w)
            raise BadInput(f"no import job {name}{where} on {self.url}; check --job "
                           "(pipeline site jobs lists them)")
        if len(found) > 1:
            places = ", ".join("subscription {} resource group {}".format(*parse_job_id(j["id"]))
                               for j in found)
            raise BadInput(f"{len(found)} import jobs are called {name} ({places}); give "
                           "--subscription ID and --resource-group NAME")
        return found[0]

    def keys(self, job: str) -> list[dict[str, str]]:
        return self.request("POST", self._job_path(job) + "/listBitLockerKeys")[0]["value"]

    def put_copy_log(self, name: str, drive_id: str, kind: str, data: bytes) -> None:
        """Hand a drive's copy log (JSON Lines) to the service (site only)."""
        if kind not in COPY_LOG_KINDS:
            raise ValueError(f"copy log kind {kind!r} is not one of {COPY_LOG_KINDS}")
        self.request("PUT", self._copy_log_path(name, drive_id, kind), raw=data,
                     content_type="application/x-ndjson")

    def get_copy_log(self, name: str, drive_id: str, kind: str) -> bytes:
        """A copy log the site handed in (customer of the subscription, or site)."""
        body = self.request("GET", self._copy_log_path(name, drive_id, kind))[0]
        return body if isinstance(body, bytes) else b""

    def _copy_log_path(self, name: str, drive_id: str, kind: str) -> str:
        return (self._job_path(name)
                + f"/copyLogs/{urllib.parse.quote(drive_id, safe='')}/{kind}")

    def check_job_name(self, name: str, own_drives: set[str] | frozenset[str] = frozenset()
                       ) -> dict[str, Any] | None:
        """Before anything is written: None if ``name`` is free in this subscription and
        resource group, the job if it is this run's own (still Creating, every drive
        one of ``own_drives``), else ``JobNameTaken`` naming the job's state."""
        try:
            job = self.get(name)
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise
        props = job.get("properties", {})
        state = props.get("state")
        drives = {d.get("driveId", "").lower() for d in props.get("driveList", [])}
        if own_drives and drives <= {d.lower() for d in own_drives}:
            if state == "Creating":
                return job
            raise JobNameTaken(f"import job {name} (these drives) is already {state}; there "
                               f"is nothing left to prepare: pipeline jobs show --job {name}")
        raise JobNameTaken(
            f"import job {name} already exists in subscription {self.subscription_id} "
            f"(resource group {self.resource_group}, state {state}, {len(drives)} drive(s) "
            "not prepared here); nothing was written: choose another job name")


def parse_job_id(job_id: str) -> tuple[str, str]:
    """(subscription, resource group) of an ARM job id."""
    parts = job_id.strip("/").split("/")
    low = [p.lower() for p in parts]
    try:
        return (urllib.parse.unquote(parts[low.index("subscriptions") + 1]),
                urllib.parse.unquote(parts[low.index("resourcegroups") + 1]))
    except (ValueError, IndexError):
        raise BadInput(f"the service returned a job without a usable id ({job_id!r})") from None


def _next_path(link: str | None) -> str:
    """The path and query of an ARM nextLink, without its api-version (request() adds it)."""
    if not link:
        return ""
    parts = urllib.parse.urlsplit(link)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "api-version"]
    return parts.path + ("?" + urllib.parse.urlencode(query) if query else "")
