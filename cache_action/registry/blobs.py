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
        registry.stats.bytes_out += _bytes_to_send(request, size)
    return web.FileResponse(
        blobs.path(name, digest),
        headers={
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(digest),
            "Cache-Control": IMMUTABLE,
        },
    )


def _bytes_to_send(request: web.Request, size: int) -> int:
    """What FileResponse will send for this request's Range (the same parse it uses)."""
    try:
        wanted = request.http_range
    except ValueError:
        return 0
    start, stop = wanted.start, wanted.stop
    if start is None and stop is None:
        return size
    if start is not None and start < 0:  # a suffix range: the last -start bytes
        return min(-start, size)
    first = start or 0
    end = size if stop is None else min(stop, size)
    return max(end - first, 0)


async def delete_blob(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name, digest = name_of(request), digest_of(request)
    if not registry.storage.blobs.delete(name, digest):
        raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
