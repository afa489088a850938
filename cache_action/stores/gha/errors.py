"""What the Actions cache client raises. All are `CacheActionError`s with a message a user can
act on; none carries a signed URL's secret.

StoreError (cache_action.errors): every one of these; callers warn and go on cold
GhaCacheError            the cache service or a transfer failed: warn, go on without the cache
├── EntryExistsError     the key+version already exists in this scope (another job saved it)
├── WriteDeniedError     the token or ACTIONS_CACHE_MODE does not permit writes
├── QuotaError           the repository's cache storage quota is used up (a StoreFullError)
└── TransferError        an upload or download to the signed URL failed or came back short
RateLimitedError         HTTP 429 for longer than we are willing to wait (stores.retry's)
UnsafeArchiveError       an archive member would escape the destination or is not allowed
GhaConfigError           the environment lacks what the cache service needs
"""

from __future__ import annotations

from cache_action.errors import StoreError, StoreFullError
from cache_action.stores.retry import RateLimitedError as RateLimitedError  # named here too

# What the service's messages start with or contain, on both protocols.
WRITE_DENIED = "cache write denied:"
READ_DENIED = "cache read denied:"


class GhaCacheError(StoreError):
    """The cache service or a transfer failed; caching is best effort, so callers warn."""


class EntryExistsError(GhaCacheError):
    """HTTP 409 / Twirp `already_exists`: informational, the same entry is (being) saved."""

    def __init__(self, key: str, detail: str = "") -> None:
        text = f"cache entry {key!r} already exists in this scope (another job saved it)"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.key = key


class WriteDeniedError(GhaCacheError):
    """`cache write denied:` from the service (read-only token), or a read-only cache mode."""


class QuotaError(StoreFullError, GhaCacheError):
    """The service said `insufficient usage`: the repository's cache storage is full."""


class TransferError(GhaCacheError):
    """An upload to or a download from the signed blob URL failed."""


class UnsafeArchiveError(StoreError):
    """An archive member is absolute, has `..`, links outside the destination, or is a device."""


class GhaConfigError(StoreError):
    """A variable the Actions cache service needs is missing or invalid; the message names it."""
