"""The exception types the package raises, each with a message a user can act on. Every one
of them, and where it lives (the ones defined elsewhere belong to one module's concern):

CacheActionError                anything this package reports to a user
├── InputError                  a setting (flag, input, env var) has a value we do not accept
├── RootLockedError             another process is serving or pruning the same root
├── RegistryStartError          the sibling registry did not come up
├── StoreError                  a store failed: callers warn and go on cold
│   ├── StoreFullError          the store refuses writes: its quota or its disk is used up
│   │   └── QuotaError          the Actions cache's allowance (stores/gha/errors.py; also a
│   │                           GhaCacheError)
│   ├── CorruptBlobError        a blob from a store fails its digest or size (storage/digests.py)
│   ├── CarryFailed             a blob a save must carry could not be read back (gha/carry.py)
│   ├── CleanupDeniedError      the token may not delete caches: advice (stores/gha_management.py)
│   ├── RateLimitedError        HTTP 429 for longer than we wait (stores/retry.py)
│   ├── GhaConfigError          the runner gave no cache service (stores/gha/errors.py)
│   ├── UnsafeArchiveError      an archive member escapes the root or is a device (gha/errors.py)
│   └── GhaCacheError           the Actions cache service said no (stores/gha/errors.py)
│       ├── EntryExistsError    another job saved this key first
│       ├── WriteDeniedError    the token or ACTIONS_CACHE_MODE allows no writes
│       ├── TransferError       a blob-storage upload or download failed
│       └── TwirpError          a Twirp call answered an error (stores/gha/twirp.py)
└── OCIError                    a registry-level failure, named by its OCI distribution-spec code
    └── UnsupportedDigest       a digest of an algorithm we do not store (storage/digests.py)

`stores/retry.py`'s `Retry` is not among them: it is an attempt asking its loop for another
try, never seen outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class CacheActionError(Exception):
    """Base class: the message is shown to the user as is."""


class InputError(CacheActionError):
    """A setting has a value we do not accept; the message names it, the value and what is."""

    def __init__(self, name: str, value: object, accepted: str) -> None:
        super().__init__(f"{name}: {value!r} is not valid; expected {accepted}")
        self.name = name
        self.value = value
        self.accepted = accepted


class RootLockedError(CacheActionError):
    """Two processes must never write one registry root at once (a sweep would race a push)."""


class StoreError(CacheActionError):
    """A store failed (network, auth, quota, corrupt data): the caller warns and goes on cold,
    unless strict mode is set."""


class StoreFullError(StoreError):
    """The store refuses new data because it is full (a quota, or no space left); the
    message says what to free or raise. Nothing is gained by retrying."""


class RegistryStartError(CacheActionError):
    """The sibling registry did not come up; BuildKit then simply misses the cache."""


class ErrorCode(StrEnum):
    """The error codes of the OCI distribution spec (v1.1), the vocabulary of storage failures."""

    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    SIZE_INVALID = "SIZE_INVALID"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID"  # distribution's, not in OCI's list


class OCIError(CacheActionError):
    """A failure of a registry operation; the HTTP layer maps the code to a status."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        detail: object = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status  # overrides the code's usual HTTP status (416, 413)
        self.headers = dict(headers or {})  # e.g. the WWW-Authenticate challenge of a 401
