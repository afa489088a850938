"""What both cache protocols (v2 Twirp, legacy v1) offer the client facade."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cache_action.stores.gha.redact import redact
from cache_action.stores.gha.upload import ArchiveUpload


@dataclass(frozen=True)
class Match:
    """A lookup hit: which key matched, and where its archive can be downloaded."""

    key: str  # the primary key asked for
    matched_key: str
    version: str
    download_url: str = field(repr=False)

    @property
    def exact(self) -> bool:
        """actions/cache's `cache-hit`: the matched key is the primary key, compared
        case-insensitively (`localeCompare(..., {sensitivity: "accent"})`)."""
        return self.matched_key.casefold() == self.key.casefold()

    def __str__(self) -> str:
        return f"{self.matched_key} ({redact(self.download_url)})"


@dataclass(frozen=True)
class UploadTarget:
    """A reserved entry: v2 gives a signed upload URL, v1 a cache id to PATCH to."""

    key: str
    version: str
    upload_url: str | None = field(default=None, repr=False)
    cache_id: int | None = None


class CacheService(Protocol):
    def lookup(self, key: str, restore_keys: Sequence[str], version: str) -> Match | None:
        """The newest entry matching `key` (exact, then prefix) or a restore key (prefix), in
        the scopes the token may read; None on a miss or a read denied by policy."""
        ...

    def reserve(self, key: str, version: str, size: int | None) -> UploadTarget:
        """Create the entry; EntryExistsError / WriteDeniedError when that is refused."""
        ...

    def start_upload(self, target: UploadTarget) -> ArchiveUpload:
        """An upload the archiver writes into; see `upload.py`."""
        ...

    def finalize(self, target: UploadTarget, size: int) -> int:
        """Commit the uploaded archive; returns the entry id."""
        ...
