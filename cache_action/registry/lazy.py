"""The first GET of a blob a lazy restore left in its store (storage/remote.py).

One download per blob, however many clients ask for it at once: each of them is sent the
bytes as they arrive, read back from the file the download writes, and the blob becomes the
root's only once it matches its digest. A blob the store cannot deliver is a clean miss: a
404 when nothing was sent yet (the download failed before its first byte), a broken
connection otherwise (the client retries and then misses), and from then on the blob is
forgotten, so HEAD says it is missing and BuildKit pushes it again. Nothing waits forever: the
store's requests have bounded timeouts and retries (stores/retry.py), and a client whose
download stalls longer than STALL_SECONDS is cut off.

A Range request waits for the whole blob, then is answered from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError, StoreError
from cache_action.registry.stats import RunStats
from cache_action.storage.digests import Digest
from cache_action.storage.remote import BlobSource, RemoteBlob, receive, temp_for
from cache_action.storage.repository import BlobFile
from cache_action.storage.root import Storage

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
STALL_SECONDS = 120.0
FETCH_THREADS = 8
PREFETCH_AT_ONCE = 4


class _Stopping(StoreError):
    """The registry is shutting down: downloads in progress end."""


@dataclass
class _Fetch:
    digest: Digest
    blob: RemoteBlob
    tmp: Path
    written: int = 0
    done: bool = False
    failed: str | None = None
    waiters: set[asyncio.Event] = field(default_factory=set)

    def wake(self) -> None:
        for event in self.waiters:
            event.set()


class LazyFetches:
    def __init__(self, storage: Storage, source: BlobSource, stats: RunStats) -> None:
        self.storage = storage
        self.source = source
        self.stats = stats
        self._fetches: dict[str, _Fetch] = {}
        self._threads = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="lazy-fetch")
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()

    # --- one download per blob ---

    def _fetch(self, digest: Digest) -> _Fetch | None:
        """The download of `digest`, started if need be; None when it is no longer remote."""
        running = self._fetches.get(str(digest))
        if running is not None:
            return running
        blob = self.storage.remote.get(digest)
        if blob is None:
            return None
        fetch = _Fetch(digest, blob, temp_for(self.storage, digest))
        self._fetches[str(digest)] = fetch
        task = asyncio.get_running_loop().create_task(self._download(fetch))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return fetch

    async def _download(self, fetch: _Fetch) -> None:
        loop = asyncio.get_running_loop()

        def on_data(count: int) -> None:  # in the download's thread
            if self._stopping:
                raise _Stopping("the registry is stopping")
            loop.call_soon_threadsafe(self._advance, fetch, count)

        try:
            downloaded = await loop.run_in_executor(
                self._threads,
                receive,
                self.storage,
                fetch.digest,
                fetch.blob,
                self.source,
                fetch.tmp,
                on_data,
            )
            self.stats.blobs_fetched += 1
            self.stats.bytes_fetched += downloaded
        except (StoreError, OSError) as error:
            fetch.failed = str(error) or type(error).__name__
            if not isinstance(error, _Stopping):
                log.warning("could not fetch %s from %s: %s", fetch.digest, self.source, error)
                self.storage.remote.discard([str(fetch.digest)])  # from now on: missing
        finally:
            del self._fetches[str(fetch.digest)]
            fetch.done = True
            fetch.wake()
            fetch.tmp.unlink(missing_ok=True)  # readers keep their open descriptor

    def _advance(self, fetch: _Fetch, count: int) -> None:
        fetch.written = count
        fetch.wake()

    # --- answering a GET ---

    async def respond(
        self, request: web.Request, blob: BlobFile, headers: dict[str, str], ranged: bool
    ) -> web.StreamResponse:
        fetch = self._fetch(blob.digest)
        if fetch is None:  # it arrived (or failed) since the façade looked: ask the disk
            raise AskAgain()
        # Opened before any await: the download removes the name when it ends.
        with open(fetch.tmp, "rb") as data:  # noqa: ASYNC230 - a local open, not I/O to wait on
            event = asyncio.Event()
            fetch.waiters.add(event)
            try:
                if ranged:
                    await self._wait(fetch, event, lambda: fetch.done)
                    raise AskAgain()  # a Range is answered from the blob's file
                await self._wait(fetch, event, lambda: fetch.written > 0 or fetch.done)
                if fetch.failed is not None and fetch.written == 0:
                    raise OCIError(
                        ErrorCode.BLOB_UNKNOWN,
                        f"blob {blob.digest} could not be fetched from the cache's store",
                    )
                return await self._stream(request, fetch, event, data, headers)
            finally:
                fetch.waiters.discard(event)

    async def _stream(
        self,
        request: web.Request,
        fetch: _Fetch,
        event: asyncio.Event,
        data: BinaryIO,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_length = fetch.blob.size
        await response.prepare(request)
        descriptor = data.fileno()
        sent = 0
        while sent < fetch.blob.size:
            if _sendable(fetch) > sent:
                chunk = os.pread(descriptor, min(CHUNK, _sendable(fetch) - sent), sent)
                await response.write(chunk)
                sent += len(chunk)
                continue
            if fetch.failed is not None:
                raise ConnectionResetError(f"blob {fetch.digest}: {fetch.failed}")
            await self._wait(fetch, event, functools.partial(_beyond, fetch, sent))
        await response.write_eof()
        return response

    @staticmethod
    async def _wait(fetch: _Fetch, event: asyncio.Event, ready: Callable[[], bool]) -> None:
        """Until `ready()`, or raise when the download stalls (bounded, never a hang)."""
        while not ready():
            event.clear()
            if ready():
                return
            try:
                await asyncio.wait_for(event.wait(), STALL_SECONDS)
            except TimeoutError:
                raise ConnectionResetError(f"the download of {fetch.digest} stalled") from None

    # --- in the background ---

    def prefetch(self, digests: list[Digest]) -> None:
        """Fetch these while serving (what the previous run read, most likely read again)."""
        if digests:
            task = asyncio.get_running_loop().create_task(self._prefetch(digests))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _prefetch(self, digests: list[Digest]) -> None:
        limit = asyncio.Semaphore(PREFETCH_AT_ONCE)

        async def one(digest: Digest) -> None:
            async with limit:
                fetch = self._fetch(digest)
                if fetch is None:
                    return
                event = asyncio.Event()
                fetch.waiters.add(event)
                try:
                    with contextlib.suppress(ConnectionResetError):
                        await self._wait(fetch, event, lambda: fetch.done)
                finally:
                    fetch.waiters.discard(event)

        await asyncio.gather(*(one(d) for d in digests))
        log.info("prefetched %d blob(s) the last run read", len(digests))

    async def close(self) -> None:
        """Stop downloads in progress (they end at their next chunk) and wait for them."""
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown)


def _sendable(fetch: _Fetch) -> int:
    """How much a client may have: the last byte waits for the digest to check out, so a
    corrupt download never reaches a client whole."""
    if fetch.done and fetch.failed is None:
        return fetch.blob.size
    return min(fetch.written, fetch.blob.size - 1)


def _beyond(fetch: _Fetch, position: int) -> bool:
    return _sendable(fetch) > position or fetch.done


class AskAgain(Exception):
    """The blob is on disk now (or no longer anywhere): answer from what the disk says."""
