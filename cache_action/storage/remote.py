"""Blobs a lazily restored root names but that stay in their store until a client reads one.

A lazy restore brings only an entry's metadata (indexes, manifests, configs); every other blob
is recorded here with its size, the repositories that hold it, and a locator: what the store's
fetcher needs to find it (the Actions cache: which entry and which bytes of its archive; S3
and local stores find blobs by digest and need nothing). Storage answers HEAD and size
questions from this record as if the blobs were on disk; the registry fetches one on its first
GET (registry/lazy.py) and it becomes an ordinary file. Kept in `.cache-action/remote.json`,
written atomically, so the post stage sees what was never read.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cache_action.errors import OCIError
from cache_action.storage.digests import CorruptBlobError, Digest
from cache_action.storage.files import temp_name, write_atomic
from cache_action.storage.layout import Layout

if TYPE_CHECKING:
    from cache_action.storage.root import Storage

Locator = Mapping[str, Any]


@dataclass(frozen=True)
class RemoteBlob:
    size: int
    repositories: frozenset[str]
    locator: Locator = field(default_factory=dict)
    prefetch: bool = False  # the run that saved the entry read it: likely read again

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "repositories": sorted(self.repositories),
            "locator": dict(self.locator),
            "prefetch": self.prefetch,
        }


class RemoteBlobs:
    def __init__(self, layout: Layout, blobs: dict[str, RemoteBlob] | None = None) -> None:
        self.layout = layout
        self.blobs: dict[str, RemoteBlob] = blobs or {}
        self.dirty = False
        self._lock = threading.Lock()  # the registry's fetch threads and its loop share it

    @classmethod
    def load(cls, layout: Layout) -> RemoteBlobs:
        try:
            document = json.loads(layout.remote_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return cls(layout)
        blobs: dict[str, RemoteBlob] = {}
        for digest, item in (document.get("blobs") or {}).items():
            try:
                blobs[str(Digest.parse(digest))] = RemoteBlob(
                    int(item["size"]),
                    frozenset(str(name) for name in item["repositories"]),
                    dict(item.get("locator") or {}),
                    bool(item.get("prefetch")),
                )
            except (KeyError, TypeError, ValueError, AttributeError, OCIError):
                continue  # an unreadable record names nothing: the blob is simply missing
        return cls(layout, blobs)

    def __bool__(self) -> bool:
        return bool(self.blobs)

    def get(self, digest: Digest) -> RemoteBlob | None:
        return self.blobs.get(str(digest))

    def size(self, name: str, digest: Digest) -> int | None:
        """The size a HEAD reports for a blob `name` holds remotely, or None."""
        blob = self.blobs.get(str(digest))
        return blob.size if blob is not None and name in blob.repositories else None

    def held_by(self, name: str) -> dict[str, int]:
        """Digest → size of the remote blobs of one repository."""
        return {d: b.size for d, b in self.blobs.items() if name in b.repositories}

    def add(self, digest: str, blob: RemoteBlob) -> None:
        with self._lock:
            known = self.blobs.get(digest)
            if known is not None:  # two entries name it: either locator will do
                blob = RemoteBlob(
                    blob.size,
                    known.repositories | blob.repositories,
                    blob.locator,
                    known.prefetch or blob.prefetch,
                )
            self.blobs[digest] = blob
            self.dirty = True

    def discard(self, digests: Iterable[str]) -> None:
        """Blobs that arrived (now files) or that prune and gc dropped."""
        with self._lock:
            for digest in digests:
                if self.blobs.pop(digest, None) is not None:
                    self.dirty = True

    def retain(self, reachable: set[Digest]) -> list[str]:
        """Forget the remote blobs no tag reaches any more; returns them."""
        keep = {str(d) for d in reachable}
        gone = [d for d in self.blobs if d not in keep]
        self.discard(gone)
        return gone

    def without_prefetch(self) -> None:
        with self._lock:
            self.blobs = {d: replace(b, prefetch=False) for d, b in self.blobs.items()}
            self.dirty = True
        self.flush()

    def to_prefetch(self) -> list[Digest]:
        return [Digest.parse(d) for d, blob in sorted(self.blobs.items()) if blob.prefetch]

    def flush(self) -> None:
        """Written when it changed (the registry's housekeeping, the end of a restore)."""
        with self._lock:
            if not self.dirty:
                return
            document = {"blobs": {d: b.to_json() for d, b in sorted(self.blobs.items())}}
            self.dirty = False
        write_atomic(self.layout.remote_path, json.dumps(document).encode())


class BlobSource(Protocol):
    """Where remote blobs come from: the store they stayed in."""

    description: str

    def fetch(self, digest: Digest, blob: RemoteBlob, write: Callable[[bytes], object]) -> int:
        """Hand exactly the blob's bytes to `write`, in order; return the bytes downloaded.
        StoreError (or OSError) when the store cannot."""
        ...


def temp_for(storage: Storage, digest: Digest) -> Path:
    """An empty temporary file beside the blob's pool name, for `receive` to write."""
    tmp = temp_name(storage.layout.pool_blob(digest))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.touch(exist_ok=False)
    return tmp


def receive(
    storage: Storage,
    digest: Digest,
    blob: RemoteBlob,
    source: BlobSource,
    tmp: Path,
    on_data: Callable[[int], None] | None = None,
) -> int:
    """Bring one remote blob into the root: written to `tmp` (`temp_for`'s, and the caller may
    read while it grows: `on_data` says how much is there), checked against its digest and
    size, then linked into the pool and every repository that holds it, and no longer
    remote. Nothing is visible under the blob's name before it checks out. Returns the bytes
    downloaded."""
    hasher = digest.hasher()
    written = 0
    with open(tmp, "r+b") as out:

        def write(data: bytes) -> None:
            nonlocal written
            if written + len(data) > blob.size:
                raise CorruptBlobError(f"blob {digest} is longer than its {blob.size} bytes")
            out.write(data)
            out.flush()
            hasher.update(data)
            written += len(data)
            if on_data is not None:
                on_data(written)

        downloaded = source.fetch(digest, blob, write)
    if written != blob.size or hasher.hexdigest() != digest.hex:
        raise CorruptBlobError(f"blob {digest} arrived corrupt ({written} bytes); dropped")
    storage.blobs.commit_fetched(digest, tmp, blob.repositories)
    storage.remote.discard([str(digest)])
    return downloaded
