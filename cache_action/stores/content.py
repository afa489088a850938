"""A store over any object backend that keeps blobs content-addressed (local directory, S3).

    blobs/<alg>/<hex>                         every blob once, shared by all scopes and refs
    entries/<namespace>/<scope>/<ref>/<created-ms>-<unique>.json     one snapshot per save

Saves upload only blobs the backend lacks, in parallel, and write the snapshot last, so no
reader ever sees an entry whose blobs are missing. Each save is a new object: concurrent jobs
never overwrite each other; the newest entry of a (scope, ref) is the one restored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import unquote

from cache_action.scopes import EntryName
from cache_action.storage.digests import Digest
from cache_action.storage.remote import BlobSource, RemoteBlob
from cache_action.storage.root import Storage
from cache_action.storage.snapshot import BlobFetcher, Snapshot
from cache_action.stores.base import EntryInfo, Found, SaveResult, SnapshotStore, StoreError

log = logging.getLogger(__name__)
ENTRIES = "entries/"
KEEP_PER_REF = 2  # the newest two: a reader that listed just before a save still finds its entry
GRACE_SECONDS = 24 * 3600  # unreferenced blobs younger than this may belong to a save under way


class StoredObject(NamedTuple):
    key: str
    size: int
    modified: float  # seconds since the epoch


class ObjectBackend(Protocol):
    description: str

    def missing_blobs(self, digests: Sequence[str]) -> set[str]: ...
    def put_blob(self, digest: Digest, source: Path) -> None: ...
    def get_blob(self, digest: Digest, target: Path) -> None: ...
    def put_object(self, key: str, data: bytes) -> None: ...
    def get_object(self, key: str) -> bytes | None: ...
    def list_objects(self, prefix: str) -> list[StoredObject]: ...
    def delete_object(self, key: str) -> None: ...
    def stream_blob(self, digest: Digest, write: Callable[[bytes], object]) -> int: ...


def _blob_key(digest_text: str) -> str:
    digest = Digest.parse(digest_text)
    return f"blobs/{digest.algorithm}/{digest.hex}"


class _BackendBlobs:
    def __init__(self, backend: ObjectBackend) -> None:
        self.backend = backend
        self.description = backend.description

    def fetch(self, digest: Digest, blob: RemoteBlob, write: Callable[[bytes], object]) -> int:
        return self.backend.stream_blob(digest, write)


def _pool_path(storage: Storage, digest_text: str) -> Path:
    digest = Digest.parse(digest_text)
    found = storage.layout.find_blob(digest)
    if found is None:
        raise StoreError(f"blob {digest} vanished from the root during save")
    return found


def _entry_info(name: EntryName, key: str, size: int) -> EntryInfo:
    stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
    created = int(stamp) / 1000 if stamp.isdigit() else 0.0
    return EntryInfo(name, key, created, size)


class ContentAddressedStore(SnapshotStore):
    def __init__(self, backend: ObjectBackend, workers: int = 8) -> None:
        self.backend = backend
        self.workers = workers
        self.description = backend.description

    def entries_of(self, name: EntryName) -> list[EntryInfo]:
        """Entries of one (namespace, scope, ref), newest first."""
        listed = self.backend.list_objects(ENTRIES + name.prefix)
        entries = [_entry_info(name, o.key, o.size) for o in listed if o.key.endswith(".json")]
        return sorted(entries, key=lambda e: e.key, reverse=True)

    def _find(self, chain: Sequence[EntryName], workdir: Path, lazy: bool) -> Found | None:
        """Blobs are found by digest: a lazy restore needs no locator."""
        for name in chain:
            for entry in self.entries_of(name):
                data = self.backend.get_object(entry.key)
                if data is None:
                    continue  # deleted between list and get
                try:
                    snapshot = Snapshot.from_bytes(data)
                except StoreError as error:
                    log.warning("skipping %s: %s", entry.key, error)
                    continue
                return Found(entry, snapshot, self._fetcher(snapshot))
        return None

    def _fetcher(self, snapshot: Snapshot) -> BlobFetcher:
        def fetch(digest: Digest, target: Path) -> int:
            self.backend.get_blob(digest, target)
            return snapshot.blobs[str(digest)]

        return fetch

    def blob_source(self) -> BlobSource:
        """Remote blobs of a lazy restore, later: the backend finds them by digest."""
        return _BackendBlobs(self.backend)

    def _discard(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self.backend.delete_object(_blob_key(digest))

    def _put(
        self, storage: Storage, name: EntryName, snapshot: Snapshot, result: SaveResult
    ) -> None:
        """Blobs the backend lacks, in parallel, then the entry: no reader sees an entry
        whose blobs are missing."""
        missing = self.backend.missing_blobs(sorted(snapshot.blobs))
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            uploads = [
                pool.submit(self.backend.put_blob, Digest.parse(d), _pool_path(storage, d))
                for d in sorted(missing)
            ]
            for upload in uploads:
                upload.result()
        stamp = int(snapshot.created_at * 1000)
        key = f"{ENTRIES}{name.prefix}{stamp:013d}-{uuid.uuid4().hex[:12]}.json"
        self.backend.put_object(key, snapshot.to_bytes())
        result.saved = True
        result.key = key
        result.blobs_uploaded = len(missing)
        result.bytes_uploaded = sum(snapshot.blobs[d] for d in missing)
        self._delete_superseded(name, keep=key)
        self.collect_garbage()

    def collect_garbage(self, grace_seconds: float = GRACE_SECONDS) -> int:
        """Delete blobs no entry names, once older than `grace_seconds`: a concurrent save
        uploads its blobs before its entry, and must not lose them. Returns how many went."""
        referenced: set[str] = set()
        for stored in self.backend.list_objects(ENTRIES):
            data = self.backend.get_object(stored.key) if stored.key.endswith(".json") else None
            if data is None:
                continue
            try:
                referenced |= Snapshot.from_bytes(data).blobs.keys()
            except StoreError:
                continue  # an unreadable entry: it protects nothing
        cutoff = time.time() - grace_seconds
        removed = 0
        for stored in self.backend.list_objects("blobs/"):
            digest = stored.key.removeprefix("blobs/").replace("/", ":", 1)
            if digest not in referenced and stored.modified < cutoff:
                self.backend.delete_object(stored.key)
                removed += 1
        if removed:
            log.info("deleted %d blobs no entry uses from %s", removed, self.description)
        return removed

    def _delete_superseded(self, name: EntryName, keep: str) -> None:
        entries = self.entries_of(name)
        for entry in entries[KEEP_PER_REF:]:
            if entry.key != keep:
                self.backend.delete_object(entry.key)

    def list_entries(self, namespace: str) -> list[EntryInfo]:
        entries = []
        for stored in self.backend.list_objects(f"{ENTRIES}{namespace}/"):
            parts = stored.key[len(ENTRIES) :].split("/")
            if len(parts) == 4 and parts[3].endswith(".json"):
                name = EntryName(parts[0], parts[1], unquote(parts[2]))
                entries.append(_entry_info(name, stored.key, stored.size))
        return sorted(entries, key=lambda e: e.key)

    def delete(self, entry: EntryInfo) -> None:
        self.backend.delete_object(entry.key)
