"""A local fake of the GitHub REST endpoints for the Actions cache, as PyGithub's requester
calls them (reference D):

    GET    {prefix}/repos/{owner}/{repo}/actions/caches?key=&ref=&sort=&direction=&per_page=&page=
    DELETE {prefix}/repos/{owner}/{repo}/actions/caches/{cache_id}          → 204
    DELETE {prefix}/repos/{owner}/{repo}/actions/caches?key=K[&ref=R]       → 200 + deleted list
    GET    {prefix}/repos/{owner}/{repo}/actions/cache/usage

`prefix` is empty for github.com (`GITHUB_API_URL=https://api.github.com`) and `/api/v3` for a
GHES-style `GITHUB_API_URL=http://host:port/api/v3`; nothing is served outside it.

- Tokens: `tokens` maps a token to "read" or "write" (`permissions: actions: read|write`).
  No or an unknown token → 401 `Bad credentials`; a read token may list and read usage, and
  gets 403 `Resource not accessible by integration` on DELETE, as GITHUB_TOKEN does.
- `key` is a key prefix, `ref` an exact ref (ignored with `ignore_ref_filter`, as a server
  without that filter would); `per_page` defaults to 30 and is capped at 100; the default
  order is `last_accessed_at` descending; `Link` headers name the next/last pages.
- Entries are seeded with `add(...)`, and/or come from a `CacheEmulator` (tests/gha_emulator.py)
  the fake is bound to: its finalized entries are listed with their scope as `ref` (that is what
  a cache scope is: the ref the job ran on), and deleting one removes it from the emulator and
  its archive from Azurite, so an entry deleted here can no longer be restored.
- Every request is recorded (`requests`) with its method, path, query and headers, so tests can
  assert what PyGithub actually sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.http_fake import serve_in_thread, shut_down

if TYPE_CHECKING:
    from types import TracebackType

    from tests.gha_emulator import CacheEmulator

DOCS = "https://docs.github.com/rest/actions/cache"
BAD_CREDENTIALS = "Bad credentials"
NOT_ACCESSIBLE = "Resource not accessible by integration"
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
SEEDED_IDS = 1_000_000  # seeded ids never collide with an emulator's entry ids
SORTS = ("last_accessed_at", "created_at", "size_in_bytes")


def iso(moment: datetime) -> str:
    """GitHub's timestamp format: `2019-01-24T22:45:36.000Z`."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


@dataclass
class RestCache:
    id: int
    ref: str
    key: str
    version: str
    size_in_bytes: int
    created_at: str
    last_accessed_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "key": self.key,
            "version": self.version,
            "last_accessed_at": self.last_accessed_at,
            "created_at": self.created_at,
            "size_in_bytes": self.size_in_bytes,
        }


@dataclass
class RestRequest:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class _Fault:
    status: int
    remaining: int
    methods: set[str] | None
    message: str


