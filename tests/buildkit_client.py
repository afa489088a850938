"""A registry client that sends exactly what BuildKit v0.24 sends (containerd v2.1.4's pusher and
fetcher), as recorded in /work/shared/reference/buildkit-observed-requests.md section 2.

- Every request: `User-Agent: buildkit/v0.24`; `Traceparent` on all but the import-side tag HEAD,
  manifest GET and config GET; `Accept-Encoding` absent on HEAD, `gzip` on POST/PUT, the zstd list
  on other GETs; no `Authorization`, `Connection`, `Expect`, `Range` or `Transfer-Encoding`.
- Export is strictly sequential on one keep-alive connection: per blob HEAD → (404) POST → PUT
  `<Location>` with `digest` appended to its query, then the manifest HEAD → PUT by tag.
- Import: tag HEAD with every manifest type accepted, manifest GET by digest, config GET, then one
  connection per layer GET.

It also builds BuildKit-shaped cache configs and the three cache manifest forms (OCI image
manifest, OCI index, Docker manifest list), serialised compactly like Go's encoding/json.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

USER_AGENT = "buildkit/v0.24"
GET_ACCEPT_ENCODING = "zstd;q=1.0, gzip;q=0.8, deflate;q=0.5"
OCTET_STREAM = "application/octet-stream"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
ALL_MANIFEST_TYPES = f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"

# The layer sizes of Dockerfile A in the observations (2, 8 and 40 MiB of random data, gzipped).
OBSERVED_LAYER_SIZES = (2_097_938, 8_391_309, 41_956_009)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def go_json(document: Any) -> bytes:
    """Compact JSON like Go's encoding/json (maps with sorted keys, structs in field order)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclass
class Exchange:
    """One request and its response, as a logging proxy would record it."""

    method: str
    target: str
    request_headers: dict[str, str]
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    connection: int  # the client's local port: equal ports mean the same TCP connection

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def headers_named(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path


class Connection:
    """One HTTP/1.1 keep-alive connection, like one connection of Go's http.Transport."""

    def __init__(self, base_url: str, log: list[Exchange] | None = None, timeout: float = 120):
        parts = urllib.parse.urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self._http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.log: list[Exchange] = log if log is not None else []

    def close(self) -> None:
        self._http.close()

    def begin(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None = None,
        content_length: int | None = None,
    ) -> tuple[http.client.HTTPResponse, int, dict[str, str]]:
        """Send a request and read the status line and headers; the caller reads the body."""
        sent = {"User-Agent": USER_AGENT, **headers}
        if isinstance(body, bytes):
            content_length = len(body)
        if content_length is not None:
            sent["Content-Length"] = str(content_length)
        self._http.putrequest(method, target, skip_accept_encoding=True)
        for name, value in sent.items():
            self._http.putheader(name, value)
        self._http.endheaders()
        assert self._http.sock is not None
        port: int = self._http.sock.getsockname()[1]
        if isinstance(body, bytes):
            self._http.send(body)
        elif body is not None:
            for chunk in body:
                self._http.send(chunk)
        return self._http.getresponse(), port, sent

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None = None,
        content_length: int | None = None,
    ) -> Exchange:
        response, port, sent = self.begin(method, target, headers, body, content_length)
        data = response.read()
        exchange = Exchange(method, target, sent, response.status, response.msg, data, port)
        self.log.append(exchange)
        return exchange


def digest_query(location: str, digest: str) -> str:
    """What containerd does with a POST's Location: append `digest` to whatever query it has."""
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={urllib.parse.quote(digest, safe='')}"


