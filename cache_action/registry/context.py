"""What every handler reaches through the application: the storage root and this run's stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from cache_action.storage.access import RunStats
from cache_action.storage.digests import Digest
from cache_action.storage.layout import validate_name
from cache_action.storage.root import Storage


@dataclass
class Registry:
    storage: Storage
    stats: RunStats = field(default_factory=RunStats)


REGISTRY = web.AppKey("registry", Registry)


def registry_of(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def name_of(request: web.Request) -> str:
    return validate_name(request.match_info["name"])


def digest_of(request: web.Request, key: str = "digest") -> Digest:
    return Digest.parse(request.match_info[key])