@dataclass
class GitHubRestFake:
    repository: str = "octo-org/octo-repo"
    tokens: Mapping[str, str] = field(default_factory=dict)  # token → "read" | "write"
    prefix: str = ""  # "/api/v3" for GHES
    emulator: CacheEmulator | None = None
    ignore_ref_filter: bool = False  # a server that ignores `ref` (no such filter on old GHES)
    requests: list[RestRequest] = field(default_factory=list)
    epoch: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def __post_init__(self) -> None:
        self.prefix = self.prefix.rstrip("/")
        self._seeded: list[RestCache] = []
        self._next_id = SEEDED_IDS
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---

    def start(self) -> GitHubRestFake:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = serve_in_thread(Handler)
        return self

    def stop(self) -> None:
        shut_down(self._server)
        self._server = None

    def __enter__(self) -> GitHubRestFake:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake is not started"
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """GITHUB_API_URL for this fake (with the GHES path when there is one)."""
        return f"{self.origin}{self.prefix}"

    # --- state ---

    def add(
        self,
        ref: str,
        key: str,
        *,
        size: int = 1024,
        version: str = "0" * 64,
        created_at: datetime | None = None,
        last_accessed_at: datetime | None = None,
    ) -> RestCache:
        """Seed an entry, as if some job had saved it; ids and times increase with each add."""
        with self._lock:
            self._next_id += 1
            created = created_at or self.epoch + timedelta(seconds=self._next_id - SEEDED_IDS)
            entry = RestCache(
                self._next_id,
                ref,
                key,
                version,
                size,
                iso(created),
                iso(last_accessed_at or created),
            )
            self._seeded.append(entry)
            return entry

    def caches(self) -> list[RestCache]:
        """Every entry the API would list: seeded ones and the emulator's finalized ones."""
        with self._lock:
            found = list(self._seeded)
        if self.emulator is not None:
            for entry in self.emulator.finalized():
                # the emulator orders saves by `sequence`: one second apart, like real saves
                moment = iso(self.epoch + timedelta(seconds=entry.sequence))
                found.append(
                    RestCache(
                        entry.id,
                        entry.scope,
                        entry.key,
                        entry.version,
                        entry.size or 0,
                        moment,
                        moment,
                    )
                )
        return found

    def keys(self) -> set[str]:
        return {entry.key for entry in self.caches()}

    def remove(self, entries: Iterable[RestCache]) -> None:
        ids = {entry.id for entry in entries}
        with self._lock:
            self._seeded = [entry for entry in self._seeded if entry.id not in ids]
        emulator = self.emulator
        if emulator is None:
            return
        with emulator._lock:
            gone = [entry for entry in emulator.entries if entry.finalized and entry.id in ids]
            emulator.entries[:] = [entry for entry in emulator.entries if entry not in gone]
        for entry in gone:
            emulator.blob_client(entry).delete_blob()

    def fail(
        self,
        status: int,
        count: int = 1,
        *,
        methods: Iterable[str] | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next `count` requests (of these HTTP methods) with `status`."""
        with self._lock:
            wanted = {m.upper() for m in methods} if methods is not None else None
            self._faults.append(_Fault(status, count, wanted, message))

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.methods is None or method in fault.methods):
                    fault.remaining -= 1
                    return fault
        return None

    def requests_of(self, method: str, endpoint: str | None = None) -> list[RestRequest]:
        """Recorded requests of `method` (and, if given, whose path ends with `endpoint`)."""
        return [
            r
            for r in self.requests
            if r.method == method and (endpoint is None or r.path.endswith(endpoint))
        ]

    def _record(self, request: RestRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _matching(
    caches: list[RestCache], key: str | None, ref: str | None, exact_key: bool = False
) -> list[RestCache]:
    found = []
    for entry in caches:
        if key is not None and not (entry.key == key if exact_key else entry.key.startswith(key)):
            continue
        if ref is not None and entry.ref != ref:
            continue
        found.append(entry)
    return found


class _Handler(BaseHTTPRequestHandler):
    owner: GitHubRestFake
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    # --- plumbing ---

    def _reply(
        self,
        request: RestRequest,
        status: int,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        request.status = status
        self.owner._record(request)
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _error(self, request: RestRequest, status: int, message: str) -> None:
        self._reply(request, status, {"message": message, "documentation_url": DOCS})

    def _permission(self, request: RestRequest) -> str | None:
        auth = request.header("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token:
            return None
        return self.owner.tokens.get(token)

    # --- routing ---

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        request = RestRequest(
            self.command,
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            dict(self.headers.items()),
        )
        owner = self.owner
        base = f"{owner.prefix}/repos/{owner.repository}/actions/"
        if not parts.path.startswith(f"{owner.prefix}/"):
            self._error(request, 404, "Not Found")
            return
        permission = self._permission(request)
        if permission is None:
            self._error(request, 401, BAD_CREDENTIALS)
            return
        fault = owner._take_fault(self.command)
        if fault is not None:
            self._error(request, fault.status, fault.message)
            return
        resource = parts.path.removeprefix(base) if parts.path.startswith(base) else None
        if resource == "caches" and self.command == "GET":
            self._list(request)
        elif resource == "caches" and self.command == "DELETE":
            self._delete_by_key(request, permission)
        elif resource is not None and resource.startswith("caches/") and self.command == "DELETE":
            self._delete_by_id(request, permission, resource.removeprefix("caches/"))
        elif resource == "cache/usage" and self.command == "GET":
            self._usage(request)
        else:
            self._error(request, 404, "Not Found")

    # --- endpoints ---

    def _list(self, request: RestRequest) -> None:
        try:
            per_page = min(int(request.param("per_page") or DEFAULT_PER_PAGE), MAX_PER_PAGE)
            page = int(request.param("page") or 1)
        except ValueError:
            self._error(request, 422, "per_page and page must be integers")
            return
        sort = request.param("sort") or "last_accessed_at"
        direction = request.param("direction") or "desc"
        if sort not in SORTS or direction not in ("asc", "desc") or per_page < 1 or page < 1:
            self._error(request, 422, "Validation Failed")
            return
        ref = None if self.owner.ignore_ref_filter else request.param("ref")
        found = _matching(self.owner.caches(), request.param("key"), ref)
        found.sort(key=lambda entry: (getattr(entry, sort), entry.id), reverse=direction == "desc")
        start = (page - 1) * per_page
        body = {
            "total_count": len(found),
            "actions_caches": [entry.to_json() for entry in found[start : start + per_page]],
        }
        last = max(1, -(-len(found) // per_page))
        links = []
        if page < last:
            links.append(self._link(request, page + 1, "next"))
            links.append(self._link(request, last, "last"))
        self._reply(request, 200, body, {"Link": ", ".join(links)} if links else None)

    def _link(self, request: RestRequest, page: int, rel: str) -> str:
        query = {name: values[0] for name, values in request.query.items()}
        query["page"] = str(page)
        return f'<{self.owner.origin}{request.path}?{urlencode(query)}>; rel="{rel}"'

    def _delete_by_id(self, request: RestRequest, permission: str, text: str) -> None:
        if not text.isdigit():
            self._error(request, 404, "Not Found")
            return
        if permission != "write":
            self._error(request, 403, NOT_ACCESSIBLE)
            return
        found = [entry for entry in self.owner.caches() if entry.id == int(text)]
        if not found:
            self._error(request, 404, "Not Found")
            return
        self.owner.remove(found)
        self._reply(request, 204)

    def _delete_by_key(self, request: RestRequest, permission: str) -> None:
        key = request.param("key")
        if not key:
            self._error(request, 422, "key is required")
            return
        if permission != "write":
            self._error(request, 403, NOT_ACCESSIBLE)
            return
        found = _matching(self.owner.caches(), key, request.param("ref"), exact_key=True)
        if not found:
            self._error(request, 404, "Not Found")
            return
        self.owner.remove(found)
        body = {"total_count": len(found), "actions_caches": [e.to_json() for e in found]}
        self._reply(request, 200, body)

    def _usage(self, request: RestRequest) -> None:
        caches = self.owner.caches()
        body = {
            "full_name": self.owner.repository,
            "active_caches_size_in_bytes": sum(entry.size_in_bytes for entry in caches),
            "active_caches_count": len(caches),
        }
        self._reply(request, 200, body)
