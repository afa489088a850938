"""What storage needs to know about manifests: validity, media type, and what they reference.

BuildKit's cache comes as an OCI image manifest (config = the cache config) or, with
`image-manifest=false`, as an index whose `manifests[]` are *layers* and the cache config.
So an index child is only walked into when its own media type says it is a manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cache_action.errors import ErrorCode, OCIError
from cache_action.storage.digests import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
BUILDKIT_CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Configs: what a client reads before it decides which layers it needs.
CONFIG_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.empty.v1+json",
        BUILDKIT_CACHE_CONFIG,
    }
)


@dataclass(frozen=True)
class Reference:
    """One descriptor a manifest points at."""

    digest: Digest
    media_type: str
    size: int
    external: bool = False  # has `urls`: lives elsewhere (foreign layers), never required here

    @property
    def is_manifest(self) -> bool:
        return self.media_type in MANIFEST_TYPES


@dataclass(frozen=True)
class Manifest:
    media_type: str
    references: tuple[Reference, ...]
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    config_media_type: str | None = None


def base_media_type(content_type: str | None) -> str:
    """`Content-Type` without parameters, lower-cased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _invalid(message: str) -> OCIError:
    return OCIError(ErrorCode.MANIFEST_INVALID, f"invalid manifest: {message}")


def _reference(raw: Any, where: str) -> Reference:
    if not isinstance(raw, dict):
        raise _invalid(f"{where} is not a descriptor object")
    digest_text, media_type, size = raw.get("digest"), raw.get("mediaType"), raw.get("size")
    if not isinstance(digest_text, str):
        raise _invalid(f"{where} has no digest")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where} has no valid size")
    try:
        digest = Digest.parse(digest_text)
    except OCIError as error:
        raise _invalid(f"{where}: {error.message}") from None
    return Reference(digest, media_type, size, external=bool(raw.get("urls")))


def _sniff(document: dict[str, Any]) -> str:
    """Media type of a manifest that does not declare one (OCI makes the field optional)."""
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def parse_manifest(body: bytes, content_type: str | None = None) -> Manifest:
    """Validate a manifest body; `content_type` is what the client declared on PUT."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise OCIError(ErrorCode.SIZE_INVALID, "manifest exceeds 4 MiB")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid("body is not JSON") from None
    if not isinstance(document, dict):
        raise _invalid("body is not a JSON object")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    declared = document.get("mediaType")
    sent = base_media_type(content_type)
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if declared and sent and declared != sent:
        raise _invalid(f"mediaType {declared!r} does not match Content-Type {sent!r}")
    media_type = declared or (sent if sent in MANIFEST_TYPES else _sniff(document))
    return _describe(document, media_type)


def _describe(document: dict[str, Any], media_type: str) -> Manifest:
    references: list[Reference] = []
    config_type = None
    if media_type in INDEX_TYPES or "manifests" in document:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise _invalid("an index needs a manifests list")
        references += [_reference(c, f"manifests[{i}]") for i, c in enumerate(children)]
    else:
        config = document.get("config")
        layers = document.get("layers", [])
        if config is None or not isinstance(layers, list):
            raise _invalid("an image manifest needs config and layers")
        config_ref = _reference(config, "config")
        config_type = config_ref.media_type
        references.append(config_ref)
        references += [_reference(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
    subject = None
    if document.get("subject") is not None:
        subject = _reference(document["subject"], "subject").digest
    annotations = document.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise _invalid("annotations must be an object")
    artifact_type = document.get("artifactType")
    return Manifest(
        media_type=media_type,
        references=tuple(references),
        subject=subject,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations={str(k): str(v) for k, v in annotations.items()},
        config_media_type=config_type,
    )


def read_manifest(body: bytes) -> Manifest | None:
    """Parse a stored manifest leniently: None when the blob is not a manifest at all."""
    try:
        return parse_manifest(body)
    except OCIError:
        return None
