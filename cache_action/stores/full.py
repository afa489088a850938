"""Is the store full? One test for the answers of the Actions cache and of S3 servers.

`is_full(status, code, message)` says whether an error answer means "no more data fits":
retrying cannot help, and the user has to free space or raise a limit. `full_error` makes the
`StoreFullError` that says which. What the servers really answer (their sources and docs):

| store                      | answer                                                       |
| -------------------------- | ------------------------------------------------------------ |
| GitHub Actions cache (v2)  | Twirp error whose `msg` contains `insufficient usage`        |
| GitHub Actions cache (v1)  | JSON `message` containing `insufficient usage`               |
| MinIO, bucket quota        | 400 `XMinioAdminBucketQuotaExceeded` "Bucket quota exceeded" |
| MinIO, drives full         | 507 `XMinioStorageFull` (500 before 2022)                    |
| Ceph RGW, user/bucket quota| 403 `QuotaExceeded`                                          |
| versitygw, filesystem quota| 403 `QuotaExceeded`                                          |
| Huawei OBS, bucket quota   | 403 `InsufficientStorageSpace`                               |
| RustFS, bucket quota       | `XRustfsQuotaExceeded`                                       |
| any, HTTP 507              | Insufficient Storage (RFC 4918), e.g. `InsufficientStorage`  |

@actions/cache checks `insufficient usage` the same way (its UsageError), before anything
else: a full cache is not retried.

Not detectable, so not here:
- AWS S3 and Cloudflare R2 have no bucket size limit: they do not fill up.
- `EntityTooLarge` (400) is one object over the server's size limit (5 GiB in one PUT on
  AWS), not a full store; our uploads send 64 MiB parts, so it would mean a proxy's body
  limit, and "delete objects" would be wrong advice.
- SeaweedFS (4.48, measured with `s3.bucket.quota` and `s3.bucket.quota.enforce -apply`)
  answers a write into a bucket over its quota with 500 `InternalError` "We encountered an
  internal error, please try again." (its log says "read only ... (e.g. bucket over quota)"):
  the same as a passing failure, so it is retried and reported as a failed request.
- An `AccessDenied` 403 that is really a quota (Backblaze B2's cap, some gateways) cannot be
  told from a missing permission.
"""

from __future__ import annotations

from cache_action.errors import StoreFullError

GITHUB_USAGE_EXHAUSTED = "insufficient usage"
INSUFFICIENT_STORAGE = 507
S3_FULL_CODES = frozenset(
    {
        "QuotaExceeded",
        "XMinioAdminBucketQuotaExceeded",
        "XMinioStorageFull",
        "InsufficientStorage",
        "InsufficientStorageSpace",
        "XRustfsQuotaExceeded",
    }
)

GITHUB_ADVICE = (
    "the repository's Actions cache storage quota is used up (10 GB unless raised); delete "
    "caches it no longer needs (the repository's Actions > Caches page, or `gh cache delete`), "
    "lower max-size, or raise the repository's cache storage limit"
)
S3_ADVICE = (
    "the bucket is full (its quota or its disks); free space under the store's prefix (a "
    "lifecycle rule that expires old objects, or a lower max-size) or raise the bucket's quota"
)


def is_full(status: int | None = None, code: str = "", message: str = "") -> bool:
    """Whether an error answer (HTTP status, the store's error code, its message) says that
    the store is full."""
    return (
        status == INSUFFICIENT_STORAGE or code in S3_FULL_CODES or GITHUB_USAGE_EXHAUSTED in message
    )


def full_error(
    what: str, advice: str, detail: str, kind: type[StoreFullError] = StoreFullError
) -> StoreFullError:
    """The error for a full store: what failed, what to do, what the server said."""
    return kind(f"{what}: {advice} ({detail})")
