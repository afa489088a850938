"""Replay the request sequences a real BuildKit v0.24 sends (buildkit-observed-requests.md, sections
3, 4, 5 and 7) against the real registry process, and check every response property BuildKit
relies on: statuses, path-absolute Locations, Docker-Content-Digest on every 201, the manifest
HEAD's real Content-Length and media type, and never a Content-Encoding."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path

import pytest

from tests.buildkit_client import (
    ALL_MANIFEST_TYPES,
    CACHE_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    GET_ACCEPT_ENCODING,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    OCTET_STREAM,
    BuildKit,
    CacheExport,
    Connection,
    Exchange,
    Layer,
    cache_export,
    digest_query,
    layer_get_headers,
    random_layers,
    sha256,
)
from tests.components import RegistryProcess

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
FORMS = [
    pytest.param("manifest", "cache", OCI_MANIFEST, id="oci-manifest"),
    pytest.param("index", "f5idx", OCI_INDEX, id="oci-index"),
    pytest.param("docker-list", "f5docker", DOCKER_LIST, id="docker-manifest-list"),
]


@pytest.fixture(scope="module")
def layers() -> list[Layer]:
    """Dockerfile A's three layers, at the observed sizes, in build order."""
    return random_layers()


# --- response checks: what containerd's pusher, resolver and fetcher read ---


def check_common(exchanges: list[Exchange]) -> None:
    for ex in exchanges:
        assert ex.header("Content-Encoding") is None, (ex.method, ex.target)
        assert ex.header("Docker-Distribution-API-Version") == "registry/2.0", ex.target
        assert ex.header("Transfer-Encoding") is None, (ex.method, ex.target)


def check_blob_absent(ex: Exchange, repo: str, digest: str) -> None:
    assert (ex.method, ex.target, ex.status) == ("HEAD", f"/v2/{repo}/blobs/{digest}", 404)
    assert ex.body == b""
    assert ex.header("Docker-Content-Digest") is None


def check_upload_started(ex: Exchange, repo: str) -> str:
    assert (ex.method, ex.target, ex.status) == ("POST", f"/v2/{repo}/blobs/uploads/", 202)
    assert ex.request_headers["Content-Length"] == "0"
    location = ex.header("Location")
    assert location is not None
    assert location.startswith(f"/v2/{repo}/blobs/uploads/"), location
    upload_id = ex.header("Docker-Upload-UUID")
    assert upload_id is not None
    assert urllib.parse.urlsplit(location).path == f"/v2/{repo}/blobs/uploads/{upload_id}"
    assert ex.header("Range") == "0-0"
    assert ex.header("Content-Length") == "0"
    return location


def check_blob_created(ex: Exchange, repo: str, digest: str, location: str, size: int) -> None:
    assert ex.method == "PUT"
    assert ex.target == digest_query(location, digest)
    separator = "&" if "?" in location else "?"
    assert ex.target.endswith(f"{separator}digest=sha256%3A{digest[7:]}")
    assert ex.request_headers["Content-Length"] == str(size)
    assert ex.request_headers["Content-Type"] == OCTET_STREAM
    assert ex.status == 201, ex.body
    assert ex.header("Docker-Content-Digest") == digest
    assert ex.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert ex.header("Content-Length") == "0"


def check_blob_present(ex: Exchange, repo: str, digest: str, data: bytes) -> None:
    """Blob HEAD or GET: 200 with the exact length and digest, as opaque octets."""
    assert (ex.target, ex.status) == (f"/v2/{repo}/blobs/{digest}", 200)
    assert ex.header("Content-Length") == str(len(data))
    assert ex.header("Docker-Content-Digest") == digest
    assert ex.header("Content-Type") == OCTET_STREAM
    assert ex.header("Accept-Ranges") == "bytes"
    assert ex.body == (b"" if ex.method == "HEAD" else data)


def check_manifest_found(ex: Exchange, body: bytes, media_type: str) -> None:
    """Manifest HEAD or GET: BuildKit builds its descriptor from these three headers alone."""
    assert ex.status == 200, ex.body
    assert ex.header("Content-Length") == str(len(body))
    assert ex.header("Content-Length") != "0"
    assert ex.header("Content-Type") == media_type
    assert ex.header("Docker-Content-Digest") == sha256(body)
    assert ex.body == (b"" if ex.method == "HEAD" else body)


