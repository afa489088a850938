"""The OCI distribution API (spec v1.1) as clients see it: real server, real HTTP, exact answers.

Every endpoint the registry implements is exercised with the status codes and headers the spec,
the conformance suite and BuildKit expect (registry-protocol.md sections 1.11, 2 and 2.9).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.components import RegistryProcess
from tests.oci_http import (
    API_VERSION,
    BUILDKIT_CACHE_CONFIG,
    COUNTERS,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    OCTET_STREAM,
    TIMEOUT,
    descriptor,
    digest,
    dumps,
    error_code,
    image_manifest,
    push_blob,
    push_image,
    push_manifest,
    put_manifest,
    start_upload,
    stats,
)

UUID_PATH = r"[^/?#]+"


@pytest.fixture
def url(registry: RegistryProcess) -> str:
    return registry.url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# --- /v2/ and the legacy header ------------------------------------------------------------


def test_api_version_check(url: str) -> None:
    response = requests.get(f"{url}/v2/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == API_VERSION
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.json() == {}

    head = requests.head(f"{url}/v2/", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers["Docker-Distribution-API-Version"] == API_VERSION


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/repo/blobs/sha256:" + "0" * 64, 404),
        ("HEAD", "/v2/repo/blobs/sha256:" + "0" * 64, 404),
        ("GET", "/v2/repo/manifests/latest", 404),
        ("GET", "/v2/Upper/tags/list", 400),
        ("GET", "/v2/repo/blobs/sha256:bad", 400),
        ("POST", "/v2/repo/blobs/uploads/", 202),
        ("PUT", "/v2/repo/blobs/uploads/no-such-session?digest=sha256:" + "0" * 64, 404),
        ("DELETE", "/v2/", 405),
        ("GET", "/v3/", 404),
        ("GET", "/_cache/stats", 200),
    ],
)
def test_api_version_header_on_every_response(
    url: str, method: str, path: str, status: int
) -> None:
    response = requests.request(method, url + path, timeout=TIMEOUT)
    assert response.status_code == status
    assert response.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_unknown_endpoint_and_method_are_oci_errors(url: str) -> None:
    unknown = requests.get(f"{url}/v3/", timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert error_code(unknown) == "NAME_UNKNOWN"

    not_allowed = requests.delete(f"{url}/v2/", timeout=TIMEOUT)
    assert not_allowed.status_code == 405
    assert error_code(not_allowed) == "UNSUPPORTED"
    assert not_allowed.headers["Allow"] == "GET,HEAD"


# --- blobs: HEAD, GET, Range --------------------------------------------------------------

BLOB = bytes(range(256)) * 11 + os.urandom(184)  # 3000 bytes, compressible prefix
assert len(BLOB) == 3000


@pytest.fixture
def blob(url: str) -> str:
    return push_blob(url, "blobrepo", BLOB)


def test_blob_get_is_identity_bytes_with_exact_headers(url: str, blob: str) -> None:
    response = requests.get(
        f"{url}/v2/blobrepo/blobs/{blob}",
        headers={"Accept-Encoding": "gzip, zstd", "Accept": f"{OCI_LAYER}, */*"},
        stream=True,
        timeout=TIMEOUT,
    )
    raw = response.raw.read(decode_content=False)
    assert response.status_code == 200
    assert raw == BLOB
    assert response.headers["Content-Length"] == "3000"
    assert response.headers["Content-Type"] == OCTET_STREAM
    assert response.headers["Docker-Content-Digest"] == blob
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in response.headers
    assert "Transfer-Encoding" not in response.headers


def test_blob_head_has_real_length_and_no_body(url: str, blob: str) -> None:
    response = requests.head(
        f"{url}/v2/blobrepo/blobs/{blob}",
        headers={"Accept-Encoding": "gzip, zstd"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == "3000"
    assert response.headers["Content-Type"] == OCTET_STREAM
    assert response.headers["Docker-Content-Digest"] == blob
    assert "Content-Encoding" not in response.headers


@pytest.mark.parametrize(
    ("range_header", "content_range", "start", "stop"),
    [
        ("bytes=500-1499", "bytes 500-1499/3000", 500, 1500),
        ("bytes=500-", "bytes 500-2999/3000", 500, 3000),
        ("bytes=0-", "bytes 0-2999/3000", 0, 3000),
        ("bytes=0-0", "bytes 0-0/3000", 0, 1),
        ("bytes=2999-", "bytes 2999-2999/3000", 2999, 3000),
        ("bytes=-500", "bytes 2500-2999/3000", 2500, 3000),
        ("bytes=-5000", "bytes 0-2999/3000", 0, 3000),
        ("bytes=2000-5000", "bytes 2000-2999/3000", 2000, 3000),
    ],
)
def test_blob_range(
    url: str, blob: str, range_header: str, content_range: str, start: int, stop: int
) -> None:
    response = requests.get(
        f"{url}/v2/blobrepo/blobs/{blob}",
        headers={"Range": range_header, "Accept-Encoding": "gzip, zstd"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 206
    assert response.headers["Content-Range"] == content_range
    assert response.headers["Content-Length"] == str(stop - start)
    assert response.content == BLOB[start:stop]
    assert response.headers["Docker-Content-Digest"] == blob
    assert "Content-Encoding" not in response.headers


@pytest.mark.parametrize("range_header", ["bytes=3000-", "bytes=5000-10000", "bytes=500-0"])
def test_blob_range_not_satisfiable(url: str, blob: str, range_header: str) -> None:
    response = requests.get(
        f"{url}/v2/blobrepo/blobs/{blob}", headers={"Range": range_header}, timeout=TIMEOUT
    )
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */3000"
    assert response.headers["Docker-Distribution-API-Version"] == API_VERSION


def test_missing_blob_is_blob_unknown(url: str, blob: str) -> None:
    missing = digest(b"never pushed")
    response = requests.get(f"{url}/v2/blobrepo/blobs/{missing}", timeout=TIMEOUT)
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"
    head = requests.head(f"{url}/v2/blobrepo/blobs/{missing}", timeout=TIMEOUT)
    assert head.status_code == 404
    assert head.content == b""
    unknown_repo = requests.get(f"{url}/v2/nosuchrepo/blobs/{blob}", timeout=TIMEOUT)
    assert unknown_repo.status_code == 404
    assert error_code(unknown_repo) == "BLOB_UNKNOWN"


def test_blob_is_visible_only_in_its_repository(url: str, blob: str) -> None:
    push_blob(url, "otherrepo", b"something else")
    response = requests.head(f"{url}/v2/otherrepo/blobs/{blob}", timeout=TIMEOUT)
    assert response.status_code == 404


def test_delete_blob(url: str, blob: str) -> None:
    response = requests.delete(f"{url}/v2/blobrepo/blobs/{blob}", timeout=TIMEOUT)
    assert response.status_code == 202
    assert requests.head(f"{url}/v2/blobrepo/blobs/{blob}", timeout=TIMEOUT).status_code == 404
    get = requests.get(f"{url}/v2/blobrepo/blobs/{blob}", timeout=TIMEOUT)
    assert get.status_code == 404
    assert error_code(get) == "BLOB_UNKNOWN"
    again = requests.delete(f"{url}/v2/blobrepo/blobs/{blob}", timeout=TIMEOUT)
    assert again.status_code == 404
    assert error_code(again) == "BLOB_UNKNOWN"


# --- uploads -------------------------------------------------------------------------------


def _session_id(location: str, name: str) -> str:
    match = re.fullmatch(rf"/v2/{re.escape(name)}/blobs/uploads/({UUID_PATH})", location)
    assert match is not None, location
    return match[1]


@pytest.mark.parametrize("path", ["/v2/up/blobs/uploads/", "/v2/up/blobs/uploads"])
def test_post_starts_an_upload_session(url: str, path: str) -> None:
    response = requests.post(url + path, timeout=TIMEOUT)
    assert response.status_code == 202
    session = _session_id(response.headers["Location"], "up")
    assert response.headers["Range"] == "0-0"
    assert response.headers["Docker-Upload-UUID"] == session
    assert response.headers["Content-Length"] == "0"


def test_post_then_monolithic_put(url: str) -> None:
    data = os.urandom(100_000)
    location = start_upload(url, "org/team/cache")
    response = requests.put(
        location,
        params={"digest": digest(data)},
        data=data,
        headers={"Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/org/team/cache/blobs/{digest(data)}"
    assert response.headers["Docker-Content-Digest"] == digest(data)
    pulled = requests.get(url + response.headers["Location"], timeout=TIMEOUT)
    assert pulled.status_code == 200
    assert pulled.content == data
    # The session is closed once the blob is committed.
    assert requests.get(location, timeout=TIMEOUT).status_code == 404


def test_single_post_with_digest(url: str) -> None:
    data = b"single post"
    response = requests.post(
        f"{url}/v2/mono/blobs/uploads/",
        params={"digest": digest(data)},
        data=data,
        headers={"Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/mono/blobs/{digest(data)}"
    assert response.headers["Docker-Content-Digest"] == digest(data)
    assert requests.get(f"{url}/v2/mono/blobs/{digest(data)}", timeout=TIMEOUT).content == data


def test_streamed_patch_without_content_range_then_empty_put(url: str) -> None:
    parts = [os.urandom(70_000), os.urandom(50_000), b"tail"]
    data = b"".join(parts)
    location = start_upload(url, "streamed")
    patch = requests.patch(
        location,
        data=iter(parts),  # chunked transfer encoding: no Content-Length, no Content-Range
        headers={"Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )
    assert patch.request.headers["Transfer-Encoding"] == "chunked"
    assert patch.status_code == 202
    assert url + patch.headers["Location"] == location
    assert patch.headers["Range"] == f"0-{len(data) - 1}"
    put = requests.put(location, params={"digest": digest(data)}, timeout=TIMEOUT)
    assert put.status_code == 201
    assert put.headers["Location"] == f"/v2/streamed/blobs/{digest(data)}"
    assert put.headers["Docker-Content-Digest"] == digest(data)
    assert requests.get(url + put.headers["Location"], timeout=TIMEOUT).content == data


def _patch(location: str, chunk: bytes, start: int) -> requests.Response:
    return requests.patch(
        location,
        data=chunk,
        headers={
            "Content-Type": OCTET_STREAM,
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
        },
        timeout=TIMEOUT,
    )


def test_chunked_upload_as_the_conformance_suite_does(url: str) -> None:
    first, second = os.urandom(1000), os.urandom(600)
    data = first + second
    post = requests.post(
        f"{url}/v2/chunked/blobs/uploads/", headers={"Content-Length": "0"}, timeout=TIMEOUT
    )
    assert post.status_code == 202
    location = url + post.headers["Location"]

    out_of_order = _patch(location, second, len(first))
    assert out_of_order.status_code == 416
    assert error_code(out_of_order) == "BLOB_UPLOAD_INVALID"

    accepted = _patch(location, first, 0)
    assert accepted.status_code == 202
    assert accepted.headers["Range"] == "0-999"
    assert url + accepted.headers["Location"] == location

    resent = _patch(location, first, 0)
    assert resent.status_code == 416

    status = requests.get(location, timeout=TIMEOUT)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-999"
    assert url + status.headers["Location"] == location
    assert status.content == b""

    accepted = _patch(location, second, len(first))
    assert accepted.status_code == 202
    assert accepted.headers["Range"] == "0-1599"

    put = requests.put(
        location,
        params={"digest": digest(data)},
        headers={"Content-Length": "0"},
        timeout=TIMEOUT,
    )
    assert put.status_code == 201
    assert put.headers["Location"] == f"/v2/chunked/blobs/{digest(data)}"
    assert put.headers["Docker-Content-Digest"] == digest(data)
    assert requests.get(url + put.headers["Location"], timeout=TIMEOUT).content == data


def test_chunked_upload_with_the_last_chunk_on_put(url: str) -> None:
    first, last = b"a" * 10, b"b" * 5
    location = start_upload(url, "lastchunk")
    assert _patch(location, first, 0).status_code == 202
    put = requests.put(
        location,
        params={"digest": digest(first + last)},
        data=last,
        headers={"Content-Range": "10-14", "Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )
    assert put.status_code == 201
    blob = requests.get(f"{url}/v2/lastchunk/blobs/{digest(first + last)}", timeout=TIMEOUT)
    assert blob.content == first + last


def test_upload_status_then_cancel(url: str) -> None:
    location = start_upload(url, "cancelled")
    status = requests.get(location, timeout=TIMEOUT)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"
    assert url + status.headers["Location"] == location
    assert status.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]

    cancel = requests.delete(location, timeout=TIMEOUT)
    assert cancel.status_code == 204

    gone = requests.get(location, timeout=TIMEOUT)
    assert gone.status_code == 404
    assert error_code(gone) == "BLOB_UPLOAD_UNKNOWN"
    patch = _patch(location, b"late", 0)
    assert patch.status_code == 404
    assert error_code(patch) == "BLOB_UPLOAD_UNKNOWN"
    put = requests.put(location, params={"digest": digest(b"")}, timeout=TIMEOUT)
    assert put.status_code == 404
    assert error_code(put) == "BLOB_UPLOAD_UNKNOWN"
    again = requests.delete(location, timeout=TIMEOUT)
    assert again.status_code == 404
    assert error_code(again) == "BLOB_UPLOAD_UNKNOWN"


def test_upload_session_belongs_to_its_repository(url: str) -> None:
    location = start_upload(url, "owner")
    session = location.rsplit("/", 1)[1]
    push_blob(url, "intruder", b"x")
    for method in ("GET", "PATCH", "DELETE"):
        response = requests.request(
            method, f"{url}/v2/intruder/blobs/uploads/{session}", timeout=TIMEOUT
        )
        assert response.status_code == 404, method
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    assert requests.get(location, timeout=TIMEOUT).status_code == 204


def test_sha512_monolithic_upload(url: str) -> None:
    data = os.urandom(5000)
    sha512 = digest(data, "sha512")
    assert push_blob(url, "sha512", data, "sha512") == sha512
    head = requests.head(f"{url}/v2/sha512/blobs/{sha512}", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == sha512
    assert head.headers["Content-Length"] == "5000"
    assert requests.get(f"{url}/v2/sha512/blobs/{sha512}", timeout=TIMEOUT).content == data
    # Stored under its own algorithm only.
    sha256 = requests.head(f"{url}/v2/sha512/blobs/{digest(data)}", timeout=TIMEOUT)
    assert sha256.status_code == 404


def test_sha512_single_post(url: str) -> None:
    data = os.urandom(300)
    sha512 = digest(data, "sha512")
    response = requests.post(
        f"{url}/v2/sha512/blobs/uploads/", params={"digest": sha512}, data=data, timeout=TIMEOUT
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/sha512/blobs/{sha512}"
    assert response.headers["Docker-Content-Digest"] == sha512


def test_sha512_chunked_upload(url: str) -> None:
    first, second = os.urandom(4096), os.urandom(100)
    data = first + second
    location = start_upload(url, "sha512chunks")
    assert _patch(location, first, 0).status_code == 202
    assert _patch(location, second, len(first)).status_code == 202
    put = requests.put(location, params={"digest": digest(data, "sha512")}, timeout=TIMEOUT)
    assert put.status_code == 201
    assert put.headers["Docker-Content-Digest"] == digest(data, "sha512")
    blob = requests.get(f"{url}/v2/sha512chunks/blobs/{digest(data, 'sha512')}", timeout=TIMEOUT)
    assert blob.status_code == 200
    assert blob.content == data


def test_empty_blob(url: str) -> None:
    empty = digest(b"")
    assert empty == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    post = requests.post(
        f"{url}/v2/empty/blobs/uploads/", params={"digest": empty}, data=b"", timeout=TIMEOUT
    )
    assert post.status_code == 201
    assert post.headers["Docker-Content-Digest"] == empty
    head = requests.head(f"{url}/v2/empty/blobs/{empty}", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "0"
    get = requests.get(f"{url}/v2/empty/blobs/{empty}", timeout=TIMEOUT)
    assert get.status_code == 200
    assert get.content == b""
    assert get.headers["Content-Length"] == "0"
    # ...and by POST then an empty PUT.
    assert push_blob(url, "empty2", b"") == empty


def test_oci_empty_json_blob(url: str) -> None:
    data = b"{}"
    assert digest(data) == (
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    assert push_blob(url, "emptyjson", data) == digest(data)


# --- cross-repository mount ----------------------------------------------------------------


def test_mount_from_a_repository_that_has_the_blob(url: str) -> None:
    data = b"mount me"
    blob = push_blob(url, "base", data)
    response = requests.post(
        f"{url}/v2/derived/blobs/uploads/", params={"mount": blob, "from": "base"}, timeout=TIMEOUT
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/derived/blobs/{blob}"
    assert response.headers["Docker-Content-Digest"] == blob
    pulled = requests.get(f"{url}/v2/derived/blobs/{blob}", timeout=TIMEOUT)
    assert pulled.status_code == 200
    assert pulled.content == data


def test_mount_from_a_repository_without_the_blob_starts_an_upload(url: str) -> None:
    push_blob(url, "base", b"unrelated")
    blob = push_blob(url, "elsewhere", b"only elsewhere")
    response = requests.post(
        f"{url}/v2/derived/blobs/uploads/", params={"mount": blob, "from": "base"}, timeout=TIMEOUT
    )
    assert response.status_code == 202
    _session_id(response.headers["Location"], "derived")
    assert response.headers["Range"] == "0-0"
    assert requests.head(f"{url}/v2/derived/blobs/{blob}", timeout=TIMEOUT).status_code == 404


def test_mount_from_an_unknown_repository_starts_an_upload(url: str) -> None:
    blob = push_blob(url, "base", b"data")
    response = requests.post(
        f"{url}/v2/derived/blobs/uploads/",
        params={"mount": blob, "from": "nosuchrepo"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202
    _session_id(response.headers["Location"], "derived")


def test_mount_without_from_discovers_the_blob(url: str) -> None:
    blob = push_blob(url, "base", b"anonymous mount")
    response = requests.post(
        f"{url}/v2/derived/blobs/uploads/", params={"mount": blob}, timeout=TIMEOUT
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/derived/blobs/{blob}"
    assert response.headers["Docker-Content-Digest"] == blob
    assert requests.get(f"{url}/v2/derived/blobs/{blob}", timeout=TIMEOUT).content == (
        b"anonymous mount"
    )


def test_mount_of_an_unknown_digest_starts_an_upload(url: str) -> None:
    unknown = digest(b"nobody has this")
    response = requests.post(
        f"{url}/v2/derived/blobs/uploads/", params={"mount": unknown}, timeout=TIMEOUT
    )
    assert response.status_code == 202
    location = url + response.headers["Location"]
    _session_id(response.headers["Location"], "derived")
    # The session is an ordinary upload.
    put = requests.put(location, params={"digest": digest(b"x")}, data=b"x", timeout=TIMEOUT)
    assert put.status_code == 201


# --- manifests -----------------------------------------------------------------------------


def _blobs(url: str, name: str, *blobs: bytes) -> None:
    for blob in blobs:
        push_blob(url, name, blob)


def _oci_manifest(url: str, name: str) -> tuple[bytes, str]:
    config, layer = dumps({"os": "linux", "architecture": "amd64"}), b"oci layer" * 50
    _blobs(url, name, config, layer)
    return image_manifest(config, [layer]), OCI_MANIFEST


def _docker_manifest(url: str, name: str) -> tuple[bytes, str]:
    config, layer = dumps({"os": "linux", "architecture": "arm64"}), b"docker layer" * 50
    _blobs(url, name, config, layer)
    body = image_manifest(
        config,
        [layer],
        config_type=DOCKER_CONFIG,
        layer_type=DOCKER_LAYER,
        media_type=DOCKER_MANIFEST,
    )
    return body, DOCKER_MANIFEST


def _oci_index(url: str, name: str) -> tuple[bytes, str]:
    child, child_type = _oci_manifest(url, name)
    push_manifest(url, name, digest(child), child, child_type)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, child, platform={"os": "linux", "architecture": "amd64"})
            ],
        }
    )
    return body, OCI_INDEX


def _docker_list(url: str, name: str) -> tuple[bytes, str]:
    child, child_type = _docker_manifest(url, name)
    push_manifest(url, name, digest(child), child, child_type)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                descriptor(
                    DOCKER_MANIFEST, child, platform={"os": "linux", "architecture": "arm64"}
                )
            ],
        }
    )
    return body, DOCKER_LIST


def _cache_blobs(url: str, name: str) -> tuple[bytes, list[bytes]]:
    cache_config = dumps({"layers": [{"blob": "x"}], "records": [{"digest": "y"}]})
    layers = [b"cache layer one" * 40, b"cache layer two" * 40]
    _blobs(url, name, cache_config, *layers)
    return cache_config, layers


def _buildkit_cache_manifest(url: str, name: str) -> tuple[bytes, str]:
    """`--cache-to type=registry` default (image-manifest=true, BuildKit >= v0.21)."""
    cache_config, layers = _cache_blobs(url, name)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(BUILDKIT_CACHE_CONFIG, cache_config),
            "layers": [
                descriptor(OCI_LAYER, layers[0]),
                descriptor("application/vnd.oci.image.layer.v1.tar+zstd", layers[1]),
                descriptor(OCI_LAYER, layers[0]),  # mode=max may list a layer twice
            ],
        }
    )
    return body, OCI_MANIFEST


def _buildkit_cache_index(url: str, name: str) -> tuple[bytes, str]:
    """`image-manifest=false`: an OCI index whose manifests[] are layers and the cache config."""
    cache_config, layers = _cache_blobs(url, name)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_LAYER, layers[0], annotations={"buildkit/createdat": "now"}),
                descriptor(OCI_LAYER, layers[1]),
                descriptor(BUILDKIT_CACHE_CONFIG, cache_config),
            ],
        }
    )
    return body, OCI_INDEX


def _buildkit_cache_docker_list(url: str, name: str) -> tuple[bytes, str]:
    """`oci-mediatypes=false`: a Docker manifest list of layers and the cache config."""
    cache_config, layers = _cache_blobs(url, name)
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                descriptor(DOCKER_LAYER, layers[0]),
                descriptor(DOCKER_LAYER, layers[1]),
                descriptor(BUILDKIT_CACHE_CONFIG, cache_config),
            ],
        }
    )
    return body, DOCKER_LIST


MANIFEST_KINDS = {
    "oci-manifest": _oci_manifest,
    "oci-index": _oci_index,
    "docker-manifest": _docker_manifest,
    "docker-list": _docker_list,
    "buildkit-cache-manifest": _buildkit_cache_manifest,
    "buildkit-cache-index": _buildkit_cache_index,
    "buildkit-cache-docker-list": _buildkit_cache_docker_list,
}


def _assert_manifest(response: requests.Response, body: bytes, media_type: str) -> None:
    assert response.status_code == 200
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == digest(body)
    assert response.headers["Content-Length"] == str(len(body))
    assert "Content-Encoding" not in response.headers


@pytest.mark.parametrize("kind", sorted(MANIFEST_KINDS))
def test_manifest_push_by_tag_then_pull(url: str, kind: str) -> None:
    name = f"manifests/{kind}"
    body, media_type = MANIFEST_KINDS[kind](url, name)
    put = put_manifest(url, name, "v1", body, media_type)
    assert put.status_code == 201, put.text
    assert put.headers["Location"] == f"/v2/{name}/manifests/{digest(body)}"
    assert put.headers["Docker-Content-Digest"] == digest(body)
    assert "OCI-Subject" not in put.headers

    for reference in ("v1", digest(body)):
        path = f"{url}/v2/{name}/manifests/{reference}"
        get = requests.get(
            path, headers={"Accept": media_type, "Accept-Encoding": "gzip, zstd"}, timeout=TIMEOUT
        )
        _assert_manifest(get, body, media_type)
        assert get.content == body
        head = requests.head(path, headers={"Accept": f"{media_type}, */*"}, timeout=TIMEOUT)
        _assert_manifest(head, body, media_type)
        assert head.content == b""


def test_manifest_pull_ignores_accept(url: str) -> None:
    """No strict content negotiation: the stored bytes whatever the Accept header says."""
    body, media_type = _oci_manifest(url, "accept")
    push_manifest(url, "accept", "latest", body, media_type)
    for accept in (DOCKER_MANIFEST, "*/*", None):
        headers = {} if accept is None else {"Accept": accept}
        response = requests.get(
            f"{url}/v2/accept/manifests/latest", headers=headers, timeout=TIMEOUT
        )
        _assert_manifest(response, body, media_type)
        assert response.content == body


def test_manifest_push_by_digest(url: str) -> None:
    body, media_type = _oci_manifest(url, "bydigest")
    put = put_manifest(url, "bydigest", digest(body), body, media_type)
    assert put.status_code == 201
    assert put.headers["Location"] == f"/v2/bydigest/manifests/{digest(body)}"
    assert put.headers["Docker-Content-Digest"] == digest(body)
    get = requests.get(f"{url}/v2/bydigest/manifests/{digest(body)}", timeout=TIMEOUT)
    _assert_manifest(get, body, media_type)
    assert get.content == body
    tags = requests.get(f"{url}/v2/bydigest/tags/list", timeout=TIMEOUT)
    assert tags.json() == {"name": "bydigest", "tags": []}


def test_manifest_push_by_sha512_digest(url: str) -> None:
    body, media_type = _oci_manifest(url, "sha512manifest")
    sha512 = digest(body, "sha512")
    put = put_manifest(url, "sha512manifest", sha512, body, media_type)
    assert put.status_code == 201
    assert put.headers["Docker-Content-Digest"] == sha512
    assert put.headers["Location"] == f"/v2/sha512manifest/manifests/{sha512}"
    get = requests.get(f"{url}/v2/sha512manifest/manifests/{sha512}", timeout=TIMEOUT)
    assert get.status_code == 200
    assert get.content == body
    assert get.headers["Docker-Content-Digest"] == sha512


def test_manifest_bytes_are_stored_verbatim(url: str) -> None:
    config, layer = b"{}", b"layer"
    _blobs(url, "verbatim", config, layer)
    document = json.loads(image_manifest(config, [layer], config_type=OCI_EMPTY))
    body = (json.dumps(document, indent=3) + "\n\n").encode()  # unusual but valid formatting
    digest_header = push_manifest(url, "verbatim", "pretty", body, OCI_MANIFEST)
    response = requests.get(f"{url}/v2/verbatim/manifests/pretty", timeout=TIMEOUT)
    assert response.content == body
    assert response.headers["Docker-Content-Digest"] == digest_header


def test_manifest_without_media_type_field_takes_content_type(url: str) -> None:
    config, layer = dumps({"os": "linux"}), b"layer"
    _blobs(url, "nomediatype", config, layer)
    document = json.loads(image_manifest(config, [layer]))
    del document["mediaType"]
    body = dumps(document)
    push_manifest(url, "nomediatype", "latest", body, OCI_MANIFEST)
    response = requests.head(f"{url}/v2/nomediatype/manifests/latest", timeout=TIMEOUT)
    _assert_manifest(response, body, OCI_MANIFEST)


def test_manifest_with_empty_layers_is_accepted(url: str) -> None:
    config = dumps({"os": "linux"})
    push_blob(url, "nolayers", config)
    body = image_manifest(config, [])
    assert put_manifest(url, "nolayers", "latest", body, OCI_MANIFEST).status_code == 201


def test_retagging_moves_the_tag_and_keeps_the_old_manifest(url: str) -> None:
    old = push_image(url, "moving", "latest", seed="old")
    new = push_image(url, "moving", "latest", seed="new")
    by_tag = requests.get(f"{url}/v2/moving/manifests/latest", timeout=TIMEOUT)
    assert by_tag.content == new.manifest
    by_digest = requests.get(f"{url}/v2/moving/manifests/{old.manifest_digest}", timeout=TIMEOUT)
    _assert_manifest(by_digest, old.manifest, OCI_MANIFEST)
    assert by_digest.content == old.manifest


def test_manifest_naming_a_missing_blob_is_rejected(url: str) -> None:
    config = dumps({"os": "linux"})
    push_blob(url, "missingblob", config)
    missing_layer = b"never uploaded"
    body = image_manifest(config, [missing_layer])
    response = put_manifest(url, "missingblob", "latest", body, OCI_MANIFEST)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert response.json()["errors"][0]["detail"] == {"missing": [digest(missing_layer)]}
    get = requests.get(f"{url}/v2/missingblob/manifests/latest", timeout=TIMEOUT)
    assert get.status_code == 404
    assert error_code(get) == "MANIFEST_UNKNOWN"


def test_manifest_naming_a_blob_of_another_repository_is_rejected(url: str) -> None:
    config, layer = dumps({"os": "linux"}), b"elsewhere"
    push_blob(url, "repoone", layer)
    push_blob(url, "repotwo", config)
    response = put_manifest(url, "repotwo", "latest", image_manifest(config, [layer]), OCI_MANIFEST)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


def test_index_naming_a_missing_child_is_rejected(url: str) -> None:
    child = image_manifest(b"{}", [])
    body = dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_MANIFEST, child)]}
    )
    response = put_manifest(url, "missingchild", "latest", body, OCI_INDEX)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


def test_foreign_layers_with_urls_need_not_be_uploaded(url: str) -> None:
    config = dumps({"os": "windows"})
    push_blob(url, "foreign", config)
    foreign = descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        b"windows base layer",
        urls=["https://example.invalid/layer"],
    )
    document = json.loads(image_manifest(config, []))
    document["layers"] = [foreign]
    response = put_manifest(url, "foreign", "latest", dumps(document), OCI_MANIFEST)
    assert response.status_code == 201, response.text


def test_media_type_field_must_match_content_type(url: str) -> None:
    body, _ = _oci_manifest(url, "mismatch")
    response = put_manifest(url, "mismatch", "latest", body, DOCKER_MANIFEST)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    assert requests.head(f"{url}/v2/mismatch/manifests/latest", timeout=TIMEOUT).status_code == 404


def test_put_by_digest_with_the_wrong_digest(url: str) -> None:
    body, media_type = _oci_manifest(url, "wrongdigest")
    wrong = digest(body + b" ")
    response = put_manifest(url, "wrongdigest", wrong, body, media_type)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    for reference in (wrong, digest(body)):
        get = requests.get(f"{url}/v2/wrongdigest/manifests/{reference}", timeout=TIMEOUT)
        assert get.status_code == 404
        assert error_code(get) == "MANIFEST_UNKNOWN"


def _padded_manifest(url: str, name: str, size: int) -> bytes:
    config = dumps({"os": "linux"})
    push_blob(url, name, config)
    document = json.loads(image_manifest(config, []))
    document["annotations"] = {"padding": ""}
    padding = size - len(dumps(document))
    document["annotations"]["padding"] = "x" * padding
    body = dumps(document)
    assert len(body) == size
    return body


def test_manifest_of_exactly_4_mib_is_accepted(url: str) -> None:
    body = _padded_manifest(url, "big", 4 * 1024 * 1024)
    response = put_manifest(url, "big", "latest", body, OCI_MANIFEST)
    assert response.status_code == 201, response.text[:500]
    get = requests.get(f"{url}/v2/big/manifests/latest", timeout=TIMEOUT)
    assert get.status_code == 200
    assert get.content == body


def test_manifest_over_4_mib_is_413(url: str) -> None:
    body = _padded_manifest(url, "toobig", 4 * 1024 * 1024 + 1)
    response = put_manifest(url, "toobig", "latest", body, OCI_MANIFEST)
    assert response.status_code == 413
    assert error_code(response) == "SIZE_INVALID"
    assert requests.head(f"{url}/v2/toobig/manifests/latest", timeout=TIMEOUT).status_code == 404


def test_manifest_over_4_mib_streamed_without_length_is_413(url: str) -> None:
    body = _padded_manifest(url, "toobigstream", 5 * 1024 * 1024)
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = requests.put(
        f"{url}/v2/toobigstream/manifests/latest",
        data=chunks,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    assert response.status_code == 413
    assert error_code(response) == "SIZE_INVALID"


def test_manifest_with_subject_answers_oci_subject(url: str) -> None:
    subject = push_image(url, "subjects", "latest")
    config = b"{}"
    push_blob(url, "subjects", config)
    referrer = image_manifest(
        config,
        [],
        config_type=OCI_EMPTY,
        artifactType="application/vnd.example.sbom",
        subject={
            "mediaType": OCI_MANIFEST,
            "digest": subject.manifest_digest,
            "size": len(subject.manifest),
        },
    )
    response = put_manifest(url, "subjects", digest(referrer), referrer, OCI_MANIFEST)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject.manifest_digest


def test_manifest_whose_subject_does_not_exist_is_accepted(url: str) -> None:
    config = b"{}"
    push_blob(url, "dangling", config)
    absent = image_manifest(b"not pushed", [])
    referrer = image_manifest(
        config, [], config_type=OCI_EMPTY, subject=descriptor(OCI_MANIFEST, absent)
    )
    response = put_manifest(url, "dangling", "sig", referrer, OCI_MANIFEST)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == digest(absent)


# A manifest that cannot exist does not exist: the conformance suite's `.INVALID_MANIFEST_NAME`
# and `sha256:totallywrong` are 404s like an absent tag (test_registry_bad_input has the rest).
@pytest.mark.parametrize(
    "reference", ["nosuchtag", digest(b"nothing"), ".INVALID_MANIFEST_NAME", "sha256:totallywrong"]
)
@pytest.mark.parametrize(
    ("name", "code"), [("known", "MANIFEST_UNKNOWN"), ("unknown", "NAME_UNKNOWN")]
)
def test_unknown_manifest(url: str, reference: str, name: str, code: str) -> None:
    push_image(url, "known", "latest")
    get = requests.get(f"{url}/v2/{name}/manifests/{reference}", timeout=TIMEOUT)
    assert get.status_code == 404
    assert error_code(get) == code
    head = requests.head(f"{url}/v2/{name}/manifests/{reference}", timeout=TIMEOUT)
    assert head.status_code == 404
    assert head.content == b""


def test_manifests_endpoint_does_not_serve_plain_blobs(url: str) -> None:
    image = push_image(url, "notmanifest", "latest")
    for blob in (image.config, image.layers[0]):
        response = requests.get(f"{url}/v2/notmanifest/manifests/{digest(blob)}", timeout=TIMEOUT)
        assert response.status_code == 404
        assert error_code(response) == "MANIFEST_UNKNOWN"


# --- tags ----------------------------------------------------------------------------------

TAGS = ["v2", "B-upper", "a.b", "latest", "_underscore", "main", "Z", "v10"]


@pytest.fixture
def tagged(url: str) -> list[str]:
    image = push_image(url, "tagged", "seed")
    for tag in TAGS:
        push_manifest(url, "tagged", tag, image.manifest, OCI_MANIFEST)
    return sorted([*TAGS, "seed"])


def test_tags_list_is_sorted(url: str, tagged: list[str]) -> None:
    assert tagged == [
        "B-upper",
        "Z",
        "_underscore",
        "a.b",
        "latest",
        "main",
        "seed",
        "v10",
        "v2",
    ]
    response = requests.get(f"{url}/v2/tagged/tags/list", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.json() == {"name": "tagged", "tags": tagged}
    assert "Link" not in response.headers


def test_tags_list_pages_with_link(url: str, tagged: list[str]) -> None:
    pages: list[list[str]] = []
    target: str | None = "/v2/tagged/tags/list?n=4"
    while target is not None:
        response = requests.get(url + target, timeout=TIMEOUT)
        assert response.status_code == 200
        page = response.json()["tags"]
        pages.append(page)
        link = response.headers.get("Link")
        if link is None:
            target = None
            continue
        assert len(page) == 4
        assert link == f'</v2/tagged/tags/list?n=4&last={page[-1]}>; rel="next"'
        target = link[1 : link.index(">")]
    assert pages == [tagged[0:4], tagged[4:8], tagged[8:]]


def test_tags_list_n_exactly_the_remaining_count_has_no_link(url: str, tagged: list[str]) -> None:
    response = requests.get(f"{url}/v2/tagged/tags/list", params={"n": 9}, timeout=TIMEOUT)
    assert response.json()["tags"] == tagged
    assert "Link" not in response.headers
    more = requests.get(f"{url}/v2/tagged/tags/list", params={"n": 1000}, timeout=TIMEOUT)
    assert more.json()["tags"] == tagged
    assert "Link" not in more.headers


def test_tags_list_n_zero(url: str, tagged: list[str]) -> None:
    response = requests.get(f"{url}/v2/tagged/tags/list", params={"n": 0}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"name": "tagged", "tags": []}
    assert "Link" not in response.headers


def test_tags_list_last(url: str, tagged: list[str]) -> None:
    response = requests.get(f"{url}/v2/tagged/tags/list", params={"last": "main"}, timeout=TIMEOUT)
    assert response.json()["tags"] == ["seed", "v10", "v2"]
    between = requests.get(
        f"{url}/v2/tagged/tags/list", params={"last": "b", "n": "2"}, timeout=TIMEOUT
    )
    assert between.json()["tags"] == ["latest", "main"]
    assert between.headers["Link"] == '</v2/tagged/tags/list?n=2&last=main>; rel="next"'
    past_the_end = requests.get(
        f"{url}/v2/tagged/tags/list", params={"last": "v2"}, timeout=TIMEOUT
    )
    assert past_the_end.json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "", "+3", "0x10"])
def test_tags_list_bad_n(url: str, tagged: list[str], n: str) -> None:
    """A malformed query is a 400 whether or not the repository exists."""
    for name in ("tagged", "nosuchrepo"):
        response = requests.get(f"{url}/v2/{name}/tags/list", params={"n": n}, timeout=TIMEOUT)
        assert response.status_code == 400, name
        assert error_code(response) == "PAGINATION_NUMBER_INVALID"


@pytest.mark.parametrize(
    ("last", "after"),
    [("lb", ["main", "seed", "v10", "v2"]), ("..", sorted([*TAGS, "seed"])), ("~", [])],
    ids=["absent-tag", "not-a-tag-before-all", "not-a-tag-after-all"],
)
def test_tags_list_last_is_a_position_not_a_lookup(
    url: str, tagged: list[str], last: str, after: list[str]
) -> None:
    """`last` need not be a tag of the repository, nor even tag-shaped: it is a place in the
    order, so the answer is the tags after it (distribution does the same), never a 404."""
    response = requests.get(f"{url}/v2/tagged/tags/list", params={"last": last}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["tags"] == after


def test_tags_list_of_unknown_repository(url: str) -> None:
    response = requests.get(f"{url}/v2/nosuchrepo/tags/list", timeout=TIMEOUT)
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_tags_list_of_nested_repository(url: str) -> None:
    push_image(url, "org/team/app", "v1")
    push_image(url, "org/team", "parent")
    nested = requests.get(f"{url}/v2/org/team/app/tags/list", timeout=TIMEOUT)
    assert nested.json() == {"name": "org/team/app", "tags": ["v1"]}
    parent = requests.get(f"{url}/v2/org/team/tags/list", timeout=TIMEOUT)
    assert parent.json() == {"name": "org/team", "tags": ["parent"]}


# --- referrers -----------------------------------------------------------------------------


def test_referrers_of_an_unknown_digest_is_an_empty_index(url: str) -> None:
    push_image(url, "referred", "latest")
    for name in ("referred", "nosuchrepo"):
        response = requests.get(
            f"{url}/v2/{name}/referrers/{digest(b'unknown subject')}", timeout=TIMEOUT
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"] == OCI_INDEX
        assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        assert "OCI-Filters-Applied" not in response.headers


SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


@pytest.fixture
def referrers(url: str) -> dict[str, Any]:
    """A subject and four referrers of it (pushed by digest), plus one unrelated manifest."""
    subject = push_image(url, "referred", "latest")
    subject_descriptor = descriptor(OCI_MANIFEST, subject.manifest)
    empty = b"{}"
    config_blob = dumps({"kind": "custom config"})
    push_blob(url, "referred", empty)
    push_blob(url, "referred", config_blob)
    expected: dict[str, dict[str, Any]] = {}

    def push(body: bytes, media_type: str, entry: dict[str, Any]) -> None:
        response = put_manifest(url, "referred", digest(body), body, media_type)
        assert response.status_code == 201, response.text
        assert response.headers["OCI-Subject"] == subject.manifest_digest
        expected[digest(body)] = {
            "mediaType": media_type,
            "digest": digest(body),
            "size": len(body),
            **entry,
        }

    sbom = image_manifest(
        empty,
        [],
        config_type=OCI_EMPTY,
        artifactType=SBOM,
        subject=subject_descriptor,
        annotations={"org.example.kind": "sbom"},
    )
    push(sbom, OCI_MANIFEST, {"artifactType": SBOM, "annotations": {"org.example.kind": "sbom"}})
    signature = image_manifest(
        empty,
        [empty],
        config_type=OCI_EMPTY,
        layer_type=OCI_EMPTY,
        artifactType=SIGNATURE,
        subject=subject_descriptor,
        annotations={"org.example.kind": "signature"},
    )
    push(
        signature,
        OCI_MANIFEST,
        {"artifactType": SIGNATURE, "annotations": {"org.example.kind": "signature"}},
    )
    # No artifactType: the config media type stands in for it.
    by_config = image_manifest(
        config_blob, [], config_type=SBOM, subject=subject_descriptor, annotations={"n": "3"}
    )
    push(by_config, OCI_MANIFEST, {"artifactType": SBOM, "annotations": {"n": "3"}})
    index = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": SIGNATURE,
            "manifests": [descriptor(OCI_MANIFEST, signature)],
            "subject": subject_descriptor,
            "annotations": {"n": "4"},
        }
    )
    push(index, OCI_INDEX, {"artifactType": SIGNATURE, "annotations": {"n": "4"}})
    unrelated = image_manifest(empty, [], config_type=OCI_EMPTY, artifactType=SBOM)
    push_manifest(url, "referred", digest(unrelated), unrelated, OCI_MANIFEST)
    return {"subject": subject.manifest_digest, "expected": expected}


def test_referrers_lists_manifests_with_that_subject(url: str, referrers: dict[str, Any]) -> None:
    response = requests.get(f"{url}/v2/referred/referrers/{referrers['subject']}", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in response.headers
    document = response.json()
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == OCI_INDEX
    found = {entry["digest"]: entry for entry in document["manifests"]}
    assert len(document["manifests"]) == len(found) == 4
    assert found == referrers["expected"]


@pytest.mark.parametrize(("artifact_type", "count"), [(SBOM, 2), (SIGNATURE, 2), ("x/none", 0)])
def test_referrers_filtered_by_artifact_type(
    url: str, referrers: dict[str, Any], artifact_type: str, count: int
) -> None:
    response = requests.get(
        f"{url}/v2/referred/referrers/{referrers['subject']}",
        params={"artifactType": artifact_type},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    manifests = response.json()["manifests"]
    assert len(manifests) == count
    expected = {
        d: entry
        for d, entry in referrers["expected"].items()
        if entry["artifactType"] == artifact_type
    }
    assert {entry["digest"]: entry for entry in manifests} == expected


def test_deleted_referrer_disappears(url: str, referrers: dict[str, Any]) -> None:
    victim = sorted(referrers["expected"])[0]
    assert requests.delete(
        f"{url}/v2/referred/manifests/{victim}", timeout=TIMEOUT
    ).status_code == (202)
    response = requests.get(f"{url}/v2/referred/referrers/{referrers['subject']}", timeout=TIMEOUT)
    digests = sorted(entry["digest"] for entry in response.json()["manifests"])
    assert digests == sorted(referrers["expected"])[1:]


def test_referrers_of_a_missing_subject(url: str) -> None:
    config = b"{}"
    push_blob(url, "orphans", config)
    absent = descriptor(OCI_MANIFEST, b"absent subject")
    body = image_manifest(config, [], config_type=OCI_EMPTY, artifactType=SBOM, subject=absent)
    push_manifest(url, "orphans", digest(body), body, OCI_MANIFEST)
    response = requests.get(f"{url}/v2/orphans/referrers/{absent['digest']}", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["manifests"] == [
        {"mediaType": OCI_MANIFEST, "digest": digest(body), "size": len(body), "artifactType": SBOM}
    ]


# --- deletes -------------------------------------------------------------------------------


def test_delete_manifest_by_tag(url: str) -> None:
    image = push_image(url, "deltag", "one")
    push_manifest(url, "deltag", "two", image.manifest, OCI_MANIFEST)
    response = requests.delete(f"{url}/v2/deltag/manifests/one", timeout=TIMEOUT)
    assert response.status_code == 202
    gone = requests.get(f"{url}/v2/deltag/manifests/one", timeout=TIMEOUT)
    assert gone.status_code == 404
    assert error_code(gone) == "MANIFEST_UNKNOWN"
    tags = requests.get(f"{url}/v2/deltag/tags/list", timeout=TIMEOUT)
    assert tags.json() == {"name": "deltag", "tags": ["two"]}
    # Untagging leaves the manifest itself.
    by_digest = requests.get(f"{url}/v2/deltag/manifests/{image.manifest_digest}", timeout=TIMEOUT)
    assert by_digest.status_code == 200
    again = requests.delete(f"{url}/v2/deltag/manifests/one", timeout=TIMEOUT)
    assert again.status_code == 404
    assert error_code(again) == "MANIFEST_UNKNOWN"


def test_delete_manifest_by_digest_drops_its_tags(url: str) -> None:
    image = push_image(url, "deldigest", "one", seed="a")
    push_manifest(url, "deldigest", "two", image.manifest, OCI_MANIFEST)
    other = push_image(url, "deldigest", "keep", seed="b")
    response = requests.delete(
        f"{url}/v2/deldigest/manifests/{image.manifest_digest}", timeout=TIMEOUT
    )
    assert response.status_code == 202
    for reference in (image.manifest_digest, "one", "two"):
        get = requests.get(f"{url}/v2/deldigest/manifests/{reference}", timeout=TIMEOUT)
        assert get.status_code == 404, reference
        assert error_code(get) == "MANIFEST_UNKNOWN"
    tags = requests.get(f"{url}/v2/deldigest/tags/list", timeout=TIMEOUT)
    assert tags.json() == {"name": "deldigest", "tags": ["keep"]}
    kept = requests.get(f"{url}/v2/deldigest/manifests/keep", timeout=TIMEOUT)
    assert kept.content == other.manifest
    again = requests.delete(
        f"{url}/v2/deldigest/manifests/{image.manifest_digest}", timeout=TIMEOUT
    )
    assert again.status_code == 404
    assert error_code(again) == "MANIFEST_UNKNOWN"


def test_delete_manifest_of_unknown_repository(url: str) -> None:
    response = requests.delete(f"{url}/v2/nosuchrepo/manifests/latest", timeout=TIMEOUT)
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


def test_delete_on_manifests_endpoint_never_deletes_a_layer(url: str) -> None:
    image = push_image(url, "dellayer", "latest")
    layer = digest(image.layers[0])
    response = requests.delete(f"{url}/v2/dellayer/manifests/{layer}", timeout=TIMEOUT)
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    assert requests.head(f"{url}/v2/dellayer/blobs/{layer}", timeout=TIMEOUT).status_code == 200
    pulled = requests.get(f"{url}/v2/dellayer/manifests/latest", timeout=TIMEOUT)
    assert pulled.status_code == 200


# --- /_cache/stats -------------------------------------------------------------------------


def _counters(url: str) -> dict[str, int]:
    document = stats(url)
    return {key: document[key] for key in COUNTERS}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in COUNTERS if after[key] != before[key]}


def test_stats_of_a_fresh_server(url: str) -> None:
    document = stats(url)
    assert set(document) == {*COUNTERS, "started_at", "stopped_at"}
    assert document["stopped_at"] is None
    assert isinstance(document["started_at"], float)
    assert {key: document[key] for key in COUNTERS} == {
        key: 1 if key == "requests" else 0 for key in COUNTERS
    }


def test_stats_count_what_clients_do(url: str) -> None:
    data = os.urandom(10_000)
    before = _counters(url)
    push_blob(url, "counted", data)  # POST + PUT
    after_push = _counters(url)
    assert _delta(before, after_push) == {"requests": 3, "blobs_pushed": 1, "bytes_in": 10_000}

    requests.head(f"{url}/v2/counted/blobs/{digest(b'absent')}", timeout=TIMEOUT)
    requests.head(f"{url}/v2/counted/blobs/{digest(data)}", timeout=TIMEOUT)
    requests.get(f"{url}/v2/counted/blobs/{digest(data)}", timeout=TIMEOUT)
    after_pull = _counters(url)
    assert _delta(after_push, after_pull) == {
        "requests": 4,
        "blob_misses": 1,
        "blob_hits": 2,
        "bytes_out": 10_000,
    }

    config = dumps({"os": "linux"})
    push_blob(url, "counted", config)
    body = image_manifest(config, [data])
    push_manifest(url, "counted", "latest", body, OCI_MANIFEST)
    requests.head(f"{url}/v2/counted/manifests/latest", timeout=TIMEOUT)
    requests.get(f"{url}/v2/counted/manifests/{digest(body)}", timeout=TIMEOUT)
    requests.get(f"{url}/v2/counted/manifests/nosuchtag", timeout=TIMEOUT)
    after_manifests = _counters(url)
    assert _delta(after_pull, after_manifests) == {
        "requests": 7,
        "blobs_pushed": 1,
        "manifests_pushed": 1,
        "bytes_in": len(config) + len(body),
        "manifest_hits": 2,
        "manifest_misses": 1,
        "bytes_out": len(body),
    }


def test_stats_count_only_the_bytes_a_range_sends(url: str) -> None:
    data = os.urandom(10_000)
    push_blob(url, "ranged", data)
    before = _counters(url)
    partial = requests.get(
        f"{url}/v2/ranged/blobs/{digest(data)}", headers={"Range": "bytes=9000-"}, timeout=TIMEOUT
    )
    assert partial.status_code == 206
    unsatisfiable = requests.get(
        f"{url}/v2/ranged/blobs/{digest(data)}", headers={"Range": "bytes=20000-"}, timeout=TIMEOUT
    )
    assert unsatisfiable.status_code == 416
    after = _counters(url)
    assert _delta(before, after)["bytes_out"] == 1000
