"""Blob uploads: monolithic (POST ?digest, or POST then PUT), chunked (PATCH with Content-Range),
streamed (PATCH without it), and cross-repository mounts. BuildKit uses POST then one PUT."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry.context import repository_of
from cache_action.storage.digests import Digest
from cache_action.storage.layout import validate_name
from cache_action.storage.repository import Repository
from cache_action.storage.uploads import UploadSession

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})", re.ASCII)


def _session_headers(name: str, session: UploadSession) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{session.id}",
        "Range": f"0-{max(session.offset - 1, 0)}",
        "Docker-Upload-UUID": session.id,
    }


def _created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest)},
    )


def _query_digest(request: web.Request) -> Digest:
    text = request.query.get("digest")
    if not text:
        raise OCIError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    return Digest.parse(text)


def _body(request: web.Request) -> AsyncIterator[bytes]:
    return request.content.iter_any()


async def start_upload(request: web.Request) -> web.Response:
    repository = repository_of(request)
    if "mount" in request.query and _try_mount(request, repository):
        return _created(repository.name, Digest.parse(request.query["mount"]))
    if "digest" in request.query:  # monolithic: the whole blob in the POST
        digest = _query_digest(request)
        session = repository.start_upload()
        session.expect(digest)
        await repository.receive(session, _body(request))
        await repository.finish_upload(session, digest)
        return _created(repository.name, digest)
    session = repository.start_upload()
    return web.Response(status=202, headers=_session_headers(repository.name, session))


def _try_mount(request: web.Request, repository: Repository) -> bool:
    """A mount is an optimisation: anything unusable falls back to an ordinary upload."""
    try:
        digest = Digest.parse(request.query["mount"])
        source = request.query.get("from")
        if source is not None:
            validate_name(source)
    except OCIError:
        return False
    return repository.mount(digest, source)


async def upload_status(request: web.Request) -> web.Response:
    repository = repository_of(request)
    session = repository.upload(request.match_info["session"])
    return web.Response(status=204, headers=_session_headers(repository.name, session))


async def patch_upload(request: web.Request) -> web.Response:
    repository = repository_of(request)
    session = repository.upload(request.match_info["session"])
    async with session.lock:
        expected = _check_content_range(request, session)
        before_offset, before_hash = session.offset, session.hasher.copy()
        try:
            written = await repository.receive(session, _body(request), limit=expected)
            if expected is not None and written != expected:
                raise OCIError(
                    ErrorCode.SIZE_INVALID,
                    f"Content-Range announced {expected} bytes, the body had {written}",
                )
        except BaseException:
            if expected is not None:  # a chunk is all or nothing
                repository.rewind(session, before_offset, before_hash)
            raise
    return web.Response(status=202, headers=_session_headers(repository.name, session))


def _check_content_range(request: web.Request, session: UploadSession) -> int | None:
    """The chunk length a Content-Range announces, after checking it continues the upload."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        raise OCIError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"invalid Content-Range {header[:100]!r}: expected <start>-<end>",
        )
    start, end = int(match[1]), int(match[2])
    if start != session.offset or end < start:
        raise OCIError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"Content-Range {start}-{end} does not continue the upload at offset {session.offset}",
            status=416,
        )
    length = end - start + 1
    declared = request.content_length
    if declared is not None and declared != length:
        raise OCIError(
            ErrorCode.SIZE_INVALID,
            f"Content-Range {start}-{end} is {length} bytes but Content-Length is {declared}",
        )
    return length


async def finish_upload(request: web.Request) -> web.Response:
    repository = repository_of(request)
    session = repository.upload(request.match_info["session"])
    digest = _query_digest(request)
    async with session.lock:
        expected = _check_content_range(request, session)
        session.expect(digest)
        await repository.receive(session, _body(request), limit=expected)
        await repository.finish_upload(session, digest)
    return _created(repository.name, digest)


async def cancel_upload(request: web.Request) -> web.Response:
    repository = repository_of(request)
    repository.cancel_upload(repository.upload(request.match_info["session"]))
    return web.Response(status=204)
