"""The one interface every store offers the action, the standalone service and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cache_action.errors import StoreError
from cache_action.scopes import EntryName
from cache_action.storage.layout import Layout

__all__ = ["EntryInfo", "HitKind", "RestoreResult", "SaveResult", "Store", "StoreError"]


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


@dataclass
class RestoreResult:
    hit: HitKind = HitKind.NONE
    restored: list[EntryInfo] = field(default_factory=list)
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    tags_dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def restored_key(self) -> str:
        return self.restored[0].key if self.restored else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "hit": self.hit.value,
            "restored": [entry.key for entry in self.restored],
            "blobs_downloaded": self.blobs_downloaded,
            "bytes_downloaded": self.bytes_downloaded,
            "tags_dropped": self.tags_dropped,
            "seconds": round(self.seconds, 3),
        }


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


class Store(Protocol):
    """Moves a registry root to and from somewhere that outlives the job."""

    description: str  # for logs: no secrets

    def restore(self, layout: Layout, chains: Sequence[Sequence[EntryName]]) -> RestoreResult:
        """Per chain (one per scope), restore the first entry found; merge them into `layout`."""
        ...

    def save(self, layout: Layout, name: EntryName) -> SaveResult:
        """Save the root as a new entry of `name`; skip when unchanged since the restore."""
        ...

    def list_entries(self, namespace: str) -> list[EntryInfo]: ...

    def delete(self, entry: EntryInfo) -> None: ...
