"""How archives move to and from blob storage: the options both directions share.

Uploads are in `upload.py`, downloads in `download.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache_action.stores.gha.redact import redact_text
from cache_action.stores.gha.transport import Response
from cache_action.stores.retry import TRANSFER_POLICY, RetryPolicy

MiB = 1024 * 1024
# The storage REST version we ask for. SAS URLs from the service carry their own `sv`; Azure
# serves any current version, and @actions/cache's SDK sends an even newer one.
STORAGE_API_VERSION = "2025-01-05"


@dataclass(frozen=True)
class TransferOptions:
    # Uploads: blocks of `block_size`, `upload_concurrency` in flight and one being filled,
    # all in memory (the archive is never written to disk); one Put Blob if it fits a block.
    block_size: int = 16 * MiB
    upload_concurrency: int = 8
    download_concurrency: int = 8
    # Ranged GETs are 4-8 MiB (~4 per worker for small blobs), and at most `download_window`
    # of them are in memory at once: the download's memory is bounded, not the blob's size.
    min_part: int = 4 * MiB
    max_part: int = 8 * MiB
    download_window: int = 12
    # Each request (a range, the size probe, the Put Blob, a block, the block list) is tried
    # by this policy; its `timeout` is the socket timeout (connect, and each read).
    retry: RetryPolicy = TRANSFER_POLICY

    def part_size(self, size: int) -> int:
        wanted = -(-size // (self.download_concurrency * 4))
        return max(self.min_part, min(self.max_part, wanted))

    @property
    def timeout(self) -> float:
        return self.retry.timeout


DEFAULT_TRANSFER = TransferOptions()


def read_headers() -> dict[str, str]:
    return {"x-ms-version": STORAGE_API_VERSION}


def error_text(response: Response) -> str:
    text = response.body[:300].decode("utf-8", "replace").strip()
    return redact_text(text) or "(no body)"
