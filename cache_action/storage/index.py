"""A repository's index.json: its tags and the manifests pushed to it by digest.

Reads take no lock (the file is replaced atomically). Writes are serialised per repository
in-process; across processes the root lock (storage/lock.py) keeps a single writer.
Unknown fields in descriptors are preserved, so a BuildKit `type=local` export into the same
layout round-trips.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache_action.storage.digests import Digest
from cache_action.storage.files import write_atomic
from cache_action.storage.layout import Layout

REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'

Descriptor = dict[str, Any]


def descriptor(media_type: str, digest: Digest, size: int, tag: str | None = None) -> Descriptor:
    entry: Descriptor = {"mediaType": media_type, "digest": str(digest), "size": size}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def tag_of(entry: Descriptor) -> str | None:
    annotations = entry.get("annotations") or {}
    tag = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return tag if isinstance(tag, str) else None


@dataclass
class RepositoryIndex:
    """The parsed index.json: descriptors in file order."""

    manifests: list[Descriptor]

    def by_tag(self, tag: str) -> Descriptor | None:
        return next((d for d in self.manifests if tag_of(d) == tag), None)

    def by_digest(self, digest: Digest) -> Descriptor | None:
        text = str(digest)
        return next((d for d in self.manifests if d.get("digest") == text), None)

    def tags(self) -> list[str]:
        return sorted({t for d in self.manifests if (t := tag_of(d)) is not None})

    def to_bytes(self) -> bytes:
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.manifests,
        }
        return json.dumps(document, indent=1).encode() + b"\n"


class IndexStore:
    """Reads and atomically rewrites repositories' index.json files."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def exists(self, name: str) -> bool:
        return self.layout.index_path(name).is_file()

    def read(self, name: str) -> RepositoryIndex | None:
        """None when the repository does not exist; an unreadable index reads as empty."""
        try:
            raw = self.layout.index_path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            document = json.loads(raw)
            entries = document.get("manifests", [])
        except (ValueError, AttributeError):
            return RepositoryIndex([])
        return RepositoryIndex([e for e in entries if isinstance(e, dict) and "digest" in e])

    def ensure(self, name: str) -> None:
        """Create the repository's layout files if missing."""
        if self.exists(name):
            return
        with self._lock(name):
            repo = self.layout.repository(name)
            (repo / "blobs").mkdir(parents=True, exist_ok=True)
            if not (repo / "oci-layout").exists():
                write_atomic(repo / "oci-layout", OCI_LAYOUT)
            if not self.exists(name):
                write_atomic(self.layout.index_path(name), RepositoryIndex([]).to_bytes())

    def update(self, name: str, change: Callable[[RepositoryIndex], bool]) -> bool:
        """Apply `change` under the repository lock; rewrite only when it reports a change."""
        self.ensure(name)
        with self._lock(name):
            index = self.read(name) or RepositoryIndex([])
            changed = change(index)
            if changed:
                write_atomic(self.layout.index_path(name), index.to_bytes())
            return changed

    def set_tag(self, name: str, tag: str, entry: Descriptor) -> None:
        def change(index: RepositoryIndex) -> bool:
            index.manifests = [d for d in index.manifests if tag_of(d) != tag]
            index.manifests.append({**entry, "annotations": {REF_NAME: tag}})
            return True

        self.update(name, change)

    def add_untagged(self, name: str, entry: Descriptor) -> None:
        def change(index: RepositoryIndex) -> bool:
            if any(d.get("digest") == entry["digest"] for d in index.manifests):
                return False
            index.manifests.append(entry)
            return True

        self.update(name, change)

    def remove_tag(self, name: str, tag: str) -> bool:
        def change(index: RepositoryIndex) -> bool:
            kept = [d for d in index.manifests if tag_of(d) != tag]
            removed = len(kept) != len(index.manifests)
            index.manifests = kept
            return removed

        return self.update(name, change)

    def remove_digest(self, name: str, digest: Digest) -> bool:
        """Drop every descriptor of `digest`, its tags included."""
        text = str(digest)

        def change(index: RepositoryIndex) -> bool:
            kept = [d for d in index.manifests if d.get("digest") != text]
            removed = len(kept) != len(index.manifests)
            index.manifests = kept
            return removed

        return self.update(name, change)

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())
