"""The standalone cache service (`docker run IMAGE serve`, docker compose), configured by
environment variables: restore at start, serve, save periodically and at shutdown.

    BUILDKIT_CACHE_REPO   the store: local:///cache/store (default) or s3://BUCKET/PREFIX
    STORAGE_BACKEND       local or s3 (with S3_BUCKET/S3_PREFIX when BUILDKIT_CACHE_REPO is unset)
    CACHE_MODE            min or max: the mode to use in cache-to (printed in the usage hint)
    CACHE_TTL             drop tags unused for this long (e.g. 7d), before each save
    CACHE_MAX_SIZE        size budget (e.g. 20GB): least recently used tags go first
    CACHE_ROOT            the registry's directory (default /cache/registry)
    CACHE_LISTEN          HOST:PORT (default 127.0.0.1:5000; the image sets 0.0.0.0:5000, all
                          of its container's network: publish it with -p 127.0.0.1:5000:5000)
    CACHE_HTPASSWD        bcrypt htpasswd file of read-write users (htpasswd -nB USER)
    CACHE_HTPASSWD_READ_ONLY   the same, users who may only pull
    CACHE_TOKEN_LIFETIME  how long bearer tokens last (default 5m)
    CACHE_TLS_CERT, CACHE_TLS_KEY   serve HTTPS with this PEM certificate chain and key
    CACHE_INSECURE_NO_AUTH  true: serve anyone who can connect, without credentials. Without
                          it and without credentials, a service in a container answers only
                          its own machine (loopback and its Docker network).
    CACHE_SAVE_INTERVAL   how often to prune and save while serving (default 10m; 0: at
                          shutdown only). Requests wait while a prune runs (a second or two).
    CACHE_NAMESPACE, CACHE_SCOPE, CACHE_REF   the entry name (service, default, main)
    CACHE_READY_FILE      written once listening (default /run/cache-action/ready.json)
    CACHE_LOG_REQUESTS    true to log every request
    S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION   S3 settings (else the AWS chain)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_action.errors import CacheActionError, InputError, StoreError
from cache_action.registry import READY_FILE
from cache_action.registry.context import ServerState
from cache_action.registry.server import bind, serve
from cache_action.registry.settings import FLAGS, VARIABLES, ServeConfig, parse_serve_settings
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName, normalize_ref, validate_token
from cache_action.storage.digests import Digest
from cache_action.storage.layout import usable_root
from cache_action.storage.prune import PrunePolicy, prune
from cache_action.storage.root import Storage
from cache_action.stores.base import Store
from cache_action.stores.factory import open_store
from cache_action.stores.spec import LocalSpec, S3Options, StoreSpec, parse_store
from cache_action.units import parse_duration, parse_size

log = logging.getLogger(__name__)
RECENT_SECONDS = 3600.0
VOLUME = Path("/cache")
DEFAULT_ROOT = "/cache/registry"
DEFAULT_STORE = "local:///cache/store"


@dataclass(frozen=True)
class ServiceConfig:
    store: StoreSpec
    serve: ServeConfig
    mode: str
    ttl_seconds: float | None
    max_size_bytes: int | None
    save_interval: float | None
    entry: EntryName

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], flags: Mapping[str, str] | None = None
    ) -> ServiceConfig:
        """`flags` (keyed like settings.FLAGS) are what `serve` was given on its command
        line: they win over the variables, and messages name them."""
        flags = {key: value for key, value in (flags or {}).items() if value}
        values = {key: flags.get(key) or env.get(name, "") for key, name in VARIABLES.items()}
        names = {key: FLAGS[key] if key in flags else name for key, name in VARIABLES.items()}
        mode = env.get("CACHE_MODE", "max")
        if mode not in ("min", "max"):
            raise InputError("CACHE_MODE", mode, "min or max")
        store_url, store_setting = _store_url(env)
        store = parse_store(store_setting, store_url, S3Options.from_env(env))
        defaulted = [names["root"]] if not values["root"] else []
        if not env.get("BUILDKIT_CACHE_REPO") and store_url == DEFAULT_STORE:
            defaulted.append("BUILDKIT_CACHE_REPO")
        if defaulted and not _in_container_with_volume():
            raise CacheActionError(
                f"serve: {' and '.join(defaulted)} not set, and {VOLUME} is not a volume of "
                f"a container: give --root DIR to serve a directory, or set "
                f"{' and '.join(defaulted)} to run the standalone service here"
            )
        values["root"] = values["root"] or DEFAULT_ROOT
        if not values["ready_file"] and _in_container_with_volume():
            values["ready_file"] = str(READY_FILE)  # the image's health check reads it
        _check_apart(store, Path(values["root"]), names["root"])
        return cls(
            store=store,
            serve=parse_serve_settings(values, names),
            mode=mode,
            ttl_seconds=parse_duration("CACHE_TTL", env.get("CACHE_TTL", "7d")),
            max_size_bytes=parse_size("CACHE_MAX_SIZE", env.get("CACHE_MAX_SIZE", "")),
            save_interval=parse_duration(
                "CACHE_SAVE_INTERVAL", env.get("CACHE_SAVE_INTERVAL", "10m")
            ),
            entry=EntryName(
                validate_token("CACHE_NAMESPACE", env.get("CACHE_NAMESPACE", "service")),
                validate_token("CACHE_SCOPE", env.get("CACHE_SCOPE", "default")),
                normalize_ref("CACHE_REF", env.get("CACHE_REF", "main")),
            ),
        )


def _in_container_with_volume(mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """The image's situation: a container (Docker's or Podman's marker file) with /cache
    mounted. Anywhere else the defaults under /cache would write to the host's own /cache."""
    if not (Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()):
        return False
    try:
        mounts = mountinfo.read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4:5] == [str(VOLUME)] for line in mounts)


