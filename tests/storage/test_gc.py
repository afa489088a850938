"""Garbage collection (`python -m cache_action gc` and `collect_garbage`): mark from every tag,
sweep the rest. One populated root exercises moved and deleted tags, untagged manifests, index
children, referrers and subjects, a blob shared across repositories and crash leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cache_action.errors import RootLockedError
from cache_action.storage.gc import collect_garbage
from cache_action.storage.layout import Layout
from cache_action.storage.lock import root_lock
from cache_action.storage.root import Storage
from tests.buildkit_client import (
    CACHE_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    OCTET_STREAM,
    BuildKit,
    cache_export,
    image_index,
    image_manifest,
    layer_get_headers,
    random_layers,
    sha256,
)
from tests.components import RegistryProcess

REF_NAME = "org.opencontainers.image.ref.name"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache_action", *args], capture_output=True, text=True, timeout=120
    )


def blob(size: int) -> bytes:
    return os.urandom(size)


def config(name: str) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()


@dataclass
class Populated:
    """What the registry holds and what gc must keep, per repository, as digest → bytes."""

    kept: dict[str, dict[str, bytes]] = field(default_factory=dict)
    dropped: dict[str, dict[str, bytes]] = field(default_factory=dict)
    tags: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo → tag → manifest
    untracked: list[str] = field(default_factory=list)  # "repo@digest", index.json order
    kept_untagged: dict[str, list[str]] = field(default_factory=dict)  # repo → digests, in order
    referrer_of_kept: tuple[str, str] = ("", "")  # (subject, referrer)

    def keep(self, repo: str, *items: bytes) -> None:
        self.kept.setdefault(repo, {}).update({sha256(item): item for item in items})

    def drop(self, repo: str, *items: bytes) -> None:
        self.dropped.setdefault(repo, {}).update({sha256(item): item for item in items})


class Pusher:
    def __init__(self, url: str) -> None:
        self.client = BuildKit(url)

    def blobs(self, repo: str, *items: bytes) -> None:
        for item in items:
            assert self.client.push_blob(repo, item, OCI_LAYER_GZIP)[-1].status in (200, 201)

    def manifest(self, repo: str, reference: str | None, body: bytes, media_type: str) -> None:
        put = self.client.put_manifest(repo, reference or sha256(body), body, media_type)
        assert put.status == 201, put.body

    def image(
        self, repo: str, reference: str | None, cfg: bytes, layers: list[bytes], **kw: object
    ) -> bytes:
        self.blobs(repo, cfg, *layers)
        body = image_manifest(cfg, layers, **kw)  # type: ignore[arg-type]
        self.manifest(repo, reference, body, OCI_MANIFEST)
        return body


def populate(url: str) -> Populated:
    p = Populated()
    push = Pusher(url)
    l1, l2, l3, l4, l5, l6, l7, l8, l10, l11 = (blob(10_000 + i) for i in range(10))
    names = ("ca", "ca2", "cb", "cu", "k1", "k2", "sc", "s2c", "dc", "tc", "msc", "cx")
    ca, ca2, cb, cu, k1, k2, sc, s2c, dc, tc, msc, cx = (config(n) for n in names)

    # Two tags sharing L1; then tag a moves to a new manifest and tag b is deleted.
    ma = push.image("cache", "a", ca, [l1, l2])
    mb = push.image("cache", "b", cb, [l1, l3])
    ma2 = push.image("cache", "a", ca2, [l2, l4])
    deleted = push.client.connection.request("DELETE", "/v2/cache/manifests/b", {})
    assert deleted.status == 202
    p.keep("cache", ma2, ca2, l2, l4)
    p.drop("cache", ma, ca, mb, cb, l1, l3)

    # An untagged manifest nothing references.
    mu = push.image("cache", None, cu, [l2, l5])
    p.drop("cache", mu, cu, l5)
    p.untracked.append(f"cache@{sha256(mu)}")

    # An index pushed by tag whose child manifests were pushed by digest.
    c1 = push.image("cache", None, k1, [l6])
    c2 = push.image("cache", None, k2, [l7])
    ix = image_index([c1, c2])
    push.manifest("cache", "multi", ix, OCI_INDEX)
    p.keep("cache", ix, c1, k1, l6, c2, k2, l7)

    # Referrers: of a kept manifest (kept), of that referrer (kept), of a dropped one (dropped).
    sig = push.image("cache", None, sc, [l8], subject=ma2)
    sig2 = push.image("cache", None, s2c, [], subject=sig)
    dead = push.image("cache", None, dc, [l10], subject=mb)
    p.keep("cache", sig, sc, l8, sig2, s2c)
    p.drop("cache", dead, dc, l10)
    p.untracked.append(f"cache@{sha256(dead)}")
    p.referrer_of_kept = (sha256(ma2), sha256(sig))

    # A tagged referrer keeps its (untagged) subject.
    ms = push.image("cache", None, msc, [l11])
    sbom = push.image("cache", "sbom", tc, [], subject=ms)
    p.keep("cache", ms, msc, l11, sbom, tc)
    p.kept_untagged["cache"] = [sha256(x) for x in (c1, c2, sig, sig2, ms)]

    # BuildKit's index-form cache: manifests[] are layers and the cache config, not manifests.
    bk = cache_export("cache", "bkidx", random_layers([20_001, 20_002]), "index")
    push.blobs("cache", *bk.blobs().values())
    push.manifest("cache", "bkidx", bk.manifest, OCI_INDEX)
    p.keep("cache", bk.manifest, *bk.blobs().values())

    # Another repository still uses L1: its pool copy stays, only cache's link goes.
    mx = push.image("other", "x", cx, [l1])
    p.keep("other", mx, cx, l1)

    p.tags = {
        "cache": {"a": ma2, "multi": ix, "sbom": sbom, "bkidx": bk.manifest},
        "other": {"x": mx},
    }
    return p


def leave_stale_upload(url: str) -> None:
    client = BuildKit(url)
    post = client.start_upload("cache")
    patch = client.connection.request(
        "PATCH", str(post.header("Location")), {"Content-Type": OCTET_STREAM}, b"x" * 5000
    )
    assert patch.status == 202


def blob_files(directory: Path) -> set[str]:
    """`sha256:<hex>` of every file in a blobs directory (temp files by their own name)."""
    sha_dir = directory / "sha256"
    if not sha_dir.is_dir():
        return set()
    return {p.name if p.name.startswith(".") else f"sha256:{p.name}" for p in sha_dir.iterdir()}


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under the root (the lock file aside): inode, size and content hash."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "lock":
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (info.st_ino, info.st_size, digest)
    return found


@pytest.fixture
def populated(registry: RegistryProcess) -> tuple[RegistryProcess, Populated, int]:
    """A stopped registry root holding the scenario, a stale upload and a crash leftover."""
    expected = populate(registry.url)
    leave_stale_upload(registry.url)
    assert registry.stop() == 0
    leftover = registry.root / "blobs" / "sha256" / f".{'ab' * 32}.0123abcd.tmp"
    leftover.write_bytes(b"t" * 777)
    return registry, expected, 777


def expected_bytes(expected: Populated, leftover: int) -> int:
    """Bytes of blobs no repository keeps, plus the leftover temp file."""
    kept_anywhere = {d for repo in expected.kept.values() for d in repo}
    gone = {
        d: data
        for repo in expected.dropped.values()
        for d, data in repo.items()
        if d not in kept_anywhere
    }
    return sum(len(data) for data in gone.values()) + leftover


def test_dry_run_reports_exactly_and_deletes_nothing(
    populated: tuple[RegistryProcess, Populated, int],
) -> None:
    registry, expected, leftover = populated
    before = snapshot(registry.root)
    dropped = sorted({d[7:] for repo in expected.dropped.values() for d in repo})

    report = collect_garbage(Storage.open(registry.root), dry_run=True)
    assert report.dry_run is True
    assert report.blobs_deleted == dropped
    assert report.bytes_freed == expected_bytes(expected, leftover)
    assert report.manifests_untracked == expected.untracked
    assert report.uploads_deleted == 1
    assert report.missing == []
    assert snapshot(registry.root) == before

    result = run_cli("gc", "--root", str(registry.root), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "dry_run": True,
        "blobs_deleted": len(dropped),
        "bytes_freed": expected_bytes(expected, leftover),
        "manifests_untracked": expected.untracked,
        "uploads_deleted": 1,
        "missing": [],
    }
    assert snapshot(registry.root) == before


def test_gc_deletes_exactly_the_unreachable(
    populated: tuple[RegistryProcess, Populated, int],
) -> None:
    registry, expected, leftover = populated
    root = registry.root
    result = run_cli("gc", "--root", str(root))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is False
    assert report["bytes_freed"] == expected_bytes(expected, leftover)
    assert report["manifests_untracked"] == expected.untracked
    assert report["uploads_deleted"] == 1

    kept_anywhere = {d for repo in expected.kept.values() for d in repo}
    assert blob_files(root / "blobs") == kept_anywhere
    for repo, kept in expected.kept.items():
        assert blob_files(root / repo / "blobs") == set(kept), repo
        for digest, data in kept.items():
            linked = root / repo / "blobs" / "sha256" / digest[7:]
            assert linked.read_bytes() == data
            assert os.path.samefile(linked, root / "blobs" / "sha256" / digest[7:])
    assert list((root / ".cache-action" / "uploads").iterdir()) == []

    index = json.loads((root / "cache" / "index.json").read_bytes())
    tags = {
        e["annotations"][REF_NAME]: e["digest"] for e in index["manifests"] if "annotations" in e
    }
    assert tags == {tag: sha256(body) for tag, body in expected.tags["cache"].items()}
    untagged = [e["digest"] for e in index["manifests"] if "annotations" not in e]
    assert untagged == expected.kept_untagged["cache"]

    # Everything a tag reaches still serves, byte for byte.
    registry.start()
    client = BuildKit(registry.url)
    for repo, kept in expected.kept.items():
        for tag, body in expected.tags[repo].items():
            head = client.resolve(repo, tag)
            assert (head.status, head.header("Docker-Content-Digest")) == (200, sha256(body))
        for digest, data in kept.items():
            got = client.connection.request(
                "GET", f"/v2/{repo}/blobs/{digest}", layer_get_headers(OCI_LAYER_GZIP)
            )
            assert (got.status, got.body == data) == (200, True)
    for repo, dropped in expected.dropped.items():
        for digest in dropped:
            if digest not in expected.kept.get(repo, {}):
                assert client.head_blob(repo, digest, OCI_LAYER_GZIP).status == 404
    subject, referrer = expected.referrer_of_kept
    listed = client.connection.request("GET", f"/v2/cache/referrers/{subject}", {})
    assert [m["digest"] for m in json.loads(listed.body)["manifests"]] == [referrer]
    assert registry.stop() == 0

    # A second run finds nothing left to do.
    again = collect_garbage(Storage.open(root))
    assert (again.blobs_deleted, again.bytes_freed, again.manifests_untracked) == ([], 0, [])
    assert again.uploads_deleted == 0


def test_gc_keeps_buildkit_docker_list_cache(registry: RegistryProcess) -> None:
    """A manifest-list cache lists layers and the cache config; gc must not walk into them."""
    export = cache_export("f5docker", "t", random_layers([30_001, 30_002]), "docker-list")
    BuildKit(registry.url).export(export)
    assert registry.stop() == 0
    report = collect_garbage(Storage.open(registry.root))
    assert (report.blobs_deleted, report.bytes_freed, report.missing) == ([], 0, [])
    assert blob_files(registry.root / "f5docker" / "blobs") == {
        *export.blobs(),
        export.manifest_digest,
    }
    document = json.loads(export.manifest)
    assert document["manifests"][-1]["mediaType"] == CACHE_CONFIG


def test_gc_removes_layout_leftovers_without_calling_them_blobs(
    registry: RegistryProcess,
) -> None:
    """BuildKit's type=local exporter can leave `ingest/` and `index.json.lock` in a layout."""
    Pusher(registry.url).image("cache", "a", config("one"), [blob(5000)])
    assert registry.stop() == 0
    repo = registry.root / "cache"
    (repo / "ingest" / "ref").mkdir(parents=True)
    (repo / "ingest" / "ref" / "data").write_bytes(b"i" * 300)
    (repo / "index.json.lock").write_bytes(b"")

    report = collect_garbage(Storage.open(registry.root))
    assert not (repo / "ingest").exists()
    assert not (repo / "index.json.lock").exists()
    assert report.bytes_freed == 300
    assert report.blobs_deleted == []  # nothing a tag reaches was deleted, and no blob at all


