"""Reading an archive from the signed blob URL the cache service hands out (reference B7).

`open_blob` returns a `BlobReader`: a file-like object that yields the blob front to back while
ranged GETs fetch the next parts in parallel. The caller (the extractor) consumes it as it
arrives, so download and extraction overlap and the archive never touches the disk: writing a
1 GiB archive and then 1 GiB of extracted blobs made the kernel throttle the second write
(extraction took 4.5 s instead of 2 s here). Memory stays bounded by the parts in flight
(`TransferOptions.download_window` parts of at most `max_part` bytes), whatever the blob size.

Each part has its own socket timeout and retries (`cache_action.stores.retry`), and a short
response is resumed from where it stopped. A part that cannot be completed raises TransferError
from `read`; nothing partial is ever handed on as complete. Plain GETs with `Range` work the
same against Azure, Azurite and any HTTP server, so no SDK is needed on this side.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cache_action.stores.gha.errors import TransferError
from cache_action.stores.gha.redact import redact, redact_text
from cache_action.stores.gha.transfer import (
    DEFAULT_TRANSFER,
    MiB,
    TransferOptions,
    error_text,
    read_headers,
)
from cache_action.stores.gha.transport import send, stream
from cache_action.stores.retry import Retry, check_status, retry_call

log = logging.getLogger("cache_action.stores.gha")

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def open_blob(url: str, options: TransferOptions = DEFAULT_TRANSFER) -> BlobReader:
    """The blob at `url` as a stream; its size is read first (HEAD)."""
    return BlobReader(url, remote_size(url, options), options)


def download_file(url: str, dest: Path, options: TransferOptions = DEFAULT_TRANSFER) -> int:
    """Download the blob at `url` into `dest` (created or replaced only when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with open_blob(url, options) as blob, open(temp, "xb") as out:
            while chunk := blob.read(MiB):
                out.write(chunk)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return blob.size


class BlobReader(io.RawIOBase):
    """The blob's bytes in order; up to `download_window` parts are fetched ahead. Each part's
    buffer is allocated here, in the reading thread: allocated in the workers, glibc's
    per-thread arenas kept ~50 MiB more resident for a 64 MiB window. (Reusing a fixed set of
    buffers measured slower still: extraction of 1 GiB took 4 s instead of 2-2.6 s.)"""

    def __init__(self, url: str, size: int, options: TransferOptions) -> None:
        self.url = url
        self.size = size
        self._options = options
        part = options.part_size(size)
        self._ranges = deque((start, min(start + part, size)) for start in range(0, size, part))
        self._stop = threading.Event()
        workers = max(1, min(options.download_concurrency, len(self._ranges)))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gha-download")
        self._pending: deque[Future[memoryview]] = deque()
        self._current = memoryview(b"")
        self._delivered = 0
        self._started = time.monotonic()
        for _ in range(options.download_window):
            self._submit_next()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._current:
            if not self._pending:
                return 0
            self._current = self._take_next()
        count = min(len(buffer), len(self._current))
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        self._delivered += count
        if self._delivered == self.size:
            log.info(
                "downloaded %d bytes from %s in %.1f s",
                self.size,
                redact(self.url),
                time.monotonic() - self._started,
            )
        return count

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pending.clear()
        super().close()

    def _take_next(self) -> memoryview:
        future = self._pending.popleft()
        self._submit_next()
        try:
            return future.result()
        except BaseException:
            self.close()
            raise

    def _submit_next(self) -> None:
        if self._ranges:
            start, end = self._ranges.popleft()
            self._pending.append(
                self._pool.submit(
                    _fetch_part,
                    self.url,
                    memoryview(bytearray(end - start)),
                    start,
                    self.size,
                    self._options,
                    self._stop.is_set,
                )
            )


# --- the size -----------------------------------------------------------------------------


def remote_size(url: str, options: TransferOptions = DEFAULT_TRANSFER) -> int:
    """Content-Length from HEAD; a server that refuses HEAD is asked for a one-byte range."""

    def gave_up(_tries: int, problem: str) -> TransferError:
        return TransferError(f"cannot read the size of {redact(url)}: {problem}")

    return retry_call(
        f"size of {redact(url)}",
        lambda: _probe_size(url, options),
        options.retry,
        exhausted=gave_up,
    )


def _probe_size(url: str, options: TransferOptions) -> int:
    head = send("HEAD", url, headers=read_headers(), timeout=options.timeout)
    length = head.header("Content-Length")
    if head.ok and length is not None and length.isdigit():
        return int(length)
    check_status(head.status, f"{head.reason} (HEAD)", head.header("Retry-After"))
    probe = send(
        "GET", url, headers={**read_headers(), "Range": "bytes=0-0"}, timeout=options.timeout
    )
    match = _CONTENT_RANGE.fullmatch(probe.header("Content-Range") or "")
    if probe.status == 206 and match and match.group(3) != "*":
        return int(match.group(3))
    if probe.status == 416:  # an empty blob has no byte 0
        return 0
    length = probe.header("Content-Length")
    if probe.status == 200 and length is not None and length.isdigit():
        return int(length)
    check_status(probe.status, f"{probe.reason}: {error_text(probe)}", probe.header("Retry-After"))
    raise TransferError(
        f"cannot read the size of {redact(url)}: HTTP {probe.status} {probe.reason}: "
        f"{error_text(probe)}"
    )


# --- one part -----------------------------------------------------------------------------


def _fetch_part(
    url: str,
    view: memoryview,
    start: int,
    size: int,
    options: TransferOptions,
    stopped: Callable[[], bool],
) -> memoryview:
    """The blob's bytes from `start` into all of `view`; resumes where a short response
    stopped."""
    end = start + len(view)
    position = start

    def attempt() -> memoryview:
        nonlocal position
        if stopped():
            raise TransferError("download cancelled")
        try:
            position = _read_range(url, view, start, position, end, size, options)
        except _RangeRefused as error:
            raise TransferError(f"download of {redact(url)} failed: {error}") from None
        except _ShortRead as error:
            position = error.position
            raise Retry(f"{error} (stopped at byte {position})") from None
        return view

    def gave_up(tries: int, problem: str) -> TransferError:
        return TransferError(
            f"download of {redact(url)} failed: bytes {start}-{end - 1} incomplete after "
            f"{tries} attempts ({problem})"
        )

    what = f"download range {start}-{end - 1}"
    return retry_call(what, attempt, options.retry, exhausted=gave_up)


class _ShortRead(Exception):
    """The response stopped early; `position` is how far the data got."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class _RangeRefused(Exception):
    pass


def _read_range(
    url: str,
    view: memoryview,
    base: int,
    position: int,
    end: int,
    size: int,
    options: TransferOptions,
) -> int:
    """One ranged GET for [position, end) into `view` (which starts at byte `base`);
    returns the position reached."""
    headers = {**read_headers(), "Range": f"bytes={position}-{end - 1}"}
    with stream("GET", url, headers=headers, timeout=options.timeout) as response:
        check_status(response.status, response.reason, response.headers.get("Retry-After"))
        _check_range_answer(
            response.status, response.headers.get("Content-Range", ""), position, end, size
        )
        while position < end:
            window = view[position - base : min(end, position + MiB) - base]
            try:
                count = response.body.readinto(window)  # type: ignore[attr-defined]
            except (OSError, http.client.HTTPException) as error:
                problem = redact_text(str(error)) or type(error).__name__
                raise _ShortRead(f"read failed at byte {position}: {problem}", position) from None
            if not count:
                raise _ShortRead(f"response ended at byte {position}, expected {end}", position)
            position += count
    return position


def _check_range_answer(
    status: int, content_range: str, position: int, end: int, size: int
) -> None:
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(content_range)
        if not match or int(match.group(1)) != position:
            raise _RangeRefused(f"answered range {content_range!r} for bytes={position}-{end - 1}")
        if match.group(3) != "*" and int(match.group(3)) != size:
            raise _RangeRefused(
                f"the blob changed size during the download ({match.group(3)} != {size})"
            )
    elif not (status == 200 and position == 0 and end == size):
        raise _RangeRefused(f"HTTP {status} for bytes {position}-{end - 1}")


# --- a range, as it arrives ---------------------------------------------------------------


def read_range(
    url: str,
    start: int,
    end: int,
    sink: Callable[[bytes], object],
    options: TransferOptions = DEFAULT_TRANSFER,
) -> None:
    """Bytes [start, end) of the blob at `url` to `sink`, in order, as they arrive (a lazy
    restore's one blob); each GET retried, and resumed from where a short one stopped. A 403
    (an expired signature) raises TransferError at once: the caller asks for a new URL."""
    position = start

    def attempt() -> None:
        nonlocal position
        headers = {**read_headers(), "Range": f"bytes={position}-{end - 1}"}
        with stream("GET", url, headers=headers, timeout=options.timeout) as response:
            check_status(response.status, response.reason, response.headers.get("Retry-After"))
            answered = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if response.status != 206 or not answered or int(answered.group(1)) != position:
                raise TransferError(
                    f"download of {redact(url)} failed: HTTP {response.status} for bytes "
                    f"{position}-{end - 1}"
                )
            while position < end:
                try:
                    chunk = response.body.read(min(MiB, end - position))
                except (OSError, http.client.HTTPException) as error:
                    problem = redact_text(str(error)) or type(error).__name__
                    raise Retry(f"read failed at byte {position}: {problem}") from None
                if not chunk:
                    raise Retry(f"response ended at byte {position}, expected {end}")
                sink(chunk)
                position += len(chunk)

    def gave_up(tries: int, problem: str) -> TransferError:
        return TransferError(
            f"download of {redact(url)} failed: bytes {start}-{end - 1} incomplete after "
            f"{tries} attempts ({problem})"
        )

    retry_call(f"download range {start}-{end - 1}", attempt, options.retry, exhausted=gave_up)
