"""Cache service v2: Twirp JSON RPCs at `<ACTIONS_RESULTS_URL>/twirp/...CacheService/<Method>`.

Requests are JSON with proto field names (snake_case), int64 as strings, empty fields left out
(@actions/cache's `toJson(useProtoFieldName, emitDefaultValues: false)`). Responses may use
snake_case or camelCase and int64 as string or number; a missing `ok` means false.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin

from cache_action.stores.full import GITHUB_ADVICE, full_error, is_full
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.errors import (
    READ_DENIED,
    WRITE_DENIED,
    EntryExistsError,
    GhaCacheError,
    QuotaError,
    WriteDeniedError,
)
from cache_action.stores.gha.redact import redact_text
from cache_action.stores.gha.service import Match, UploadTarget
from cache_action.stores.gha.transfer import DEFAULT_TRANSFER, TransferOptions
from cache_action.stores.gha.transport import Response, send
from cache_action.stores.gha.upload import ArchiveUpload, BlobUpload
from cache_action.stores.retry import (
    DEFAULT_POLICY,
    Retry,
    RetryPolicy,
    check_status,
    failed_after,
    retry_call,
)

log = logging.getLogger("cache_action.stores.gha")

SERVICE = "github.actions.results.api.v1.CacheService"


class TwirpError(GhaCacheError):
    """A non-2xx Twirp answer: `{"code": ..., "msg": ...}`."""

    def __init__(self, method: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{method}: HTTP {status} {code or 'error'}: {message or '(no message)'}")
        self.method = method
        self.status = status
        self.code = code
        self.twirp_message = message


def field_value(body: dict[str, Any], name: str) -> Any:
    """A response field by its proto name or its JSON (camelCase) name."""
    if name in body:
        return body[name]
    head, *rest = name.split("_")
    return body.get(head + "".join(part.title() for part in rest))


class TwirpCacheService:
    def __init__(
        self,
        config: GhaCacheConfig,
        policy: RetryPolicy = DEFAULT_POLICY,
        transfer: TransferOptions = DEFAULT_TRANSFER,
    ) -> None:
        self._config = config
        self._policy = policy
        self._transfer = transfer

    # --- RPCs ---

    def lookup(self, key: str, restore_keys: Sequence[str], version: str) -> Match | None:
        # The primary key also goes first in restore_keys: the production service is reported
        # not to prefix-match `key` itself (reference B3); this gives exact → prefix of key →
        # restore keys in order, as BuildKit and go-actions-cache ask.
        request: dict[str, Any] = {
            "key": key,
            "restore_keys": [key, *(k for k in restore_keys if k != key)],
            "version": version,
        }
        try:
            body = self._call("GetCacheEntryDownloadURL", request)
        except TwirpError as error:
            if error.code == "not_found" or error.status == 404:
                return None
            if READ_DENIED in error.twirp_message:
                log.warning("cache read denied by policy, treating as a miss: %s", error)
                return None
            raise
        url = field_value(body, "signed_download_url")
        matched = field_value(body, "matched_key")
        if not body.get("ok") or not url:
            return None
        return Match(key=key, matched_key=str(matched or key), version=version, download_url=url)

    def reserve(self, key: str, version: str, size: int | None = None) -> UploadTarget:
        try:
            body = self._call("CreateCacheEntry", {"key": key, "version": version})
        except TwirpError as error:
            if error.status == 409 or error.code == "already_exists":
                raise EntryExistsError(key, error.twirp_message) from None
            if error.twirp_message.startswith(WRITE_DENIED):
                raise WriteDeniedError(f"cannot save {key!r}: {error.twirp_message}") from None
            raise
        if not body.get("ok"):
            message = str(field_value(body, "message") or "")
            if message.startswith(WRITE_DENIED):
                raise WriteDeniedError(f"cannot save {key!r}: {message}")
            if is_full(message=message):
                raise full_error("CreateCacheEntry", GITHUB_ADVICE, message, QuotaError)
            raise GhaCacheError(
                f"the cache service did not reserve {key!r}: {message or 'ok=false'}"
            )
        url = field_value(body, "signed_upload_url")
        if not url:
            raise GhaCacheError(f"CreateCacheEntry for {key!r} answered no signed_upload_url")
        return UploadTarget(key=key, version=version, upload_url=str(url))

    def start_upload(self, target: UploadTarget) -> ArchiveUpload:
        if not target.upload_url:
            raise GhaCacheError(f"no upload URL reserved for {target.key!r}")
        return BlobUpload(target.upload_url, self._transfer)

    def finalize(self, target: UploadTarget, size: int) -> int:
        request = {"key": target.key, "size_bytes": str(size), "version": target.version}
        try:
            body = self._call("FinalizeCacheEntryUpload", request)
        except TwirpError as error:
            if error.status == 409 or error.code == "already_exists":
                raise EntryExistsError(target.key, error.twirp_message) from None
            raise
        if not body.get("ok"):
            message = field_value(body, "message")
            raise GhaCacheError(
                f"the cache service did not finalize {target.key!r}: "
                f"{message or 'another job may be finalizing this cache'}"
            )
        entry_id = field_value(body, "entry_id")
        try:
            return int(entry_id)
        except (TypeError, ValueError):
            raise GhaCacheError(
                f"FinalizeCacheEntryUpload answered entry_id {entry_id!r}, not an integer"
            ) from None

    # --- transport ---

    def _call(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        url = urljoin(self._config.service_url, f"/twirp/{SERVICE}/{method}")
        data = json.dumps(request, separators=(",", ":")).encode()
        headers = {
            "Authorization": f"Bearer {self._config.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

        def attempt() -> Response:
            response = send("POST", url, headers=headers, body=data, timeout=self._policy.timeout)
            if response.ok:
                try:
                    json.loads(response.body or b"{}")
                except ValueError:  # @actions/cache retries a 2xx whose body is not JSON
                    raise Retry(f"HTTP {response.status} with a body that is not JSON") from None
                return response
            code, message = _twirp_error(response)
            if is_full(response.status, message=message):  # before retrying, as @actions/cache
                raise full_error(method, GITHUB_ADVICE, message, QuotaError)
            check_status(response.status, response.reason, response.header("Retry-After"))
            raise TwirpError(method, response.status, code, message)

        exhausted = failed_after(method, GhaCacheError)
        response = retry_call(method, attempt, self._policy, exhausted=exhausted)
        body = json.loads(response.body or b"{}")
        log.debug("%s: %s", method, redact_text(json.dumps(body)))
        return body if isinstance(body, dict) else {}


def _twirp_error(response: Response) -> tuple[str, str]:
    try:
        body = json.loads(response.body)
    except ValueError:
        text = response.body[:200].decode("utf-8", "replace").strip()
        return "", redact_text(text) or response.reason
    if not isinstance(body, dict):
        return "", response.reason
    message = body.get("msg") or body.get("message") or ""
    return str(body.get("code") or ""), redact_text(str(message))
