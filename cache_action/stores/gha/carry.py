"""The blobs a lazy restore left in the Actions cache, read back into the next archive.

An entry is one archive of the whole root, so a save after a lazy restore must hold the blobs
nobody read. They are read by range from the entries they stayed in while the archive is
written: `workers` at a time, in the order the archive reaches them, the archiver waiting only
for the one it is at, so reading overlaps uploading. A blob the pool already has (a record a
process kept from before the registry fetched it) is linked, not read again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cache_action.errors import StoreError
from cache_action.storage.digests import Digest
from cache_action.storage.remote import BlobSource, RemoteBlob, receive, temp_for
from cache_action.storage.root import Storage

log = logging.getLogger(__name__)


class CarryFailed(StoreError):
    """A blob could not be read back: the archive being written would lack it."""


class CarriedBlobs:
    """The archive's `PendingFiles` (archive.py): the paths of the blobs still remote (the
    pool's and each repository's), as the archive's walk names them."""

    def __init__(self, storage: Storage, source: BlobSource, workers: int) -> None:
        self.storage = storage
        self.source = source
        layout = storage.layout
        walked = layout.root.parent.resolve() / layout.root.name  # as write_archive walks it
        self._digest_of: dict[str, str] = {}
        self._names: dict[str, set[str]] = {}
        first_needed: dict[str, tuple[str, ...]] = {}
        listed = list(storage.remote.blobs.items())
        remote = [item for item in listed if not _arrived(storage, *item)]
        for digest_text, blob in remote:
            digest = Digest.parse(digest_text)
            paths = [layout.pool_blob(digest)]
            paths += [layout.repo_blob(name, digest) for name in sorted(blob.repositories)]
            relative = [path.relative_to(layout.root) for path in paths]
            for rel in relative:
                path = walked / rel
                self._digest_of[str(path)] = digest_text
                self._names.setdefault(str(path.parent), set()).add(path.name)
            first_needed[digest_text] = min(rel.parts for rel in relative)
        self.bytes_read = 0
        self._count = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="carry")
        self._futures: dict[str, Future[int]] = {}
        for digest_text, blob in sorted(remote, key=lambda item: first_needed[item[0]]):
            self._futures[digest_text] = self._pool.submit(self._bring, digest_text, blob)

    def __len__(self) -> int:
        return len(self._futures)

    def names_in(self, directory: str) -> Iterable[str]:
        return self._names.get(directory, ())

    def wait_for(self, path: str) -> None:
        digest_text = self._digest_of.get(path)
        if digest_text is None:
            return
        try:
            self._futures[digest_text].result()
        except (StoreError, OSError) as error:
            raise CarryFailed(f"blob {digest_text} could not be read back: {error}") from error

    def drain(self) -> list[str]:
        """Wait for every blob; the digests of those that could not be read."""
        lost = []
        for digest_text, future in self._futures.items():
            try:
                future.result()
            except (StoreError, OSError) as error:
                log.info("blob %s could not be read back: %s", digest_text, error)
                lost.append(digest_text)
        return lost

    def close(self) -> None:
        """Stop reading (after a failure, what was not started stays remote)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _bring(self, digest_text: str, blob: RemoteBlob) -> int:
        digest = Digest.parse(digest_text)
        tmp = temp_for(self.storage, digest)
        try:
            read = receive(self.storage, digest, blob, self.source, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        with self._count:
            self.bytes_read += read
        return read


def _arrived(storage: Storage, digest_text: str, blob: RemoteBlob) -> bool:
    """Whether the pool has the blob already, complete (pool files are whole by construction:
    committed by rename after their digest checked); if so it is linked and no longer remote."""
    digest = Digest.parse(digest_text)
    pool: Path = storage.layout.pool_blob(digest)
    try:
        if os.stat(pool).st_size != blob.size:
            return False
    except FileNotFoundError:
        return False
    storage.blobs.commit_fetched(digest, pool, blob.repositories)
    storage.remote.discard([digest_text])
    return True
