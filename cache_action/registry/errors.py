"""OCI error codes on the wire: HTTP status and the spec's JSON body."""

from __future__ import annotations

import json

from aiohttp import web

from cache_action.errors import ErrorCode, OCIError

STATUS = {
    ErrorCode.BLOB_UNKNOWN: 404,
    ErrorCode.BLOB_UPLOAD_INVALID: 400,
    ErrorCode.BLOB_UPLOAD_UNKNOWN: 404,
    ErrorCode.DIGEST_INVALID: 400,
    ErrorCode.MANIFEST_BLOB_UNKNOWN: 400,
    ErrorCode.MANIFEST_INVALID: 400,
    ErrorCode.MANIFEST_UNKNOWN: 404,
    ErrorCode.NAME_INVALID: 400,
    ErrorCode.NAME_UNKNOWN: 404,
    ErrorCode.SIZE_INVALID: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DENIED: 403,
    ErrorCode.UNSUPPORTED: 405,
    ErrorCode.TOOMANYREQUESTS: 429,
    ErrorCode.PAGINATION_NUMBER_INVALID: 400,
}


def error_response(error: OCIError, headers: dict[str, str] | None = None) -> web.Response:
    entry: dict[str, object] = {"code": error.code.value, "message": error.message}
    if error.detail is not None:
        entry["detail"] = error.detail
    return web.Response(
        status=error.status or STATUS[error.code],
        body=json.dumps({"errors": [entry]}).encode(),
        content_type="application/json",
        headers={**error.headers, **(headers or {})},
    )
