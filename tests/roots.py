"""Realistic registry roots for store tests and benchmarks.

Images are written as OCI layouts (layers can be shared between revisions, as a rebuilt image
shares its unchanged layers), then pushed with skopeo through our own registry process into a
root, which is what a CI job's BuildKit leaves behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.components import RegistryProcess
from tests.images import LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST

REF_NAME = "org.opencontainers.image.ref.name"
META_DIR = ".cache-action"


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    diff_id: str

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": LAYER_GZIP, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]

    @property
    def blobs(self) -> set[str]:
        return {self.manifest_digest, self.config_digest, *(layer.digest for layer in self.layers)}


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    hex_digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / hex_digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{hex_digest}", len(data)


def add_layer(layout: Path, size: int, name: str, compresslevel: int = 1) -> Layer:
    """A gzip'd tar of one random file of `size` bytes, written into `layout`'s blobs."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo(f"{name}.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(os.urandom(size)))
    raw = tar.getvalue()
    diff_id = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    digest, blob_size = _write_blob(layout, gzip.compress(raw, compresslevel, mtime=0))
    return Layer(digest, blob_size, diff_id)


def add_image(layout: Path, layers: Sequence[Layer], tag: str) -> BuiltImage:
    """Write config + manifest for `layers` into `layout` and tag it in its index.json."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "config": {"Labels": {"tag": tag}},
    }
    config_digest, config_size = _write_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest_digest, manifest_size = _write_blob(layout, json.dumps(manifest).encode())
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"manifests": []}
    index["schemaVersion"] = 2
    index["manifests"] = [
        m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != tag
    ]
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {REF_NAME: tag},
        }
    )
    index_path.write_text(json.dumps(index))
    return BuiltImage(layout, tag, manifest_digest, config_digest, tuple(layers))


def skopeo_push(skopeo: str, address: str, image: BuiltImage, repository: str) -> None:
    """`skopeo copy oci:LAYOUT:TAG docker://ADDRESS/REPOSITORY:TAG`, as a user pushes."""
    subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{image.layout}:{image.tag}",
            f"docker://{address}/{repository}:{image.tag}",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def push_into_root(
    root: Path, work: Path, skopeo: str, pushes: Iterable[tuple[BuiltImage, str]]
) -> None:
    """Start our registry on `root`, push each (image, repository) with skopeo, stop it."""
    work.mkdir(parents=True, exist_ok=True)
    server = RegistryProcess(root, work / "ready.json", work / "registry.log").start()
    try:
        for image, repository in pushes:
            skopeo_push(skopeo, server.address, image, repository)
    finally:
        code = server.stop()
    assert code == 0, server.log()


def push_blob_into_root(root: Path, work: Path, repository: str, data: bytes) -> str:
    """Upload one bare blob (a layer BuildKit pushes before its manifest) through the registry."""
    work.mkdir(parents=True, exist_ok=True)
    server = RegistryProcess(root, work / "ready.json", work / "registry.log").start()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    try:
        response = requests.post(
            f"{server.url}/v2/{repository}/blobs/uploads/",
            params={"digest": digest},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
    finally:
        code = server.stop()
    assert code == 0, server.log()
    return digest


def copy_root(source: Path, target: Path) -> Path:
    """A copy that keeps the pool ↔ repository hard links (cp -a), as the real root has them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def tree(root: Path) -> dict[str, bytes]:
    """Every file of the root but our bookkeeping (.cache-action): relative path → bytes."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative == META_DIR or relative.startswith(META_DIR + "/") or not path.is_file():
            continue
        files[relative] = path.read_bytes()
    return files


def blob_digests(root: Path) -> set[str]:
    """Digests of every blob file in the root (pool and repositories), temp files excluded."""
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and path.parent.parent.name == "blobs" and not path.name.startswith("."):
            found.add(f"{path.parent.name}:{path.name}")
    return found


def corrupt_blob_files(root: Path) -> list[str]:
    """Blob files whose content does not hash to their name, and leftover temp files."""
    bad = []
    for path in root.rglob("*"):
        if not path.is_file() or path.parent.parent.name != "blobs":
            continue
        if path.name.startswith("."):
            bad.append(f"temp file {path.relative_to(root)}")
            continue
        hasher = hashlib.new(path.parent.name)
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                hasher.update(block)
        if hasher.hexdigest() != path.name:
            bad.append(str(path.relative_to(root)))
    return bad


def tags(root: Path, repository: str) -> dict[str, str]:
    """tag → manifest digest, from the repository's index.json."""
    index_path = root / repository / "index.json"
    if not index_path.is_file():
        return {}
    document = json.loads(index_path.read_text())
    return {
        m["annotations"][REF_NAME]: m["digest"]
        for m in document.get("manifests", [])
        if REF_NAME in (m.get("annotations") or {})
    }


def empty_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
