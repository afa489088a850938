"""Garbage collection: mark everything reachable from a tag, sweep the rest.

Run only with the root lock held (the registry stopped): a sweep racing a push could delete a
blob that a HEAD just reported present, and the next build would fail instead of missing.

Marking follows manifests → config and layers, index → children (walking into a child only when
its media type says it is a manifest: BuildKit's index-form cache lists layers there), a kept
manifest's `subject`, and referrers of kept manifests (untagged manifests whose subject is kept).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_action.errors import OCIError
from cache_action.storage.blobs import BlobStore
from cache_action.storage.digests import Digest
from cache_action.storage.index import Descriptor, IndexStore, RepositoryIndex, tag_of
from cache_action.storage.lock import root_lock
from cache_action.storage.manifests import MAX_MANIFEST_BYTES, Manifest, read_manifest
from cache_action.storage.root import Storage


@dataclass
class GcReport:
    dry_run: bool
    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    manifests_untracked: list[str] = field(default_factory=list)
    uploads_deleted: int = 0
    missing: list[str] = field(default_factory=list)
    blob_paths: list[Path] = field(default_factory=list, repr=False)  # deleted (or would be)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "blobs_deleted": len(self.blobs_deleted),
            "bytes_freed": self.bytes_freed,
            "manifests_untracked": self.manifests_untracked,
            "uploads_deleted": self.uploads_deleted,
            "missing": self.missing,
        }


def _parse_digest(text: object) -> Digest | None:
    try:
        return Digest.parse(text) if isinstance(text, str) else None
    except OCIError:
        return None


class RepositoryMarker:
    """Reachability inside one repository."""

    def __init__(self, blobs: BlobStore, name: str, index: RepositoryIndex) -> None:
        self.blobs = blobs
        self.name = name
        self.index = index
        self.marked: set[Digest] = set()
        self.missing: set[Digest] = set()
        self._subjects: dict[Digest, Digest | None] = {}

    def run(self) -> set[Digest]:
        roots = [d for d in self.index.manifests if tag_of(d) is not None]
        self.walk(self._root_digests(roots))
        untagged = [d for d in self.index.manifests if tag_of(d) is None]
        while True:
            referrers = [
                digest
                for digest in self._root_digests(untagged)
                if digest not in self.marked and self._subject(digest) in self.marked
            ]
            if not referrers:
                return self.marked
            self.walk(referrers)

    def _root_digests(self, entries: Iterable[Descriptor]) -> list[Digest]:
        return [d for entry in entries if (d := _parse_digest(entry.get("digest"))) is not None]

    def walk(self, digests: list[Digest]) -> None:
        """Mark `digests` and all they reference; unreadable references land in `missing`."""
        pending = list(digests)
        while pending:
            digest = pending.pop()
            if digest in self.marked:
                continue
            self.marked.add(digest)
            size = self.blobs.size(self.name, digest)
            if size is None:
                self.missing.add(digest)
                continue
            if size > MAX_MANIFEST_BYTES:
                continue
            manifest = read_manifest(self.blobs.read(self.name, digest) or b"")
            if manifest is None:
                continue
            self._subjects[digest] = manifest.subject
            pending += self._mark_references(manifest)

    def _mark_references(self, manifest: Manifest) -> list[Digest]:
        """Mark what a manifest names that is not a manifest; return what to walk next: the
        manifests it names, and its subject when the repository holds it."""
        walk_next = []
        for reference in manifest.references:
            if reference.external:
                continue
            if reference.is_manifest:
                walk_next.append(reference.digest)
            else:
                self.marked.add(reference.digest)
                if self.blobs.size(self.name, reference.digest) is None:
                    self.missing.add(reference.digest)
        subject = manifest.subject
        if subject is not None and self.blobs.size(self.name, subject) is not None:
            walk_next.append(subject)
        return walk_next

    def _subject(self, digest: Digest) -> Digest | None:
        if digest not in self._subjects:
            manifest = read_manifest(self.blobs.read(self.name, digest) or b"")
            self._subjects[digest] = manifest.subject if manifest else None
        return self._subjects[digest]


def missing_closure(blobs: BlobStore, name: str, digest: Digest) -> set[Digest]:
    """What a manifest needs that `name` lacks: non-empty means serving it would break builds."""
    marker = RepositoryMarker(blobs, name, RepositoryIndex([]))
    marker.walk([digest])
    return marker.missing


def collect_garbage(
    storage: Storage,
    dry_run: bool = False,
    without_tags: Iterable[tuple[str, str]] = (),
    spare: frozenset[Digest] = frozenset(),
    serving: bool = False,
) -> GcReport:
    """Mark from every tag, then sweep unreachable blobs, untagged manifests and uploads.

    `without_tags` (`(repository, tag)` pairs) are marked as if already untagged: a dry run of
    a prune reports what dropping them and collecting would delete. While the registry is
    serving (`serving`, requests paused), uploads in progress stay, and so do `spare` blobs:
    ones a client touched lately may be named by a manifest it is about to push.
    """
    with root_lock(storage.layout, "gc"):
        return _collect(storage, dry_run, set(without_tags), spare, serving)


def _collect(
    storage: Storage,
    dry_run: bool,
    ignored: set[tuple[str, str]],
    spare: frozenset[Digest],
    serving: bool,
) -> GcReport:
    layout, indexes, blobs = storage.layout, storage.indexes, storage.blobs
    report = GcReport(dry_run=dry_run)
    doomed: list[Path] = []
    leftovers: list[Path] = []
    reachable: set[Digest] = set()
    for name in layout.repositories():
        index = indexes.read(name) or RepositoryIndex([])
        index = RepositoryIndex([e for e in index.manifests if (name, tag_of(e)) not in ignored])
        marker = RepositoryMarker(blobs, name, index)
        marked = marker.run() | spare
        reachable |= marked
        report.missing += sorted(f"{name}@{d}" for d in marker.missing)
        report.manifests_untracked += _untrack_unreachable(indexes, name, marked, dry_run)
        doomed += _unmarked_files(layout.repository(name) / "blobs", marked)
        leftovers += _leftovers(layout.repository(name))
    doomed += _unmarked_files(layout.root / "blobs", reachable)
    leftovers += sorted(layout.meta_dir.glob(".*.tmp"))  # a kill during access.json's write
    report.blob_paths = [p for p in doomed if not p.name.startswith(".")]
    report.blobs_deleted = sorted({p.name for p in report.blob_paths})
    doomed += leftovers
    report.bytes_freed = _bytes_freed(doomed)
    uploads = (
        [] if serving or not layout.uploads_dir.is_dir() else list(layout.uploads_dir.iterdir())
    )
    report.uploads_deleted = len(uploads)
    unreachable_remote = [d for d in storage.remote.blobs if Digest.parse(d) not in reachable]
    if not dry_run:
        for path in doomed + uploads:
            _remove(path)
        storage.remote.discard(unreachable_remote)  # a lazy restore's unread blobs, unneeded
        storage.remote.flush()
    return report


def _untrack_unreachable(
    indexes: IndexStore, name: str, marked: set[Digest], dry_run: bool
) -> list[str]:
    index = indexes.read(name) or RepositoryIndex([])
    dropped = [
        str(entry.get("digest"))
        for entry in index.manifests
        if tag_of(entry) is None and _parse_digest(entry.get("digest")) not in marked
    ]
    if dropped and not dry_run:

        def change(current: RepositoryIndex) -> bool:
            current.manifests = [
                e for e in current.manifests if tag_of(e) is not None or e["digest"] not in dropped
            ]
            return True

        indexes.update(name, change)
    return [f"{name}@{d}" for d in dropped]


def _unmarked_files(blob_root: Path, marked: set[Digest]) -> list[Path]:
    """Blob files under `blob_root/<alg>/` that are not marked, temp files included."""
    keep = {(d.algorithm, d.hex) for d in marked}
    found: list[Path] = []
    if not blob_root.is_dir():
        return found
    for algorithm_dir in blob_root.iterdir():
        if not algorithm_dir.is_dir():
            continue
        with os.scandir(algorithm_dir) as entries:
            found += [Path(e.path) for e in entries if (algorithm_dir.name, e.name) not in keep]
    return found


def _leftovers(repository: Path) -> list[Path]:
    """What BuildKit's type=local exporter, or a crash mid-write, leaves in a layout directory."""
    candidates = [repository / "ingest", repository / "index.json.lock"]
    return [p for p in candidates if p.exists()] + sorted(repository.glob(".*.tmp"))


def _bytes_freed(paths: list[Path]) -> int:
    """Bytes of inodes whose every link is deleted (pool and repository links share inodes)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            files += [f for f in path.rglob("*") if f.is_file()]
        else:
            files.append(path)
    links: dict[tuple[int, int], list[os.stat_result]] = defaultdict(list)
    for file in files:
        try:
            info = file.lstat()
        except FileNotFoundError:
            continue
        links[(info.st_dev, info.st_ino)].append(info)
    return sum(infos[0].st_size for infos in links.values() if len(infos) >= infos[0].st_nlink)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def drop_tags(storage: Storage, tags: set[tuple[str, str]]) -> list[str]:
    """Untag `(repository, tag)` pairs (their blobs go at the next collection)."""
    dropped = []
    with root_lock(storage.layout, "drop tags"):
        for name, tag in sorted(tags):
            if storage.indexes.exists(name) and storage.indexes.remove_tag(name, tag):
                dropped.append(f"{name}:{tag}")
    return dropped
