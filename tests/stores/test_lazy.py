"""Lazy restores: an entry's metadata now, each other blob from its store on its first GET.

Against the real stores (a local directory, SeaweedFS's S3, the Actions cache emulator over
Azurite) and the real registry process with `--lazy-source`, driven by the BuildKit-shaped
client and skopeo. Faults on the wire come from a proxy in front of SeaweedFS that answers
5xx, cuts bodies short, or flips bytes, for the blob GETs only.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.stores.base import Store
from cache_action.stores.factory import open_store, write_source_file
from cache_action.stores.gha.store import GhaStore
from cache_action.stores.spec import GhaSpec, LocalSpec, S3Options, StoreSpec, parse_store
from tests.buildkit_client import (
    OCI_MANIFEST,
    BuildKit,
    Connection,
    cache_export,
    layer_get_headers,
)
from tests.components import RegistryProcess
from tests.gha_emulator import CacheEmulator, gha_env
from tests.http_fake import serve_in_thread, shut_down
from tests.prune_helpers import Pusher, layer
from tests.seaweed import S3Server

NAME = EntryName("buildkit", "app", "refs/heads/main")
TIMEOUT = 60


# --- the stores -------------------------------------------------------------------------------


@dataclass
class Target:
    kind: str
    spec: StoreSpec
    runner: RunnerContext
    runs: int = 0

    def store(self) -> Store:
        """As a new job opens it (the Actions cache names each save by the job's run)."""
        self.runs += 1
        return open_store(self.spec, replace(self.runner, run_id=str(self.runs)))


def s3_target(seaweed: S3Server, endpoint: str | None = None) -> Target:
    env = {**seaweed.env(), **({"S3_ENDPOINT": endpoint} if endpoint else {})}
    spec = parse_store("store", seaweed.url(seaweed.new_prefix("lazy")), S3Options.from_env(env))
    return Target("s3", spec, RunnerContext.from_env({}))


@pytest.fixture(params=["local", "s3", "gha"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return Target("local", LocalSpec(tmp_path / "store"), RunnerContext.from_env({}))
    if request.param == "s3":
        return s3_target(request.getfixturevalue("seaweed"))
    return gha_target(request.getfixturevalue("emulator"))


def gha_target(emulator: CacheEmulator) -> Target:
    env = {**gha_env(emulator), "GITHUB_RUN_ID": "7", "GITHUB_REPOSITORY": "o/r"}
    return Target("gha", GhaSpec(), RunnerContext.from_env(env))


@dataclass
class Built:
    root: Path
    layers: dict[str, bytes]  # every layer pushed, by digest
    metadata: set[str]  # manifests and configs
    exports: dict[str, Any]  # tag → CacheExport
    pushed: dict[str, list[Any]]  # tag → its layers, in the order the build listed them


def build_root(tmp_path: Path) -> Built:
    """Two BuildKit cache exports sharing a layer, pushed through the real registry."""
    work = tmp_path / "build"
    work.mkdir()
    server = RegistryProcess(work / "root", work / "ready.json", work / "log").start()
    shared = layer(300_000, "shared")
    exports = {"app": [shared, layer(400_000, "app")], "base": [shared, layer(200_000, "base")]}
    done: dict[str, Any] = {}
    try:
        pusher = Pusher(server.url)
        for tag, layers in exports.items():
            done[tag] = pusher.cache("cache", tag, layers)
        pusher.close()
    finally:
        assert server.stop() == 0
    pushed = {item.digest: item.data for items in exports.values() for item in items}
    metadata = {e.manifest_digest for e in done.values()} | {e.config_digest for e in done.values()}
    return Built(work / "root", pushed, metadata, done, exports)


def lazily_served(
    target: Target, built: Built, tmp_path: Path, name: str = "lazy", prefetch: bool = False
) -> Lazy:
    """Save `built`, restore it lazily into a new root, serve that with --lazy-source. Without
    `prefetch` the registry fetches only what clients ask for."""
    saved = target.store().save(Storage.open(built.root), NAME)
    assert saved.saved, saved
    root = tmp_path / name
    storage = Storage.open(root)
    result = target.store().restore(storage, [[NAME]], lazy=True)
    assert result.hit.value == "exact"
    if not prefetch:
        storage.remote.without_prefetch()
    source = tmp_path / f"{name}-source.json"
    write_source_file(source, target.spec, target.runner)
    server = RegistryProcess(
        root,
        tmp_path / f"{name}.json",
        tmp_path / f"{name}.log",
        options=("--lazy-source", str(source)),
    )
    return Lazy(root, result.to_json(), server.start(), source)


@dataclass
class Lazy:
    root: Path
    restore: dict[str, Any]
    server: RegistryProcess
    source: Path

    def stats(self) -> dict[str, Any]:
        document: dict[str, Any] = requests.get(
            f"{self.server.url}/_cache/stats", timeout=TIMEOUT
        ).json()
        return document

    def pool(self) -> set[str]:
        directory = self.root / "blobs" / "sha256"
        return {f"sha256:{p.name}" for p in directory.iterdir() if not p.name.startswith(".")}

    def leftovers(self) -> list[Path]:
        return [p for p in (self.root / "blobs").rglob(".*") if p.is_file()]


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_root(tmp_path)


# --- what comes now, what comes later --------------------------------------------------------


def test_a_lazy_restore_brings_metadata_and_serves_each_blob_on_first_use(
    target: Target, built: Built, tmp_path: Path
) -> None:
    lazy = lazily_served(target, built, tmp_path)
    try:
        assert lazy.pool() == built.metadata  # manifests and configs only
        assert lazy.restore["blobs_left"] == len(built.layers)
        assert lazy.restore["bytes_left"] == sum(len(d) for d in built.layers.values())
        assert not lazy.source.exists()  # read once by the registry, then deleted
        url = lazy.server.url
        for digest, data in built.layers.items():
            head = requests.head(f"{url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
            assert (head.status_code, head.headers["Content-Length"]) == (200, str(len(data)))
            assert head.headers["Docker-Content-Digest"] == digest
        assert lazy.stats()["blobs_fetched"] == 0  # HEAD answers from the metadata
        for digest, data in built.layers.items():
            got = requests.get(f"{url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
            assert (got.status_code, got.content) == (200, data)
        stats = lazy.stats()
        assert stats["blobs_fetched"] == len(built.layers)
        assert stats["bytes_fetched"] >= sum(len(d) for d in built.layers.values())
        assert lazy.pool() == built.metadata | set(built.layers)
        for digest, data in built.layers.items():  # from disk now
            got = requests.get(f"{url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
            assert got.content == data
        assert lazy.stats()["blobs_fetched"] == len(built.layers)
    finally:
        assert lazy.server.stop() == 0
    assert json.loads((lazy.root / ".cache-action" / "remote.json").read_text()) == {"blobs": {}}
    assert lazy.leftovers() == []


def test_concurrent_gets_of_one_blob_download_it_once(
    target: Target, built: Built, tmp_path: Path
) -> None:
    lazy = lazily_served(target, built, tmp_path)
    digest, data = max(built.layers.items(), key=lambda item: len(item[1]))
    bodies: list[bytes] = []

    def get() -> None:
        response = requests.get(f"{lazy.server.url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
        assert response.status_code == 200
        bodies.append(response.content)

    try:
        threads = [threading.Thread(target=get) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bodies == [data] * 8
        stats = lazy.stats()
        assert stats["blobs_fetched"] == 1
        assert stats["bytes_fetched"] <= len(data) + 64 * 1024  # one download (and framing)
    finally:
        assert lazy.server.stop() == 0


def test_a_range_of_a_blob_still_in_the_store(target: Target, built: Built, tmp_path: Path) -> None:
    lazy = lazily_served(target, built, tmp_path)
    digest, data = next(iter(built.layers.items()))
    try:
        got = requests.get(
            f"{lazy.server.url}/v2/cache/blobs/{digest}",
            headers={"Range": "bytes=1000-1999"},
            timeout=TIMEOUT,
        )
        assert (got.status_code, got.content) == (206, data[1000:2000])
        assert got.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    finally:
        assert lazy.server.stop() == 0


def test_what_the_last_run_read_is_prefetched_in_the_background(
    target: Target, built: Built, tmp_path: Path
) -> None:
    lazy = lazily_served(target, built, tmp_path, prefetch=True)
    try:
        deadline = 30.0
        while lazy.stats()["blobs_fetched"] < len(built.layers) and deadline > 0:
            threading.Event().wait(0.1)
            deadline -= 0.1
        assert lazy.stats()["blobs_fetched"] == len(built.layers)  # the build read them all
        assert lazy.pool() == built.metadata | set(built.layers)
    finally:
        assert lazy.server.stop() == 0


# --- BuildKit against a lazily restored root -------------------------------------------------


def test_buildkit_imports_re_exports_and_exports_against_a_lazy_root(
    target: Target, built: Built, tmp_path: Path
) -> None:
    lazy = lazily_served(target, built, tmp_path)
    app = built.exports["app"]
    try:
        buildkit = BuildKit(lazy.server.url)
        resolved = buildkit.resolve("cache", "app")
        assert resolved.status == 200
        assert resolved.header("Docker-Content-Digest") == app.manifest_digest
        fetched = buildkit.fetch_manifest("cache", app.manifest_digest, OCI_MANIFEST)
        assert fetched.body == app.manifest
        assert buildkit.fetch_config("cache", app.config_digest).body == app.config
        # The layers, all at once, one connection each (each one fetched from the store).
        layers = list(json.loads(app.manifest)["layers"])
        connections = [Connection(lazy.server.url) for _ in layers]
        started = [
            c.begin("GET", f"/v2/cache/blobs/{d['digest']}", layer_get_headers(d["mediaType"]))
            for c, d in zip(connections, layers, strict=True)
        ]
        for (response, _, _), descriptor in zip(started, layers, strict=True):
            assert response.status == 200
            assert response.getheader("Content-Length") == str(descriptor["size"])
            assert response.read() == built.layers[descriptor["digest"]]
        for connection in connections:
            connection.close()

        # Re-export of the other tag: every blob is "there" (HEAD from the metadata), the
        # manifest moves; nothing is uploaded and nothing fetched.
        before = lazy.stats()["blobs_fetched"]
        base = built.exports["base"]
        again = cache_export("cache", "base", built.pushed["base"], source_ref="x/cache:base")
        exchanges = BuildKit(lazy.server.url).export(again)
        assert [(e.method, e.status) for e in exchanges if e.method != "HEAD"] == [("PUT", 201)]
        assert lazy.stats()["blobs_fetched"] == before
        assert again.manifest != base.manifest

        # A cold export of something new: uploaded as usual.
        fresh = cache_export("cache", "new", [layer(150_000, "new")])
        assert BuildKit(lazy.server.url).export(fresh)[-1].status == 201
    finally:
        assert lazy.server.stop() == 0

    # The next job restores what this one leaves, eagerly: every tag whole.
    saved = target.store().save(Storage.open(lazy.root), NAME)
    assert saved.saved, saved
    eager = tmp_path / "eager"
    result = target.store().restore(Storage.open(eager), [[NAME]])
    assert result.tags_dropped == []
    server = RegistryProcess(eager, tmp_path / "eager.json", tmp_path / "eager.log").start()
    try:
        for tag in ("app", "base", "new"):
            pulled = BuildKit(server.url).resolve("cache", tag)
            assert pulled.status == 200, tag
        for digest, data in built.layers.items():
            got = requests.get(f"{server.url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
            assert got.content == data
    finally:
        assert server.stop() == 0


# --- saves after a lazy restore ----------------------------------------------------------------


def test_a_save_after_a_lazy_restore_carries_unread_blobs(
    target: Target, built: Built, tmp_path: Path
) -> None:
    """S3 and local: they are in the store already, nothing is sent again. The Actions cache:
    a new archive must hold them, so they are read by range (only when something changed)."""
    lazy = lazily_served(target, built, tmp_path)
    try:
        new = cache_export("cache", "extra", [layer(120_000, "extra")])
        assert BuildKit(lazy.server.url).export(new)[-1].status == 201
    finally:
        assert lazy.server.stop() == 0
    storage = Storage.open(lazy.root)
    assert len(storage.remote.blobs) == len(built.layers)  # nothing was read
    saved = target.store().save(storage, NAME)
    assert saved.saved, saved
    if target.kind != "gha":
        assert saved.blobs_uploaded == len(new.blobs()) + 1  # the new layer, config, manifest
    # Unchanged since: the next save is skipped, whatever stayed remote.
    assert target.store().save(Storage.open(lazy.root), NAME).skipped_reason == (
        "nothing changed since the restore"
    )
    eager = tmp_path / "eager"
    result = target.store().restore(Storage.open(eager), [[NAME]])
    assert result.tags_dropped == []
    present = {f"sha256:{p.name}" for p in (eager / "blobs" / "sha256").iterdir()}
    assert set(built.layers) <= present


def read_app_and_export_extra(lazy: Lazy, built: Built) -> None:
    """A build that reads tag app's layers (base's stay in the store) and exports a new tag,
    then stops."""
    try:
        for item in built.pushed["app"]:
            got = requests.get(f"{lazy.server.url}/v2/cache/blobs/{item.digest}", timeout=TIMEOUT)
            assert got.content == item.data
        new = cache_export("cache", "extra", [layer(120_000, "extra")])
        assert BuildKit(lazy.server.url).export(new)[-1].status == 201
    finally:
        assert lazy.server.stop() == 0


def test_an_actions_cache_save_reads_back_what_it_can_and_drops_only_what_it_cannot(
    emulator: CacheEmulator, built: Built, tmp_path: Path
) -> None:
    """The entry a lazy restore read from may be gone by the post stage (another job on the
    same ref superseded it, or GitHub evicted it): the save still happens, without the tags
    whose blobs could not be read back."""
    target = gha_target(emulator)
    lazy = lazily_served(target, built, tmp_path)
    read_app_and_export_extra(lazy, built)
    (seed,) = emulator.finalized()
    emulator.blob_client(seed).delete_blob()
    saved = target.store().save(Storage.open(lazy.root), NAME)
    assert saved.saved, saved
    eager = tmp_path / "eager"
    result = target.store().restore(Storage.open(eager), [[NAME]])
    assert result.restored[0].key == saved.key
    index = json.loads((eager / "cache" / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert tags == {"app", "extra"}  # "base" needed a layer only the deleted entry had
    assert result.tags_dropped == []


def test_an_actions_cache_save_does_not_read_again_what_is_already_in_the_pool(
    emulator: CacheEmulator, built: Built, tmp_path: Path
) -> None:
    """A stale record (a process that kept the list from before the registry fetched) names
    blobs the pool has: they are linked, not read back."""
    target = gha_target(emulator)
    lazy = lazily_served(target, built, tmp_path)
    stale = (lazy.root / ".cache-action" / "remote.json").read_bytes()
    read_app_and_export_extra(lazy, built)
    (lazy.root / ".cache-action" / "remote.json").write_bytes(stale)
    store = target.store()
    assert isinstance(store, GhaStore)
    fetched: list[str] = []
    fetch = store.blobs.fetch

    def counting(digest: Any, blob: Any, write: Any) -> int:
        fetched.append(str(digest))
        return fetch(digest, blob, write)

    store.blobs.fetch = counting  # type: ignore[method-assign]
    assert store.save(Storage.open(lazy.root), NAME).saved
    read_by_build = {item.digest for item in built.pushed["app"]}
    assert sorted(fetched) == sorted(set(built.layers) - read_by_build)


# --- faults on the wire (S3 behind a proxy) --------------------------------------------------


class FaultProxy:
    """Forwards to SeaweedFS; GETs of blob objects get `mode`'s fault (counted per key)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.mode = ""
        self.blob_gets: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                proxy.forward(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self.server = serve_in_thread(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0") or 0)
        body = handler.rfile.read(length) if length else None
        blob = handler.command == "GET" and "/blobs/sha256/" in handler.path
        if blob:
            key = handler.path.split("?")[0]
            self.blob_gets[key] = self.blob_gets.get(key, 0) + 1
        if blob and self.mode == "5xx":
            self._answer(handler, 500, b"<Error><Code>InternalError</Code></Error>")
            return
        upstream = http.client.HTTPConnection(self.upstream, timeout=TIMEOUT)
        upstream.request(handler.command, handler.path, body, dict(handler.headers))
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        if blob and self.mode == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection"):
                handler.send_header(name, value)
        handler.end_headers()
        if blob and self.mode == "truncated" and len(data) > 1:
            handler.wfile.write(data[: len(data) // 2])  # then the connection goes
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        handler.wfile.write(data)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        shut_down(self.server)


@pytest.fixture
def proxy(seaweed: S3Server) -> Iterator[FaultProxy]:
    fault = FaultProxy(seaweed.endpoint)
    yield fault
    fault.close()


@pytest.mark.parametrize("mode", ["5xx", "truncated", "corrupt"])
def test_a_fetch_that_fails_is_a_clean_miss_and_leaves_nothing(
    seaweed: S3Server, proxy: FaultProxy, built: Built, tmp_path: Path, mode: str
) -> None:
    target = s3_target(seaweed, endpoint=proxy.url)
    lazy = lazily_served(target, built, tmp_path)
    digest, data = next(iter(built.layers.items()))
    url = f"{lazy.server.url}/v2/cache/blobs/{digest}"
    proxy.mode = mode
    try:
        try:
            first = requests.get(url, timeout=TIMEOUT)
        except requests.exceptions.RequestException:
            first = None  # the connection broke mid-body: BuildKit retries, and then misses
        if first is not None:
            assert first.status_code == 404 or first.content != data, mode
            if first.status_code == 404:
                assert first.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        # From now on the blob is missing: HEAD says so, so BuildKit pushes it again.
        assert requests.head(url, timeout=TIMEOUT).status_code == 404
        second = requests.get(url, timeout=TIMEOUT)
        assert second.status_code == 404
        assert second.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        # Every other blob still comes, from the healthy store.
        proxy.mode = ""
        for other, content in built.layers.items():
            if other != digest:
                got = requests.get(f"{lazy.server.url}/v2/cache/blobs/{other}", timeout=TIMEOUT)
                assert got.content == content
    finally:
        assert lazy.server.stop() == 0
    assert digest not in lazy.pool()  # nothing corrupt or partial under its name
    assert lazy.leftovers() == []


def test_a_body_that_breaks_once_is_resumed(
    seaweed: S3Server, proxy: FaultProxy, built: Built, tmp_path: Path
) -> None:
    target = s3_target(seaweed, endpoint=proxy.url)
    lazy = lazily_served(target, built, tmp_path)
    digest, data = next(iter(built.layers.items()))
    real_forward = proxy.forward
    broken = {"done": False}

    def break_once(handler: BaseHTTPRequestHandler) -> None:
        proxy.mode = "" if broken["done"] else "truncated"
        if "/blobs/sha256/" in handler.path:
            broken["done"] = True
        real_forward(handler)

    proxy.forward = break_once  # type: ignore[method-assign]
    try:
        got = requests.get(f"{lazy.server.url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
        assert (got.status_code, got.content) == (200, data)
    finally:
        assert lazy.server.stop() == 0


def test_the_store_unreachable_after_the_restore_is_a_clean_miss(
    seaweed: S3Server, proxy: FaultProxy, built: Built, tmp_path: Path
) -> None:
    target = s3_target(seaweed, endpoint=proxy.url)
    lazy = lazily_served(target, built, tmp_path)
    proxy.close()  # connections refused from now on
    digest = next(iter(built.layers))
    try:
        got = requests.get(f"{lazy.server.url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
        assert got.status_code == 404
        assert got.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    finally:
        assert lazy.server.stop() == 0
    assert lazy.leftovers() == []


# --- a pull of every tag, with skopeo --------------------------------------------------------


@pytest.mark.skopeo
def test_every_tag_pulls_byte_identical_after_a_lazy_restore(
    target: Target, skopeo: str, tmp_path: Path
) -> None:
    from tests.roots import add_image, add_layer, push_into_root
    from tests.skopeo import Skopeo, layout_blobs

    root = tmp_path / "pushed"
    layout = tmp_path / "layout"
    shared = add_layer(layout, 400_000, "shared")
    images = [
        add_image(layout, [shared, add_layer(layout, 200_000, "a")], "a"),
        add_image(layout, [shared, add_layer(layout, 300_000, "b")], "b"),
    ]
    push_into_root(root, tmp_path / "push", skopeo, [(image, "cache") for image in images])
    built = Built(root, {}, set(), {}, {})
    lazy = lazily_served(target, built, tmp_path)
    try:
        client = Skopeo(skopeo)
        for image in images:
            pulled = tmp_path / f"pulled-{image.tag}"
            client.pull(f"{lazy.server.address}/cache:{image.tag}", pulled, image.tag)
            expected = {d: layout_blobs(layout)[d] for d in image.blobs}
            assert layout_blobs(pulled) == expected
    finally:
        assert lazy.server.stop() == 0


def test_prune_treats_never_read_blobs_as_unused(
    target: Target, built: Built, tmp_path: Path
) -> None:
    """A budget after a lazy restore keeps what the build read: the tag it pulled."""
    from cache_action.storage.prune import PrunePolicy, prune

    lazy = lazily_served(target, built, tmp_path)
    try:
        buildkit = BuildKit(lazy.server.url)
        assert buildkit.resolve("cache", "app").status == 200
        for descriptor in json.loads(built.exports["app"].manifest)["layers"]:
            got = requests.get(
                f"{lazy.server.url}/v2/cache/blobs/{descriptor['digest']}", timeout=TIMEOUT
            )
            assert got.status_code == 200
    finally:
        assert lazy.server.stop() == 0
    storage = Storage.open(lazy.root)
    started = json.loads((lazy.root / ".cache-action" / "stats.json").read_text())["started_at"]
    report = prune(storage, PrunePolicy(max_size_bytes=800_000, protect_since=started))
    assert [item["tag"] for item in report.tags_removed] == ["cache:base"]
    assert set(storage.remote.blobs) == set()  # base's unread layer is forgotten too


# --- the command line -------------------------------------------------------------------------


def test_restore_lazy_source_then_serve_lazy_source_from_the_command_line(
    seaweed: S3Server, built: Built, tmp_path: Path
) -> None:
    """What a user of the CLI does: `restore --lazy-source F`, then `serve --lazy-source F`
    (S3 credentials from the environment, as for any CLI store)."""
    from tests.cli import run_cache_action

    target = s3_target(seaweed)
    assert target.store().save(Storage.open(built.root), NAME).saved
    url = target.spec.url
    root, source = tmp_path / "cli-root", tmp_path / "cli-source.json"
    env = {"PATH": "/usr/bin:/bin", **seaweed.env()}
    args = ("--root", str(root), "--store", url, "--scope", "app", "--ref", "main")
    restored = run_cache_action(env, "restore", *args, "--lazy-source", str(source), cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert restored.json["blobs_left"] == len(built.layers)
    assert source.stat().st_mode & 0o777 == 0o600
    server = RegistryProcess(
        root, tmp_path / "cli.json", tmp_path / "cli.log", options=("--lazy-source", str(source))
    ).start()
    try:
        for digest, data in built.layers.items():
            got = requests.get(f"{server.url}/v2/cache/blobs/{digest}", timeout=TIMEOUT)
            assert (got.status_code, got.content) == (200, data)
    finally:
        assert server.stop() == 0
    assert not source.exists()


def test_without_a_usable_lazy_source_the_tags_needing_remote_blobs_miss_cleanly(
    target: Target, built: Built, tmp_path: Path
) -> None:
    """A source file that is gone (or unreadable) is a warning, not a registry that won't
    start, nor tags whose layers 404 mid-build: those tags go, the rest is served."""
    lazy = lazily_served(target, built, tmp_path)
    url = lazy.server.url
    read_tag = "app"
    manifest = requests.get(
        f"{url}/v2/cache/manifests/{read_tag}", headers={"Accept": OCI_MANIFEST}, timeout=TIMEOUT
    )
    assert manifest.status_code == 200
    for layer_digest in [d["digest"] for d in manifest.json()["layers"]]:
        assert requests.get(f"{url}/v2/cache/blobs/{layer_digest}", timeout=TIMEOUT).ok
    assert lazy.server.stop() == 0
    log = tmp_path / "again.log"
    server = RegistryProcess(
        lazy.root, tmp_path / "again.json", log, options=("--lazy-source", str(lazy.source))
    ).start()
    try:
        tags = requests.get(f"{server.url}/v2/cache/tags/list", timeout=TIMEOUT).json()["tags"]
        assert tags == [read_tag]  # "base" needed a layer still in the store
        got = requests.get(
            f"{server.url}/v2/cache/manifests/{read_tag}",
            headers={"Accept": OCI_MANIFEST},
            timeout=TIMEOUT,
        )
        for layer_digest in [d["digest"] for d in got.json()["layers"]]:
            assert requests.get(f"{server.url}/v2/cache/blobs/{layer_digest}", timeout=TIMEOUT).ok
    finally:
        assert server.stop() == 0
    text = log.read_text()
    assert "--lazy-source" in text and "is unusable" in text and "dropped the 1 tags" in text
    assert json.loads((lazy.root / ".cache-action" / "remote.json").read_text()) == {"blobs": {}}
