"""Blob reads and deletes. GETs go out with sendfile; HEAD answers from a fresh stat."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import digest_of, lookup_digest_of, name_of, registry_of

IMMUTABLE = "max-age=31536000"


async def get_blob(request: web.Request) -> web.StreamResponse:
    registry = registry_of(request)
    name, digest = name_of(request), lookup_digest_of(request)
    blobs = registry.storage.blobs
    size = None if digest is None else blobs.size(name, digest)
    if digest is None or size is None:
        registry.stats.blob_misses += 1
        asked = request.match_info["digest"][:200]
        raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {asked} is not in {name}")
    registry.stats.blob_hits += 1
    registry.storage.access.touch_blob(digest)
    wanted = _usable_range(request)
    if wanted is not None and wanted.strip() == "-0":  # RFC 9110: an empty suffix is unsatisfiable
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    if request.method == "GET":
        registry.stats.bytes_out += _bytes_to_send(request, size)
    return _BlobFile(
        blobs.path(name, digest),
        headers={
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(digest),
            "Cache-Control": IMMUTABLE,
        },
    )


class _BlobFile(web.FileResponse):
    """FileResponse (sendfile, single ranges) that ignores the Ranges RFC 9110 says to ignore,
    where aiohttp would answer 416 or a partial HEAD."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if "Range" in request.headers and _usable_range(request) is None:
            headers = CIMultiDict(request.headers)
            del headers["Range"]
            request = request.clone(headers=headers)
        return await super().prepare(request)


def _usable_range(request: web.BaseRequest) -> str | None:
    """The spec of a Range we honour: one `bytes=` range on a GET. HEAD, other units and
    multi-range requests get the whole blob (a 200), as RFC 9110 allows."""
    header = request.headers.get("Range")
    if header is None or request.method != "GET":
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    return spec


def _bytes_to_send(request: web.Request, size: int) -> int:
    """What FileResponse will send for this request's Range (the same parse it uses)."""
    if _usable_range(request) is None:
        return size
    try:
        wanted = request.http_range
    except ValueError:
        return 0
    start: int | None = wanted.start
    stop: int | None = wanted.stop
    if start is None and stop is None:
        return size
    if start is not None and start < 0:  # a suffix range: the last -start bytes
        return int(min(-start, size))
    first = start or 0
    end = size if stop is None else min(stop, size)
    return max(end - first, 0)


async def delete_blob(request: web.Request) -> web.Response:
    registry = registry_of(request)
    name, digest = name_of(request), digest_of(request)
    if not registry.storage.blobs.delete(name, digest):
        raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in {name}")
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
