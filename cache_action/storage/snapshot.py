"""An entry's manifest: the repositories' indexes, the blobs they hold, and the access record.

Stores keep blobs content-addressed and one small snapshot per entry, so a save uploads only
blobs the store lacks and a restore downloads only blobs the root lacks. Applying snapshots
merges them into a root: blobs are unioned, and for a tag held by several entries the newest
entry wins. A tag whose closure did not arrive is dropped, so BuildKit misses instead of failing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_action.errors import OCIError, StoreError
from cache_action.storage.access import SECTIONS
from cache_action.storage.digests import Digest
from cache_action.storage.files import temp_name, write_atomic
from cache_action.storage.gc import missing_closure
from cache_action.storage.index import Descriptor, RepositoryIndex, tag_of
from cache_action.storage.inventory import blob_files
from cache_action.storage.layout import Layout, validate_name
from cache_action.storage.root import Storage

log = logging.getLogger(__name__)

FORMAT = "cache-action/snapshot/v1"
# Writes the blob's bytes to the given path; returns how many it downloaded (0: a local link).
BlobFetcher = Callable[[Digest, Path], int]


@dataclass
class Snapshot:
    created_at: float
    repositories: dict[str, dict[str, Any]]  # name → {"manifests": [...], "blobs": [...]}
    blobs: dict[str, int]  # digest → size
    access: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.blobs.values())

    def fingerprint(self) -> str:
        """Identity of the content (not of access times): equal means nothing to save."""
        content = {"repositories": self.repositories, "blobs": self.blobs}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "created_at": self.created_at,
            "repositories": self.repositories,
            "blobs": self.blobs,
            "access": self.access,
        }
        # Descriptors keep their key order, so a restored index.json is byte-identical.
        return json.dumps(document).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
            blobs = {str(Digest.parse(d)): int(n) for d, n in document["blobs"].items()}
            repositories = {
                str(name): {
                    "manifests": [m for m in state["manifests"] if isinstance(m, dict)],
                    "blobs": [str(Digest.parse(d)) for d in state["blobs"]],
                }
                for name, state in document["repositories"].items()
            }
            access = document.get("access") or {}
            return cls(float(document["created_at"]), repositories, blobs, access)
        except (ValueError, KeyError, TypeError, AttributeError, OCIError) as error:
            raise StoreError(f"corrupt cache entry manifest: {error}") from None


def take_snapshot(storage: Storage) -> Snapshot:
    layout = storage.layout
    repositories: dict[str, dict[str, Any]] = {}
    blobs: dict[str, int] = {}
    for name in layout.repositories():
        index = storage.indexes.read(name) or RepositoryIndex([])
        held = []
        for path in blob_files(layout.repository(name) / "blobs"):
            digest = f"{path.parent.name}:{path.name}"
            blobs[digest] = path.stat().st_size
            held.append(digest)
        repositories[name] = {"manifests": index.manifests, "blobs": sorted(held)}
    access = {section: dict(times) for section, times in storage.access.times.items()}
    return Snapshot(time.time(), repositories, blobs, access)


@dataclass
class ApplyReport:
    blobs_fetched: int = 0
    bytes_fetched: int = 0  # downloaded by the fetchers (links into an extracted tree are 0)
    tags_dropped: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # digests whose stored copy is bad


class CorruptBlobError(StoreError):
    """A blob's bytes do not match its digest or size."""


def apply_snapshots(
    storage: Storage, sources: Sequence[tuple[Snapshot, BlobFetcher]], workers: int = 8
) -> ApplyReport:
    """Merge `sources` (oldest first) into the root; fetch only blobs it lacks, verified."""
    layout = storage.layout
    report = ApplyReport()
    owner: dict[str, tuple[int, BlobFetcher]] = {}
    for snapshot, fetch in sources:
        for digest, size in snapshot.blobs.items():
            owner[digest] = (size, fetch)
    missing = [d for d in owner if not layout.pool_blob(Digest.parse(d)).is_file()]

    def fetch_one(digest_text: str) -> tuple[int, int] | StoreError | OSError:
        size, fetch = owner[digest_text]
        try:
            return _fetch_verified(layout, Digest.parse(digest_text), size, fetch)
        except (StoreError, OSError) as error:
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for digest_text, fetched in zip(missing, pool.map(fetch_one, missing), strict=True):
            if isinstance(fetched, tuple):
                report.blobs_fetched += 1
                report.bytes_fetched += fetched[1]
                continue
            log.warning("could not restore blob %s: %s", digest_text, fetched)
            if isinstance(fetched, CorruptBlobError):
                report.corrupt.append(digest_text)
    for name, manifests in _merged_indexes(storage, [s for s, _ in sources]).items():
        report.tags_dropped += _install_repository(storage, name, manifests, sources)
    _merge_access(storage, [s for s, _ in sources])
    return report


