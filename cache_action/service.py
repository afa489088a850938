"""The standalone cache service (`docker run IMAGE serve`, docker compose), configured by
environment variables: restore at start, serve, save periodically and at shutdown.

    BUILDKIT_CACHE_REPO   the store: local:///cache/store (default) or s3://BUCKET/PREFIX
    STORAGE_BACKEND       local or s3 (with S3_BUCKET/S3_PREFIX when BUILDKIT_CACHE_REPO is unset)
    CACHE_MODE            min or max: the mode to use in cache-to (printed in the usage hint)
    CACHE_TTL             drop tags unused for this long (e.g. 7d), at save time
    CACHE_ROOT            the registry's directory (default /cache/registry)
    CACHE_LISTEN          HOST:PORT (default 127.0.0.1:5000; the image sets 0.0.0.0:5000)
    CACHE_ALLOW_REMOTE    true to allow a non-loopback CACHE_LISTEN (set by the image)
    CACHE_SAVE_INTERVAL   how often to save while serving (default 10m; 0 for shutdown only)
    CACHE_NAMESPACE, CACHE_SCOPE, CACHE_REF   the entry name (service, default, main)
    S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION   S3 settings (else the AWS chain)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_action.errors import InputError, StoreError
from cache_action.registry.server import ServeConfig, parse_listen, serve
from cache_action.scopes import EntryName, normalize_ref, validate_token
from cache_action.storage.gc import collect_garbage
from cache_action.storage.lock import root_lock
from cache_action.storage.root import Storage
from cache_action.stores.base import Store
from cache_action.stores.factory import open_store
from cache_action.units import parse_duration

log = logging.getLogger(__name__)
READY_FILE = Path("/run/cache-action/ready.json")


@dataclass(frozen=True)
class ServiceConfig:
    store_url: str
    root: Path
    host: str
    port: int
    mode: str
    ttl_seconds: float | None
    save_interval: float | None
    entry: EntryName

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceConfig:
        host, port = parse_listen(
            env.get("CACHE_LISTEN", "127.0.0.1:5000"),
            env.get("CACHE_ALLOW_REMOTE", "").lower() == "true",
        )
        mode = env.get("CACHE_MODE", "max")
        if mode not in ("min", "max"):
            raise InputError("CACHE_MODE", mode, "min or max")
        return cls(
            store_url=_store_url(env),
            root=Path(env.get("CACHE_ROOT", "/cache/registry")),
            host=host,
            port=port,
            mode=mode,
            ttl_seconds=parse_duration("CACHE_TTL", env.get("CACHE_TTL", "7d")),
            save_interval=parse_duration(
                "CACHE_SAVE_INTERVAL", env.get("CACHE_SAVE_INTERVAL", "10m")
            ),
            entry=EntryName(
                validate_token("CACHE_NAMESPACE", env.get("CACHE_NAMESPACE", "service")),
                validate_token("CACHE_SCOPE", env.get("CACHE_SCOPE", "default")),
                normalize_ref("CACHE_REF", env.get("CACHE_REF", "main")),
            ),
        )


def _store_url(env: Mapping[str, str]) -> str:
    url = env.get("BUILDKIT_CACHE_REPO", "")
    if url:
        return url
    backend = env.get("STORAGE_BACKEND", "local").lower()
    if backend == "local":
        return "local:///cache/store"
    if backend == "s3" and env.get("S3_BUCKET"):
        prefix = env.get("S3_PREFIX", "buildkit-cache").strip("/")
        return f"s3://{env['S3_BUCKET']}/{prefix}"
    raise InputError(
        "STORAGE_BACKEND", backend, "local, or s3 with S3_BUCKET (or set BUILDKIT_CACHE_REPO)"
    )


def run_service(env: Mapping[str, str]) -> int:
    config = ServiceConfig.from_env(env)
    store = open_store(config.store_url, env, "BUILDKIT_CACHE_REPO")
    storage = Storage.open(config.root)
    try:
        with root_lock(storage.layout, "restore"):
            result = store.restore(storage.layout, [[config.entry]])
        log.info("restored from %s: %s", store.description, result.to_json())
    except (StoreError, OSError) as error:
        log.warning("restore failed, starting cold: %s", error)
    ref = f"127.0.0.1:{config.port}/cache:<tag>"
    log.info(
        "use: --cache-from type=registry,ref=%s --cache-to type=registry,ref=%s,mode=%s",
        ref,
        ref,
        config.mode,
    )

    async def save_periodically(storage: Storage) -> None:
        if config.save_interval is None:
            return
        while True:
            await asyncio.sleep(config.save_interval)
            await asyncio.to_thread(_save, store, storage, config.entry)

    async def save_at_shutdown(storage: Storage) -> None:
        collect_garbage(storage.layout)
        _save(store, storage, config.entry)

    serve_config = ServeConfig(config.root, config.host, config.port, READY_FILE)
    asyncio.run(serve(serve_config, save_periodically, save_at_shutdown))
    return 0


def _save(store: Store, storage: Storage, entry: EntryName) -> None:
    try:
        result = store.save(storage.layout, entry)
        log.info("saved to %s: %s", store.description, result.to_json())
    except (StoreError, OSError) as error:
        log.warning("save failed (will retry): %s", error)
