"""The GitHub Actions cache as a Store: one immutable archive per save.

Keys are `<namespace>/<scope>/<quoted ref>/<run id>-<attempt>` so a prefix names exactly one
(scope, ref); restore asks with the chain's prefixes as restore keys. The archive holds the root
as `.buildkit-cache/...` (the path actions/cache would use for a `.buildkit-cache` directory in
the workspace), so the official action restores what we save and we restore what it saves.
An archive is extracted into a staging directory beside the root, checked blob by blob, and
merged in like any other snapshot. Each archive carries `.cache-action/saved.json` (when it was
saved), so merged scopes are ordered by save time and the newest tag wins, whatever the order of
the chains. Superseded entries of the same scope and ref are deleted through the REST API when
the token allows it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cache_action.errors import StoreError
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName
from cache_action.storage.digests import Digest
from cache_action.storage.files import write_atomic
from cache_action.storage.layout import META_DIR, Layout
from cache_action.storage.prune import forget_remote
from cache_action.storage.remote import RemoteBlob
from cache_action.storage.root import Storage
from cache_action.storage.snapshot import BlobFetcher, Snapshot, take_snapshot
from cache_action.stores.base import EntryInfo, Found, SaveResult, SnapshotStore
from cache_action.stores.gha.archive import write_archive
from cache_action.stores.gha.blobs import ArchiveBlobs
from cache_action.stores.gha.carry import CarriedBlobs, CarryFailed
from cache_action.stores.gha.client import GhaCacheClient
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.errors import EntryExistsError, WriteDeniedError
from cache_action.stores.gha.extract import extract_stream
from cache_action.stores.gha.service import Match, UploadTarget
from cache_action.stores.gha_management import CacheManagement, CleanupDeniedError
from cache_action.stores.spec import GhaSpec

log = logging.getLogger(__name__)

PATH_LABEL = ".buildkit-cache"
REPOSITORY_LIMIT = 10 * 1000**3  # GitHub's default per-repository cache allowance
QUOTA_WARNING_SHARE = 0.8
# saved.json goes along; remote.json is empty by then (what it named was read to be saved)
NOT_ARCHIVED = ("uploads", "lock", "restored.json", "stats.json", "remote.json")


class GhaStore(SnapshotStore):
    description = "GitHub Actions cache"

    def __init__(
        self,
        client: GhaCacheClient,
        run_suffix: str,
        management: CacheManagement | None = None,
        github_ref: str | None = None,
        path_label: str = PATH_LABEL,
    ) -> None:
        self.client = client
        self.run_suffix = run_suffix
        self.management = management
        self.github_ref = github_ref
        self.path_label = path_label
        self.blobs = ArchiveBlobs(client, path_label)

    @classmethod
    def open(cls, spec: GhaSpec, runner: RunnerContext) -> GhaStore:
        """The job's cache service; with a token, superseded entries are cleaned up too."""
        run = runner.run_id
        suffix = f"{run}-{runner.run_attempt}" if run else f"{int(time.time())}"
        token, repository = spec.github_token or runner.token, runner.git.repository
        management = None
        if token and repository:
            management = CacheManagement(token, repository, runner.api_url)
        client = GhaCacheClient(GhaCacheConfig.from_variables(runner.cache_service))
        return cls(client, suffix, management, runner.git.ref)

    # --- restore ---

    def _find(self, chain: Sequence[EntryName], workdir: Path, lazy: bool) -> Found | None:
        match = self.client.lookup(
            chain[0].prefix, [name.prefix for name in chain], [self.path_label]
        )
        if match is None:
            return None
        if lazy:
            found = self._index(chain, match)
            if found is not None:
                return found
            log.info("%s has no blob index: restoring all of it", match.matched_key)
        extracted, size = self._download(match, workdir)
        snapshot = take_snapshot(extracted)
        snapshot.created_at = _saved_at(extracted.layout)  # not the time it was extracted
        return Found(_info(chain, match), snapshot, _linker(extracted.layout), downloaded=size)

    def _index(self, chain: Sequence[EntryName], match: Match) -> Found | None:
        """A lazy restore reads the archive's index, not the archive (frames.py): the entry's
        snapshot and where each blob's frame is. Blobs are then read one by one by range."""
        index, read = self.blobs.index(match)
        if index is None:
            return None
        try:
            snapshot = Snapshot.from_document(index["snapshot"])
            frames = {str(d): [int(v) for v in f] for d, f in index["blobs"].items()}
        except (KeyError, TypeError, ValueError, AttributeError, StoreError) as error:
            log.warning("%s has an unreadable index (%s): restoring all of it", match, error)
            return None
        key = match.matched_key

        def locate(digest: str) -> dict[str, Any]:
            return {"key": key, "frame": frames[digest]} if digest in frames else {}

        def fetch(digest: Digest, target: Path) -> int:
            remote = RemoteBlob(snapshot.blobs[str(digest)], frozenset(), locate(str(digest)))
            with open(target, "wb") as out:
                return self.blobs.fetch(digest, remote, out.write)

        return Found(_info(chain, match), snapshot, fetch, downloaded=read, locate=locate)

    def _download(self, match: Match, folder: Path) -> tuple[Storage, int]:
        """Extract the entry while it downloads; its root and the archive's size."""
        folder.mkdir(parents=True)
        with self.client.open_download(match) as archive:
            extract_stream(archive, folder, name=f"cache entry {match.matched_key}")
        root = folder / self.path_label
        if not root.is_dir():
            raise StoreError(f"cache entry {match.matched_key} holds no {self.path_label}/")
        return Storage.open(root), archive.size

    def _discard(self, digests: Iterable[str]) -> None:
        """Entries are immutable archives: the next save writes a new one anyway."""

    # --- save ---

    def _put(
        self, storage: Storage, name: EntryName, snapshot: Snapshot, result: SaveResult
    ) -> None:
        """An entry is one archive of the whole root: a lazy restore's unread blobs are read
        back (after the reservation succeeded, only what prune kept of them) while the archive
        is written (carry.py). If one cannot be read (its entry was superseded or evicted since
        the restore), the archive starts again without the tags that need it."""
        key = f"{name.prefix}{self.run_suffix}"
        try:  # ask first: a 409 or a read-only token costs no reading and no archiving
            target = self.client.reserve(key, self.client.version([self.path_label]))
        except EntryExistsError:
            result.skipped_reason = "another job already saved this entry"
            return
        except WriteDeniedError as error:
            result.skipped_reason = f"the cache is read-only here ({error})"
            return
        carried = CarriedBlobs(storage, self.blobs, self.workers)
        try:
            size = self._upload(storage.layout, target, snapshot, carried)
        except CarryFailed as error:
            carried.close()
            snapshot = self._without_lost_blobs(storage, error)
            size = self._upload(storage.layout, target, snapshot, None)
        finally:
            carried.close()
            storage.remote.flush()
        if len(carried):
            log.info("read back %d blobs (%d bytes)", len(carried), carried.bytes_read)
        result.bytes_uploaded = size
        result.saved = True
        result.key = key
        result.blobs_uploaded = len(snapshot.blobs)
        self._delete_superseded(name, key, result)
        self._check_quota(result)

    def _upload(
        self,
        layout: Layout,
        target: UploadTarget,
        snapshot: Snapshot,
        pending: CarriedBlobs | None,
    ) -> int:
        """Archive the root into the reserved entry and finalize it; the archive's size."""
        saved = {"created_at": snapshot.created_at, "key": target.key}
        write_atomic(layout.saved_path, json.dumps(saved).encode())
        upload = self.client.start_upload(target)
        try:  # the archive goes straight into the upload: no archive file
            write_archive(
                layout.root.parent,
                [layout.root.name],
                upload,
                exclude=[f"{self.path_label}/{META_DIR}/{item}" for item in NOT_ARCHIVED],
                arcname=self.path_label,
                index={"snapshot": snapshot.to_document()},  # blobs readable one by one
                pending=pending,
            )
        except BaseException:
            upload.abort()
            raise
        self.client.finish(target, upload)
        return upload.size

    def _without_lost_blobs(self, storage: Storage, error: CarryFailed) -> Snapshot:
        """Read what can still be read, forget what cannot (and the tags needing it); the
        snapshot to save instead."""
        again = CarriedBlobs(storage, self.blobs, self.workers)
        try:
            lost = again.drain()
        finally:
            again.close()
        dropped = forget_remote(storage, lost)
        log.warning(
            "%s; %d blobs are lost: saving without the tags that need them (%s)",
            error,
            len(lost),
            ", ".join(dropped) or "none",
        )
        return take_snapshot(storage)

    def _check_quota(self, result: SaveResult) -> None:
        """Warn before GitHub starts evicting: past the limit it deletes least recently used
        entries of the whole repository, ours and everyone else's."""
        if self.management is None:
            return
        try:
            usage = self.management.usage()
        except Exception as error:
            log.info("cache usage unavailable: %s", error)
            return
        if usage is not None and usage.active_bytes >= QUOTA_WARNING_SHARE * REPOSITORY_LIMIT:
            result.warnings.append(
                f"this repository's Actions caches use {usage.active_bytes / 1e9:.1f} GB "
                f"({usage.active_count} entries) of the usual {REPOSITORY_LIMIT / 1e9:.0f} GB "
                "limit; GitHub evicts the least recently used entries beyond it. Lower max-size, "
                "or raise the repository's cache limit."
            )

    def _delete_superseded(self, name: EntryName, key: str, result: SaveResult) -> None:
        if self.management is None or not self.github_ref:
            return
        try:
            deleted = self.management.delete_superseded(name.prefix, key, self.github_ref)
        except CleanupDeniedError as error:
            result.warnings.append(str(error))  # the stages make it an annotation
            return
        except Exception as error:
            log.warning("could not delete superseded cache entries: %s", error)
            return
        if deleted:
            log.info("deleted %d superseded cache entries of %s", len(deleted), name.prefix)

    # --- management ---

    def list_entries(self, namespace: str) -> list[EntryInfo]:
        if self.management is None:
            raise StoreError(
                "listing Actions cache entries needs GITHUB_TOKEN and GITHUB_REPOSITORY"
            )
        from github import GithubException  # imported late: 0.2 s a restore does not need

        entries = []
        try:
            listed = self.management.list_entries(f"{namespace}/")
        except GithubException as error:
            raise StoreError(f"could not list Actions cache entries: HTTP {error.status}") from None
        for entry in listed:
            parts = entry.key.split("/")
            if len(parts) == 4:
                name = EntryName(parts[0], parts[1], unquote(parts[2]))
                created = entry.created
                seconds = created.timestamp() if created is not None else 0.0
                entries.append(EntryInfo(name, entry.key, seconds, entry.size))
        return entries

    def delete(self, entry: EntryInfo) -> None:
        if self.management is None:
            raise StoreError(
                "deleting Actions cache entries needs GITHUB_TOKEN and GITHUB_REPOSITORY"
            )
        from github import GithubException

        try:
            self.management.delete_key(entry.key)
        except GithubException as error:
            if error.status == 404:
                return  # already gone: deleting is idempotent, as in the other stores
            raise StoreError(
                f"could not delete Actions cache entry {entry.key}: HTTP {error.status}"
            ) from None


def _info(chain: Sequence[EntryName], match: Match) -> EntryInfo:
    for name in chain:
        if match.matched_key.startswith(name.prefix):
            return EntryInfo(name, match.matched_key, 0.0)
    return EntryInfo(chain[0], match.matched_key, 0.0)


def _saved_at(extracted: Layout) -> float:
    """When the entry was saved: our `saved.json`, or for an archive someone else made (the
    official action saving `.buildkit-cache`) the newest index.json in it; the later of the two
    when a root we once saved was archived again."""
    recorded = 0.0
    try:
        document = json.loads(extracted.saved_path.read_bytes())
        recorded = float(document["created_at"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    indexes = [extracted.index_path(name) for name in extracted.repositories()]
    written = max((path.stat().st_mtime for path in indexes if path.is_file()), default=0.0)
    return max(recorded, written)


def _linker(source: Layout) -> BlobFetcher:
    """Blobs come from the extracted tree on the same filesystem: link, do not copy (the
    archive's bytes were counted as it downloaded)."""

    def fetch(digest: Digest, target: Path) -> int:
        found = source.find_blob(digest)
        if found is None:
            raise StoreError(f"the cache entry lacks blob {digest}")
        os.link(found, target)
        return 0

    return fetch