def check_manifest_created(ex: Exchange, repo: str, tag: str, body: bytes, media_type: str):
    assert (ex.method, ex.target) == ("PUT", f"/v2/{repo}/manifests/{tag}")
    assert ex.request_headers["Content-Type"] == media_type
    assert ex.status == 201, ex.body
    assert ex.header("Docker-Content-Digest") == sha256(body)
    assert ex.header("Location") == f"/v2/{repo}/manifests/{sha256(body)}"
    assert ex.header("Content-Length") == "0"


def shape(exchanges: list[Exchange]) -> list[tuple[str, str, int]]:
    """(method, path, status) per request: the observation tables' first columns."""
    return [(ex.method, ex.path, ex.status) for ex in exchanges]


def cold_export_shape(cache: CacheExport) -> list[tuple[str, str, int]]:
    repo = cache.repo
    expected: list[tuple[str, str, int]] = []
    for digest in [*(layer.digest for layer in cache.layers), cache.config_digest]:
        expected += [
            ("HEAD", f"/v2/{repo}/blobs/{digest}", 404),
            ("POST", f"/v2/{repo}/blobs/uploads/", 202),
            ("PUT", "<upload>", 201),
        ]
    expected += [
        ("HEAD", f"/v2/{repo}/manifests/{cache.tag}", 404),
        ("PUT", f"/v2/{repo}/manifests/{cache.tag}", 201),
    ]
    return expected


def with_upload_paths(exchanges: list[Exchange]) -> list[tuple[str, str, int]]:
    return [
        (m, "<upload>" if m == "PUT" and "/blobs/uploads/" in p else p, s)
        for m, p, s in shape(exchanges)
    ]


def check_cold_export(exchanges: list[Exchange], cache: CacheExport) -> None:
    assert with_upload_paths(exchanges) == cold_export_shape(cache)
    blobs = [*((la.digest, la.data) for la in cache.layers), (cache.config_digest, cache.config)]
    for i, (digest, data) in enumerate(blobs):
        head, post, put = exchanges[3 * i : 3 * i + 3]
        check_blob_absent(head, cache.repo, digest)
        location = check_upload_started(post, cache.repo)
        check_blob_created(put, cache.repo, digest, location, len(data))
    head, put = exchanges[-2:]
    assert head.status == 404
    assert head.request_headers["Accept"] == f"{cache.media_type}, */*"
    check_manifest_created(put, cache.repo, cache.tag, cache.manifest, cache.media_type)
    assert len({ex.connection for ex in exchanges}) == 1, "export must reuse one connection"
    check_common(exchanges)


