"""One repository of a root as the registry reads and writes it.

Every read and write of a handler goes through here, so what a build touches is recorded in
one place (prune keeps what builds use: a handler that forgot a `touch` would let it evict a
blob the build just pulled) and counted in one place (the job summary's traffic). The HTTP layer
keeps only HTTP: parsing requests, status codes and headers (distribution's repository /
notifications split, in small).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cache_action.errors import ErrorCode, OCIError
from cache_action.storage.digests import Digest, Hasher
from cache_action.storage.index import Descriptor, RepositoryIndex, descriptor
from cache_action.storage.layout import parse_reference, validate_name
from cache_action.storage.manifests import (
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Manifest,
    parse_manifest,
    read_manifest,
)
from cache_action.storage.root import Storage
from cache_action.storage.uploads import UploadSession


class Counters(Protocol):
    """What a run counts (registry/stats.py's RunStats)."""

    manifest_hits: int
    manifest_misses: int
    blob_hits: int
    blob_misses: int
    blobs_pushed: int
    manifests_pushed: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class BlobFile:
    path: Path
    size: int
    digest: Digest
    local: bool = True  # False: still in the store a lazy restore left it in


@dataclass(frozen=True)
class FoundManifest:
    digest: Digest
    media_type: str
    body: bytes
    tag: str | None


@dataclass(frozen=True)
class PushedManifest:
    digest: Digest
    subject: Digest | None


class Repository:
    def __init__(self, storage: Storage, name: str, counters: Counters) -> None:
        self.storage = storage
        self.name = validate_name(name)
        self.counters = counters

    # --- reads ---

    def index(self) -> RepositoryIndex:
        index = self.storage.indexes.read(self.name)
        if index is None:
            raise OCIError(ErrorCode.NAME_UNKNOWN, f"repository {self.name} is not known")
        return index

    def blob(self, digest: Digest | None, asked: str) -> BlobFile:
        """A blob to send (HEAD or GET): recorded as used. `digest` None: a well-formed one of
        an algorithm nothing is stored under, `asked` as the client wrote it."""
        size = None if digest is None else self.storage.blobs.size(self.name, digest)
        if digest is None or size is None:
            self.counters.blob_misses += 1
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {asked[:200]} is not in {self.name}")
        self.counters.blob_hits += 1
        self.storage.access.touch_blob(digest)
        local = self.storage.blobs.local_size(self.name, digest) is not None
        return BlobFile(self.storage.blobs.path(self.name, digest), size, digest, local)

    def on_disk(self, blob: BlobFile) -> BlobFile:
        """The blob again once a fetch ended: its file, or BLOB_UNKNOWN when it failed."""
        if self.storage.blobs.local_size(self.name, blob.digest) is None:
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {blob.digest} is not in {self.name}")
        return BlobFile(blob.path, blob.size, blob.digest)

    def sent(self, count: int) -> None:
        """Bytes of a response body (a Range may send less than the blob)."""
        self.counters.bytes_out += count

    def manifest(self, reference: str) -> FoundManifest:
        """The manifest a tag or digest names, recorded as used. A reference that cannot exist
        (not a valid tag, a malformed digest) names nothing: MANIFEST_UNKNOWN, no path built."""
        try:
            found = self._resolve(reference)
        except OCIError as error:
            if error.code in (ErrorCode.MANIFEST_UNKNOWN, ErrorCode.NAME_UNKNOWN):
                self.counters.manifest_misses += 1
            raise
        self.counters.manifest_hits += 1
        self.storage.access.touch_manifest(self.name, found.digest)
        if found.tag is not None:
            self.storage.access.touch_tag(self.name, found.tag)
        return found

    def _resolve(self, reference: str) -> FoundManifest:
        index = self.index()  # first: in a repository that does not exist, all is NAME_UNKNOWN
        try:
            wanted = parse_reference(reference)
        except OCIError as error:
            message = f"no such manifest in {self.name}: {error.message}"
            raise OCIError(ErrorCode.MANIFEST_UNKNOWN, message) from None
        tag = None
        if isinstance(wanted, Digest):
            digest = wanted
            entry = index.by_digest(digest)
        else:
            tag = wanted
            entry = index.by_tag(tag)
            if entry is None:
                raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"tag {tag} is not in {self.name}")
            digest = Digest.parse(entry["digest"])
        blobs = self.storage.blobs
        size = blobs.size(self.name, digest)
        body = blobs.read(self.name, digest) if size and size <= MAX_MANIFEST_BYTES else None
        if body is None:
            raise OCIError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {self.name}"
            )
        if entry is not None and isinstance(entry.get("mediaType"), str):
            return FoundManifest(digest, entry["mediaType"], body, tag)
        manifest = read_manifest(body)  # a manifest whose tag moved on: its body says what it is
        if manifest is None:
            raise OCIError(
                ErrorCode.MANIFEST_UNKNOWN, f"{reference} is not a manifest in {self.name}"
            )
        return FoundManifest(digest, manifest.media_type, body, tag)

    def tags(self, after: str | None = None) -> list[str]:
        """Sorted; `after` is a position in that order, not a lookup."""
        tags = self.index().tags()
        return tags if after is None else [t for t in tags if t > after]

    def referrers(self, subject: Digest | None, artifact_type: str | None) -> list[Descriptor]:
        """Descriptors of the manifests whose subject is `subject`, each listed once; nothing
        for a subject no manifest here can name, or a repository that does not exist."""
        index = self.storage.indexes.read(self.name)
        if subject is None or index is None:
            return []
        found: dict[str, Descriptor] = {}
        for entry in index.manifests:
            if entry.get("mediaType") not in MANIFEST_TYPES or entry["digest"] in found:
                continue
            item = self._referrer(entry, subject, artifact_type)
            if item is not None:
                found[entry["digest"]] = item
        return list(found.values())

    def _referrer(
        self, entry: Descriptor, subject: Digest, wanted_type: str | None
    ) -> Descriptor | None:
        body = self.storage.blobs.read(self.name, Digest.parse(entry["digest"]))
        manifest = read_manifest(body) if body is not None else None
        if manifest is None or manifest.subject != subject:
            return None
        artifact_type = manifest.artifact_type or manifest.config_media_type
        if wanted_type is not None and artifact_type != wanted_type:
            return None
        item: Descriptor = {
            "mediaType": manifest.media_type,
            "digest": entry["digest"],
            "size": entry.get("size", len(body or b"")),
        }
        if artifact_type:
            item["artifactType"] = artifact_type
        if manifest.annotations:
            item["annotations"] = manifest.annotations
        return item

    # --- uploads ---

    def start_upload(self) -> UploadSession:
        self.storage.indexes.ensure(self.name)
        return self.storage.uploads.start(self.name)

    def upload(self, session_id: str) -> UploadSession:
        return self.storage.uploads.get(self.name, session_id)

    async def receive(
        self, session: UploadSession, body: AsyncIterator[bytes], limit: int | None = None
    ) -> int:
        written = await self.storage.uploads.append(session, body, limit=limit)
        self.counters.bytes_in += written
        return written

    async def finish_upload(self, session: UploadSession, digest: Digest) -> None:
        await self.storage.uploads.finish(session, digest)
        self.counters.blobs_pushed += 1
        self.storage.access.touch_blob(digest)

    def rewind(self, session: UploadSession, offset: int, hasher: Hasher) -> None:
        """Undo a chunk that failed half way: a chunk is all or nothing."""
        self.storage.uploads.rewind(session, offset, hasher)

    def cancel_upload(self, session: UploadSession) -> None:
        self.storage.uploads.cancel(session)

    def mount(self, digest: Digest, source: str | None) -> bool:
        """Link a blob the pool (or `source`) has; False when it cannot (upload it instead)."""
        mounted = self.storage.blobs.mount(self.name, digest, source)
        if mounted:
            self.storage.access.touch_blob(digest)
        return mounted

    # --- manifests ---

    def push_manifest(
        self, target: str | Digest, body: bytes, content_type: str | None
    ) -> PushedManifest:
        """`target` is the tag, or the digest the client says the body has. Blobs first, then
        the index entry: a tag never points at a missing manifest."""
        manifest = parse_manifest(body, content_type)
        wanted = target if isinstance(target, Digest) else None
        digest = Digest.of(body, wanted.algorithm if wanted else "sha256")
        if wanted is not None and wanted != digest:
            raise OCIError(
                ErrorCode.DIGEST_INVALID, f"the manifest hashes to {digest}, not {wanted}"
            )
        missing = self._missing_references(manifest)
        if missing:
            raise OCIError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"the manifest references {len(missing)} blob(s) not in {self.name}",
                detail={"missing": missing},
            )
        self.storage.blobs.put_bytes(self.name, digest, body)
        entry = descriptor(manifest.media_type, digest, len(body))
        tag = target if isinstance(target, str) else None
        if tag is None:
            self.storage.indexes.add_untagged(self.name, entry)
        else:
            self.storage.indexes.set_tag(self.name, tag, entry)
            self.storage.access.touch_tag(self.name, tag)
        self.storage.access.touch_manifest(self.name, digest)
        self.counters.manifests_pushed += 1
        self.counters.bytes_in += len(body)
        return PushedManifest(digest, manifest.subject)

    def _missing_references(self, manifest: Manifest) -> list[str]:
        blobs = self.storage.blobs
        return sorted(
            {
                str(reference.digest)
                for reference in manifest.references
                if not reference.external and blobs.size(self.name, reference.digest) is None
            }
        )

    def delete_manifest(self, target: str | Digest, reference: str) -> None:
        """By digest, only a manifest (a layer is never deleted through here) and its tags; by
        tag, the tag alone."""
        indexes = self.storage.indexes
        if isinstance(target, Digest):
            try:
                self._resolve(reference)
            except OCIError:
                found = indexes.remove_digest(self.name, target)  # a dangling entry, if any
            else:
                indexes.remove_digest(self.name, target)
                found = self.storage.blobs.delete(self.name, target)
        else:
            found = indexes.remove_tag(self.name, target)
        if not found:
            raise OCIError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {self.name}"
            )

    def delete_blob(self, digest: Digest) -> None:
        if not self.storage.blobs.delete(self.name, digest):
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {self.name}")
