"""An emulator of the GitHub Actions cache service, faithful to what clients can observe.

- v2: Twirp JSON at `/twirp/github.actions.results.api.v1.CacheService/<Method>`
  (CreateCacheEntry, FinalizeCacheEntryUpload, GetCacheEntryDownloadURL); errors as
  `{"code", "msg"}` with Twirp's HTTP statuses; responses omit default values (`ok: false`
  is `{}`), int64 as strings.
- v1: `<prefix>/_apis/artifactcache/` lookup (`GET cache?keys=&version=`), reserve
  (`POST caches`), chunked upload (`PATCH caches/<id>` with Content-Range), commit
  (`POST caches/<id>`). The PATCHed bytes are assembled here and stored in Azurite on commit.
- The bearer token is a JWT whose `ac` claim lists `{"Scope": ref, "Permission": 1|2|3}`
  (Read=1, Write=2); `make_token` writes one. Entries are written into the first writable
  scope and looked up scope by scope in the token's order (current branch, then default):
  in each scope exact key, then newest entry with the key as prefix, then each restore key
  as a prefix (newest first). key+version+scope is immutable: a second CreateCacheEntry gets
  `409 already_exists`. A token with no writable scope gets `ok=false, "cache write denied:
  ..."`; one with no readable scope gets `403 permission_denied, "cache read denied: ..."`.
- Archives live in Azurite: signed upload/download URLs are blob SAS URLs for
  devstoreaccount1. Downloads can instead be served through this server (`proxy_downloads`),
  which supports HEAD and Range like blob storage, and can cut responses short.
- Uploads can go through this server too (`proxy_uploads`, set by `fail_uploads`), which
  forwards them to Azurite unless a fault answers first.
- Faults: `fail(status, count, methods=..., retry_after=...)` answers the next calls with an
  error (status 0 drops the connection without an answer); `fail_uploads(...)` the same for
  the blob writes (`PutBlob`, `PutBlock`, `PutBlockList`); `truncate_downloads(n)`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

from cache_action.stores.gha.client import GhaCacheClient
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.transfer import TransferOptions
from cache_action.stores.retry import RetryPolicy
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.http_fake import serve_in_thread, shut_down

TWIRP_PREFIX = "/twirp/github.actions.results.api.v1.CacheService/"
V1_ACCEPT = "application/json;api-version=6.0-preview.1"
READ, WRITE = 1, 2
TWIRP_STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "bad_route": 404,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "resource_exhausted": 429,
    "internal": 500,
    "unavailable": 503,
}
STATUS_CODE = {
    429: "resource_exhausted",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def make_token(scopes: Sequence[tuple[str, int]], *, subject: str = "test") -> str:
    """An unsigned JWT in the runner's shape: `ac` is a JSON string of scopes."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {
        "sub": subject,
        "ac": json.dumps([{"Scope": scope, "Permission": perm} for scope, perm in scopes]),
        "exp": int(time.time()) + 6 * 3600,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.signature"


def token_scopes(token: str) -> list[tuple[str, int]] | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return [(item["Scope"], int(item["Permission"])) for item in json.loads(claims["ac"])]
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@dataclass
class Entry:
    id: int
    scope: str
    key: str
    version: str
    blob: str
    sequence: int = 0  # order of finalization: the newest wins among prefix matches
    size: int | None = None
    finalized: bool = False
    staging: Path | None = None  # v1: PATCHed bytes before commit


@dataclass
class Call:
    api: str  # the Twirp method or the v1 operation name
    status: int
    request: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    status: int
    remaining: int
    methods: set[str] | None
    retry_after: str | None
    message: str


