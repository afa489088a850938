"""Sending an archive to the cache as it is produced, without writing it to disk.

The archiver writes into an `ArchiveUpload`; every `block_size` bytes become one block that a
sender thread uploads while the archiver goes on. At most `concurrency` blocks are in flight and
one is being filled: when all senders are busy the archiver waits, so memory stays at
`(concurrency + 1) * block_size` whatever the archive's size, and the archive never touches the
disk (writing a 1 GiB archive file made the kernel throttle the archiver to the disk's pace
before the upload could read it back). Block buffers are reused. A failed block stops the
blocks queued behind it; the error is raised to the archiver at its next block, or by `finish`.

How a block is sent differs by protocol:
- v2 (blob storage, reference B6): Put Block through azure-storage-blob's `stage_block`, then
  Put Block List in order. An archive that fits in one block is one Put Blob instead (sent by
  us: the SDK's single put would import 0.3 s of SDK for a request we can make directly).
  All three are retried by `cache_action.stores.retry` (the SDK's own retries are off).
- v1 (GHES): `PATCH caches/<id>` with the block's Content-Range (see legacy.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cache_action.stores.gha.errors import TransferError
from cache_action.stores.gha.redact import redact, redact_text
from cache_action.stores.gha.transfer import (
    DEFAULT_TRANSFER,
    STORAGE_API_VERSION,
    TransferOptions,
    error_text,
)
from cache_action.stores.gha.transport import send
from cache_action.stores.retry import (
    azure_failure,
    azure_retry_options,
    check_status,
    retry_call,
)

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

T = TypeVar("T")

log = logging.getLogger("cache_action.stores.gha")

SendBlock = Callable[[int, int, memoryview], None]  # (index, offset in the archive, bytes)
SendWhole = Callable[[memoryview], None]


class ArchiveUpload(Protocol):
    """What the archiver writes into: `write` as it produces bytes, `finish` once the archive
    is complete (returns its size), `abort` when archiving failed."""

    @property
    def size(self) -> int:
        """Bytes written so far."""
        ...

    def write(self, data: Any) -> int: ...

    def finish(self) -> int: ...

    def abort(self) -> None: ...


class BlockPipeline:
    """A writable stream that uploads what is written in blocks, in parallel, in bounded
    memory (see the module docstring). `send_whole`, when given, sends an archive that fits
    in its first block in one request instead."""

    def __init__(
        self,
        block_size: int,
        concurrency: int,
        send_block: SendBlock,
        send_whole: SendWhole | None = None,
    ) -> None:
        self.block_size = block_size
        self.blocks = 0  # blocks handed to the senders
        self.size = 0  # bytes written
        self._send_block = send_block
        self._send_whole = send_whole
        self._workers = max(1, concurrency)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="gha-upload")
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 1
        self._buffer = bytearray(block_size)
        self._filled = 0
        self._error: BaseException | None = None  # the first block that failed
        self._stopped = threading.Event()  # blocks not yet started are not sent

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.block_size - self._filled)
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self._hand_off()
        self.size += len(data)
        return len(data)

    def finish(self) -> int:
        try:
            if self.blocks == 0 and self._send_whole is not None:
                self._send_whole(memoryview(self._buffer)[: self._filled])
            else:
                if self._filled:
                    self._hand_off()
                self._pool.shutdown(wait=True)  # every block sent, or skipped after a failure
                self._raise_failure()
        finally:
            self.abort()
        return self.size

    def abort(self) -> None:
        self._stopped.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _hand_off(self) -> None:
        """Queue the filled buffer for sending and take a free one (waiting, if every buffer
        is in flight, until a sender returns one)."""
        self._raise_failure()
        offset = self.blocks * self.block_size
        self._pool.submit(self._send, self.blocks, offset, self._buffer, self._filled)
        self.blocks += 1
        if self._allocated <= self._workers:
            self._allocated += 1
            self._buffer = bytearray(self.block_size)
        else:
            self._buffer = self._free.get()
            self._raise_failure()
        self._filled = 0

    def _send(self, index: int, offset: int, buffer: bytearray, length: int) -> None:
        try:
            if not self._stopped.is_set():
                self._send_block(index, offset, memoryview(buffer)[:length])
        except BaseException as error:
            if self._error is None:
                self._error = error
            self._stopped.set()
        finally:
            self._free.put(buffer)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


# --- the v2 blob upload -------------------------------------------------------------------


class BlobUpload:
    """The archive to a signed blob URL: one Put Blob, or Put Blocks and a block list."""

    def __init__(self, url: str, options: TransferOptions = DEFAULT_TRANSFER) -> None:
        self.url = url
        self.options = options
        self._pipeline = BlockPipeline(
            options.block_size, options.upload_concurrency, self._stage_block, self._put_blob
        )
        self._client: BlobClient | None = None
        self._client_lock = threading.Lock()
        self._block_prefix = uuid.uuid4().hex[:16]
        self._started = time.monotonic()

    @property
    def size(self) -> int:
        return self._pipeline.size

    def write(self, data: Any) -> int:
        return self._pipeline.write(data)

    def finish(self) -> int:
        try:
            size = self._pipeline.finish()
            if self._pipeline.blocks:
                self._commit_blocks()
        finally:
            self.abort()
        seconds = time.monotonic() - self._started
        log.info("uploaded %d bytes to %s in %.1f s", size, redact(self.url), seconds)
        return size

    def abort(self) -> None:
        self._pipeline.abort()
        if self._client is not None:
            self._client.close()

    def _block_id(self, index: int) -> str:
        return f"{self._block_prefix}-{index:06d}"  # every id of a blob has the same length

    def _stage_block(self, index: int, _offset: int, data: memoryview) -> None:
        # a memoryview body works (tested against Azurite); the stub only names bytes
        self._sdk_call(
            f"Put Block {index}",
            lambda: self._sdk().stage_block(self._block_id(index), data, length=len(data)),  # type: ignore[arg-type]
        )

    def _commit_blocks(self) -> None:
        from azure.storage.blob import BlobBlock

        blocks = [BlobBlock(self._block_id(index)) for index in range(self._pipeline.blocks)]
        self._sdk_call("Put Block List", lambda: self._sdk().commit_block_list(blocks))

    def _sdk_call(self, what: str, call: Callable[[], T]) -> T:
        """One SDK request, tried by our policy (the SDK's own retries are off)."""
        from azure.core.exceptions import AzureError

        def attempt() -> T:
            try:
                return call()
            except AzureError as error:
                retry = azure_failure(error)
                if retry is None:
                    raise _sdk_failure(self.url, error) from None
                raise retry from None

        return retry_call(what, attempt, self.options.retry, exhausted=self._gave_up)

    def _gave_up(self, tries: int, problem: str) -> TransferError:
        return TransferError(
            f"upload to {redact(self.url)} failed after {tries} attempts: {problem}"
        )

    def _sdk(self) -> BlobClient:
        # Imported late: azure-core and the SDK take ~0.3 s to import; only big saves need them.
        with self._client_lock:
            if self._client is None:
                from azure.storage.blob import BlobClient

                self._client = BlobClient.from_blob_url(
                    self.url,
                    connection_timeout=self.options.timeout,
                    read_timeout=max(self.options.timeout, 120.0),  # a block on a slow link
                    **azure_retry_options(),
                )
            return self._client

    def _put_blob(self, data: memoryview) -> None:
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "x-ms-version": STORAGE_API_VERSION,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }

        def attempt() -> None:
            response = send(
                "PUT", self.url, headers=headers, body=data, timeout=self.options.timeout
            )
            if response.ok:
                return
            problem = f"{response.reason}: {error_text(response)}"
            check_status(response.status, problem, response.header("Retry-After"))
            raise TransferError(
                f"upload to {redact(self.url)} failed: HTTP {response.status} {problem}"
            )

        retry_call("Put Blob", attempt, self.options.retry, exhausted=self._gave_up)


def feed_file(path: Path, upload: ArchiveUpload) -> None:
    """Write a ready archive file into an upload (aborted if reading fails)."""
    try:
        with open(path, "rb", buffering=0) as source:
            while chunk := source.read(4 * 1024 * 1024):
                upload.write(chunk)
    except BaseException:
        upload.abort()
        raise


def _sdk_failure(url: str, error: Exception) -> TransferError:
    first_line = (redact_text(str(error)).splitlines() or [type(error).__name__])[0]
    return TransferError(f"upload to {redact(url)} failed: {first_line}")