def check_on_disk(root: Path, cache: CacheExport) -> None:
    """The repository is an OCI image layout BuildKit's type=local importer could read."""
    repo = root / cache.repo
    assert json.loads((repo / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((repo / "index.json").read_bytes())
    tagged = [
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == cache.tag
    ]
    assert tagged == [
        {
            "mediaType": cache.media_type,
            "digest": cache.manifest_digest,
            "size": len(cache.manifest),
            "annotations": {"org.opencontainers.image.ref.name": cache.tag},
        }
    ]
    for digest, data in [*cache.blobs().items(), (cache.manifest_digest, cache.manifest)]:
        pool = root / "blobs" / "sha256" / digest[7:]
        linked = repo / "blobs" / "sha256" / digest[7:]
        assert pool.read_bytes() == data
        assert os.path.samefile(pool, linked)


# --- scenario 1 and 5a/5b: cold export ---


@pytest.mark.parametrize(("form", "repo", "media_type"), FORMS)
def test_cold_export_sequence(
    registry: RegistryProcess, layers: list[Layer], form: str, repo: str, media_type: str
) -> None:
    cache = cache_export(repo, "t", layers, form)
    assert cache.media_type == media_type
    buildkit = BuildKit(registry.url)
    exchanges = buildkit.export(cache)
    assert exchanges == buildkit.log
    assert len(exchanges) == 14
    check_cold_export(exchanges, cache)
    check_on_disk(registry.root, cache)


def test_cold_export_uploads_layers_in_digest_order(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    cache = cache_export("cache", "main", layers)
    exchanges = BuildKit(registry.url).export(cache)
    uploaded = [ex.path.rsplit("/", 1)[1] for ex in exchanges if ex.method == "HEAD"][:3]
    assert uploaded == sorted(layer.digest for layer in layers)
    listed = [d["digest"] for d in json.loads(cache.manifest)["layers"]]
    assert listed == uploaded


# --- scenario 2: re-export after import, and the warm builder ---


def test_re_export_after_import_uploads_only_the_changed_manifest(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    first = cache_export("cache", "main", layers)
    BuildKit(registry.url).export(first)

    # 2a: import, then re-export a manifest that gained the source.ref annotation.
    buildkit = BuildKit(registry.url)
    resolved = buildkit.resolve("cache", "main")
    check_manifest_found(resolved, first.manifest, OCI_MANIFEST)
    digest = resolved.header("Docker-Content-Digest")
    assert digest == first.manifest_digest
    fetched = buildkit.fetch_manifest("cache", digest, OCI_MANIFEST)
    check_manifest_found(fetched, first.manifest, OCI_MANIFEST)
    config = buildkit.fetch_config("cache", first.config_digest)
    check_blob_present(config, "cache", first.config_digest, first.config)

    second = cache_export("cache", "main", layers, source_ref=f"{registry.address}/cache:main")
    assert second.config == first.config
    assert second.manifest != first.manifest
    exported = buildkit.export(second)
    assert shape(exported) == [
        *[("HEAD", f"/v2/cache/blobs/{d}", 200) for d in second.blobs()],
        ("HEAD", "/v2/cache/manifests/main", 200),
        ("PUT", "/v2/cache/manifests/main", 201),
    ]
    for ex, (digest_, data) in zip(exported[:4], second.blobs().items(), strict=True):
        check_blob_present(ex, "cache", digest_, data)
        assert ex.request_headers["Accept"] in (f"{OCI_LAYER_GZIP}, */*", f"{CACHE_CONFIG}, */*")
    check_manifest_found(exported[4], first.manifest, OCI_MANIFEST)
    check_manifest_created(exported[5], "cache", "main", second.manifest, OCI_MANIFEST)
    assert len(buildkit.log) == 9
    uploaded = sum(int(ex.request_headers.get("Content-Length", "0")) for ex in buildkit.log)
    assert uploaded == len(second.manifest)

    # 2b: the fixed point: the tag HEAD returns the digest about to be pushed, so no PUT.
    again = BuildKit(registry.url)
    resolved = again.resolve("cache", "main")
    check_manifest_found(resolved, second.manifest, OCI_MANIFEST)
    again.fetch_manifest("cache", second.manifest_digest, OCI_MANIFEST)
    again.fetch_config("cache", second.config_digest)
    exported = again.export(second)
    assert [ex.method for ex in again.log] == ["HEAD", "GET", "GET", *["HEAD"] * 5]
    assert [ex.status for ex in again.log] == [200] * 8
    check_manifest_found(exported[-1], second.manifest, OCI_MANIFEST)
    assert all(ex.method != "PUT" for ex in again.log)
    assert len({ex.connection for ex in again.log}) == 1
    check_common(buildkit.log + again.log)

    index = json.loads((registry.root / "cache" / "index.json").read_bytes())
    assert [(e["digest"], e["size"]) for e in index["manifests"]] == [
        (second.manifest_digest, len(second.manifest))
    ]


def test_warm_builder_re_export_is_five_heads(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    cache = cache_export("warm/cache", "main", layers)
    check_cold_export(BuildKit(registry.url).export(cache), cache)
    buildkit = BuildKit(registry.url)
    exchanges = buildkit.export(cache)
    assert shape(exchanges) == [
        *[("HEAD", f"/v2/warm/cache/blobs/{d}", 200) for d in cache.blobs()],
        ("HEAD", "/v2/warm/cache/manifests/main", 200),
    ]
    for ex, (digest, data) in zip(exchanges, cache.blobs().items(), strict=False):
        check_blob_present(ex, "warm/cache", digest, data)
    check_manifest_found(exchanges[-1], cache.manifest, OCI_MANIFEST)
    check_common(exchanges)


# --- scenario 3 and 5g-5i: import ---


@pytest.mark.parametrize(("form", "repo", "media_type"), FORMS)
def test_import_with_parallel_layer_fetches(
    registry: RegistryProcess, layers: list[Layer], form: str, repo: str, media_type: str
) -> None:
    cache = cache_export(repo, "t", layers, form)
    BuildKit(registry.url).export(cache)

    buildkit = BuildKit(registry.url)
    resolved = buildkit.resolve(repo, "t")
    assert "Traceparent" not in resolved.request_headers
    assert resolved.request_headers["Accept"] == ALL_MANIFEST_TYPES
    check_manifest_found(resolved, cache.manifest, media_type)
    # The manifest GET's Accept echoes the HEAD's Content-Type.
    fetched = buildkit.fetch_manifest(
        repo, resolved.header("Docker-Content-Digest") or "", resolved.header("Content-Type") or ""
    )
    check_manifest_found(fetched, cache.manifest, media_type)
    document = json.loads(fetched.body)
    descriptors = document["layers"] if form == "manifest" else document["manifests"][:-1]
    config_descriptor = document["config"] if form == "manifest" else document["manifests"][-1]
    assert config_descriptor["mediaType"] == CACHE_CONFIG
    config = buildkit.fetch_config(repo, config_descriptor["digest"])
    check_blob_present(config, repo, cache.config_digest, cache.config)
    assert len({ex.connection for ex in buildkit.log}) == 1

    # All layers at once, one connection each; every response starts before any finishes.
    connections = [Connection(registry.url) for _ in descriptors]
    started = []
    for connection, descriptor in zip(connections, descriptors, strict=True):
        assert descriptor["mediaType"] == cache.layer_media_type
        target = f"/v2/{repo}/blobs/{descriptor['digest']}"
        started.append(connection.begin("GET", target, layer_get_headers(descriptor["mediaType"])))
    heads = [response.read(65536) for response, _, _ in started]
    bodies = [head + response.read() for head, (response, _, _) in zip(heads, started, strict=True)]
    assert len({port for _, port, _ in started}) == len(descriptors)
    by_digest = {layer.digest: layer.data for layer in layers}
    for (response, _, _), body, descriptor in zip(started, bodies, descriptors, strict=True):
        assert response.status == 200
        assert response.getheader("Content-Length") == str(descriptor["size"])
        assert response.getheader("Docker-Content-Digest") == descriptor["digest"]
        assert response.getheader("Content-Type") == OCTET_STREAM
        assert response.getheader("Content-Encoding") is None
        assert body == by_digest[descriptor["digest"]]
    for connection in connections:
        connection.close()
    check_common(buildkit.log)


@pytest.mark.parametrize(("form", "repo", "media_type"), FORMS)
def test_import_racing_a_re_export_gets_the_manifest_it_resolved(
    registry: RegistryProcess, layers: list[Layer], form: str, repo: str, media_type: str
) -> None:
    """Two CI jobs: one resolves the tag, the other moves it, the first GETs by digest."""
    first = cache_export(repo, "t", layers[:2], form)
    BuildKit(registry.url).export(first)
    importer = BuildKit(registry.url)
    resolved = importer.resolve(repo, "t")
    check_manifest_found(resolved, first.manifest, media_type)

    moved = cache_export(repo, "t", layers[:2], form, source_ref=f"{registry.address}/{repo}:t")
    exported = BuildKit(registry.url).export(moved)
    assert exported[-1].status == 201

    fetched = importer.fetch_manifest(repo, first.manifest_digest, media_type)
    check_manifest_found(fetched, first.manifest, media_type)
    check_manifest_found(importer.resolve(repo, "t"), moved.manifest, media_type)
    check_common(importer.log)


def test_manifest_get_by_tag_fallback_matches_head(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    """Section 10 N3: without a usable HEAD, containerd GETs the tag, then the digest."""
    cache = cache_export("cache", "main", layers[:1])
    buildkit = BuildKit(registry.url)
    buildkit.export(cache)
    head = buildkit.resolve("cache", "main")
    by_tag = buildkit.connection.request(
        "GET", "/v2/cache/manifests/main", {"Accept": ALL_MANIFEST_TYPES, "Accept-Encoding": "gzip"}
    )
    check_manifest_found(by_tag, cache.manifest, OCI_MANIFEST)
    for name in ("Content-Length", "Content-Type", "Docker-Content-Digest"):
        assert head.header(name) == by_tag.header(name)
    check_common([head, by_tag])


def test_layer_fetch_resumes_with_range(registry: RegistryProcess, layers: list[Layer]) -> None:
    cache = cache_export("cache", "main", layers)
    BuildKit(registry.url).export(cache)
    layer = next(la for la in cache.layers if la.size == 8_391_309)
    target = f"/v2/cache/blobs/{layer.digest}"

    # A download cut off part way, then resumed on a new connection from where it stopped.
    first = Connection(registry.url)
    response, _, _ = first.begin("GET", target, layer_get_headers(OCI_LAYER_GZIP))
    assert response.status == 200
    received = response.read(3_000_000)
    first.close()
    resumed = Connection(registry.url).request(
        "GET", target, layer_get_headers(OCI_LAYER_GZIP, range_from=len(received))
    )
    assert resumed.status == 206
    assert resumed.header("Content-Range") == f"bytes 3000000-{layer.size - 1}/{layer.size}"
    assert resumed.header("Content-Length") == str(layer.size - 3_000_000)
    assert resumed.header("Content-Encoding") is None
    assert received + resumed.body == layer.data

    tail = Connection(registry.url).request(
        "GET", target, layer_get_headers(OCI_LAYER_GZIP, range_from=layer.size - 1)
    )
    assert (tail.status, tail.body) == (206, layer.data[-1:])
    assert tail.header("Content-Range") == f"bytes {layer.size - 1}-{layer.size - 1}/{layer.size}"


def test_blob_get_never_content_encoded(registry: RegistryProcess) -> None:
    """Blob GETs accept zstd/gzip/deflate; the stored (already compressed) bytes go out as is."""
    compressible = b"a" * 1_000_000
    cache = cache_export("cache", "main", [Layer(compressible, sha256(b"x"), "2025-01-01T00:00Z")])
    buildkit = BuildKit(registry.url)
    buildkit.export(cache)
    got = buildkit.connection.request(
        "GET", f"/v2/cache/blobs/{sha256(compressible)}", layer_get_headers(OCI_LAYER_GZIP)
    )
    assert got.request_headers["Accept-Encoding"] == GET_ACCEPT_ENCODING
    check_blob_present(got, "cache", sha256(compressible), compressible)
    check_common(buildkit.log)


# --- scenario 3d: a tag that does not exist ---


def test_import_of_missing_tag_is_one_404(registry: RegistryProcess, layers: list[Layer]) -> None:
    BuildKit(registry.url).export(cache_export("cache", "main", layers[:1]))
    buildkit = BuildKit(registry.url)
    missing = buildkit.resolve("cache", "doesnotexist")
    assert (missing.status, missing.body) == (404, b"")
    assert missing.header("Docker-Content-Digest") is None
    assert (missing.header("Content-Type") or "").startswith("application/json")
    assert int(missing.header("Content-Length") or 0) > 0
    unknown_repo = buildkit.resolve("nosuchrepo", "main")
    assert (unknown_repo.status, unknown_repo.body) == (404, b"")
    get = buildkit.connection.request(
        "GET", "/v2/cache/manifests/doesnotexist", {"Accept": ALL_MANIFEST_TYPES}
    )
    assert get.status == 404
    assert json.loads(get.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert len({ex.connection for ex in buildkit.log}) == 1  # the 404 HEAD kept the connection
    check_common(buildkit.log)


# --- scenario 6: two exports into different repositories ---


def test_exports_to_two_repositories_share_the_pool(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    main = cache_export("cache", "main", layers)
    check_cold_export(BuildKit(registry.url).export(main), main)
    # No cross-repository mount in cache traffic: the blob HEAD is per repository, so BuildKit
    # uploads everything again into the other repository.
    other = cache_export("other", "branch", layers, source_ref=f"{registry.address}/cache:main")
    check_cold_export(BuildKit(registry.url).export(other), other)
    check_on_disk(registry.root, main)
    check_on_disk(registry.root, other)

    for layer in layers:
        pool = (registry.root / "blobs" / "sha256" / layer.digest[7:]).stat()
        for repo in ("cache", "other"):
            linked = (registry.root / repo / "blobs" / "sha256" / layer.digest[7:]).stat()
            assert (linked.st_dev, linked.st_ino) == (pool.st_dev, pool.st_ino)
        assert pool.st_nlink == 3

    for cache in (main, other):
        buildkit = BuildKit(registry.url)
        resolved = buildkit.resolve(cache.repo, cache.tag)
        check_manifest_found(resolved, cache.manifest, OCI_MANIFEST)
        for layer in cache.layers:
            got = buildkit.connection.request(
                "GET", f"/v2/{cache.repo}/blobs/{layer.digest}", layer_get_headers(OCI_LAYER_GZIP)
            )
            check_blob_present(got, cache.repo, layer.digest, layer.data)
        check_common(buildkit.log)


def test_docker_list_blob_heads_use_the_local_oci_type(
    registry: RegistryProcess, layers: list[Layer]
) -> None:
    """5b: blob HEADs send the OCI layer type even though the list names the Docker type."""
    cache = cache_export("f5docker", "t", layers[:2], "docker-list")
    exchanges = BuildKit(registry.url).export(cache)
    heads = [ex for ex in exchanges if ex.method == "HEAD" and "/blobs/" in ex.path]
    assert [ex.request_headers["Accept"] for ex in heads] == [
        f"{OCI_LAYER_GZIP}, */*",
        f"{OCI_LAYER_GZIP}, */*",
        f"{CACHE_CONFIG}, */*",
    ]
    listed = json.loads(cache.manifest)["manifests"]
    assert [d["mediaType"] for d in listed] == [DOCKER_LAYER_GZIP, DOCKER_LAYER_GZIP, CACHE_CONFIG]
    check_cold_export(exchanges, cache)
