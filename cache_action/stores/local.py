"""The local-directory backend (also for NFS mounts): files published by atomic rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from cache_action.storage.digests import Digest
from cache_action.storage.files import link_or_copy, write_atomic
from cache_action.stores.base import StoreError
from cache_action.stores.content import StoredObject


class LocalBackend:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()
        self.description = f"local:{self.directory}"

    def _path(self, key: str) -> Path:
        path = (self.directory / key).resolve()
        if not path.is_relative_to(self.directory.resolve()):
            raise StoreError(f"refusing a key outside the store: {key!r}")
        return path

    def _blob(self, digest: Digest) -> Path:
        return self.directory / "blobs" / digest.algorithm / digest.hex

    def missing_blobs(self, digests: Sequence[str]) -> set[str]:
        return {d for d in digests if not self._blob(Digest.parse(d)).is_file()}

    def put_blob(self, digest: Digest, source: Path) -> None:
        """Hard link when the store shares the root's filesystem, else copy; both atomic."""
        link_or_copy(source, self._blob(digest))

    def get_blob(self, digest: Digest, target: Path) -> None:
        source = self._blob(digest)
        if not source.is_file():
            raise StoreError(f"blob {digest} is missing from {self.description}")
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)

    def stream_blob(self, digest: Digest, write: Callable[[bytes], object]) -> int:
        """The blob's bytes to `write`, in order (a lazy restore's fetch); its size."""
        try:
            with open(self._blob(digest), "rb") as source:
                size = 0
                while chunk := source.read(1 << 20):
                    write(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from {self.description}") from None
        return size

    def put_object(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def get_object(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def list_objects(self, prefix: str) -> list[StoredObject]:
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.directory
        if not base.is_dir():
            return []
        found = []
        directory = self.directory.resolve()  # `base` is resolved: a symlinked store works
        for path in base.rglob("*"):
            key = path.relative_to(directory).as_posix()
            if not key.startswith(prefix) or path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # deleted by a concurrent save since the directory scan
                continue
            if stat.S_ISREG(info.st_mode):
                found.append(StoredObject(key, info.st_size, info.st_mtime))
        return found

    def delete_object(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()
