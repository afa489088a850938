"""Run the registry over a root until SIGTERM/SIGINT, then shut down cleanly.

Shutdown finishes in-flight requests, then flushes the access record and this run's stats, so
the post stage (or the next job) sees everything the build did.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from cache_action.errors import CacheActionError
from cache_action.registry.app import create_app
from cache_action.registry.auth import Gatekeeper, describe
from cache_action.registry.context import SERVER_STATE, ServerState
from cache_action.registry.lazy import LazyFetches
from cache_action.registry.settings import Listen, ServeConfig
from cache_action.storage.access import write_stats
from cache_action.storage.files import write_atomic
from cache_action.storage.layout import usable_root
from cache_action.storage.lock import root_lock
from cache_action.storage.prune import forget_remote
from cache_action.storage.remote import BlobSource
from cache_action.storage.root import Storage

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 30.0


Hook = Callable[[ServerState], Coroutine[Any, Any, None]]


async def serve(
    config: ServeConfig,
    periodic: Hook | None = None,
    on_stopped: Hook | None = None,
    sock: socket.socket | None = None,
    storage: Storage | None = None,
) -> None:
    """`periodic` runs while serving (cancelled at stop); `on_stopped` after the server has
    stopped and flushed, still under the root lock (the standalone service's final save).
    `sock` is the socket `bind` made, `storage` the root opened, when the caller had work
    to do between."""
    sock = sock or bind(config.listen)  # first: a port in use is reported before the root
    if storage is None:
        storage = Storage.open(usable_root(config.root_setting, config.root).root)
    with root_lock(storage.layout, "serve"):
        storage.uploads.clear()
        app = create_app(storage, Gatekeeper(config.policy))
        state = app[SERVER_STATE]
        state.lazy = _lazy_fetches(config, storage, state)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=log if config.log_requests else None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            site = web.SockSite(runner, sock, ssl_context=config.tls)
            await site.start()
            _announce(config, storage, _bound_address(runner))
            if state.lazy is not None:
                state.lazy.prefetch(storage.remote.to_prefetch())
            tasks = [asyncio.create_task(_housekeeping(storage))]
            if periodic is not None:
                tasks.append(asyncio.create_task(periodic(app[SERVER_STATE])))
            await stop.wait()
            for task in tasks:
                task.cancel()
            await site.stop()  # no new connections; open ones may still finish their requests
            await _drain(app[SERVER_STATE])
        finally:
            if state.lazy is not None:
                await state.lazy.close()
            await runner.cleanup()
            _persist(storage, app)
            if config.ready_file is not None:
                config.ready_file.unlink(missing_ok=True)
        if on_stopped is not None:
            await on_stopped(app[SERVER_STATE])


def _lazy_fetches(config: ServeConfig, storage: Storage, state: ServerState) -> LazyFetches | None:
    """After a lazy restore: how the blobs it left in the store are fetched on first use."""
    source = _blob_source(config.lazy_source)
    if source is not None:
        return LazyFetches(storage, source, state.stats)
    if storage.remote:
        _drop_unfetchable(storage)
    return None


def _blob_source(path: Path | None) -> BlobSource | None:
    if path is None:
        return None
    from cache_action.stores.factory import read_source_file  # boto3 etc. only here

    try:
        return read_source_file(path)
    except (OSError, ValueError, KeyError, TypeError, CacheActionError) as error:
        log.warning("--lazy-source %s is unusable: %s", path, error)
        return None


def _drop_unfetchable(storage: Storage) -> None:
    left = list(storage.remote.blobs)
    dropped = forget_remote(storage, left)
    log.warning(
        "%d blobs a lazy restore left in its store cannot be fetched without --lazy-source: "
        "dropped the %d tags that need them (builds miss them cleanly)",
        len(left),
        len(dropped),
    )


def _announce(config: ServeConfig, storage: Storage, address: str) -> None:
    """The log lines and the ready file of a registry that now listens."""
    url = f"{config.scheme}://{address}"
    who = describe(config.policy)
    log.info("registry serving %s on %s (%s)", storage.layout.root, url, who)
    for warning in config.warnings():
        log.warning(warning)
    if config.ready_file is not None:
        _write_ready_file(config.ready_file, address, url)


def bind(listen: Listen) -> socket.socket:
    """The listening socket, or a one-line error naming the setting."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        return socket.create_server((listen.host, listen.port), family=family, backlog=1024)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            problem = "is in use: stop what listens there, or choose another port (0: any)"
        elif error.errno == errno.EADDRNOTAVAIL:
            problem = "cannot be bound: no interface of this machine has that address"
        elif error.errno == errno.EACCES:
            problem = "cannot be bound: ports below 1024 need root (or CAP_NET_BIND_SERVICE)"
        else:
            problem = f"cannot be bound ({error.strerror or error})"
        raise CacheActionError(f"{listen.setting}: {listen} {problem}") from None


async def _drain(state: ServerState) -> None:
    """Let requests in flight finish (an upload body keeps arriving) before closing sockets."""
    if not state.in_flight:
        return
    log.info("stopping: waiting for %d request(s) in flight", state.in_flight)
    try:
        await asyncio.wait_for(state.idle.wait(), SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning("%d request(s) still running after the grace period", state.in_flight)


def _bound_address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready_file(path: Path, address: str, url: str) -> None:
    """Readiness that needs no TCP connection: the action container is on another network."""
    document = {"address": address, "url": url, "started_at": time.time()}
    write_atomic(path, json.dumps(document).encode())


async def _housekeeping(storage: Storage) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
        data = storage.access.snapshot()
        if data is not None:
            try:
                await asyncio.to_thread(write_atomic, storage.layout.access_path, data)
            except OSError as error:
                storage.access.dirty = True
                log.warning("could not save the access record: %s", error)
        storage.uploads.purge_stale()
        await asyncio.to_thread(storage.remote.flush)


def _persist(storage: Storage, app: web.Application) -> None:
    stats = app[SERVER_STATE].stats
    stats.stopped_at = time.time()
    storage.access.flush()
    storage.remote.flush()
    write_stats(storage.layout, stats.to_json())
    log.info("flushed access record and stats: %s", json.dumps(stats.to_json()))
