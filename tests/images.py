"""Make real OCI image layouts on disk (random, incompressible layers) for clients to push."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class Image:
    layout: Path
    tag: str
    manifest_digest: str
    blob_digests: tuple[str, ...]


def _store(layout: Path, data: bytes) -> dict[str, object]:
    hex_digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / hex_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{hex_digest}", "size": len(data)}


def layer_bytes(size: int, seed: int) -> tuple[bytes, str]:
    """A gzip'd tar of one random file; returns (blob, diff_id). Level 1: data is random anyway."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo(f"layer-{seed}.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(os.urandom(size)))
    raw = tar.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), f"sha256:{hashlib.sha256(raw).hexdigest()}"


def make_image(layout: Path, layer_sizes: list[int], tag: str = "latest") -> Image:
    """Write an OCI image layout holding one image with the given layer sizes."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers, diff_ids = [], []
    for seed, size in enumerate(layer_sizes):
        blob, diff_id = layer_bytes(size, seed)
        layers.append({"mediaType": LAYER_GZIP, **_store(layout, blob)})
        diff_ids.append(diff_id)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }
    config_desc = {"mediaType": OCI_CONFIG, **_store(layout, json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layers,
    }
    manifest_desc = {"mediaType": OCI_MANIFEST, **_store(layout, json.dumps(manifest).encode())}
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]})
    )
    blob_digests = tuple(str(d["digest"]) for d in [*layers, config_desc])
    return Image(layout, tag, str(manifest_desc["digest"]), blob_digests)
