"""Manifests (by tag or digest), tag listing and the referrers API.

Manifests are stored byte-for-byte and served with the media type they were pushed with, and
HEAD carries the real Content-Length: BuildKit builds its descriptor from HEAD alone.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import Registry, lookup_digest_of, name_of, registry_of
from cache_action.storage.digests import Digest
from cache_action.storage.index import Descriptor, RepositoryIndex, descriptor
from cache_action.storage.layout import parse_reference
from cache_action.storage.manifests import (
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Manifest,
    parse_manifest,
    read_manifest,
)


@dataclass(frozen=True)
class _Resolved:
    digest: Digest
    media_type: str
    body: bytes
    tag: str | None


def _repository(registry: Registry, name: str) -> RepositoryIndex:
    index = registry.storage.indexes.read(name)
    if index is None:
        raise OCIError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known")
    return index


def _pulled_reference(name: str, reference: str) -> str | Digest:
    """A GET/HEAD reference that is neither a valid tag nor a digest we store names no manifest:
    404 like any other miss (the spec gives end-3 no 400), and no path is built from it."""
    try:
        return parse_reference(reference)
    except OCIError as error:
        message = f"no such manifest in {name}: {error.message}"
        raise OCIError(ErrorCode.MANIFEST_UNKNOWN, message) from None


def _resolve(registry: Registry, name: str, reference: str) -> _Resolved:
    """The repository first: in one that does not exist every reference is NAME_UNKNOWN."""
    index = _repository(registry, name)
    wanted = _pulled_reference(name, reference)
    tag = None
    if isinstance(wanted, Digest):
        digest = wanted
        entry = index.by_digest(digest)
    else:
        tag = wanted
        entry = index.by_tag(tag)
        if entry is None:
            raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"tag {tag} is not in {name}")
        digest = Digest.parse(entry["digest"])
    size = registry.storage.blobs.size(name, digest)
    body = (
        registry.storage.blobs.read(name, digest) if size and size <= MAX_MANIFEST_BYTES else None
    )
    if body is None:
        raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {name}")
    if entry is not None and isinstance(entry.get("mediaType"), str):
        return _Resolved(digest, entry["mediaType"], body, tag)
    manifest = read_manifest(body)  # a manifest whose tag moved on: its body says what it is
    if manifest is None:
        raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"{reference} is not a manifest in {name}")
    return _Resolved(digest, manifest.media_type, body, tag)


async def get_manifest(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name = name_of(request)
    try:
        found = _resolve(registry, name, request.match_info["reference"])
    except OCIError as error:
        if error.code in (ErrorCode.MANIFEST_UNKNOWN, ErrorCode.NAME_UNKNOWN):
            registry.stats.manifest_misses += 1
        raise
    registry.stats.manifest_hits += 1
    access = registry.storage.access
    access.touch_manifest(name, found.digest)
    if found.tag is not None:
        access.touch_tag(name, found.tag)
    if request.method == "GET":
        registry.stats.bytes_out += len(found.body)
    return web.Response(
        body=found.body,
        headers={
            "Content-Type": found.media_type,
            "Docker-Content-Digest": str(found.digest),
            "ETag": f'"{found.digest}"',
        },
    )


async def _read_manifest_body(request: web.Request) -> bytes:
    too_large = OCIError(
        ErrorCode.SIZE_INVALID, f"manifest exceeds {MAX_MANIFEST_BYTES} bytes", status=413
    )
    if (request.content_length or 0) > MAX_MANIFEST_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            raise too_large
    return bytes(body)


def _missing_references(registry: Registry, name: str, manifest: Manifest) -> list[str]:
    blobs = registry.storage.blobs
    return sorted(
        {
            str(reference.digest)
            for reference in manifest.references
            if not reference.external and blobs.size(name, reference.digest) is None
        }
    )


async def put_manifest(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name = name_of(request)
    target = parse_reference(request.match_info["reference"])  # a bad one is a 400, unlike on GET
    tag = target if isinstance(target, str) else None
    wanted = target if isinstance(target, Digest) else None
    body = await _read_manifest_body(request)
    manifest = parse_manifest(body, request.headers.get("Content-Type"))
    digest = Digest.of(body, wanted.algorithm if wanted else "sha256")
    if wanted is not None and wanted != digest:
        raise OCIError(ErrorCode.DIGEST_INVALID, f"the manifest hashes to {digest}, not {wanted}")
    missing = _missing_references(registry, name, manifest)
    if missing:
        raise OCIError(
            ErrorCode.MANIFEST_BLOB_UNKNOWN,
            f"the manifest references {len(missing)} blob(s) not in {name}",
            detail={"missing": missing},
        )
    await asyncio.to_thread(_store_manifest, registry, name, tag, digest, body, manifest)
    if tag is not None:
        registry.storage.access.touch_tag(name, tag)
    registry.storage.access.touch_manifest(name, digest)
    registry.stats.manifests_pushed += 1
    registry.stats.bytes_in += len(body)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": str(digest)}
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject)
    return web.Response(status=201, headers=headers)


def _store_manifest(
    registry: Registry, name: str, tag: str | None, digest: Digest, body: bytes, manifest: Manifest
) -> None:
    """Blob first, then the index entry: a tag never points at a missing manifest."""
    storage = registry.storage
    storage.blobs.put_bytes(name, digest, body)
    entry = descriptor(manifest.media_type, digest, len(body))
    if tag is None:
        storage.indexes.add_untagged(name, entry)
    else:
        storage.indexes.set_tag(name, tag, entry)


async def delete_manifest(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name = name_of(request)
    reference = request.match_info["reference"]
    storage = registry.storage
    _repository(registry, name)
    target = parse_reference(reference)  # a bad one is a 400, unlike on GET
    if isinstance(target, Digest):
        try:
            _resolve(registry, name, reference)  # manifests only: never a layer through here
        except OCIError:
            found = storage.indexes.remove_digest(name, target)  # a dangling entry, if any
        else:
            storage.indexes.remove_digest(name, target)
            found = storage.blobs.delete(name, target)
    else:
        found = storage.indexes.remove_tag(name, target)
    if not found:
        raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in {name}")
    return web.Response(status=202)


async def list_tags(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name = name_of(request)
    limit = _page_size(request)  # first: a malformed query is a 400 in any repository
    tags = _repository(registry, name).tags()
    last = request.query.get("last")
    if last is not None:  # a position in the order, not a lookup: an absent tag has one too
        tags = [t for t in tags if t > last]
    headers = {}
    if limit is not None:
        if 0 < limit < len(tags):
            headers["Link"] = f'</v2/{name}/tags/list?n={limit}&last={tags[limit - 1]}>; rel="next"'
        tags = tags[:limit]
    return web.json_response({"name": name, "tags": tags}, headers=headers)


def _page_size(request: web.Request) -> int | None:
    """`n`, if given: ASCII digits only (no sign, exponent or Unicode digits), at most 9."""
    count = request.query.get("n")
    if count is None:
        return None
    if not (count.isascii() and count.isdigit()) or len(count) > 9:
        raise OCIError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            f"invalid n={count[:50]!r}: expected a non-negative integer",
        )
    return int(count)


async def list_referrers(request: web.Request) -> web.Response:
    """Never a 404 (that tells clients the API is missing): an unknown subject, a subject of an
    algorithm no manifest here can name, or a missing repository all list nothing."""
    registry = registry_of(request)
    name = name_of(request)
    subject = lookup_digest_of(request)
    wanted_type = request.query.get("artifactType")
    found = [] if subject is None else _referrers(registry, name, subject, wanted_type)
    headers = {"Content-Type": OCI_INDEX}
    if wanted_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    return web.Response(body=json.dumps(document).encode(), headers=headers)


def _referrers(
    registry: Registry, name: str, subject: Digest, wanted_type: str | None
) -> list[dict[str, object]]:
    """Descriptors of the manifests in `name` whose subject is `subject`, each listed once."""
    index = registry.storage.indexes.read(name) or RepositoryIndex([])
    found: dict[str, dict[str, object]] = {}
    for entry in index.manifests:
        if entry.get("mediaType") not in MANIFEST_TYPES or entry["digest"] in found:
            continue
        item = _referrer(registry, name, entry, subject, wanted_type)
        if item is not None:
            found[entry["digest"]] = item
    return list(found.values())


def _referrer(
    registry: Registry, name: str, entry: Descriptor, subject: Digest, wanted_type: str | None
) -> dict[str, object] | None:
    """The referrers-list descriptor of one index entry, or None when it does not refer."""
    body = registry.storage.blobs.read(name, Digest.parse(entry["digest"]))
    manifest = read_manifest(body) if body is not None else None
    if manifest is None or manifest.subject != subject:
        return None
    artifact_type = manifest.artifact_type or manifest.config_media_type
    if wanted_type is not None and artifact_type != wanted_type:
        return None
    item: dict[str, object] = {
        "mediaType": manifest.media_type,
        "digest": entry["digest"],
        "size": entry.get("size", len(body or b"")),
    }
    if artifact_type:
        item["artifactType"] = artifact_type
    if manifest.annotations:
        item["annotations"] = manifest.annotations
    return item
