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
from cache_action.storage.access import SECTIONS, read_stats
from cache_action.storage.digests import CorruptBlobError, Digest
from cache_action.storage.files import temp_name, write_atomic
from cache_action.storage.gc import missing_closure
from cache_action.storage.index import Descriptor, RepositoryIndex, tag_of
from cache_action.storage.inventory import blob_files
from cache_action.storage.layout import Layout, validate_name
from cache_action.storage.manifests import CONFIG_TYPES, MAX_MANIFEST_BYTES, read_manifest
from cache_action.storage.remote import Locator, RemoteBlob
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
    read_since: float | None = None  # when the run that left the root began: what it read

    @property
    def total_bytes(self) -> int:
        return sum(self.blobs.values())

    def fingerprint(self) -> str:
        """Identity of the content (not of access times): equal means nothing to save."""
        content = {"repositories": self.repositories, "blobs": self.blobs}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "repositories": self.repositories,
            "blobs": self.blobs,
            "access": self.access,
            "read_since": self.read_since,
        }

    def to_bytes(self) -> bytes:
        # Descriptors keep their key order, so a restored index.json is byte-identical.
        return json.dumps(self.to_document()).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        try:
            document = json.loads(data)
        except ValueError as error:
            raise StoreError(f"corrupt cache entry manifest: {error}") from None
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: Any) -> Snapshot:
        try:
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
            since = document.get("read_since")
            read_since = float(since) if isinstance(since, int | float) else None
            return cls(float(document["created_at"]), repositories, blobs, access, read_since)
        except (ValueError, KeyError, TypeError, AttributeError, OCIError) as error:
            raise StoreError(f"corrupt cache entry manifest: {error}") from None


def take_snapshot(storage: Storage) -> Snapshot:
    layout = storage.layout
    repositories: dict[str, dict[str, Any]] = {}
    blobs: dict[str, int] = {}
    for name in layout.repositories():
        index = storage.indexes.read(name) or RepositoryIndex([])
        held = storage.remote.held_by(name)  # a lazy restore's unread blobs are the root's too
        for path in blob_files(layout.repository(name) / "blobs"):
            held[f"{path.parent.name}:{path.name}"] = path.stat().st_size
        blobs.update(held)
        repositories[name] = {"manifests": index.manifests, "blobs": sorted(held)}
    access = {section: dict(times) for section, times in storage.access.times.items()}
    last_run = read_stats(layout) or {}
    started = last_run.get("started_at")
    read_since = float(started) if isinstance(started, int | float) else None
    return Snapshot(time.time(), repositories, blobs, access, read_since)


@dataclass
class ApplyReport:
    blobs_fetched: int = 0
    bytes_fetched: int = 0  # downloaded by the fetchers (links into an extracted tree are 0)
    tags_dropped: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # digests whose stored copy is bad


@dataclass(frozen=True)
class Source:
    """One entry to merge: its snapshot, how to get a blob of it now, and (for a lazy restore)
    where its store keeps a blob, for the registry to get it later."""

    snapshot: Snapshot
    fetch: BlobFetcher
    locate: Callable[[str], Locator] = lambda digest: {}


def apply_snapshots(
    storage: Storage, sources: Sequence[Source], workers: int = 8, lazy: bool = False
) -> ApplyReport:
    """Merge `sources` (oldest first) into the root; fetch only blobs it lacks, verified. Lazy:
    fetch only the metadata (manifests and configs) and record every other blob as remote."""
    layout = storage.layout
    report = ApplyReport()
    owner: dict[str, tuple[int, Source]] = {}
    for source in sources:
        for digest, size in source.snapshot.blobs.items():
            owner[digest] = (size, source)
    if lazy:
        _fetch_metadata(storage, sources, owner, report, workers)
        _record_remote(storage, sources, owner)
    else:
        missing = [d for d in owner if not _in_pool(layout, d)]
        _fetch_all(layout, owner, missing, report, workers)
    for name, manifests in _merged_indexes(storage, [s.snapshot for s in sources]).items():
        report.tags_dropped += _install_repository(storage, name, manifests, sources)
    _merge_access(storage, [s.snapshot for s in sources])
    storage.remote.flush()
    return report


