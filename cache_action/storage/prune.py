"""Prune: keep the cache small and always consistent.

1. integrity — a tag whose closure (manifest → children → config and layers) is missing a blob,
   has a blob of the wrong size, or (verify=full) a blob that fails its digest, is dropped:
   BuildKit then misses cleanly instead of failing with "blob not found";
2. ttl — tags neither written nor read within the TTL are dropped;
3. keep — at most the N most recently used tags per repository;
4. budget — while the root is over max-size, the least recently used tag goes, never one written
   or read in the current run;
then one garbage collection sweeps what no kept tag reaches. Tags are removed from index.json
before any blob is deleted, so a kill at any moment leaves a consistent root. A tag and its
blobs are never split: only unreachable blobs are ever deleted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cache_action.errors import OCIError
from cache_action.storage.blobs import BlobStore
from cache_action.storage.digests import Digest
from cache_action.storage.gc import RepositoryMarker, collect_garbage, drop_tags
from cache_action.storage.index import Descriptor, RepositoryIndex, tag_of
from cache_action.storage.inventory import blob_files, take_inventory
from cache_action.storage.layout import Layout
from cache_action.storage.lock import root_lock
from cache_action.storage.manifests import MAX_MANIFEST_BYTES, read_manifest
from cache_action.storage.root import Storage


class Verify(StrEnum):
    SIZE = "size"  # presence and size of every blob a tag needs (cheap: stat)
    FULL = "full"  # and every digest (reads every byte)


@dataclass(frozen=True)
class PrunePolicy:
    ttl_seconds: float | None = None
    max_size_bytes: int | None = None
    keep: int | None = None
    verify: Verify = Verify.SIZE
    protect_since: float | None = None  # tags used at or after this time are never dropped
    dry_run: bool = False
    spare: frozenset[Digest] = frozenset()  # blobs kept even when unreachable (see collect_garbage)
    serving: bool = False  # the registry is up (requests paused): leave its uploads alone


@dataclass
class PruneReport:
    dry_run: bool
    bytes_before: int = 0
    bytes_after: int = 0
    tags_removed: list[dict[str, str]] = field(default_factory=list)  # {tag, reason}
    blobs_removed: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "tags_removed": self.tags_removed,
            "blobs_removed": self.blobs_removed,
            "bytes_freed": self.bytes_freed,
        }


@dataclass
class _Tag:
    repository: str
    tag: str
    digest: Digest | None
    last_used: float
    closure: dict[Digest, int] = field(default_factory=dict)  # digest → size on disk
    broken: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.repository, self.tag)

    @property
    def label(self) -> str:
        return f"{self.repository}:{self.tag}"


def prune(
    storage: Storage, policy: PrunePolicy, clock: Callable[[], float] = time.time
) -> PruneReport:
    """Apply `policy` to the root, under its lock: with the registry stopped, or from inside
    the registry (which holds the lock) with requests paused and `policy.serving` set."""
    with root_lock(storage.layout, "prune"):
        return _prune(storage, policy, clock())


def forget_remote(storage: Storage, digests: list[str]) -> list[str]:
    """Blobs a lazy restore left in a store that can no longer deliver them: no longer the
    root's, and the tags that need them go (the integrity rule), so BuildKit misses them
    cleanly instead of failing on "blob not found". Returns those tags."""
    storage.remote.discard(digests)
    storage.remote.flush()
    return [item["tag"] for item in prune(storage, PrunePolicy()).tags_removed]


def _prune(storage: Storage, policy: PrunePolicy, now: float) -> PruneReport:
    layout = storage.layout
    report = PruneReport(dry_run=policy.dry_run)
    report.bytes_before = take_inventory(storage).bytes
    doomed = _doomed(_tags(storage, policy.verify), policy, now)
    report.tags_removed = [
        {"tag": f"{repository}:{tag}", "reason": reason}
        for (repository, tag), reason in sorted(doomed.items())
    ]
    if policy.dry_run:
        garbage = collect_garbage(storage, dry_run=True, without_tags=doomed)
        report.blobs_removed = len(garbage.blobs_deleted)
        report.bytes_after = _bytes_on_disk(layout, excluding=set(garbage.blob_paths))
        report.bytes_freed = report.bytes_before - report.bytes_after
        return report
    drop_tags(storage, set(doomed))
    garbage = collect_garbage(storage, spare=policy.spare, serving=policy.serving)
    _forget_removed(storage, doomed)
    report.blobs_removed = len(garbage.blobs_deleted)
    report.bytes_after = take_inventory(storage).bytes
    report.bytes_freed = report.bytes_before - report.bytes_after
    return report


def _doomed(tags: list[_Tag], policy: PrunePolicy, now: float) -> dict[tuple[str, str], str]:
    """Which tags go and why, in order: broken, TTL, keep N, then the budget (LRU). A tag this
    run used (`protect_since`) goes only when broken."""

    def protected(tag: _Tag) -> bool:
        return policy.protect_since is not None and tag.last_used >= policy.protect_since

    doomed = {tag.key: "broken" for tag in tags if tag.broken}
    if policy.ttl_seconds is not None:
        ttl = policy.ttl_seconds
        doomed |= {
            tag.key: "ttl"
            for tag in tags
            if tag.key not in doomed and not protected(tag) and now - tag.last_used > ttl
        }
    unprotected = {tag.key for tag in tags if not protected(tag)}
    if policy.keep is not None:
        for repository in {t.repository for t in tags}:
            alive = [t for t in tags if t.repository == repository and t.key not in doomed]
            alive.sort(key=lambda t: t.last_used, reverse=True)
            doomed |= {t.key: "keep" for t in alive[policy.keep :] if t.key in unprotected}
    if policy.max_size_bytes is not None:
        doomed |= _over_budget(tags, doomed, unprotected, policy.max_size_bytes)
    return doomed


def _over_budget(
    tags: list[_Tag],
    doomed: dict[tuple[str, str], str],
    unprotected: set[tuple[str, str]],
    budget: int,
) -> dict[tuple[str, str], str]:
    """Least recently used first, while what stays is over the budget."""
    alive = sorted((t for t in tags if t.key not in doomed), key=lambda t: t.last_used)
    victims: dict[tuple[str, str], str] = {}
    while alive and _bytes_kept(alive) > budget:
        victim = next((t for t in alive if t.key in unprotected), None)
        if victim is None:
            break  # everything left was used by this run: over budget, but never broken
        victims[victim.key] = "budget"
        alive.remove(victim)
    return victims


def _bytes_kept(tags: list[_Tag]) -> int:
    union: dict[Digest, int] = {}
    for tag in tags:
        union.update(tag.closure)
    return sum(union.values())


def _bytes_on_disk(layout: Layout, excluding: set[Path]) -> int:
    """What `take_inventory(...).bytes` will say once `excluding` is deleted."""
    directories = [layout.root / "blobs"]
    directories += [layout.repository(name) / "blobs" for name in layout.repositories()]
    links: dict[tuple[int, int], tuple[int, bool]] = {}  # inode → (size, any link kept)
    for directory in directories:
        for path in blob_files(directory):
            info = path.stat()
            key = (info.st_dev, info.st_ino)
            kept = path not in excluding or links.get(key, (0, False))[1]
            links[key] = (info.st_size, kept)
    return sum(size for size, kept in links.values() if kept)


def _tags(storage: Storage, verify: Verify) -> list[_Tag]:
    layout, indexes, blobs, access = storage.layout, storage.indexes, storage.blobs, storage.access
    verified: dict[tuple[str, Digest], bool] = {}
    found = []
    for repository in layout.repositories():
        index = indexes.read(repository) or RepositoryIndex([])
        untagged = [e for e in index.manifests if tag_of(e) is None]
        for entry in index.manifests:
            name = tag_of(entry)
            if name is None:
                continue
            tag = _Tag(repository, name, None, 0.0)
            try:
                digest = tag.digest = Digest.parse(entry.get("digest", ""))
            except OCIError:
                tag.broken = "invalid digest"
                found.append(tag)
                continue
            size = entry.get("size")
            expected = size if isinstance(size, int) and not isinstance(size, bool) else None
            has_subject = _closure(blobs, tag, digest, expected, verify, verified)
            if tag.broken is None and (untagged or has_subject):
                tag.closure = _held(blobs, tag, entry, untagged)
            last_used = access.tag_time(repository, name)
            tag.last_used = last_used or _mtime(layout.repo_blob(repository, digest))
            found.append(tag)
    return found


def _closure(
    blobs: BlobStore,
    tag: _Tag,
    digest: Digest,
    expected_size: int | None,
    verify: Verify,
    verified: dict[tuple[str, Digest], bool],
) -> bool:
    """Fill `tag.closure` with what serving the tag (its manifest `digest`) needs: manifests,
    configs, layers; or set `tag.broken` to why it cannot be served. Descends into a reference
    only when its media type says manifest, as gc does. Returns whether a manifest of the
    closure has a subject."""
    has_subject = False
    pending: list[tuple[Digest, int | None, bool]] = [(digest, expected_size, True)]
    while pending:
        current, expected, is_manifest = pending.pop()
        if current in tag.closure:
            continue
        size = blobs.size(tag.repository, current)
        tag.broken = _problem(blobs, tag.repository, current, size, expected, verify, verified)
        if tag.broken is not None or size is None:
            return has_subject
        tag.closure[current] = size
        if not is_manifest:
            continue
        manifest = None
        if size <= MAX_MANIFEST_BYTES:
            manifest = read_manifest(blobs.read(tag.repository, current) or b"")
        if manifest is None:
            tag.broken = f"{current} is not a manifest"
            return has_subject
        has_subject = has_subject or manifest.subject is not None
        pending += [
            (r.digest, r.size, r.is_manifest) for r in manifest.references if not r.external
        ]
    return has_subject


def _problem(
    blobs: BlobStore,
    repository: str,
    digest: Digest,
    size: int | None,
    expected: int | None,
    verify: Verify,
    verified: dict[tuple[str, Digest], bool],
) -> str | None:
    """Why one blob of a closure cannot be served, or None."""
    if size is None:
        return f"missing {digest}"
    if expected is not None and size != expected:
        return f"{digest} is {size} bytes, its descriptor says {expected}"
    if verify is Verify.FULL and blobs.local_size(repository, digest) is not None:
        key = (repository, digest)  # a blob still in its store is the store's to check
        if key not in verified:
            verified[key] = _digest_matches(blobs, repository, digest)
        if not verified[key]:
            return f"{digest} fails its digest"
    return None


def _held(
    blobs: BlobStore, tag: _Tag, entry: Descriptor, untagged: list[Descriptor]
) -> dict[Digest, int]:
    """What gc keeps as long as the tag stays: its closure, the subjects of its manifests and
    their referrers (untagged manifests whose subject it holds), with their own closures."""
    marked = RepositoryMarker(blobs, tag.repository, RepositoryIndex([entry, *untagged])).run()
    held = dict(tag.closure)
    for digest in marked - held.keys():
        size = blobs.size(tag.repository, digest)
        if size is not None:
            held[digest] = size
    return held


def _digest_matches(blobs: BlobStore, repository: str, digest: Digest) -> bool:
    hasher = hashlib.new(digest.algorithm)
    with open(blobs.path(repository, digest), "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest() == digest.hex


def _mtime(manifest: Path) -> float:
    """No access record (a root restored from elsewhere): the manifest's age stands in."""
    try:
        return manifest.stat().st_mtime
    except OSError:
        return 0.0


def _forget_removed(storage: Storage, doomed: dict[tuple[str, str], str]) -> None:
    """Drop the record's entries of dropped tags and of blobs and manifests gc deleted, so the
    record does not grow with every blob ever pushed. The record is the root's one live
    record: a serving registry's next flush writes the same object, not a stale copy."""
    layout, access = storage.layout, storage.access
    access.forget("tags", {f"{repository}:{tag}" for repository, tag in doomed})
    access.forget("blobs", {key for key in access.times["blobs"] if not _exists(layout, key)})
    access.forget(
        "manifests", {key for key in access.times["manifests"] if not _exists(layout, key)}
    )
    access.flush()


def _exists(layout: Layout, key: str) -> bool:
    """Whether the pool holds `digest`, or the repository `repo@digest`; an unparsable key
    names nothing that exists."""
    repository, _, text = key.rpartition("@")
    try:
        digest = Digest.parse(text)
    except OCIError:
        return False
    path = layout.repo_blob(repository, digest) if repository else layout.pool_blob(digest)
    return path.is_file()
