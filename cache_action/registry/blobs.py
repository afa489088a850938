"""Blob reads and deletes. GETs go out with sendfile; HEAD answers from a fresh stat."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import digest_of, lookup_digest_of, repository_of, state_of
from cache_action.registry.lazy import AskAgain

IMMUTABLE = "max-age=31536000"


async def get_blob(request: web.Request) -> web.StreamResponse:
    repository = repository_of(request)
    blob = repository.blob(lookup_digest_of(request), request.match_info["digest"])
    wanted = _usable_range(request)
    if wanted is not None and wanted.strip() == "-0":  # RFC 9110: an empty suffix is unsatisfiable
        return web.Response(status=416, headers={"Content-Range": f"bytes */{blob.size}"})
    headers = {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(blob.digest),
        "Cache-Control": IMMUTABLE,
    }
    if not blob.local:  # a lazy restore left it in the store
        if request.method == "HEAD":
            return await _head_of_remote(request, blob.size, headers)
        lazy = state_of(request).lazy
        if lazy is None:
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {blob.digest} is not here yet")
        try:
            response = await lazy.respond(request, blob, headers, ranged=wanted is not None)
        except AskAgain:
            blob = repository.on_disk(blob)
        else:
            repository.sent(blob.size)
            return response
    if request.method == "GET":
        repository.sent(_bytes_to_send(request, blob.size))
    return _BlobFile(blob.path, headers=headers)


async def _head_of_remote(
    request: web.Request, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """What HEAD says of a blob still in the store: its real length, from the metadata."""
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    return response


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
    repository = repository_of(request)
    digest = digest_of(request)
    repository.delete_blob(digest)
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