def _store_url(env: Mapping[str, str]) -> tuple[str, str]:
    """The store's URL and the variable it came from."""
    url = env.get("BUILDKIT_CACHE_REPO", "")
    if url:
        return url, "BUILDKIT_CACHE_REPO"
    backend = env.get("STORAGE_BACKEND", "local").lower()
    if backend == "local":
        return DEFAULT_STORE, "STORAGE_BACKEND"
    if backend == "s3" and env.get("S3_BUCKET"):
        prefix = env.get("S3_PREFIX", "buildkit-cache").strip("/")
        return f"s3://{env['S3_BUCKET']}/{prefix}", "S3_BUCKET"
    raise InputError(
        "STORAGE_BACKEND", backend, "local, or s3 with S3_BUCKET (or set BUILDKIT_CACHE_REPO)"
    )


def _check_apart(spec: StoreSpec, root: Path, root_setting: str) -> None:
    """A local store and the registry root may share a volume (store /cache, root
    /cache/registry) but not directories: each would take the other's files for its own."""
    if not isinstance(spec, LocalSpec):
        return
    store = spec.path.absolute()
    registry = root.absolute()
    if registry == store or store.is_relative_to(registry):
        raise InputError(
            "BUILDKIT_CACHE_REPO",
            spec.url,
            f"a directory outside the registry root {registry} (e.g. local:///cache with "
            "the default root /cache/registry)",
        )
    if any(registry.is_relative_to(store / part) for part in ("blobs", "entries")):
        outside = f"a directory outside the store's {store}/blobs and {store}/entries"
        raise InputError(root_setting, str(registry), outside)


def run_service(env: Mapping[str, str], flags: Mapping[str, str] | None = None) -> int:
    config = ServiceConfig.from_env(env, flags)
    store = open_store(config.store, RunnerContext.from_env(env))
    sock = bind(config.serve.listen)  # a port in use stops it before the restore
    # One Storage for the restore, the server and maintenance: one live access record, so
    # what prune forgets is not written back by the server's next flush.
    storage = Storage.open(usable_root(config.serve.root_setting, config.serve.root).root)
    try:
        result = store.restore(storage, [[config.entry]])
        log.info("restored from %s: %s", store.description, result.to_json())
    except (StoreError, OSError) as error:
        log.warning("restore failed, starting cold: %s", error)
    ref = f"127.0.0.1:{config.serve.listen.port}/cache:<tag>"
    log.info(
        "use: --cache-from type=registry,ref=%s --cache-to type=registry,ref=%s,mode=%s",
        ref,
        ref,
        config.mode,
    )

    async def maintain_periodically(state: ServerState) -> None:
        if config.save_interval is None:
            return
        while True:
            await asyncio.sleep(config.save_interval)
            await _prune_while_serving(state, config)
            await asyncio.to_thread(_save, store, state.storage, config.entry)

    async def prune_and_save_at_shutdown(state: ServerState) -> None:
        _prune(state.storage, _policy(config, serving=False))
        _save(store, state.storage, config.entry)

    asyncio.run(
        serve(config.serve, maintain_periodically, prune_and_save_at_shutdown, sock, storage)
    )
    return 0


def _policy(
    config: ServiceConfig, serving: bool, spare: frozenset[Digest] = frozenset()
) -> PrunePolicy:
    now = time.time()
    return PrunePolicy(
        ttl_seconds=config.ttl_seconds,
        max_size_bytes=config.max_size_bytes,
        protect_since=now - RECENT_SECONDS,  # what builds used in the last hour stays
        spare=spare,
        serving=serving,
    )


async def _prune_while_serving(state: ServerState, config: ServiceConfig) -> None:
    """Requests wait a moment; blobs clients touched lately are spared even when unreachable
    (a manifest naming them may be on its way)."""
    await state.pause()
    try:
        access = state.storage.access
        access.flush()
        cutoff = time.time() - RECENT_SECONDS
        spare = frozenset(Digest.parse(d) for d, t in access.times["blobs"].items() if t >= cutoff)
        await asyncio.to_thread(_prune, state.storage, _policy(config, True, spare))
    finally:
        state.resume()


def _prune(storage: Storage, policy: PrunePolicy) -> None:
    try:
        report = prune(storage, policy)
        log.info("pruned: %s", report.to_json())
    except OSError as error:
        log.warning("prune failed: %s", error)


def _save(store: Store, storage: Storage, entry: EntryName) -> None:
    try:
        result = store.save(storage, entry)
        log.info("saved to %s: %s", store.description, result.to_json())
    except (StoreError, OSError) as error:
        log.warning("save failed (will retry): %s", error)
