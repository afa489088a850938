"""Manifests (by tag or digest), tag listing and the referrers API, over HTTP: the storage
façade (storage/repository.py) resolves, stores and records; this module speaks the protocol.

Manifests are stored byte-for-byte and served with the media type they were pushed with, and
HEAD carries the real Content-Length: BuildKit builds its descriptor from HEAD alone.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import lookup_digest_of, repository_of
from cache_action.storage.layout import parse_reference
from cache_action.storage.manifests import MAX_MANIFEST_BYTES, OCI_INDEX


async def get_manifest(request: web.Request) -> web.Response:
    repository = repository_of(request)
    found = repository.manifest(request.match_info["reference"])
    if request.method == "GET":
        repository.sent(len(found.body))
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


async def put_manifest(request: web.Request) -> web.Response:
    repository = repository_of(request)
    target = parse_reference(request.match_info["reference"])  # a bad one is a 400, unlike on GET
    body = await _read_manifest_body(request)
    content_type = request.headers.get("Content-Type")
    pushed = await asyncio.to_thread(repository.push_manifest, target, body, content_type)
    headers = {
        "Location": f"/v2/{repository.name}/manifests/{pushed.digest}",
        "Docker-Content-Digest": str(pushed.digest),
    }
    if pushed.subject is not None:
        headers["OCI-Subject"] = str(pushed.subject)
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    repository = repository_of(request)
    reference = request.match_info["reference"]
    repository.index()  # a missing repository is NAME_UNKNOWN before the reference is looked at
    repository.delete_manifest(parse_reference(reference), reference)  # a bad one is a 400
    return web.Response(status=202)


async def list_tags(request: web.Request) -> web.Response:
    repository = repository_of(request)
    limit = _page_size(request)  # first: a malformed query is a 400 in any repository
    tags = repository.tags(after=request.query.get("last"))
    headers = {}
    if limit is not None:
        if 0 < limit < len(tags):
            link = f"/v2/{repository.name}/tags/list?n={limit}&last={tags[limit - 1]}"
            headers["Link"] = f'<{link}>; rel="next"'
        tags = tags[:limit]
    return web.json_response({"name": repository.name, "tags": tags}, headers=headers)


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
    repository = repository_of(request)
    wanted_type = request.query.get("artifactType")
    found = repository.referrers(lookup_digest_of(request), wanted_type)
    headers = {"Content-Type": OCI_INDEX}
    if wanted_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    return web.Response(body=json.dumps(document).encode(), headers=headers)
