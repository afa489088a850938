"""Where everything lives under a registry root. The one place that computes a path.

    <root>/
      blobs/<alg>/<hex>                 content pool: every blob once, shared by all repositories
      <repository>/                     one OCI image layout per repository ("org/cache" nests)
        oci-layout                      {"imageLayoutVersion": "1.0.0"}
        index.json                      tags (annotation org.opencontainers.image.ref.name) and
                                        manifests pushed by digest (no ref.name)
        blobs/<alg>/<hex>               hard links into the pool (a copy where links fail)
      .cache-action/                    our own bookkeeping, never a repository
        access.json                     last write/read time per tag, manifest and blob
        stats.json                      the last run's counters, written at graceful shutdown
        restored.json                   what restore brought (its fingerprint skips no-op saves)
        saved.json                      when an archive of the root was saved (Actions cache)
        remote.json                     blobs a lazy restore left in the store (storage/remote.py)
        uploads/<uuid>                  upload sessions in progress (never archived)
        lock                            flock held by whoever writes the root (serve, gc, prune)

Each repository directory is a valid OCI image layout on its own, so BuildKit can read it
without a server (`--cache-from type=local,src=<root>/<repository>`), and skopeo as `oci:`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from cache_action.errors import ErrorCode, InputError, OCIError
from cache_action.storage.digests import Digest, looks_like_digest

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Components that would collide with the OCI layout files inside a repository directory.
_RESERVED_COMPONENTS = frozenset({"blobs", "index.json", "oci-layout", "ingest", "index.json.lock"})
MAX_NAME_LENGTH = 255
META_DIR = ".cache-action"


def validate_name(name: str) -> str:
    """A repository name per the distribution spec, minus components our layout reserves."""
    components = name.split("/")
    if len(name) > MAX_NAME_LENGTH or not all(_COMPONENT.fullmatch(c) for c in components):
        raise OCIError(
            ErrorCode.NAME_INVALID,
            f"invalid repository name {name[:300]!r}: expected lowercase path components "
            "[a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/', at most 255 characters",
        )
    reserved = _RESERVED_COMPONENTS.intersection(components)
    if reserved:
        raise OCIError(
            ErrorCode.NAME_INVALID,
            f"invalid repository name {name!r}: the component {sorted(reserved)[0]!r} is reserved",
        )
    return name


def validate_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise OCIError(
            ErrorCode.MANIFEST_INVALID,
            f"invalid tag {tag[:200]!r}: expected [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}",
        )
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a Digest when it has a colon (tags cannot), else a valid tag.
    Raises DIGEST_INVALID or MANIFEST_INVALID; what that means is the caller's to say."""
    return Digest.parse(reference) if looks_like_digest(reference) else validate_tag(reference)


class Layout:
    """Path arithmetic over one root; callers validate names first (validate_name)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.meta_dir = self.root / META_DIR
        self.uploads_dir = self.meta_dir / "uploads"
        self.access_path = self.meta_dir / "access.json"
        self.stats_path = self.meta_dir / "stats.json"
        self.restored_path = self.meta_dir / "restored.json"  # what the root held after restore
        self.saved_path = self.meta_dir / "saved.json"  # when an archived root was saved
        self.remote_path = self.meta_dir / "remote.json"  # blobs a lazy restore left in store
        self.lock_path = self.meta_dir / "lock"

    def create(self) -> None:
        for directory in (self.root, self.meta_dir, self.uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def pool_blob(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def repository(self, name: str) -> Path:
        return self.root / name

    def repo_blob(self, name: str, digest: Digest) -> Path:
        return self.root / name / "blobs" / digest.algorithm / digest.hex

    def index_path(self, name: str) -> Path:
        return self.root / name / "index.json"

    def find_blob(self, digest: Digest) -> Path | None:
        """The pool copy, else any repository's (a root written by another tool has no pool)."""
        pooled = self.pool_blob(digest)
        if pooled.is_file():
            return pooled
        for name in self.repositories():
            candidate = self.repo_blob(name, digest)
            if candidate.is_file():
                return candidate
        return None

    def repositories(self) -> Iterator[str]:
        """Every repository under the root, found by its index.json, in sorted order."""
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d != "blobs" and not d.startswith("."))
            if "index.json" in filenames and dirpath != str(self.root):
                found.append(Path(dirpath).relative_to(self.root).as_posix())
        return iter(sorted(found))


def usable_root(setting: str, path: Path | str, *, create: bool = True) -> Layout:
    """The root a command was given, checked before anything touches it: a directory this
    process may write (created when `create`, else it must exist). InputError otherwise."""
    layout = Layout(path)
    if layout.root.exists() and not layout.root.is_dir():
        raise InputError(setting, str(path), "a directory, not a file")
    if not create and not layout.root.is_dir():
        raise InputError(setting, str(path), "an existing directory")
    for directory in (layout.root, layout.meta_dir):
        if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
            raise InputError(setting, str(path), f"a directory this user may write ({directory})")
    if create:
        try:
            layout.create()
        except OSError as error:
            reason = error.strerror or str(error)
            accepted = f"a directory this user may create ({reason})"
            raise InputError(setting, str(path), accepted) from None
    return layout
