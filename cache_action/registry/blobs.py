"""Blob reads and deletes. GETs go out with sendfile; HEAD answers from a fresh stat."""

from __future__ import annotations

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import digest_of, name_of, registry_of

IMMUTABLE = "max-age=31536000"


async def get_blob(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    name, digest = name_of(request), digest_of(request)
    blobs = registry.storage.blobs
    size = blobs.size(name, digest)
    if size is None:
        registry.stats.blob_misses += 1
        raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
    registry.stats.blob_hits += 1
    registry.storage.access.touch_blob(digest)
    if request.method == "GET":
        registry.stats.bytes_out += size
    return web.FileResponse(
        blobs.path(name, digest),
        headers={
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(digest),
            "Cache-Control": IMMUTABLE,
        },
    )


async def delete_blob(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name, digest = name_of(request), digest_of(request)
    if not registry.storage.blobs.delete(name, digest):
        raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