def test_gc_removes_temp_files_a_crash_left_in_a_repository(registry: RegistryProcess) -> None:
    """kill -9 during an atomic write leaves `.<name>.<hex>.tmp` next to index.json."""
    Pusher(registry.url).image("cache", "a", config("one"), [blob(5000)])
    assert registry.stop() == 0
    repo = registry.root / "cache"
    index = (repo / "index.json").read_bytes()
    leftovers = [
        repo / ".index.json.0123456789abcdef0123456789abcdef.tmp",
        repo / ".oci-layout.fedcba9876543210fedcba9876543210.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"{" * 100)

    report = collect_garbage(Storage.open(registry.root))
    assert [p.name for p in leftovers if p.exists()] == []
    assert report.bytes_freed == 200
    assert (repo / "index.json").read_bytes() == index


def test_gc_refuses_while_a_server_holds_the_root(registry: RegistryProcess) -> None:
    push = Pusher(registry.url)
    push.image("cache", "a", config("one"), [blob(5000)])
    push.image("cache", "a", config("two"), [blob(6000)])  # the first image is now garbage
    before = snapshot(registry.root)
    assert registry.process is not None
    pid = registry.process.pid

    for extra in ([], ["--dry-run"]):
        result = run_cli("gc", "--root", str(registry.root), *extra)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.strip() == (
            f"error: {registry.root} is in use by serve (pid {pid}); stop it before running gc"
        )
    with (
        pytest.raises(RootLockedError, match=str(registry.root)),
        root_lock(Layout(registry.root), "gc"),
    ):
        pass
    assert snapshot(registry.root) == before

    # The server is unaffected, and once it stops gc runs.
    assert BuildKit(registry.url).resolve("cache", "a").status == 200
    assert registry.stop() == 0
    result = run_cli("gc", "--root", str(registry.root))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blobs_deleted"] == 3


def test_gc_on_a_missing_root_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("gc", "--root", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --root: '{tmp_path / 'nope'}' is not valid; expected an existing directory"
    )
