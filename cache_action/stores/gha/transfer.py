"""Moving an archive to and from the signed blob URL the cache service hands out.

Upload, as @actions/cache 6.x does it (reference B6):
- size ≤ 128 MiB: one Put Blob (`PUT`, `x-ms-blob-type: BlockBlob`). We send it ourselves,
  streaming the file: azure-storage-blob's single put reads the whole file into memory first.
- larger: azure-storage-blob's `upload_blob` — 64 MiB Put Blocks, 8 in parallel, then
  Put Block List. Measured: from a seekable file it reads through 4 MiB sub-streams, so a
  300 MiB upload peaks at ~24 MiB of Python allocations, not the file size.

Download (B7): HEAD for the size, then ranged GETs in parallel, each with a socket timeout and
its own retries, written at their offsets into a preallocated temporary file next to the
destination. The file is renamed into place only when every byte arrived; anything less
raises TransferError and leaves nothing at the destination. Plain GETs with `Range` work the
same against Azure, Azurite and any HTTP server, so no SDK is needed on this side.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from cache_action.stores.gha.errors import TransferError
from cache_action.stores.gha.redact import redact, redact_text, url_secrets
from cache_action.stores.gha.transport import RETRYABLE_STATUSES, Response, send, stream

__all__ = [
    "DEFAULT_TRANSFER",
    "TransferOptions",
    "download_file",
    "redact",
    "upload_file",
    "url_secrets",
]

log = logging.getLogger("cache_action.stores.gha")

MiB = 1024 * 1024
# The storage REST version we ask for. SAS URLs from the service carry their own `sv`; Azure
# serves any current version, and @actions/cache's SDK sends an even newer one.
STORAGE_API_VERSION = "2025-01-05"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class TransferOptions:
    single_put_max: int = 128 * MiB
    block_size: int = 64 * MiB
    upload_concurrency: int = 8
    download_concurrency: int = 8
    min_part: int = 4 * MiB  # ranged GETs are 4-32 MiB: ~4 per worker, never tiny or huge
    max_part: int = 32 * MiB
    timeout: float = 30.0  # socket timeout per request (connect, and each read)
    attempts: int = 5  # per request (a range, the HEAD, the single put)
    base_delay: float = 1.0

    def part_size(self, size: int) -> int:
        wanted = -(-size // (self.download_concurrency * 4))
        return max(self.min_part, min(self.max_part, wanted))

    def delay(self, attempt: int) -> float:
        return self.base_delay * 1.5**attempt


DEFAULT_TRANSFER = TransferOptions()


# --- upload -------------------------------------------------------------------------------


def upload_file(url: str, path: Path, options: TransferOptions = DEFAULT_TRANSFER) -> int:
    """Upload `path` to the signed blob `url`; returns the size sent."""
    size = path.stat().st_size
    started = time.monotonic()
    if size <= options.single_put_max:
        _put_blob(url, path, size, options)
    else:
        _put_blocks(url, path, size, options)
    log.info("uploaded %d bytes to %s in %.1f s", size, redact(url), time.monotonic() - started)
    return size


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
        problem = f"HTTP {response.status} {response.reason}: {_error_text(response)}"
        if not _retryable(response.status):
            break
    raise TransferError(f"upload to {redact(url)} failed: {problem}")


def _put_blocks(url: str, path: Path, size: int, options: TransferOptions) -> None:
    # Imported here: azure-core and the SDK take ~0.3 s to import, and only big saves need it.
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobClient, BlobType

    client = BlobClient.from_blob_url(
        url,
        max_single_put_size=options.single_put_max,
        max_block_size=options.block_size,
        connection_timeout=options.timeout,
        read_timeout=max(options.timeout, 120.0),  # one 64 MiB block on a slow link
        retry_total=options.attempts - 1,
    )
    try:
        with open(path, "rb") as source:
            client.upload_blob(
                source,
                length=size,
                blob_type=BlobType.BLOCKBLOB,
                overwrite=True,
                max_concurrency=options.upload_concurrency,
            )
    except AzureError as error:
        first_line = (redact_text(str(error)).splitlines() or [type(error).__name__])[0]
        raise TransferError(f"upload to {redact(url)} failed: {first_line}") from None
    finally:
        client.close()


def _error_text(response: Response) -> str:
    text = response.body[:300].decode("utf-8", "replace").strip()
    return redact_text(text) or "(no body)"


# --- download -----------------------------------------------------------------------------


def download_file(url: str, dest: Path, options: TransferOptions = DEFAULT_TRANSFER) -> int:
    """Download the blob at `url` into `dest` (created or replaced only when complete)."""
    started = time.monotonic()
    size = _remote_size(url, options)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            if size:
                _preallocate(fd, size)
            _fetch_ranges(url, fd, size, options)
            written = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if written != size:
            raise TransferError(f"download of {redact(url)} is {written} bytes, expected {size}")
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - started
    log.info("downloaded %d bytes from %s in %.1f s", size, redact(url), seconds)
    return size


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # filesystems without fallocate (tmpfs on old kernels, some FUSE)
        os.ftruncate(fd, size)


def _remote_size(url: str, options: TransferOptions) -> int:
    """Content-Length from HEAD; a server that refuses HEAD is asked for a one-byte range."""
    problem = ""
    for attempt in range(options.attempts):
        if attempt:
            time.sleep(options.delay(attempt - 1))
        try:
            size, problem, retryable = _probe_size(url, options)
        except (OSError, http.client.HTTPException) as error:
            size, problem, retryable = None, f"connection error: {redact_text(str(error))}", True
        if size is not None:
            return size
        if not retryable:
            break
    raise TransferError(f"cannot read the size of {redact(url)}: {problem}")


def _probe_size(url: str, options: TransferOptions) -> tuple[int | None, str, bool]:
    """(size, problem, retryable)."""
    head = send("HEAD", url, headers=_read_headers(), timeout=options.timeout)
    length = head.header("Content-Length")
    if head.ok and length is not None and length.isdigit():
        return int(length), "", False
    if _retryable(head.status):
        return None, f"HEAD: HTTP {head.status} {head.reason}", True
    probe = send(
        "GET", url, headers={**_read_headers(), "Range": "bytes=0-0"}, timeout=options.timeout
    )
    match = _CONTENT_RANGE.fullmatch(probe.header("Content-Range") or "")
    if probe.status == 206 and match and match.group(3) != "*":
        return int(match.group(3)), "", False
    if probe.status == 416:  # an empty blob has no byte 0
        return 0, "", False
    length = probe.header("Content-Length")
    if probe.status == 200 and length is not None and length.isdigit():
        return int(length), "", False
    problem = f"HTTP {probe.status} {probe.reason}: {_error_text(probe)}"
    return None, problem, _retryable(probe.status)


def _retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status in (408, 429)


def _read_headers() -> dict[str, str]:
    return {"x-ms-version": STORAGE_API_VERSION}


def _fetch_ranges(url: str, fd: int, size: int, options: TransferOptions) -> None:
    if size == 0:
        return
    part = options.part_size(size)
    ranges = [(start, min(start + part, size)) for start in range(0, size, part)]
    stop = threading.Event()
    workers = min(options.download_concurrency, len(ranges))
    with ThreadPoolExecutor(workers, thread_name_prefix="gha-download") as pool:
        futures = [
            pool.submit(_fetch_range, url, fd, start, end, size, options, stop.is_set)
            for start, end in ranges
        ]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in done if future.exception() is not None]
        if failed:
            stop.set()
            for future in futures:
                future.cancel()
            error = failed[0].exception()
            assert error is not None
            raise error


def _fetch_range(
    url: str,
    fd: int,
    start: int,
    end: int,
    size: int,
    options: TransferOptions,
    stopped: Callable[[], bool],
) -> None:
    """Bytes [start, end) into `fd` at their offset; resumes where a short response stopped."""
    position = start
    problem = ""
    for attempt in range(options.attempts):
        if stopped():
            return
        if attempt:
            time.sleep(options.delay(attempt - 1))
        try:
            position = _read_range(url, fd, position, end, size, options, stopped)
        except _RangeRefused as error:
            raise TransferError(f"download of {redact(url)} failed: {error}") from None
        except _ShortRead as error:
            position, problem = error.position, str(error)
        except (OSError, http.client.HTTPException) as error:
            problem = redact_text(str(error)) or type(error).__name__
        if position >= end or stopped():
            return
        log.info(
            "download range %d-%d: attempt %d of %d stopped at byte %d (%s)",
            start,
            end - 1,
            attempt + 1,
            options.attempts,
            position,
            problem,
        )
    raise TransferError(
        f"download of {redact(url)} failed: bytes {start}-{end - 1} incomplete after "
        f"{options.attempts} attempts ({problem})"
    )


class _ShortRead(Exception):
    """The response stopped early; `position` is how far the data got."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class _RangeRefused(Exception):
    pass