def target_of(location: str) -> str:
    """The request target for a Location, which may be absolute (distribution) or a path."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class BuildKit:
    """The request shapes of one BuildKit build: export on one connection, import like 3a."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.log: list[Exchange] = []
        self.connection = Connection(base_url, self.log)

    def close(self) -> None:
        self.connection.close()

    # --- export (containerd pusher) ---

    def head_blob(self, repo: str, digest: str, media_type: str) -> Exchange:
        return self.connection.request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            {"Accept": f"{media_type}, */*", "Traceparent": traceparent()},
        )

    def start_upload(self, repo: str) -> Exchange:
        return self.connection.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            {"Traceparent": traceparent(), "Accept-Encoding": "gzip"},
            content_length=0,
        )

    def put_upload(
        self,
        location: str,
        digest: str,
        body: bytes | Iterable[bytes],
        size: int | None = None,
    ) -> Exchange:
        return self.connection.request(
            "PUT",
            digest_query(target_of(location), digest),
            {
                "Content-Type": OCTET_STREAM,
                "Traceparent": traceparent(),
                "Accept-Encoding": "gzip",
            },
            body,
            content_length=size,
        )

    def push_blob(self, repo: str, data: bytes, media_type: str) -> list[Exchange]:
        """HEAD; when absent POST then PUT the whole blob. Returns the exchanges it made."""
        digest = sha256(data)
        head = self.head_blob(repo, digest, media_type)
        if head.status == 200:
            return [head]
        assert head.status == 404, (head.status, head.body)
        post = self.start_upload(repo)
        assert post.status == 202, (post.status, post.body)
        location = post.header("Location")
        assert location is not None
        put = self.put_upload(location, digest, data)
        return [head, post, put]

    def head_manifest(self, repo: str, tag: str, media_type: str) -> Exchange:
        return self.connection.request(
            "HEAD",
            f"/v2/{repo}/manifests/{tag}",
            {"Accept": f"{media_type}, */*", "Traceparent": traceparent()},
        )

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> Exchange:
        return self.connection.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            {
                "Content-Type": media_type,
                "Traceparent": traceparent(),
                "Accept-Encoding": "gzip",
            },
            body,
        )

    def push_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> list[Exchange]:
        """HEAD the tag; PUT unless it already resolves to this exact manifest."""
        head = self.head_manifest(repo, tag, media_type)
        if head.status == 200 and head.header("Docker-Content-Digest") == sha256(body):
            return [head]
        return [head, self.put_manifest(repo, tag, body, media_type)]

    def export(self, cache: CacheExport) -> list[Exchange]:
        """The whole cache export: layers in digest order, the cache config, the manifest."""
        exchanges: list[Exchange] = []
        for layer in cache.layers:
            exchanges += self.push_blob(cache.repo, layer.data, OCI_LAYER_GZIP)
        exchanges += self.push_blob(cache.repo, cache.config, CACHE_CONFIG)
        exchanges += self.push_manifest(cache.repo, cache.tag, cache.manifest, cache.media_type)
        return exchanges

    # --- import (containerd resolver and fetcher) ---

    def resolve(self, repo: str, tag: str) -> Exchange:
        return self.connection.request(
            "HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": ALL_MANIFEST_TYPES}
        )

    def fetch_manifest(self, repo: str, digest: str, media_type: str) -> Exchange:
        return self.connection.request(
            "GET",
            f"/v2/{repo}/manifests/{digest}",
            {"Accept": f"{media_type}, */*", "Accept-Encoding": GET_ACCEPT_ENCODING},
        )

    def fetch_config(self, repo: str, digest: str) -> Exchange:
        return self.connection.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            {"Accept": f"{CACHE_CONFIG}, */*", "Accept-Encoding": GET_ACCEPT_ENCODING},
        )


def layer_get_headers(media_type: str, range_from: int | None = None) -> dict[str, str]:
    headers = {
        "Accept": f"{media_type}, */*",
        "Accept-Encoding": GET_ACCEPT_ENCODING,
        "Traceparent": traceparent(),
    }
    if range_from is not None:
        headers["Range"] = f"bytes={range_from}-"
    return headers


@dataclass(frozen=True)
class Layer:
    data: bytes
    diff_id: str
    created_at: str

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)


def random_layers(sizes: Iterable[int] = OBSERVED_LAYER_SIZES) -> list[Layer]:
    """Incompressible layers in build order (what Dockerfile A's three COPY steps produce)."""
    return [
        Layer(os.urandom(size), sha256(os.urandom(32)), f"2025-06-0{i + 1}T10:00:00.{i}Z")
        for i, size in enumerate(sizes)
    ]


