"""One blob out of an Actions cache entry's archive, by range (the layout is frames.py's).

A lazy restore reads an entry's index (the archive's last bytes), and later any of its blobs:
a ranged GET of the blob's frame on the signed download URL, decoded as it arrives, the tar
header skipped, exactly the blob's bytes handed on. Download URLs are signed for a while only:
one the service refused (403) is asked for again, by the entry's exact key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zstandard

from cache_action.errors import StoreError
from cache_action.storage.digests import Digest
from cache_action.storage.remote import RemoteBlob
from cache_action.stores.gha.client import GhaCacheClient
from cache_action.stores.gha.download import read_range, remote_size
from cache_action.stores.gha.errors import TransferError
from cache_action.stores.gha.frames import FOOTER_BYTES, index_length, parse_index
from cache_action.stores.gha.service import Match

log = logging.getLogger("cache_action.stores.gha")


class ArchiveBlobs:
    description = "GitHub Actions cache"

    def __init__(self, client: GhaCacheClient, path_label: str) -> None:
        self.client = client
        self.path_label = path_label
        self._urls: dict[str, str] = {}  # entry key → its signed download URL

    def remember(self, match: Match) -> None:
        self._urls[match.matched_key] = match.download_url

    # --- an entry's index ---

    def index(self, match: Match) -> tuple[dict[str, Any] | None, int]:
        """The archive's index, or None for one without (written before the layout, or by
        the official client); and the bytes read for it."""
        self.remember(match)
        size = remote_size(match.download_url, self.client.transfer)
        if size < FOOTER_BYTES:
            return None, 0
        footer = self._bytes(match.download_url, size - FOOTER_BYTES, size)
        length = index_length(footer)
        if length is None or length > size - FOOTER_BYTES:
            return None, len(footer)
        start = size - FOOTER_BYTES - length
        body = self._bytes(match.download_url, start, start + length)
        return parse_index(body), len(footer) + len(body)

    def _bytes(self, url: str, start: int, end: int) -> bytes:
        parts: list[bytes] = []
        read_range(url, start, end, parts.append, self.client.transfer)
        return b"".join(parts)

    # --- one blob ---

    def fetch(self, digest: Digest, blob: RemoteBlob, write: Callable[[bytes], object]) -> int:
        """Write exactly the blob's bytes to `write`; returns the bytes downloaded."""
        key = str(blob.locator.get("key", ""))
        frame = blob.locator.get("frame")
        if not key or not isinstance(frame, list) or len(frame) != 4:
            raise StoreError(f"blob {digest} has no location in an Actions cache archive")
        start, end, offset, size = (int(value) for value in frame)
        emitted = 0

        def counted(data: bytes) -> None:
            nonlocal emitted
            emitted += len(data)
            write(data)

        for fresh in (False, True):
            try:
                self._read(self._url(key, fresh), (start, end, offset, size), counted)
                return end - start
            except TransferError as error:
                if fresh or emitted or "HTTP 403" not in str(error):
                    raise
                log.info("the download URL of %s expired; asking for a new one", key)
        raise AssertionError("unreachable")  # pragma: no cover

    def _url(self, key: str, fresh: bool) -> str:
        if fresh or key not in self._urls:
            match = self.client.lookup(key, [], [self.path_label])
            if match is None or match.matched_key != key:
                raise StoreError(f"the Actions cache entry {key} is gone")
            self.remember(match)
        return self._urls[key]

    def _read(
        self, url: str, frame: tuple[int, int, int, int], write: Callable[[bytes], object]
    ) -> None:
        """Decode the frame as it arrives; skip the member's header; hand on `size` bytes."""
        start, end, offset, size = frame
        decoder = zstandard.ZstdDecompressor().decompressobj()
        position = 0  # in the decoded frame
        handed = 0

        def feed(chunk: bytes) -> None:
            nonlocal position, handed
            decoded = decoder.decompress(chunk)
            first = max(offset - position, 0)
            last = min(len(decoded), offset + size - position)
            if last > first:
                write(decoded[first:last])
                handed += last - first
            position += len(decoded)

        read_range(url, start, end, feed, self.client.transfer)
        if handed != size:
            raise TransferError(f"an archive frame held {handed} bytes of a blob, not {size}")
