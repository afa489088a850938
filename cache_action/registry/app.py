"""The registry's HTTP face: the whole route table on one screen, and the error middleware."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from cache_action.errors import ErrorCode, OCIError
from cache_action.registry import blobs, manifests, uploads
from cache_action.registry.auth import (
    GATEKEEPER,
    TOKEN_PATH,
    Anyone,
    Gatekeeper,
    access_control,
    token_endpoint,
)
from cache_action.registry.context import SERVER_STATE, ServerState, state_of
from cache_action.registry.errors import error_response
from cache_action.storage.root import Storage

log = logging.getLogger(__name__)

NAME = "/v2/{name:.+}"


async def api_version(request: web.Request) -> web.Response:
    return web.json_response({})


async def cache_stats(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).stats.to_json())


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/v2/", api_version, allow_head=True),
        web.get(f"{NAME}/tags/list", manifests.list_tags, allow_head=True),
        web.get(f"{NAME}/referrers/{{digest}}", manifests.list_referrers, allow_head=True),
        web.post(f"{NAME}/blobs/uploads/", uploads.start_upload),
        web.post(f"{NAME}/blobs/uploads", uploads.start_upload),
        web.get(f"{NAME}/blobs/uploads/{{session}}", uploads.upload_status, allow_head=False),
        web.patch(f"{NAME}/blobs/uploads/{{session}}", uploads.patch_upload),
        web.put(f"{NAME}/blobs/uploads/{{session}}", uploads.finish_upload),
        web.delete(f"{NAME}/blobs/uploads/{{session}}", uploads.cancel_upload),
        web.head(f"{NAME}/blobs/{{digest}}", blobs.get_blob),
        web.get(f"{NAME}/blobs/{{digest}}", blobs.get_blob, allow_head=False),
        web.delete(f"{NAME}/blobs/{{digest}}", blobs.delete_blob),
        web.head(f"{NAME}/manifests/{{reference}}", manifests.get_manifest),
        web.get(f"{NAME}/manifests/{{reference}}", manifests.get_manifest, allow_head=False),
        web.put(f"{NAME}/manifests/{{reference}}", manifests.put_manifest),
        web.delete(f"{NAME}/manifests/{{reference}}", manifests.delete_manifest),
        web.get("/_cache/stats", cache_stats),
    ]


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as a spec error body; nothing unexpected leaks a traceback."""
    state = state_of(request)
    state.stats.requests += 1
    await state.admit()
    try:
        return await handler(request)
    except OCIError as error:
        return error_response(error)
    except web.HTTPMethodNotAllowed as error:
        message = f"{request.method} is not supported on {request.path[:200]}"
        unsupported = OCIError(ErrorCode.UNSUPPORTED, message)
        return error_response(
            unsupported, headers={"Allow": ",".join(sorted(error.allowed_methods))}
        )
    except web.HTTPNotFound:
        return error_response(
            OCIError(ErrorCode.NAME_UNKNOWN, f"no such endpoint: {request.path[:200]}")
        )
    except web.HTTPException:
        raise
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path[:200])
        return web.json_response(
            {"errors": [{"code": "UNKNOWN", "message": "internal error (see the registry log)"}]},
            status=500,
        )
    finally:
        state.request_finished()


async def _api_version_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Docker-Distribution-API-Version"] = "registry/2.0"


def create_app(storage: Storage, gatekeeper: Gatekeeper | None = None) -> web.Application:
    """`gatekeeper` decides who may do what (auth.py); by default anyone who can connect."""
    gatekeeper = gatekeeper or Gatekeeper(Anyone())
    app = web.Application(
        middlewares=[oci_errors, access_control(gatekeeper)], client_max_size=1024**2
    )
    app[SERVER_STATE] = ServerState(storage)
    app[GATEKEEPER] = gatekeeper
    app.router.add_routes(_routes())
    if gatekeeper.issues_tokens:
        app.router.add_get(TOKEN_PATH, token_endpoint, allow_head=False)
        app.router.add_post(TOKEN_PATH, token_endpoint)
    app.on_response_prepare.append(_api_version_header)
    return app
