"""The one interface every store offers the action, the standalone service and the CLI, and
the restore and save outlines the snapshot-based stores share."""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cache_action.errors import StoreError
from cache_action.scopes import EntryName
from cache_action.storage.layout import Layout
from cache_action.storage.lock import root_lock
from cache_action.storage.remote import Locator
from cache_action.storage.root import Storage
from cache_action.storage.snapshot import (
    BlobFetcher,
    Snapshot,
    Source,
    apply_snapshots,
    record_restored,
    restored_fingerprint,
    take_snapshot,
)

__all__ = [
    "EntryInfo",
    "Found",
    "HitKind",
    "RestoreResult",
    "SaveResult",
    "SnapshotStore",
    "Store",
    "StoreError",
]


class HitKind(StrEnum):
    EXACT = "exact"  # the job's own scope and ref
    PARTIAL = "partial"  # a fallback ref, or only some scopes
    NONE = "none"


@dataclass(frozen=True)
class EntryInfo:
    """One saved entry as the store knows it."""

    name: EntryName
    key: str
    created_at: float
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "namespace": self.name.namespace,
            "scope": self.name.scope,
            "ref": self.name.ref,
            "created_at": self.created_at,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> EntryInfo:
        name = EntryName(str(document["namespace"]), str(document["scope"]), str(document["ref"]))
        return cls(name, str(document["key"]), float(document["created_at"]), int(document["size"]))


@dataclass
class RestoreResult:
    hit: HitKind = HitKind.NONE
    restored: list[EntryInfo] = field(default_factory=list)
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    tags_dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    blobs_left: int = 0  # a lazy restore's: still in the store, fetched when first read
    bytes_left: int = 0

    @property
    def restored_key(self) -> str:
        return self.restored[0].key if self.restored else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "hit": self.hit.value,
            "restored": [entry.to_json() for entry in self.restored],
            "blobs_downloaded": self.blobs_downloaded,
            "bytes_downloaded": self.bytes_downloaded,
            "tags_dropped": self.tags_dropped,
            "seconds": round(self.seconds, 3),
            "blobs_left": self.blobs_left,
            "bytes_left": self.bytes_left,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RestoreResult:
        """What `to_json` wrote (the CLI's output, read back from a sibling container)."""
        return cls(
            hit=HitKind(document["hit"]),
            restored=[EntryInfo.from_json(entry) for entry in document["restored"]],
            blobs_downloaded=int(document["blobs_downloaded"]),
            bytes_downloaded=int(document["bytes_downloaded"]),
            tags_dropped=[str(tag) for tag in document["tags_dropped"]],
            seconds=float(document["seconds"]),
            blobs_left=int(document.get("blobs_left", 0)),
            bytes_left=int(document.get("bytes_left", 0)),
        )