class CacheEmulator:
    def __init__(self, azurite: Azurite, workdir: Path) -> None:
        self.azurite = azurite
        self.workdir = workdir
        self.container = f"cache-{uuid.uuid4().hex[:12]}"
        self.entries: list[Entry] = []
        self.calls: list[Call] = []
        self.downloads: list[tuple[str, str | None, int]] = []  # method, Range, status
        self.uploads: list[tuple[str, int]] = []  # PutBlob/PutBlock/PutBlockList, status
        self.proxy_downloads = False
        self.proxy_uploads = False
        self._faults: list[Fault] = []
        self._truncate: int | None = 0
        self._lock = threading.Lock()
        self._next_id = 1
        self._sequence = 0
        self._server: ThreadingHTTPServer | None = None
        self._service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.v1_prefix = f"/{uuid.uuid4().hex[:8]}/"

    # --- lifecycle ---

    def start(self) -> CacheEmulator:
        self._service.create_container(self.container)
        emulator = self

        class Handler(_Handler):
            owner = emulator

        self._server = serve_in_thread(Handler)
        return self

    def stop(self) -> None:
        shut_down(self._server)
        with contextlib.suppress(ResourceNotFoundError):
            self._service.delete_container(self.container)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """ACTIONS_RESULTS_URL (v2): like production, a bare origin with a trailing slash."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def v1_url(self) -> str:
        """ACTIONS_CACHE_URL (v1): production's has a path; clients append `_apis/...`."""
        return f"http://127.0.0.1:{self.port}{self.v1_prefix}"

    # --- test controls ---

    def fail(
        self,
        status: int,
        count: int = 1,
        *,
        methods: Iterable[str] | None = None,
        retry_after: str | int | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next `count` API calls (of `methods`) with `status`; 0 = drop."""
        with self._lock:
            self._faults.append(
                Fault(
                    status,
                    count,
                    set(methods) if methods is not None else None,
                    None if retry_after is None else str(retry_after),
                    message,
                )
            )

    def fail_uploads(
        self,
        status: int,
        count: int = 1,
        *,
        methods: Iterable[str] = ("PutBlob", "PutBlock", "PutBlockList"),
        retry_after: str | int | None = None,
    ) -> None:
        """Send uploads through this server; answer the next `count` blob writes of `methods`
        with `status` (0 = drop the connection), as blob storage answers errors."""
        self.proxy_uploads = True
        self.fail(status, count, methods=methods, retry_after=retry_after, message="ServerBusy")

    def truncate_downloads(self, count: int | None) -> None:
        """Serve downloads through this server; cut the next `count` GETs short (None: all)."""
        self.proxy_downloads = True
        self._truncate = count

    def blob_client(self, entry: Entry) -> BlobClient:
        return self._service.get_blob_client(self.container, entry.blob)

    def calls_of(self, api: str) -> list[Call]:
        return [call for call in self.calls if call.api == api]

    def finalized(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.finalized]

    def put_entry(self, scope: str, key: str, version: str, data: bytes) -> Entry:
        """Store a finalized entry directly, as if another job had saved it."""
        with self._lock:
            entry = self._new_entry(scope, key, version)
        self._service.get_blob_client(self.container, entry.blob).upload_blob(data)
        with self._lock:
            self._sequence += 1
            entry.sequence, entry.size, entry.finalized = self._sequence, len(data), True
        return entry

    # --- state ---

    def _new_entry(self, scope: str, key: str, version: str) -> Entry:
        entry = Entry(self._next_id, scope, key, version, f"{self._next_id}-{uuid.uuid4().hex}")
        self._next_id += 1
        self.entries.append(entry)
        return entry

    def _existing(self, scope: str, key: str, version: str) -> Entry | None:
        for entry in self.entries:
            if (entry.scope, entry.key, entry.version) == (scope, key, version):
                return entry
        return None

    def _match(
        self, scopes: Sequence[str], key: str, restore_keys: Sequence[str], version: str
    ) -> Entry | None:
        for scope in scopes:
            candidates = [
                entry
                for entry in self.entries
                if entry.finalized and entry.scope == scope and entry.version == version
            ]
            for entry in candidates:
                if entry.key == key:
                    return entry
            for prefix in [key, *restore_keys]:
                found = [entry for entry in candidates if entry.key.startswith(prefix)]
                if found:
                    return max(found, key=lambda entry: entry.sequence)
        return None

    def _sas(self, blob: str, *, write: bool) -> str:
        permission = BlobSasPermissions(read=not write, create=write, write=write)
        return generate_blob_sas(
            ACCOUNT,
            self.container,
            blob,
            account_key=ACCOUNT_KEY,
            permission=permission,
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )

    def upload_url(self, entry: Entry) -> str:
        sas = self._sas(entry.blob, write=True)
        if self.proxy_uploads:  # the same path as Azurite's: the SDK reads the account from it
            return f"http://127.0.0.1:{self.port}/{ACCOUNT}/{self.container}/{entry.blob}?{sas}"
        return f"{self.azurite.blob_endpoint}/{self.container}/{entry.blob}?{sas}"

    def download_url(self, entry: Entry) -> str:
        sas = self._sas(entry.blob, write=False)
        if self.proxy_downloads:
            return f"http://127.0.0.1:{self.port}/blob/{entry.blob}?{sas}"
        return f"{self.azurite.blob_endpoint}/{self.container}/{entry.blob}?{sas}"

    def _take_fault(self, api: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.methods is None or api in fault.methods):
                    fault.remaining -= 1
                    return fault
        return None

    def _take_truncation(self) -> bool:
        with self._lock:
            if self._truncate is None:
                return True
            if self._truncate > 0:
                self._truncate -= 1
                return True
            return False


class _Handler(BaseHTTPRequestHandler):
    owner: CacheEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing ---

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            status,
            json.dumps(value).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.close()

    def _scopes(self) -> list[tuple[str, int]] | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return token_scopes(auth.removeprefix("Bearer "))

    def _record(self, api: str, status: int, request: Any) -> None:
        with self.owner._lock:
            self.owner.calls.append(Call(api, status, request, dict(self.headers.items())))

    def _fault(self, api: str, twirp: bool, request: Any) -> bool:
        fault = self.owner._take_fault(api)
        if fault is None:
            return False
        self._record(api, fault.status, request)
        if fault.status == 0:
            self._drop()
            return True
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if twirp:
            code = STATUS_CODE.get(fault.status, "unknown")
            self._json(fault.status, {"code": code, "msg": fault.message}, headers)
        else:
            self._json(fault.status, {"message": fault.message}, headers)
        return True

    # --- routing ---

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(TWIRP_PREFIX):
            self._twirp(path.removeprefix(TWIRP_PREFIX))
        elif path.startswith(self.owner.v1_prefix + "_apis/artifactcache/"):
            self._v1(path.removeprefix(self.owner.v1_prefix + "_apis/artifactcache/"))
        else:
            self._body()
            self._json(404, {"code": "bad_route", "msg": f"no route for POST {path}"})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/blob/"):
            self._blob(path.removeprefix("/blob/"))
        elif path.startswith(self.owner.v1_prefix + "_apis/artifactcache/"):
            self._v1(path.removeprefix(self.owner.v1_prefix + "_apis/artifactcache/"))
        else:
            self._send(404)

    def do_HEAD(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/blob/"):
            self._blob(path.removeprefix("/blob/"))
        else:
            self._send(404)

    def do_PUT(self) -> None:
        if urlsplit(self.path).path.startswith(f"/{ACCOUNT}/"):
            self._blob_write()
        else:
            self._body()
            self._send(404)

    def do_PATCH(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith(self.owner.v1_prefix + "_apis/artifactcache/"):
            self._v1(path.removeprefix(self.owner.v1_prefix + "_apis/artifactcache/"))
        else:
            self._body()
            self._send(404)

    def _blob_write(self) -> None:
        """A blob write, answered by a fault or forwarded to Azurite."""
        data = self._body()
        comp = parse_qs(urlsplit(self.path).query).get("comp", [""])[0]
        api = {"block": "PutBlock", "blocklist": "PutBlockList"}.get(comp, "PutBlob")
        owner = self.owner
        fault = owner._take_fault(api)
        if fault is not None:
            with owner._lock:
                owner.uploads.append((api, fault.status))
            if fault.status == 0:
                self._drop()
                return
            body = (
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                b"<Message>injected failure</Message></Error>"
            )
            headers = {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            self._send(fault.status, body, headers)
            return
        origin = owner.azurite.blob_endpoint.removesuffix(f"/{ACCOUNT}")
        skip = {"host", "content-length", "connection"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        request = urllib.request.Request(
            origin + self.path, data=data, method="PUT", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, answer_headers, answer_body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, answer_body = error.code, error.headers, error.read()
        with owner._lock:
            owner.uploads.append((api, status))
        skip |= {"transfer-encoding", "date", "server"}
        kept = {k: v for k, v in answer_headers.items() if k.lower() not in skip}
        self._send(status, answer_body, kept)

    # --- v2 ---

    def _twirp(self, method: str) -> None:
        raw = self._body()
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._record(method, 404, None)
            self._json(404, {"code": "bad_route", "msg": "only JSON requests are served"})
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self._record(method, 400, raw)
            self._json(400, {"code": "malformed", "msg": "the body is not JSON"})
            return
        if self._fault(method, True, request):
            return
        scopes = self._scopes()
        if scopes is None:
            self._twirp_error(method, request, "unauthenticated", "missing or invalid token")
            return
        handler = {
            "CreateCacheEntry": self._create,
            "FinalizeCacheEntryUpload": self._finalize,
            "GetCacheEntryDownloadURL": self._get_url,
        }.get(method)
        if handler is None:
            self._twirp_error(method, request, "bad_route", f"no method {method}")
            return
        if not request.get("key") or not request.get("version"):
            self._twirp_error(method, request, "invalid_argument", "key and version are required")
            return
        handler(request, scopes)

    def _twirp_error(self, method: str, request: Any, code: str, message: str) -> None:
        status = TWIRP_STATUS[code]
        self._record(method, status, request)
        self._json(status, {"code": code, "msg": message})

    def _twirp_ok(self, method: str, request: Any, body: dict[str, Any]) -> None:
        self._record(method, 200, request)
        self._json(200, body)

    def _create(self, request: dict[str, Any], scopes: list[tuple[str, int]]) -> None:
        owner = self.owner
        writable = [scope for scope, perm in scopes if perm & WRITE]
        if not writable:
            message = "cache write denied: the token has no writable cache scope"
            self._twirp_ok("CreateCacheEntry", request, {"ok": False, "message": message})
            return
        with owner._lock:
            if owner._existing(writable[0], request["key"], request["version"]) is not None:
                entry = None
            else:
                entry = owner._new_entry(writable[0], request["key"], request["version"])
        if entry is None:
            message = "cache entry with the same key, version, and scope already exists"
            self._twirp_error("CreateCacheEntry", request, "already_exists", message)
            return
        body = {"ok": True, "signed_upload_url": owner.upload_url(entry)}
        self._twirp_ok("CreateCacheEntry", request, body)

    def _finalize(self, request: dict[str, Any], scopes: list[tuple[str, int]]) -> None:
        owner = self.owner
        writable = [scope for scope, perm in scopes if perm & WRITE]
        entry = (
            owner._existing(writable[0], request["key"], request["version"]) if writable else None
        )
        if entry is None or entry.finalized:
            self._twirp_error("FinalizeCacheEntryUpload", request, "not_found", "no reserved entry")
            return
        try:
            size = int(request.get("size_bytes", 0))
            stored = owner.blob_client(entry).get_blob_properties().size
        except ResourceNotFoundError:
            stored = None
        if stored is None or stored != size:
            message = f"uploaded size {stored} does not match size_bytes {size}"
            self._twirp_ok("FinalizeCacheEntryUpload", request, {"ok": False, "message": message})
            return
        with owner._lock:
            owner._sequence += 1
            entry.sequence, entry.size, entry.finalized = owner._sequence, size, True
        self._twirp_ok("FinalizeCacheEntryUpload", request, {"ok": True, "entry_id": str(entry.id)})

    def _get_url(self, request: dict[str, Any], scopes: list[tuple[str, int]]) -> None:
        owner = self.owner
        readable = [scope for scope, perm in scopes if perm & READ]
        if not readable:
            message = "cache read denied: the token has no readable cache scope"
            self._twirp_error("GetCacheEntryDownloadURL", request, "permission_denied", message)
            return
        restore_keys = request.get("restore_keys") or []
        with owner._lock:
            entry = owner._match(readable, request["key"], restore_keys, request["version"])
        if entry is None:
            self._twirp_ok("GetCacheEntryDownloadURL", request, {})  # ok=false is omitted
            return
        body = {
            "ok": True,
            "signed_download_url": owner.download_url(entry),
            "matched_key": entry.key,
        }
        self._twirp_ok("GetCacheEntryDownloadURL", request, body)

    # --- v1 ---

    def _v1(self, resource: str) -> None:
        raw = self._body() if self.command in ("POST", "PATCH") else b""
        query = parse_qs(urlsplit(self.path).query)
        api = {
            ("GET", "cache"): "getCacheEntry",
            ("POST", "caches"): "reserveCache",
        }.get((self.command, resource))
        match = re.fullmatch(r"caches/(\d+)", resource)
        if api is None and match:
            api = "uploadChunk" if self.command == "PATCH" else "commitCache"
        request: Any = raw if api == "uploadChunk" else (json.loads(raw) if raw else dict(query))
        if api is None:
            self._json(404, {"message": f"no route {self.command} {resource}"})
            return
        if self._fault(api, False, request if api != "uploadChunk" else None):
            return
        scopes = self._scopes()
        if scopes is None:
            self._record(api, 401, None)
            self._json(401, {"message": "missing or invalid token"})
            return
        if self.headers.get("Accept") != V1_ACCEPT:
            self._record(api, 400, None)
            self._json(400, {"message": f"Accept must be {V1_ACCEPT}"})
            return
        if api == "getCacheEntry":
            self._v1_lookup(query, scopes)
        elif api == "reserveCache":
            self._v1_reserve(request, scopes)
        elif match and api == "uploadChunk":
            self._v1_chunk(int(match.group(1)), raw)
        elif match:
            self._v1_commit(int(match.group(1)), request)

    def _v1_lookup(self, query: dict[str, list[str]], scopes: list[tuple[str, int]]) -> None:
        owner = self.owner
        readable = [scope for scope, perm in scopes if perm & READ]
        if not readable:
            self._record("getCacheEntry", 403, query)
            self._json(403, {"message": "cache read denied: the token has no readable cache scope"})
            return
        keys = unquote(query.get("keys", [""])[0]).split(",")
        version = query.get("version", [""])[0]
        with owner._lock:
            entry = owner._match(readable, keys[0], keys[1:], version)
        if entry is None:
            self._record("getCacheEntry", 204, query)
            self._send(204)
            return
        self._record("getCacheEntry", 200, query)
        self._json(
            200,
            {
                "cacheKey": entry.key,
                "scope": entry.scope,
                "cacheVersion": entry.version,
                "creationTime": datetime.now(UTC).isoformat(),
                "archiveLocation": owner.download_url(entry),
            },
        )

    def _v1_reserve(self, request: dict[str, Any], scopes: list[tuple[str, int]]) -> None:
        owner = self.owner
        writable = [scope for scope, perm in scopes if perm & WRITE]
        if not writable:
            self._record("reserveCache", 403, request)
            self._json(
                403, {"message": "cache write denied: the token has no writable cache scope"}
            )
            return
        with owner._lock:
            exists = owner._existing(writable[0], request["key"], request["version"])
            entry = (
                None
                if exists
                else owner._new_entry(writable[0], request["key"], request["version"])
            )
        if entry is None:
            self._record("reserveCache", 409, request)
            self._json(
                409,
                {
                    "typeKey": "ArtifactCacheAlreadyExistsException",
                    "message": f"Cache already exists. Scope: {writable[0]}, Key: {request['key']}",
                },
            )
            return
        entry.staging = owner.workdir / f"v1-{entry.id}.part"
        entry.staging.write_bytes(b"")
        self._record("reserveCache", 201, request)
        self._json(201, {"cacheId": entry.id})

    def _entry(self, cache_id: int) -> Entry | None:
        return next((e for e in self.owner.entries if e.id == cache_id and not e.finalized), None)

    def _v1_chunk(self, cache_id: int, data: bytes) -> None:
        entry = self._entry(cache_id)
        found = re.fullmatch(r"bytes (\d+)-(\d+)/\*", self.headers.get("Content-Range", ""))
        if entry is None or entry.staging is None or not found:
            self._record("uploadChunk", 400, None)
            self._json(400, {"message": "unknown cache id or bad Content-Range"})
            return
        start, end = int(found.group(1)), int(found.group(2))
        if end - start + 1 != len(data):
            self._record("uploadChunk", 400, None)
            self._json(400, {"message": "Content-Range does not match the body"})
            return
        with open(entry.staging, "r+b") as fh:
            fh.seek(start)
            fh.write(data)
        self._record("uploadChunk", 204, {"start": start, "end": end})
        self._send(204)

    def _v1_commit(self, cache_id: int, request: dict[str, Any]) -> None:
        owner = self.owner
        entry = self._entry(cache_id)
        if entry is None or entry.staging is None:
            self._record("commitCache", 404, request)
            self._json(404, {"message": "unknown cache id"})
            return
        data = entry.staging.read_bytes()
        if len(data) != int(request.get("size", -1)):
            self._record("commitCache", 400, request)
            self._json(
                400, {"message": f"received {len(data)} bytes, size says {request.get('size')}"}
            )
            return
        owner.blob_client(entry).upload_blob(data, overwrite=True)
        entry.staging.unlink()
        with owner._lock:
            owner._sequence += 1
            entry.sequence, entry.size, entry.finalized = owner._sequence, len(data), True
        self._record("commitCache", 204, request)
        self._send(204)

    # --- downloads through the emulator ---

    def _blob(self, name: str) -> None:
        owner = self.owner
        entry = next((e for e in owner.entries if e.blob == name and e.finalized), None)
        if entry is None or entry.size is None:
            owner.downloads.append((self.command, self.headers.get("Range"), 404))
            self._send(404)
            return
        size = entry.size
        header = self.headers.get("Range")
        start, end = 0, size - 1
        status = 200
        if header:
            found = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
            if not found or int(found.group(1)) >= size:
                owner.downloads.append((self.command, header, 416))
                self._send(416, headers={"Content-Range": f"bytes */{size}"})
                return
            start = int(found.group(1))
            end = min(int(found.group(2)) if found.group(2) else size - 1, size - 1)
            status = 206
        length = end - start + 1
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        truncate = self.command == "GET" and owner._take_truncation()
        owner.downloads.append((self.command, header, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        data = owner.blob_client(entry).download_blob(offset=start, length=length).readall()
        if truncate:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(data)


# --- helpers for the tests ------------------------------------------------------------

FAST_RETRIES = RetryPolicy(attempts=5, base_delay=0.01, max_retry_after=5.0)
FAST_TRANSFER = TransferOptions(retry=RetryPolicy(attempts=3, base_delay=0.01, timeout=10.0))
BRANCH = "refs/heads/feature"
DEFAULT_BRANCH = "refs/heads/main"


def feature_token() -> str:
    """A push to a feature branch: write its own scope, read it and the default branch."""
    return make_token([(BRANCH, READ | WRITE), (DEFAULT_BRANCH, READ)])


def gha_env(emulator: CacheEmulator, token: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "ACTIONS_RESULTS_URL": emulator.url,
        "ACTIONS_RUNTIME_TOKEN": token or feature_token(),
        "GITHUB_SERVER_URL": "https://github.com",
        **extra,
    }


def make_client(
    emulator: CacheEmulator,
    token: str | None = None,
    *,
    transfer: TransferOptions = FAST_TRANSFER,
    **extra: str,
) -> GhaCacheClient:
    config = GhaCacheConfig.from_env(gha_env(emulator, token, **extra))
    return GhaCacheClient(config, policy=FAST_RETRIES, transfer=transfer)


# --- trees ---


def build_tree(root: Path, *, big: int = 0) -> Path:
    """`root/.buildkit-cache` shaped like a registry root: a blob pool hard-linked into a
    repository, nested dirs, an empty dir, a relative symlink, modes, long and non-ASCII
    names, and the uploads directory the action never archives."""
    cache = root / ".buildkit-cache"
    pool = cache / "blobs" / "sha256"
    repo = cache / "org" / "repo" / "blobs" / "sha256"
    for directory in (pool, repo, cache / "empty", cache / ".cache-action" / "uploads"):
        directory.mkdir(parents=True, exist_ok=True)
    for index in range(5):
        data = (f"blob {index}\n".encode()) * (1000 * (index + 1))
        digest = hashlib.sha256(data).hexdigest()
        (pool / digest).write_bytes(data)
        os.link(pool / digest, repo / digest)
    if big:
        (pool / "big").write_bytes(os.urandom(big))
    (cache / "org" / "repo" / "index.json").write_text('{"manifests": []}\n')
    (cache / "org" / "repo" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
    (cache / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (cache / "tool.sh").chmod(0o755)
    (cache / "latest").symlink_to("org/repo/index.json")
    long_dir = cache / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 90 + ".txt")).write_text("long name\n")
    (cache / "unicodé-ñame.txt").write_text("non-ascii\n")
    (cache / ".cache-action" / "uploads" / "partial").write_bytes(b"in progress")
    (cache / ".cache-action" / "access.json").write_text("{}\n")
    return cache


def snapshot(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything extraction must reproduce: type, permission bits, content digest, symlink
    target, mtime (seconds), and which paths share an inode."""
    tree: dict[str, Any] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            rel = path.relative_to(root).as_posix()
            if any(rel == item or rel.startswith(item + "/") for item in exclude):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                tree[rel] = ("file", stat.S_IMODE(st.st_mode), digest, int(st.st_mtime))
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    links = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    return {"entries": tree, "hardlinks": links}


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
