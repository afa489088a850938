"""Sending an archive to the cache while it is still being written.

The archive is written to a file (never held in memory) and sent in fixed-size parts, each as
soon as the writer is past its end: compression and upload overlap, and a 1 GiB save no longer
waits for the whole archive before its first byte leaves. `GrowingFile` schedules the parts;
the protocols differ only in how one part is sent and how the upload ends.

The v2 blob upload follows @actions/cache 6.x (reference B6):
- size ≤ 128 MiB: one Put Blob (`PUT`, `x-ms-blob-type: BlockBlob`), sent by us, streaming the
  file: azure-storage-blob's single put reads the whole file into memory first. Parts are held
  back until the file passes 128 MiB, so a small archive is still one request.
- larger: 64 MiB Put Blocks through azure-storage-blob's `stage_block`, 8 in parallel, each
  read from the file as the request goes out (a seekable slice, so the SDK's retries rewind
  it), then Put Block List in order.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cache_action.stores.gha.errors import TransferError
from cache_action.stores.gha.redact import redact, redact_text
from cache_action.stores.gha.transfer import (
    DEFAULT_TRANSFER,
    STORAGE_API_VERSION,
    MiB,
    TransferOptions,
    error_text,
    retryable,
)
from cache_action.stores.gha.transport import send

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

log = logging.getLogger("cache_action.stores.gha")

SendPart = Callable[[int, int, int], None]  # (index, start, end)


class ArchiveUpload(Protocol):
    """An upload fed by the archive writer: `grown` after each write, `finish` once the file
    is complete (returns its size), `abort` when the writer failed."""

    def grown(self, size: int) -> None: ...

    def finish(self) -> int: ...

    def abort(self) -> None: ...


class GrowingFile:
    """Sends `path` in parts of `part_size` bytes with `concurrency` requests in flight; a part
    goes out once the file is past its end (and past `hold_until`, the size below which the
    caller sends the file whole instead)."""

    def __init__(
        self,
        path: Path,
        part_size: int,
        concurrency: int,
        send_part: SendPart,
        *,
        hold_until: int = 0,
    ) -> None:
        self.path = path
        self.part_size = part_size
        self.parts = 0
        self._send_part = send_part
        self._hold_until = hold_until
        self._scheduled = 0  # bytes covered by the parts submitted so far
        self._pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="gha-upload")
        self._futures: list[Future[None]] = []
        self._failed = threading.Event()

    @property
    def started(self) -> bool:
        return self.parts > 0

    def grown(self, size: int) -> None:
        self._raise_first_failure()
        if size <= self._hold_until and not self.started:
            return
        while self._scheduled + self.part_size <= size:
            self._submit(self._scheduled + self.part_size)

    def finish(self) -> int:
        size = self.path.stat().st_size
        try:
            while self._scheduled < size:
                self._submit(min(self._scheduled + self.part_size, size))
            wait(self._futures, return_when=FIRST_EXCEPTION)
            self._raise_first_failure()
        finally:
            self.abort()
        return size

    def abort(self) -> None:
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _submit(self, end: int) -> None:
        start, index = self._scheduled, self.parts
        self._futures.append(self._pool.submit(self._send, index, start, end))
        self._scheduled = end
        self.parts += 1

    def _send(self, index: int, start: int, end: int) -> None:
        if self._failed.is_set():
            return  # an earlier part failed: the upload is lost, send nothing more
        try:
            self._send_part(index, start, end)
        except BaseException:
            self._failed.set()
            raise

    def _raise_first_failure(self) -> None:
        for future in self._futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]


class FileSlice(io.RawIOBase):
    """Bytes [start, end) of a file, readable and seekable on their own (an HTTP body)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._start, self._length = start, end - start
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._length - self._position)
        if count <= 0:
            return 0
        data = os.pread(self._fd, count, self._start + self._position)
        if not data:
            raise TransferError("the archive shrank while it was uploaded")
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


