"""`GhaCacheClient`: the Actions cache as the rest of the package uses it.

Saving asks first and archives after: `reserve` (CreateCacheEntry) costs one request, so an
entry that already exists (409) or a read-only token is found out before any tar+zstd work —
@actions/cache archives first and pays 1-3 s per GB for nothing in those cases. Then the
archiver writes into `start_upload`, which sends blocks as they fill, and `finish` finalizes
the entry (`commit` does both for a ready archive file, `save` all three). Restoring streams
the download into the safe extractor: no archive file, and extraction keeps pace with the
download.

Errors are `GhaCacheError`s (warn and go on without the cache) or `InputError`s for bad keys;
`EntryExistsError` is informational. Nothing here logs a signed URL's secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cache_action.stores.gha.archive import ArchiveStats
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.download import BlobReader, download_file, open_blob
from cache_action.stores.gha.errors import EntryExistsError, WriteDeniedError
from cache_action.stores.gha.extract import extract_archive, extract_stream
from cache_action.stores.gha.keys import validate_key, validate_keys
from cache_action.stores.gha.legacy import LegacyCacheService
from cache_action.stores.gha.service import CacheService, Match, UploadTarget
from cache_action.stores.gha.transfer import DEFAULT_TRANSFER, TransferOptions
from cache_action.stores.gha.twirp import TwirpCacheService
from cache_action.stores.gha.upload import ArchiveUpload, feed_file
from cache_action.stores.gha.version import ZSTD_WITHOUT_LONG, cache_version
from cache_action.stores.retry import DEFAULT_POLICY, RetryPolicy

log = logging.getLogger("cache_action.stores.gha")

__all__ = ["GhaCacheClient", "Match", "UploadTarget"]


class GhaCacheClient:
    def __init__(
        self,
        config: GhaCacheConfig,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        transfer: TransferOptions = DEFAULT_TRANSFER,
        compression: str = ZSTD_WITHOUT_LONG,
        service: CacheService | None = None,
    ) -> None:
        self.config = config
        self.compression = compression
        self.transfer = transfer
        if service is None:
            if config.protocol == "v2":
                service = TwirpCacheService(config, policy, transfer)
            else:
                service = LegacyCacheService(config, policy)
        self.service = service

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        transfer: TransferOptions = DEFAULT_TRANSFER,
        compression: str = ZSTD_WITHOUT_LONG,
    ) -> GhaCacheClient:
        config = GhaCacheConfig.from_env(os.environ if env is None else env)
        return cls(config, policy=policy, transfer=transfer, compression=compression)

    def version(self, paths: Sequence[str]) -> str:
        """The entry version for these path strings (as the user wrote them) and our
        compression; equal to actions/cache's for the same strings."""
        return cache_version(paths, self.compression)

    # --- restore ---

    def lookup(
        self, key: str, restore_keys: Sequence[str], version_paths: Sequence[str]
    ) -> Match | None:
        """The entry to restore, or None (miss, read denied, or ACTIONS_CACHE_MODE forbids
        reading). Raises InputError for invalid keys, GhaCacheError when the service fails."""
        validate_keys(key, restore_keys)
        if not self.config.readable:
            log.info(
                "cache restore skipped: ACTIONS_CACHE_MODE=%s does not permit reads",
                self.config.mode,
            )
            return None
        match = self.service.lookup(key, restore_keys, self.version(version_paths))
        if match is None:
            log.info("cache miss for %s", key)
        else:
            log.info(
                "cache hit for %s%s", match.matched_key, "" if match.exact else " (restore key)"
            )
        return match

    def download(self, match: Match, dest_file: Path) -> int:
        """The matched archive into `dest_file` (written only when complete); its size."""
        return download_file(match.download_url, dest_file, self.transfer)

    def open_download(self, match: Match) -> BlobReader:
        """The matched archive as a stream, fetched ahead in parallel ranges."""
        return open_blob(match.download_url, self.transfer)

    def restore(
        self,
        key: str,
        restore_keys: Sequence[str],
        version_paths: Sequence[str],
        dest_dir: Path,
        *,
        owner: tuple[int, int] | None = None,
    ) -> Match | None:
        """lookup → download while extracting safely into `dest_dir` (e.g. GITHUB_WORKSPACE);
        nothing reaches `dest_dir` unless the whole archive arrived and checked out."""
        match = self.lookup(key, restore_keys, version_paths)
        if match is None:
            return None
        with self.open_download(match) as archive:
            extract_stream(archive, dest_dir, owner=owner)
        return match

    @staticmethod
    def extract(
        archive: Path, dest_dir: Path, *, owner: tuple[int, int] | None = None
    ) -> ArchiveStats:
        return extract_archive(archive, dest_dir, owner=owner)

    # --- save ---

    def reserve(self, key: str, version: str, size: int | None = None) -> UploadTarget:
        """Create the entry before archiving. EntryExistsError: another job saved it;
        WriteDeniedError: read-only token or cache mode. `size` is sent to v1 only."""
        validate_key(key)
        if not self.config.writable:
            raise WriteDeniedError(
                f"cannot save {key!r}: ACTIONS_CACHE_MODE={self.config.mode} does not permit writes"
            )
        return self.service.reserve(key, version, size)

    def start_upload(self, target: UploadTarget) -> ArchiveUpload:
        """An upload for a reserved entry that the archiver writes into; `finish` it once
        the archive is complete (or `abort` it if archiving failed)."""
        return self.service.start_upload(target)

    def finish(self, target: UploadTarget, upload: ArchiveUpload) -> int:
        """Send what remains of the archive and finalize the entry; returns the entry id."""
        size = upload.finish()
        entry_id = self.service.finalize(target, size)
        log.info("cache saved: %s (%d bytes, entry %d)", target.key, size, entry_id)
        return entry_id

    def commit(self, target: UploadTarget, archive_file: Path) -> int:
        """Upload a ready archive file for a reserved entry and finalize it; the entry id."""
        upload = self.start_upload(target)
        feed_file(archive_file, upload)
        return self.finish(target, upload)

    def save(self, key: str, version_paths: Sequence[str], archive_file: Path) -> int | None:
        """reserve → upload → finalize a ready archive. None when the entry exists already or
        writes are not permitted (both logged); GhaCacheError on failures."""
        try:
            target = self.reserve(key, self.version(version_paths), archive_file.stat().st_size)
        except EntryExistsError as error:
            log.info("cache not saved: %s", error)
            return None
        except WriteDeniedError as error:
            log.warning("cache not saved: %s", error)
            return None
        return self.commit(target, archive_file)
