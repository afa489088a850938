"""What every handler reaches through the application: the storage root and this run's stats."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from cache_action.storage.access import RunStats
from cache_action.storage.digests import Digest, UnsupportedDigest
from cache_action.storage.layout import validate_name
from cache_action.storage.root import Storage


@dataclass
class Registry:
    storage: Storage
    stats: RunStats = field(default_factory=RunStats)
    in_flight: int = 0  # requests being handled: shutdown waits for them
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    open: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while maintenance runs

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


REGISTRY = web.AppKey("registry", Registry)


def registry_of(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def name_of(request: web.Request) -> str:
    return validate_name(request.match_info["name"])


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
