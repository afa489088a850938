"""Shared by the prune tests: build roots through the real registry, set the access record, and
check a root with an implementation independent of the one under test.

`closures(root)` re-implements "what a tag needs" from the OCI specs (descriptor sizes, digests,
an index's children only when their media type says manifest), so a bug in prune's own closure
walk cannot hide itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_action.storage.access import AccessRecord
from cache_action.storage.layout import Layout
from tests.buildkit_client import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuildKit,
    CacheExport,
    Layer,
    cache_export,
    image_manifest,
    sha256,
)
from tests.components import RegistryProcess

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache_action", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def layer(size: int, name: str) -> Layer:
    """A BuildKit-like layer of `size` random bytes (sizes tell layers apart in byte counts)."""
    return Layer(os.urandom(size), sha256(os.urandom(32)), f"2025-06-01T10:00:00.{name}Z")


@dataclass
class Pushed:
    """What the tests pushed: per `repo:tag` the blobs (digest → bytes) its closure holds."""

    closures: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)

    def bytes_of(self, *labels: str) -> int:
        union: dict[str, bytes] = {}
        for label in labels:
            union.update(self.closures[label])
        return sum(len(data) for data in union.values())

    def digests_of(self, *labels: str) -> set[str]:
        return {d for label in labels for d in self.closures[label]}


class Pusher:
    """Pushes through the real registry with the BuildKit-shaped client."""

    def __init__(self, url: str, pushed: Pushed | None = None) -> None:
        self.client = BuildKit(url)
        self.pushed = pushed if pushed is not None else Pushed()

    def close(self) -> None:
        self.client.close()

    def blobs(self, repo: str, *items: bytes) -> None:
        for item in items:
            status = self.client.push_blob(repo, item, OCI_LAYER_GZIP)[-1].status
            assert status in (200, 201), status

    def manifest(self, repo: str, reference: str | None, body: bytes, media_type: str) -> None:
        put = self.client.put_manifest(repo, reference or sha256(body), body, media_type)
        assert put.status == 201, put.body

    def cache(
        self, repo: str, tag: str, layers: list[Layer], form: str = "manifest"
    ) -> CacheExport:
        """A BuildKit cache export (layers, cache config, manifest) under `repo:tag`."""
        export = cache_export(repo, tag, layers, form)
        exchanges = self.client.export(export)
        assert exchanges[-1].status in (200, 201), exchanges[-1].body
        self.pushed.closures[f"{repo}:{tag}"] = {
            **export.blobs(),
            export.manifest_digest: export.manifest,
        }
        self.pushed.manifests[f"{repo}:{tag}"] = export.manifest
        return export

    def image(
        self, repo: str, reference: str | None, cfg: bytes, layers: list[bytes], **kw: Any
    ) -> bytes:
        self.blobs(repo, cfg, *layers)
        body = image_manifest(cfg, layers, **kw)
        self.manifest(repo, reference, body, OCI_MANIFEST)
        if reference is not None:
            self.pushed.closures[f"{repo}:{reference}"] = {
                sha256(x): x for x in (cfg, *layers, body)
            }
            self.pushed.manifests[f"{repo}:{reference}"] = body
        return body


def set_tag_times(root: Path, times: dict[str, float]) -> None:
    """Write last-use times of `repo:tag` keys into the access record (the registry is stopped)."""
    record = AccessRecord.load(Layout(root))
    for key, when in times.items():
        record.times["tags"][key] = when
    record.dirty = True
    record.flush()


def access_tags(root: Path) -> dict[str, float]:
    document = json.loads((root / ".cache-action" / "access.json").read_bytes())
    tags: dict[str, float] = document["tags"]
    return tags


def index_tags(root: Path) -> dict[str, str]:
    """`repo:tag` → manifest digest over every repository of the root."""
    found: dict[str, str] = {}
    for index_path in sorted(root.rglob("index.json")):
        repo = index_path.parent.relative_to(root).as_posix()
        if repo.startswith(".") or "/blobs/" in f"/{repo}/":
            continue
        for entry in json.loads(index_path.read_bytes()).get("manifests", []):
            tag = (entry.get("annotations") or {}).get(REF_NAME)
            if tag is not None:
                found[f"{repo}:{tag}"] = entry["digest"]
    return found


def untagged(root: Path, repo: str) -> list[str]:
    document = json.loads((root / repo / "index.json").read_bytes())
    return [
        e["digest"] for e in document["manifests"] if REF_NAME not in (e.get("annotations") or {})
    ]


def blob_path(root: Path, repo: str, digest: str) -> Path:
    return root / repo / "blobs" / "sha256" / digest.removeprefix("sha256:")


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"


class Incomplete(AssertionError):
    pass


def closure(root: Path, repo: str, digest: str, size: int | None) -> set[str]:
    """Every blob `repo` needs to serve manifest `digest`, each checked for presence, size and
    digest; raises Incomplete otherwise."""
    needed: set[str] = set()
    pending: list[tuple[str, int | None, bool]] = [(digest, size, True)]
    while pending:
        current, expected, is_manifest = pending.pop()
        if current in needed:
            continue
        path = root / repo / "blobs" / "sha256" / current.removeprefix("sha256:")
        if not path.is_file():
            raise Incomplete(f"{repo}: {current} is missing")
        if expected is not None and path.stat().st_size != expected:
            raise Incomplete(f"{repo}: {current} is {path.stat().st_size} bytes, not {expected}")
        if file_digest(path) != current:
            raise Incomplete(f"{repo}: {current} fails its digest")
        needed.add(current)
        if not is_manifest:
            continue
        document = json.loads(path.read_bytes())
        children: list[dict[str, Any]] = []
        if "manifests" in document:
            children = document["manifests"]
        else:
            children = [document["config"], *document.get("layers", [])]
        for child in children:
            if child.get("urls"):
                continue
            pending.append((child["digest"], child["size"], child["mediaType"] in MANIFEST_TYPES))
    return needed


def closures(root: Path, known_broken: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """`repo:tag` → the blobs it needs; raises Incomplete if any tag cannot be served whole,
    but for `known_broken` tags (broken on purpose before the prune), which are left out."""
    found: dict[str, set[str]] = {}
    for index_path in sorted(root.rglob("index.json")):
        repo = index_path.parent.relative_to(root).as_posix()
        if repo.startswith(".") or repo == "." or "/blobs/" in f"/{repo}/":
            continue
        for entry in json.loads(index_path.read_bytes()).get("manifests", []):
            tag = (entry.get("annotations") or {}).get(REF_NAME)
            if tag is None:
                continue
            label = f"{repo}:{tag}"
            if label in known_broken:
                with contextlib.suppress(Incomplete):
                    closure(root, repo, entry["digest"], entry.get("size"))
                    raise AssertionError(f"{label} was meant to be broken")
                continue
            found[label] = closure(root, repo, entry["digest"], entry.get("size"))
    return found


def blob_files(root: Path) -> dict[str, set[str]]:
    """Directory (`""` for the pool, else the repository) → digests of its blob files."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and path.parent.parent.name == "blobs" and not path.name.startswith("."):
            owner = path.parent.parent.parent.relative_to(root).as_posix()
            found.setdefault("" if owner == "." else owner, set()).add(
                f"{path.parent.name}:{path.name}"
            )
    return found


