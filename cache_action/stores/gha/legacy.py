"""Cache service v1 (GHES; github.com before 2025): `<ACTIONS_CACHE_URL>_apis/artifactcache/`.

- lookup   `GET cache?keys=<k1,k2,...>&version=V` → 204 miss, 200 `{cacheKey, archiveLocation}`
- reserve  `POST caches {"key", "version", "cacheSize"}` → `{"cacheId"}`
- upload   `PATCH caches/<id>` with `Content-Range: bytes a-b/*`, 32 MiB chunks, 4 in parallel
- commit   `POST caches/<id> {"size"}`
Bodies are camelCase JSON; `Accept: application/json;api-version=6.0-preview.1`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from cache_action.stores.full import GITHUB_ADVICE, full_error, is_full
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.errors import (
    READ_DENIED,
    WRITE_DENIED,
    EntryExistsError,
    GhaCacheError,
    QuotaError,
    TransferError,
    WriteDeniedError,
)
from cache_action.stores.gha.redact import redact_text
from cache_action.stores.gha.service import Match, UploadTarget
from cache_action.stores.gha.transport import Response, send
from cache_action.stores.gha.upload import ArchiveUpload, BlockPipeline
from cache_action.stores.retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    check_status,
    failed_after,
    retry_call,
)

log = logging.getLogger("cache_action.stores.gha")

ACCEPT = "application/json;api-version=6.0-preview.1"
MiB = 1024 * 1024


class LegacyCacheService:
    def __init__(
        self,
        config: GhaCacheConfig,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        chunk_size: int = 32 * MiB,
        concurrency: int = 4,
    ) -> None:
        self._config = config
        self._policy = policy
        self._chunk_size = chunk_size
        self._concurrency = concurrency

    def lookup(self, key: str, restore_keys: Sequence[str], version: str) -> Match | None:
        keys = ",".join([key, *restore_keys])
        resource = f"cache?keys={quote(keys, safe=_URI_COMPONENT_SAFE)}&version={version}"
        response = self._request("GET", resource, "getCacheEntry")
        if response.status == 204:
            return None
        body = _json(response)
        if not response.ok:
            message = str(body.get("message") or "")
            if READ_DENIED in message:
                log.warning("cache read denied by policy, treating as a miss: %s", message)
                return None
            raise _failure("getCacheEntry", response, body)
        location = body.get("archiveLocation")
        if not location:
            raise GhaCacheError("getCacheEntry: the cache service answered no archiveLocation")
        matched = str(body.get("cacheKey") or key)
        return Match(key=key, matched_key=matched, version=version, download_url=str(location))

    def reserve(self, key: str, version: str, size: int | None = None) -> UploadTarget:
        request: dict[str, Any] = {"key": key, "version": version}
        if size is not None:
            request["cacheSize"] = size
        response = self._request("POST", "caches", "reserveCache", request)
        body = _json(response)
        message = str(body.get("message") or "")
        if response.ok and body.get("cacheId") is not None:
            return UploadTarget(key=key, version=version, cache_id=int(body["cacheId"]))
        if message.startswith(WRITE_DENIED):
            raise WriteDeniedError(f"cannot save {key!r}: {message}")
        if response.status == 409 or "AlreadyExists" in str(body.get("typeKey") or ""):
            raise EntryExistsError(key, message)
        if response.status == 400:
            raise GhaCacheError(
                f"reserveCache: {message or 'the archive is over the cache size limit'}"
            )
        raise _failure("reserveCache", response, body)

    def start_upload(self, target: UploadTarget) -> ArchiveUpload:
        if target.cache_id is None:
            raise GhaCacheError(f"no cache id reserved for {target.key!r}")
        resource = f"caches/{target.cache_id}"

        def send_chunk(_index: int, offset: int, data: memoryview) -> None:
            self._upload_chunk(resource, offset, data)

        return BlockPipeline(self._chunk_size, self._concurrency, send_chunk)

    def finalize(self, target: UploadTarget, size: int) -> int:
        if target.cache_id is None:
            raise GhaCacheError(f"no cache id reserved for {target.key!r}")
        response = self._request("POST", f"caches/{target.cache_id}", "commitCache", {"size": size})
        if not response.ok:
            raise _failure("commitCache", response, _json(response))
        return target.cache_id

    # --- transport ---

    def _upload_chunk(self, resource: str, start: int, data: memoryview) -> None:
        end = start + len(data)
        headers = {
            **self._headers(),
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end - 1}/*",
            "Content-Length": str(end - start),
        }
        what = f"uploadChunk (start: {start}, end: {end - 1})"
        response = self._send("PATCH", resource, what, headers, data)
        if not response.ok:
            raise TransferError(
                f"uploadChunk bytes {start}-{end - 1}: HTTP {response.status} {response.reason}"
            )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._config.token}", "Accept": ACCEPT}

    def _request(
        self, method: str, resource: str, what: str, body: dict[str, Any] | None = None
    ) -> Response:
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self._send(method, resource, what, headers, data)

    def _send(
        self,
        method: str,
        resource: str,
        what: str,
        headers: dict[str, str],
        data: bytes | memoryview | None,
    ) -> Response:
        """The answer that is not worth another try (any status); QuotaError when the cache
        is full."""
        url = self._config.service_url + "_apis/artifactcache/" + resource

        def attempt() -> Response:
            response = send(method, url, headers=headers, body=data, timeout=self._policy.timeout)
            if not response.ok:
                message = redact_text(str(_json(response).get("message") or ""))
                if is_full(response.status, message=message):
                    raise full_error(what, GITHUB_ADVICE, message, QuotaError)
                check_status(response.status, response.reason, response.header("Retry-After"))
            return response

        return retry_call(what, attempt, self._policy, exhausted=failed_after(what, GhaCacheError))


# encodeURIComponent leaves these unescaped
_URI_COMPONENT_SAFE = "-_.!~*'()"


def _json(response: Response) -> dict[str, Any]:
    try:
        body = json.loads(response.body) if response.body else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _failure(what: str, response: Response, body: dict[str, Any]) -> GhaCacheError:
    message = redact_text(str(body.get("message") or "")) or response.reason
    return GhaCacheError(f"{what}: HTTP {response.status}: {message}")