def _read_range(
    url: str,
    fd: int,
    position: int,
    end: int,
    size: int,
    options: TransferOptions,
    stopped: Callable[[], bool],
) -> int:
    """One ranged GET for [position, end); returns the position reached."""
    headers = {**_read_headers(), "Range": f"bytes={position}-{end - 1}"}
    with stream("GET", url, headers=headers, timeout=options.timeout) as response:
        if _retryable(response.status):
            raise _ShortRead(f"HTTP {response.status} {response.reason}", position)
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != position:
                raise _RangeRefused(
                    f"answered range {response.headers.get('Content-Range')!r} for "
                    f"bytes={position}-{end - 1}"
                )
            if match.group(3) != "*" and int(match.group(3)) != size:
                raise _RangeRefused(
                    f"the blob changed size during the download ({match.group(3)} != {size})"
                )
        elif not (response.status == 200 and position == 0 and end == size):
            raise _RangeRefused(
                f"HTTP {response.status} {response.reason} for bytes {position}-{end - 1}"
            )
        while position < end:
            if stopped():
                return position
            try:
                chunk = response.body.read(min(MiB, end - position))
            except (OSError, http.client.HTTPException) as error:
                if isinstance(error, http.client.IncompleteRead) and error.partial:
                    position += _write_at(fd, error.partial, position)
                problem = redact_text(str(error)) or type(error).__name__
                raise _ShortRead(f"read failed at byte {position}: {problem}", position) from None
            if not chunk:
                raise _ShortRead(f"response ended at byte {position}, expected {end}", position)
            position += _write_at(fd, chunk, position)
    return position


def _write_at(fd: int, data: bytes, position: int) -> int:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written
    return len(data)