@dataclass
class SaveResult:
    saved: bool = False
    key: str = ""
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    skipped_reason: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # for the user (e.g. quota nearly used)

    def to_json(self) -> dict[str, Any]:
        return {
            "saved": self.saved,
            "key": self.key,
            "blobs_uploaded": self.blobs_uploaded,
            "bytes_uploaded": self.bytes_uploaded,
            "skipped_reason": self.skipped_reason,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SaveResult:
        reason = document["skipped_reason"]
        return cls(
            saved=bool(document["saved"]),
            key=str(document["key"]),
            blobs_uploaded=int(document["blobs_uploaded"]),
            bytes_uploaded=int(document["bytes_uploaded"]),
            skipped_reason=None if reason is None else str(reason),
            seconds=float(document["seconds"]),
            warnings=[str(text) for text in document["warnings"]],
        )


class Store(Protocol):
    """Moves a registry root to and from somewhere that outlives the job. Both take the
    root's lock (storage.lock.root_lock) for as long as they touch it."""

    description: str  # for logs: no secrets

    def restore(
        self, storage: Storage, chains: Sequence[Sequence[EntryName]], lazy: bool = False
    ) -> RestoreResult:
        """Per chain (one per scope), restore the first entry found; merge them into the root.
        `lazy`: only the metadata; the other blobs stay in the store until a client reads one
        (storage/remote.py)."""
        ...

    def save(self, storage: Storage, name: EntryName, force: bool = False) -> SaveResult:
        """Save the root as a new entry of `name`; skip when unchanged since the restore,
        unless `force`."""
        ...


@dataclass(frozen=True)
class Found:
    """The entry a store found for one chain, ready to merge into the root."""

    entry: EntryInfo
    snapshot: Snapshot
    fetch: BlobFetcher  # gets one of its blobs; returns the bytes it downloaded
    downloaded: int = 0  # bytes moved to find it (the Actions cache's archive)
    locate: Callable[[str], Locator] = lambda digest: {}  # for a lazy restore: see Source


class SnapshotStore(ABC):
    """Restore and save as every store here does them: entries are snapshots of the root
    (storage/snapshot.py); a subclass says how it finds one and how it writes one."""

    description: str
    workers = 8

    @abstractmethod
    def _find(self, chain: Sequence[EntryName], workdir: Path, lazy: bool) -> Found | None:
        """The first entry along `chain`; `workdir` is a scratch directory beside the root.
        `lazy`: bring only what a lazy restore needs now."""

    @abstractmethod
    def _put(
        self, storage: Storage, name: EntryName, snapshot: Snapshot, result: SaveResult
    ) -> None:
        """Write `snapshot` as a new entry of `name`, filling `result` (saved, key, counts);
        leave `saved` false with a `skipped_reason` when the store declines."""

    @abstractmethod
    def _discard(self, digests: Iterable[str]) -> None:
        """Blobs whose stored copy arrived corrupt: a store that can, deletes them, so the
        next save uploads a good copy."""

    def restore(
        self, storage: Storage, chains: Sequence[Sequence[EntryName]], lazy: bool = False
    ) -> RestoreResult:
        started = time.monotonic()
        result = RestoreResult()
        with root_lock(storage.layout, "restore"), _scratch(storage.layout) as workdir:
            found: list[Found] = []
            exact = True
            for number, chain in enumerate(chains):
                match = self._find(chain, workdir / str(number), lazy)
                if match is None or match.entry.name != chain[0]:
                    exact = False
                if match is not None:
                    found.append(match)
            if found:
                result.hit = HitKind.EXACT if exact else HitKind.PARTIAL
                oldest_first = sorted(found, key=lambda match: match.snapshot.created_at)
                sources = [Source(m.snapshot, m.fetch, m.locate) for m in oldest_first]
                report = apply_snapshots(storage, sources, self.workers, lazy)  # newest tag wins
                result.restored = [match.entry for match in found]  # this job's own scope first
                result.blobs_downloaded = report.blobs_fetched
                result.bytes_downloaded = sum(m.downloaded for m in found) + report.bytes_fetched
                result.tags_dropped = report.tags_dropped
                result.blobs_left = len(storage.remote.blobs)
                result.bytes_left = sum(blob.size for blob in storage.remote.blobs.values())
                self._discard(report.corrupt)
            record_restored(storage, [entry.key for entry in result.restored])
        result.seconds = time.monotonic() - started
        return result

    def save(self, storage: Storage, name: EntryName, force: bool = False) -> SaveResult:
        started = time.monotonic()
        result = SaveResult()
        with root_lock(storage.layout, "save"):
            snapshot = take_snapshot(storage)
            if not snapshot.blobs:
                result.skipped_reason = "the cache is empty"
            elif not force and snapshot.fingerprint() == restored_fingerprint(
                storage.layout, name.prefix
            ):
                result.skipped_reason = "nothing changed since the restore"
            else:
                self._put(storage, name, snapshot, result)
                if result.saved:
                    record_restored(storage, [result.key], saved_to=name.prefix, snapshot=snapshot)
        result.seconds = time.monotonic() - started
        return result


@contextlib.contextmanager
def _scratch(layout: Layout) -> Iterator[Path]:
    """A directory beside the root (same filesystem: extracted blobs link into the pool)."""
    workdir = layout.meta_dir / f"restore-{uuid.uuid4().hex[:12]}"
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
