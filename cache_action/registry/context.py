"""What every handler reaches through the application: the served root, this run's counters,
and the requests in flight (shutdown and maintenance wait for them)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from cache_action.registry.lazy import LazyFetches
from cache_action.registry.stats import RunStats
from cache_action.storage.digests import Digest, UnsupportedDigest
from cache_action.storage.repository import Repository
from cache_action.storage.root import Storage


@dataclass
class ServerState:
    storage: Storage
    stats: RunStats = field(default_factory=RunStats)
    in_flight: int = 0  # requests being handled: shutdown waits for them
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    open: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while maintenance runs
    lazy: LazyFetches | None = None  # fetches blobs a lazy restore left in the store

    def __post_init__(self) -> None:
        self.open.set()
        self.idle.set()

    async def admit(self) -> None:
        """Wait while maintenance runs, then count the request as in flight."""
        await self.open.wait()
        self.request_started()

    async def pause(self) -> None:
        """Hold new requests and wait for those in flight: maintenance may then touch the root."""
        self.open.clear()
        await self.idle.wait()

    def resume(self) -> None:
        self.open.set()

    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()


SERVER_STATE = web.AppKey("server_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[SERVER_STATE]


def repository_of(request: web.Request) -> Repository:
    """The repository the request names (NAME_INVALID for a bad name), through the façade
    that records access and counts bytes."""
    state = state_of(request)
    return Repository(state.storage, request.match_info["name"], state.stats)


def digest_of(request: web.Request, key: str = "digest") -> Digest:
    return Digest.parse(request.match_info[key])


def lookup_digest_of(request: web.Request, key: str = "digest") -> Digest | None:
    """A read's digest; None when it is well formed but of an algorithm nothing is stored under
    (the image spec lets unknown algorithms pass validation), so the read finds nothing and no
    path is built from it. A malformed digest is still DIGEST_INVALID (400)."""
    try:
        return digest_of(request, key)
    except UnsupportedDigest:
        return None