def cache_config(layers: list[Layer]) -> bytes:
    """A BuildKit cache config: `layers` sorted by blob digest with parent indexes, records."""
    ordered = sorted(layers, key=lambda layer: layer.digest)
    position = {layer.digest: i for i, layer in enumerate(ordered)}
    entries: list[dict[str, Any]] = []
    for layer in ordered:
        entry: dict[str, Any] = {"blob": layer.digest}
        build_index = layers.index(layer)
        parent = position[layers[build_index - 1].digest] if build_index > 0 else -1
        if parent != 0:
            entry["parent"] = parent
        entries.append(entry)
    records: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        record: dict[str, Any] = {"digest": sha256(f"record-{layer.digest}".encode())}
        record["layers"] = [{"layer": position[layer.digest], "createdAt": layer.created_at}]
        if i > 0:
            record["inputs"] = [[{"link": i - 1}]]
        records.append(record)
    return go_json({"layers": entries, "records": records})


@dataclass
class CacheExport:
    """What one `--export-cache type=registry,ref=<repo>:<tag>` uploads."""

    repo: str
    tag: str
    layers: list[Layer]  # in digest order, as BuildKit uploads and lists them
    config: bytes
    manifest: bytes
    media_type: str
    layer_media_type: str = OCI_LAYER_GZIP
    source_ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    def blobs(self) -> dict[str, bytes]:
        found = {layer.digest: layer.data for layer in self.layers}
        found[self.config_digest] = self.config
        return found


def _layer_descriptor(layer: Layer, media_type: str, source_ref: str | None) -> dict[str, Any]:
    annotations = {
        "buildkit/createdat": layer.created_at,
        "containerd.io/uncompressed": layer.diff_id,
    }
    if source_ref is not None:
        annotations["containerd.io/distribution.source.ref"] = source_ref
    return {
        "mediaType": media_type,
        "digest": layer.digest,
        "size": layer.size,
        "annotations": dict(sorted(annotations.items())),
    }


def cache_export(
    repo: str,
    tag: str,
    layers: list[Layer],
    form: str = "manifest",
    source_ref: str | None = None,
) -> CacheExport:
    """Build the cache config and manifest of one export.

    form: "manifest" (default, image-manifest=true), "index" (image-manifest=false) or
    "docker-list" (oci-mediatypes=false). `source_ref` is the annotation an import adds.
    """
    ordered = sorted(layers, key=lambda layer: layer.digest)
    config = cache_config(layers)
    config_descriptor = {"mediaType": CACHE_CONFIG, "digest": sha256(config), "size": len(config)}
    if form == "manifest":
        media_type, layer_type = OCI_MANIFEST, OCI_LAYER_GZIP
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config_descriptor,
            "layers": [_layer_descriptor(la, layer_type, source_ref) for la in ordered],
        }
    elif form in ("index", "docker-list"):
        media_type = OCI_INDEX if form == "index" else DOCKER_LIST
        layer_type = OCI_LAYER_GZIP if form == "index" else DOCKER_LAYER_GZIP
        document = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                *(_layer_descriptor(la, layer_type, source_ref) for la in ordered),
                config_descriptor,
            ],
        }
    else:
        raise ValueError(form)
    return CacheExport(
        repo, tag, ordered, config, go_json(document), media_type, layer_type, source_ref
    )


def image_manifest(
    config: bytes,
    layers: list[bytes],
    media_type: str = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    subject: bytes | None = None,
    subject_type: str = OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """A plain image manifest (for gc and access tests), optionally a referrer of `subject`."""
    layer_type = OCI_LAYER_GZIP if media_type == OCI_MANIFEST else DOCKER_LAYER_GZIP
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": layer_type, "digest": sha256(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    if subject is not None:
        document["subject"] = {
            "mediaType": subject_type,
            "digest": sha256(subject),
            "size": len(subject),
        }
    if annotations:
        document["annotations"] = annotations
    return go_json(document)


def image_index(children: list[bytes], media_type: str = OCI_INDEX) -> bytes:
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {
                    "mediaType": child_type,
                    "digest": sha256(child),
                    "size": len(child),
                    "platform": {"architecture": f"arch{i}", "os": "linux"},
                }
                for i, child in enumerate(children)
            ],
        }
    )