def _fetch_verified(
    layout: Layout, digest: Digest, size: int, fetch: BlobFetcher
) -> tuple[int, int]:
    """Fetch into a temp file, check size and digest, then publish into the pool. Returns
    (the blob's size, the bytes downloaded).

    No fsync: the root is this job's own, a rename never exposes a partial file, and a power
    loss ends the job anyway; forcing 1 GB to disk here would stall the restore by seconds."""
    target = layout.pool_blob(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        downloaded = fetch(digest, tmp)
        hasher = digest.hasher()
        with open(tmp, "rb") as f:
            while block := f.read(1 << 20):
                hasher.update(block)
        actual_size = tmp.stat().st_size
        if hasher.hexdigest() != digest.hex or actual_size != size:
            raise CorruptBlobError(f"blob {digest} arrived corrupt ({actual_size} bytes); dropped")
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return size, downloaded


def _merged_indexes(storage: Storage, snapshots: Sequence[Snapshot]) -> dict[str, list[Descriptor]]:
    """Per repository: what the root has, then each snapshot in order; later tags win."""
    indexes = storage.indexes
    names = set(storage.layout.repositories())
    for snapshot in snapshots:
        names |= snapshot.repositories.keys()
    merged: dict[str, list[Descriptor]] = {}
    for name in sorted(names):
        layers = [(indexes.read(name) or RepositoryIndex([])).manifests]
        layers += [s.repositories[name]["manifests"] for s in snapshots if name in s.repositories]
        tagged: dict[str, Descriptor] = {}
        untagged: dict[str, Descriptor] = {}
        for manifests in layers:
            for entry in manifests:
                tag = tag_of(entry)
                if tag is None:
                    untagged.setdefault(str(entry.get("digest")), entry)
                else:
                    tagged[tag] = entry
        merged[name] = [*untagged.values(), *tagged.values()]
    return merged


def _install_repository(
    storage: Storage,
    name: str,
    manifests: list[Descriptor],
    sources: Sequence[tuple[Snapshot, BlobFetcher]],
) -> list[str]:
    """Link the repository's blobs, then write its index with only complete tags."""
    layout, blobs = storage.layout, storage.blobs
    try:
        validate_name(name)
    except OCIError:
        log.warning("skipping repository with an invalid name %r", name)
        return []
    wanted = {
        d for s, _ in sources if name in s.repositories for d in s.repositories[name]["blobs"]
    }
    for digest_text in sorted(wanted):
        digest = Digest.parse(digest_text)
        if layout.pool_blob(digest).is_file():
            blobs.mount(name, digest, None)
    kept, dropped = [], []
    for entry in manifests:
        try:
            digest = Digest.parse(entry["digest"])
        except (OCIError, KeyError, TypeError):
            continue
        tag = tag_of(entry)
        if missing_closure(blobs, name, digest):
            if tag is not None:
                dropped.append(f"{name}:{tag}")
            continue
        kept.append(entry)
    storage.indexes.ensure(name)
    write_atomic(layout.index_path(name), RepositoryIndex(kept).to_bytes())
    return dropped


def _merge_access(storage: Storage, snapshots: Sequence[Snapshot]) -> None:
    record = storage.access
    for snapshot in snapshots:
        for section in SECTIONS:
            for key, value in (snapshot.access.get(section) or {}).items():
                if isinstance(value, int | float):
                    current = record.times[section].get(key, 0.0)
                    record.times[section][key] = max(current, float(value))
                    record.dirty = True
    record.flush()


def record_restored(
    storage: Storage,
    keys: list[str],
    saved_to: str | None = None,
    snapshot: Snapshot | None = None,
) -> None:
    """Remember what the root looked like right after restore (or after a save to the entry
    prefix `saved_to`), to skip a no-op save."""
    fingerprint = (snapshot or take_snapshot(storage)).fingerprint()
    document: dict[str, Any] = {"keys": keys, "fingerprint": fingerprint}
    if saved_to is not None:
        document["saved_to"] = saved_to
    write_atomic(storage.layout.restored_path, json.dumps(document).encode())


def restored_fingerprint(layout: Layout, prefix: str) -> str | None:
    """The fingerprint a save to `prefix` may skip on: the restored content (if a restore
    found anything), or what was last saved to that same prefix."""
    try:
        document = json.loads(layout.restored_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    saved_to = document.get("saved_to")
    if saved_to is not None and saved_to != prefix:
        return None  # saved to another scope or ref: this one still lacks the root
    if saved_to is None and not document.get("keys"):
        return None  # the restore found nothing: the store lacks whatever the root holds
    value = document.get("fingerprint")
    return value if isinstance(value, str) else None