# --- the v2 blob upload -------------------------------------------------------------------


class BlobUpload:
    """The archive to a signed blob URL: one Put Blob, or blocks while it grows."""

    def __init__(self, url: str, path: Path, options: TransferOptions = DEFAULT_TRANSFER) -> None:
        self.url = url
        self.path = path
        self.options = options
        self._blocks = GrowingFile(
            path,
            options.block_size,
            options.upload_concurrency,
            self._stage_block,
            hold_until=options.single_put_max,
        )
        self._client: BlobClient | None = None
        self._client_lock = threading.Lock()
        self._block_prefix = uuid.uuid4().hex[:16]
        self._started = time.monotonic()

    @property
    def blocks_submitted(self) -> int:
        return self._blocks.parts

    def grown(self, size: int) -> None:
        self._blocks.grown(size)

    def finish(self) -> int:
        try:
            size = self.path.stat().st_size
            if not self._blocks.started and size <= self.options.single_put_max:
                self._blocks.abort()
                _put_blob(self.url, self.path, size, self.options)
            else:
                self._blocks.finish()
                self._commit_blocks()
        finally:
            self.abort()
        seconds = time.monotonic() - self._started
        log.info("uploaded %d bytes to %s in %.1f s", size, redact(self.url), seconds)
        return size

    def abort(self) -> None:
        self._blocks.abort()
        if self._client is not None:
            self._client.close()

    def _block_id(self, index: int) -> str:
        return f"{self._block_prefix}-{index:06d}"  # every id of a blob has the same length

    def _stage_block(self, index: int, start: int, end: int) -> None:
        from azure.core.exceptions import AzureError

        with FileSlice(self.path, start, end) as body:
            try:
                self._sdk().stage_block(self._block_id(index), body, length=end - start)
            except AzureError as error:
                raise _sdk_failure(self.url, error) from None

    def _commit_blocks(self) -> None:
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobBlock

        blocks = [BlobBlock(self._block_id(index)) for index in range(self._blocks.parts)]
        try:
            self._sdk().commit_block_list(blocks)
        except AzureError as error:
            raise _sdk_failure(self.url, error) from None

    def _sdk(self) -> BlobClient:
        # Imported late: azure-core and the SDK take ~0.3 s to import; only big saves need them.
        with self._client_lock:
            if self._client is None:
                from azure.storage.blob import BlobClient

                self._client = BlobClient.from_blob_url(
                    self.url,
                    connection_timeout=self.options.timeout,
                    read_timeout=max(self.options.timeout, 120.0),  # 64 MiB on a slow link
                    retry_total=self.options.attempts - 1,
                )
            return self._client


def upload_file(url: str, path: Path, options: TransferOptions = DEFAULT_TRANSFER) -> int:
    """Upload a complete file to the signed blob `url`; returns the size sent."""
    return BlobUpload(url, path, options).finish()


def _sdk_failure(url: str, error: Exception) -> TransferError:
    first_line = (redact_text(str(error)).splitlines() or [type(error).__name__])[0]
    return TransferError(f"upload to {redact(url)} failed: {first_line}")


def _put_blob(url: str, path: Path, size: int, options: TransferOptions) -> None:
    headers = {
        "x-ms-blob-type": "BlockBlob",
        "x-ms-version": STORAGE_API_VERSION,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
    }
    problem = ""
    for attempt in range(options.attempts):
        if attempt:
            time.sleep(options.delay(attempt - 1))
        try:
            with open(path, "rb", buffering=MiB) as body:
                response = send("PUT", url, headers=headers, body=body, timeout=options.timeout)
        except (OSError, http.client.HTTPException) as error:
            problem = f"connection error: {redact_text(str(error))}"
            continue
        if response.ok:
            return
        problem = f"HTTP {response.status} {response.reason}: {error_text(response)}"
        if not retryable(response.status):
            break
    raise TransferError(f"upload to {redact(url)} failed: {problem}")