def _fetch_all(
    layout: Layout,
    owner: dict[str, tuple[int, Source]],
    digests: list[str],
    report: ApplyReport,
    workers: int,
) -> None:
    def fetch_one(digest_text: str) -> tuple[int, int] | StoreError | OSError:
        size, source = owner[digest_text]
        try:
            return _fetch_verified(layout, Digest.parse(digest_text), size, source.fetch)
        except (StoreError, OSError) as error:
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for digest_text, fetched in zip(digests, pool.map(fetch_one, digests), strict=True):
            if isinstance(fetched, tuple):
                report.blobs_fetched += 1
                report.bytes_fetched += fetched[1]
                continue
            log.warning("could not restore blob %s: %s", digest_text, fetched)
            if isinstance(fetched, CorruptBlobError):
                report.corrupt.append(digest_text)


def _fetch_metadata(
    storage: Storage,
    sources: Sequence[Source],
    owner: dict[str, tuple[int, Source]],
    report: ApplyReport,
    workers: int,
) -> None:
    """The manifests the indexes name, the manifests and configs they name, and so on: what
    serving a tag's HEAD and manifest GETs needs; BuildKit reads configs before layers."""
    layout = storage.layout
    wanted = {
        str(entry.get("digest"))
        for source in sources
        for state in source.snapshot.repositories.values()
        for entry in state["manifests"]
    }
    seen: set[str] = set()
    while wanted - seen:
        batch = sorted(d for d in wanted - seen if d in owner)
        seen |= wanted
        _fetch_all(layout, owner, [d for d in batch if not _in_pool(layout, d)], report, workers)
        for digest_text in batch:
            wanted |= _metadata_references(layout, digest_text)


def _metadata_references(layout: Layout, digest_text: str) -> set[str]:
    """What a manifest names that is itself metadata: manifests, and configs (an image
    manifest's config, and an index's non-manifest children of a config type, as in
    BuildKit's index-form caches)."""
    path = layout.pool_blob(Digest.parse(digest_text))
    try:
        body = path.read_bytes() if path.stat().st_size <= MAX_MANIFEST_BYTES else b""
    except OSError:
        return set()
    manifest = read_manifest(body)
    if manifest is None:
        return set()
    named = {str(r.digest) for r in manifest.references if r.is_manifest and not r.external}
    named |= {str(r.digest) for r in manifest.references if r.media_type in CONFIG_TYPES}
    if manifest.config_media_type is not None and manifest.references:
        named.add(str(manifest.references[0].digest))  # an image manifest's config comes first
    return named


def _in_pool(layout: Layout, digest_text: str) -> bool:
    return layout.pool_blob(Digest.parse(digest_text)).is_file()


def _record_remote(
    storage: Storage, sources: Sequence[Source], owner: dict[str, tuple[int, Source]]
) -> None:
    """Every blob not on disk now stays in its store: HEADs answer from this record."""
    holders: dict[str, set[str]] = {}
    for source in sources:
        for name, state in source.snapshot.repositories.items():
            for digest in state["blobs"]:
                holders.setdefault(digest, set()).add(name)
    for digest, (size, source) in owner.items():
        if not _in_pool(storage.layout, digest):
            snapshot = source.snapshot
            read_at = snapshot.access.get("blobs", {}).get(digest, 0.0)
            read = snapshot.read_since is not None and read_at >= snapshot.read_since
            holding = frozenset(holders.get(digest, ()))
            storage.remote.add(digest, RemoteBlob(size, holding, source.locate(digest), read))


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
    sources: Sequence[Source],
) -> list[str]:
    """Link the repository's blobs, then write its index with only complete tags."""
    layout, blobs = storage.layout, storage.blobs
    try:
        validate_name(name)
    except OCIError:
        log.warning("skipping repository with an invalid name %r", name)
        return []
    wanted = {
        d
        for source in sources
        if name in source.snapshot.repositories
        for d in source.snapshot.repositories[name]["blobs"]
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
