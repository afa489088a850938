"""Blobs: immutable, content-addressed, stored once in the pool and linked into repositories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cache_action.storage.digests import Digest
from cache_action.storage.files import fsync_dir, link_or_copy, write_temp
from cache_action.storage.index import IndexStore
from cache_action.storage.layout import Layout
from cache_action.storage.remote import RemoteBlobs


class BlobStore:
    """Existence is read from disk, never cached: a stale 'present' breaks builds. Blobs a lazy
    restore left in the store (`remote`) exist too: their record is the restored entry's."""

    def __init__(
        self, layout: Layout, indexes: IndexStore, remote: RemoteBlobs | None = None
    ) -> None:
        self.layout = layout
        self.indexes = indexes
        self.remote = remote if remote is not None else RemoteBlobs(layout)

    def path(self, name: str, digest: Digest) -> Path:
        return self.layout.repo_blob(name, digest)

    def size(self, name: str, digest: Digest) -> int | None:
        """The blob's size in `name`, or None when the repository does not hold it."""
        local = self.local_size(name, digest)
        return local if local is not None else self.remote.size(name, digest)

    def local_size(self, name: str, digest: Digest) -> int | None:
        """The size of the blob's file in `name`; None when it is not on disk (yet)."""
        try:
            return os.stat(self.path(name, digest)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, name: str, digest: Digest) -> bytes | None:
        """Small blobs only (manifests, configs)."""
        try:
            return self.path(name, digest).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def in_pool(self, digest: Digest) -> bool:
        return self.layout.pool_blob(digest).is_file()

    def commit(self, name: str, digest: Digest, verified_file: Path) -> None:
        """Publish a file whose content is known to match `digest` (and is fsynced)."""
        pool = self.layout.pool_blob(digest)
        try:
            link_or_copy(verified_file, pool)  # never replaces a pool file another commit linked
        finally:
            verified_file.unlink(missing_ok=True)
        fsync_dir(pool.parent)
        self._link(name, digest)

    def put_bytes(self, name: str, digest: Digest, data: bytes) -> None:
        """Store a small blob (a manifest) whose digest the caller computed from `data`."""
        if self.local_size(name, digest) is not None:
            return
        pool = self.layout.pool_blob(digest)
        if not pool.is_file():
            tmp = write_temp(pool, data)
            try:
                link_or_copy(tmp, pool)  # never replaces a pool file another request linked
            finally:
                tmp.unlink(missing_ok=True)
        self._link(name, digest)

    def mount(self, name: str, digest: Digest, source: str | None) -> bool:
        """Link a blob from `source` (or, with no source, from the pool) into `name`."""
        if source is not None:
            origin = self.path(source, digest)
            if not origin.is_file():
                return False
            if not self.in_pool(digest):  # a repository file with no pool entry yet
                link_or_copy(origin, self.layout.pool_blob(digest))
        elif not self.in_pool(digest):
            return False
        self._link(name, digest)
        return True

    def delete(self, name: str, digest: Digest) -> bool:
        """Unlink from one repository; the pool copy goes at the next garbage collection."""
        try:
            self.path(name, digest).unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def commit_fetched(self, digest: Digest, checked: Path, repositories: Iterable[str]) -> None:
        """A blob a lazy restore left in its store has arrived and checks out: into the pool,
        then every repository that holds it. `checked` stays (its readers keep reading)."""
        pool = self.layout.pool_blob(digest)
        pool.parent.mkdir(parents=True, exist_ok=True)
        if not pool.is_file():
            link_or_copy(checked, pool)
        for name in repositories:
            if self.local_size(name, digest) is None:
                self._link(name, digest)

    def _link(self, name: str, digest: Digest) -> None:
        self.indexes.ensure(name)
        link_or_copy(self.layout.pool_blob(digest), self.path(name, digest))