def disk_bytes(root: Path) -> int:
    """Bytes of blob files, every inode once (what `stats` and the report count)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and path.parent.parent.name == "blobs" and not path.name.startswith("."):
            info = path.stat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file of the root but the lock: size and content hash (access.json included)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "lock":
            found[path.relative_to(root).as_posix()] = (path.stat().st_size, file_digest(path))
    return found


def serve_every_tag(root: Path, work: Path, expected: dict[str, set[str]]) -> None:
    """Start the registry on `root`; every tag resolves and every blob of its closure downloads
    with the right digest (what BuildKit's import does); stop it cleanly."""
    work.mkdir(parents=True, exist_ok=True)
    server = RegistryProcess(root, work / "ready.json", work / "registry.log").start()
    try:
        client = BuildKit(server.url)
        for label, needed in expected.items():
            repo, tag = label.rsplit(":", 1)
            head = client.resolve(repo, tag)
            assert head.status == 200, (label, head.status, head.body)
            digest = head.header("Docker-Content-Digest")
            assert digest in needed, label
            for blob_digest in needed:
                got = client.connection.request(
                    "GET", f"/v2/{repo}/blobs/{blob_digest}", {"Accept": "*/*"}
                )
                assert got.status == 200, (label, blob_digest, got.status)
                assert sha256(got.body) == blob_digest, (label, blob_digest)
        client.close()
    finally:
        code = server.stop()
    assert code == 0, server.log()


def resolve_statuses(url: str, labels: list[str]) -> dict[str, int]:
    client = BuildKit(url)
    try:
        return {label: client.resolve(*label.rsplit(":", 1)).status for label in labels}
    finally:
        client.close()
