"""The Actions cache REST API (through PyGithub's requester): list, delete, usage.

PyGithub has no cache methods, so we call the documented endpoints through its requester,
which brings authentication, GITHUB_API_URL (GHES) and retries. Deleting needs
`permissions: actions: write`; without it we warn once and carry on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cache_action.errors import StoreError

if TYPE_CHECKING:
    from github import Github

# PyGithub is imported when first used: it takes 0.2 s, and a restore never needs it.

log = logging.getLogger(__name__)


class CleanupDeniedError(StoreError):
    """The token may not delete caches: advice for the user, not a failure of the save."""


@dataclass(frozen=True)
class CacheEntry:
    id: int
    key: str
    ref: str
    size: int
    created_at: str

    @property
    def created(self) -> datetime | None:
        return _created(self)


@dataclass(frozen=True)
class CacheUsage:
    active_bytes: int
    active_count: int


class CacheManagement:
    def __init__(
        self, token: str, repository: str, api_url: str = "https://api.github.com"
    ) -> None:
        self.repository = repository
        self._token = token
        self._api_url = api_url.rstrip("/")
        self._client: Github | None = None
        self._denied = False

    def _github(self) -> Github:
        if self._client is None:
            from github import Auth, Github

            self._client = Github(auth=Auth.Token(self._token), base_url=self._api_url, retry=None)
        return self._client

    def _request(self, verb: str, path: str, parameters: dict[str, Any] | None = None) -> Any:
        _, data = self._github().requester.requestJsonAndCheck(
            verb, f"/repos/{self.repository}/actions/{path}", parameters=parameters
        )
        return data

    def list_entries(self, key_prefix: str, ref: str | None = None) -> list[CacheEntry]:
        """Entries whose key starts with `key_prefix` (the API matches key prefixes)."""
        entries: list[CacheEntry] = []
        page = 1
        while True:
            parameters: dict[str, Any] = {"key": key_prefix, "per_page": 100, "page": page}
            if ref:
                parameters["ref"] = ref
            data = self._request("GET", "caches", parameters) or {}
            batch = data.get("actions_caches") or []
            entries += [
                CacheEntry(
                    id=int(item["id"]),
                    key=str(item["key"]),
                    ref=str(item.get("ref", "")),
                    size=int(item.get("size_in_bytes", 0)),
                    created_at=str(item.get("created_at", "")),
                )
                for item in batch
                if str(item.get("key", "")).startswith(key_prefix)
            ]
            if len(batch) < 100:
                return entries
            page += 1

    def delete_superseded(self, key_prefix: str, keep_key: str, ref: str) -> list[CacheEntry]:
        """Delete entries of one (scope, ref) created before `keep_key` — never another ref's,
        never a newer one. Returns what went.

        `key_prefix` names our scope and ref; `ref` is the GitHub ref the entries live under
        (the job's GITHUB_REF), so both GitHub's scoping and ours must match."""
        if self._denied:
            return []
        from github import GithubException

        deleted = []
        try:
            entries = [entry for entry in self.list_entries(key_prefix, ref) if entry.ref == ref]
            kept = next((entry for entry in entries if entry.key == keep_key), None)
            cutoff = _created(kept)
            if cutoff is None:  # without our own entry's time, "older" cannot be told apart
                log.info("%s is not listed yet: no superseded entries deleted", keep_key)
                return []
            for entry in entries:
                created = _created(entry)
                # a concurrent job's entry created after ours supersedes ours, not the reverse
                if entry.key != keep_key and created is not None and created < cutoff:
                    self._request("DELETE", f"caches/{entry.id}")
                    deleted.append(entry)
        except GithubException as error:
            if error.status in (401, 403, 404):
                self._denied = True
                raise CleanupDeniedError(
                    f"cannot clean up superseded cache entries (HTTP {error.status}): give the "
                    "job `permissions: actions: write` to let old entries be deleted"
                ) from None
            raise
        return deleted

    def delete_key(self, key: str) -> None:
        """Delete every entry with exactly this key (all refs)."""
        self._request("DELETE", "caches", {"key": key})

    def usage(self) -> CacheUsage | None:
        """This repository's cache usage, or None when the token may not read it."""
        from github import GithubException

        try:
            data = self._request("GET", "cache/usage") or {}
        except GithubException as error:
            log.info("cache usage unavailable (HTTP %s)", error.status)
            return None
        return CacheUsage(
            int(data.get("active_caches_size_in_bytes", 0)), int(data.get("active_caches_count", 0))
        )


def _created(entry: CacheEntry | None) -> datetime | None:
    """`created_at` (`2019-01-24T22:45:36.000Z`) as a datetime; None when absent or unreadable."""
    if entry is None or not entry.created_at:
        return None
    try:
        return datetime.fromisoformat(entry.created_at.replace("Z", "+00:00"))
    except ValueError:
        return None
