"""OCI distribution requests for protocol tests: digests, descriptors, pushes, error bodies.

Everything goes over real HTTP. `requests` normalises paths (it removes `..` segments and decodes
`%2e`), so `raw_request` exists for the requests that must reach the server byte for byte.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
OCTET_STREAM = "application/octet-stream"
API_VERSION = "registry/2.0"

TIMEOUT = 30


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def dumps(document: Any) -> bytes:
    """Compact JSON: the exact bytes a test pushes and then expects back."""
    return json.dumps(document, separators=(",", ":")).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def error_code(response: requests.Response) -> str:
    """The single OCI error code of an error response (asserting the spec's body shape)."""
    assert response.headers["Content-Type"].split(";")[0] == "application/json", response.text
    document = response.json()
    assert list(document) == ["errors"], document
    assert len(document["errors"]) == 1, document
    entry = document["errors"][0]
    assert isinstance(entry["message"], str), entry
    code = entry["code"]
    assert isinstance(code, str)
    return code


def start_upload(url: str, name: str) -> str:
    """POST a new upload session; returns its absolute URL."""
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    return url + response.headers["Location"]


def push_blob(url: str, name: str, data: bytes, algorithm: str = "sha256") -> str:
    """POST then one PUT with the whole blob, as BuildKit does; returns the digest."""
    blob_digest = digest(data, algorithm)
    location = start_upload(url, name)
    response = requests.put(
        location,
        params={"digest": blob_digest},
        data=data,
        headers={"Content-Type": OCTET_STREAM},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == blob_digest
    return blob_digest


def put_manifest(
    url: str, name: str, reference: str, body: bytes, media_type: str | None
) -> requests.Response:
    headers = {} if media_type is None else {"Content-Type": media_type}
    return requests.put(
        f"{url}/v2/{name}/manifests/{reference}", data=body, headers=headers, timeout=TIMEOUT
    )


def push_manifest(url: str, name: str, reference: str, body: bytes, media_type: str) -> str:
    response = put_manifest(url, name, reference, body, media_type)
    assert response.status_code == 201, response.text
    return digest(body)


@dataclass(frozen=True)
class PushedImage:
    name: str
    config: bytes
    layers: tuple[bytes, ...]
    manifest: bytes
    manifest_digest: str
    media_type: str


def image_manifest(
    config: bytes,
    layers: list[bytes],
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    media_type: str = OCI_MANIFEST,
    **fields: Any,
) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
        **fields,
    }
    return dumps(document)


def push_image(
    url: str, name: str, tag: str, seed: str = "image", layer_count: int = 2, **fields: Any
) -> PushedImage:
    """Blobs, then an OCI image manifest by tag: the smallest complete image."""
    config = dumps({"architecture": "amd64", "os": "linux", "seed": seed})
    layers = tuple(f"{seed}-layer-{i}".encode() * 100 for i in range(layer_count))
    for blob in (config, *layers):
        push_blob(url, name, blob)
    body = image_manifest(config, list(layers), **fields)
    manifest_digest = push_manifest(url, name, tag, body, OCI_MANIFEST)
    return PushedImage(name, config, layers, body, manifest_digest, OCI_MANIFEST)


def stats(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/_cache/stats", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    document = response.json()
    assert isinstance(document, dict)
    return document


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        assert self.headers["Content-Type"].split(";")[0] == "application/json", self.body
        document = self.json()
        assert len(document["errors"]) == 1, document
        code = document["errors"][0]["code"]
        assert isinstance(code, str)
        return code


def raw_request(
    url: str,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Mapping[str, str | bytes] | None = None,
) -> RawResponse:
    """Send `target` exactly as written (no normalisation, no re-quoting)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.request(method, target, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return RawResponse(response.status, response.headers, response.read())
    finally:
        connection.close()


# The counters of GET /_cache/stats and stats.json.
COUNTERS = (
    "requests",
    "manifest_hits",
    "manifest_misses",
    "blob_hits",
    "blob_misses",
    "blobs_pushed",
    "manifests_pushed",
    "bytes_in",
    "bytes_out",
    "blobs_fetched",
    "bytes_fetched",
)
