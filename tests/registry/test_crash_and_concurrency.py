"""kill -9 mid-write leaves nothing partial visible; parallel pushes of shared blobs store each
blob once; SIGTERM lets the upload in flight finish and persists the record and counters."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cache_action.storage.gc import collect_garbage
from cache_action.storage.root import Storage
from tests.buildkit_client import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuildKit,
    Connection,
    Exchange,
    image_manifest,
    layer_get_headers,
    sha256,
)
from tests.components import RegistryProcess

MiB = 1 << 20


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def deterministic_chunk(seed: int, index: int) -> bytes:
    return random.Random(seed * 1_000_003 + index).randbytes(MiB)


def chunks(seed: int, count: int, delay: float = 0.0) -> Iterator[bytes]:
    for index in range(count):
        yield deterministic_chunk(seed, index)
        if delay:
            time.sleep(delay)


def digest_of_chunks(seed: int, count: int) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks(seed, count):
        hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


def pull_digest(url: str, repo: str, digest: str) -> tuple[int, str, int]:
    """GET a blob, hashing as it streams: (status, digest of the body, length)."""
    connection = Connection(url)
    response, _, _ = connection.begin(
        "GET", f"/v2/{repo}/blobs/{digest}", layer_get_headers(OCI_LAYER_GZIP)
    )
    hasher, length = hashlib.sha256(), 0
    while block := response.read(4 * MiB):
        hasher.update(block)
        length += len(block)
    connection.close()
    return response.status, f"sha256:{hasher.hexdigest()}", length


def uploads_dir(registry: RegistryProcess) -> Path:
    return registry.root / ".cache-action" / "uploads"


def files_named(root: Path, hex_digest: str) -> list[Path]:
    return [p for p in root.rglob("*") if hex_digest in p.name]


class Background(threading.Thread):
    """Run `work` in a thread; keep its result or the exception it raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as error:
            self.error = error


# --- crash safety ---


def test_kill_during_large_upload_leaves_nothing_visible(registry: RegistryProcess) -> None:
    count = 300  # MiB
    digest = digest_of_chunks(seed=1, count=count)
    buildkit = BuildKit(registry.url)
    assert buildkit.head_blob("cache", digest, OCI_LAYER_GZIP).status == 404
    post = buildkit.start_upload("cache")
    assert post.status == 202
    upload_file = (
        registry.root / ".cache-action" / "uploads" / str(post.header("Docker-Upload-UUID"))
    )
    location = str(post.header("Location"))
    upload = Background(
        lambda: buildkit.put_upload(
            location, digest, chunks(seed=1, count=count, delay=0.02), size=count * MiB
        )
    )
    upload.start()
    wait_for(lambda: file_size(upload_file) >= 32 * MiB, 60, "32 MiB to reach the server")
    registry.kill()
    upload.join(60)
    assert not upload.is_alive()
    assert upload.result is None and upload.error is not None  # no response ever came
    assert 32 * MiB <= file_size(upload_file) < count * MiB  # really killed mid-upload

    registry.start()
    hex_digest = digest[7:]
    assert list((registry.root / ".cache-action" / "uploads").iterdir()) == []
    assert files_named(registry.root, hex_digest) == []
    again = BuildKit(registry.url)
    head = again.head_blob("cache", digest, OCI_LAYER_GZIP)
    assert (head.status, head.header("Docker-Content-Digest")) == (404, None)

    # The whole push again, at full speed this time.
    assert again.head_blob("cache", digest, OCI_LAYER_GZIP).status == 404
    post = again.start_upload("cache")
    put = again.put_upload(
        str(post.header("Location")), digest, chunks(seed=1, count=count), size=count * MiB
    )
    assert (put.status, put.header("Docker-Content-Digest")) == (201, digest)
    head = again.head_blob("cache", digest, OCI_LAYER_GZIP)
    assert (head.status, head.header("Content-Length")) == (200, str(count * MiB))
    assert pull_digest(registry.url, "cache", digest) == (200, digest, count * MiB)
    pool = registry.root / "blobs" / "sha256" / hex_digest
    assert os.path.samefile(pool, registry.root / "cache" / "blobs" / "sha256" / hex_digest)
    assert sorted(p.relative_to(registry.root) for p in files_named(registry.root, hex_digest)) == [
        Path("blobs/sha256") / hex_digest,
        Path("cache/blobs/sha256") / hex_digest,
    ]


def test_kill_during_manifest_burst_keeps_every_tag_valid(registry: RegistryProcess) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layers = [os.urandom(64 * 1024), os.urandom(32 * 1024)]
    setup = BuildKit(registry.url)
    for blob, media_type in [(config, OCI_CONFIG), *((la, OCI_LAYER_GZIP) for la in layers)]:
        assert setup.push_blob("burst", blob, media_type)[-1].status == 201

    lock = threading.Lock()
    acked: dict[str, str] = {}
    in_flight: dict[str, str] = {}
    stop = threading.Event()

    def writer(worker: int) -> int:
        client = BuildKit(registry.url)
        written = 0
        for n in range(100_000):
            if stop.is_set():
                break
            tag = f"w{worker}-t{n % 8}"
            body = image_manifest(config, layers, annotations={"n": f"{worker}-{n}"})
            with lock:
                in_flight[tag] = sha256(body)
            put = client.put_manifest("burst", tag, body, OCI_MANIFEST)
            assert put.status == 201, put.body
            with lock:
                acked[tag] = sha256(body)
            written += 1
        return written

    writers = [Background(functools.partial(writer, w)) for w in range(4)]
    for thread in writers:
        thread.start()
    wait_for(lambda: len(acked) == 32, 60, "every tag to be written once")
    time.sleep(0.3)  # let the burst run at full speed for a while
    registry.kill()
    stop.set()
    for thread in writers:
        thread.join(30)
        assert not thread.is_alive()

    registry.start()
    index = json.loads((registry.root / "burst" / "index.json").read_bytes())
    tagged = {
        entry["annotations"]["org.opencontainers.image.ref.name"]: entry
        for entry in index["manifests"]
        if "annotations" in entry
    }
    assert len(tagged) == sum("annotations" in entry for entry in index["manifests"])
    assert set(tagged) == set(acked)  # every acknowledged tag survived
    client = BuildKit(registry.url)
    for tag, entry in tagged.items():
        # The last acknowledged manifest, or the one in flight when the server died.
        assert entry["digest"] in (acked[tag], in_flight[tag]), tag
        hex_digest = entry["digest"][7:]
        body = (registry.root / "burst" / "blobs" / "sha256" / hex_digest).read_bytes()
        assert sha256(body) == entry["digest"]
        assert (registry.root / "blobs" / "sha256" / hex_digest).read_bytes() == body
        assert entry["size"] == len(body)
        assert entry["mediaType"] == OCI_MANIFEST
        head = client.resolve("burst", tag)
        assert head.status == 200
        assert head.header("Docker-Content-Digest") == entry["digest"]
        assert head.header("Content-Length") == str(len(body))

    # gc sweeps whatever the kill left half-written, and every tag still resolves afterwards.
    assert registry.stop() == 0
    report = collect_garbage(Storage.open(registry.root))
    assert report.missing == []
    for blob_dir in (
        registry.root / "blobs" / "sha256",
        registry.root / "burst" / "blobs" / "sha256",
    ):
        assert [p.name for p in blob_dir.iterdir() if p.name.startswith(".")] == []
    registry.start()
    client = BuildKit(registry.url)
    for tag, entry in tagged.items():
        head = client.resolve("burst", tag)
        assert (head.status, head.header("Docker-Content-Digest")) == (200, entry["digest"])


# --- concurrency ---


def test_parallel_pushes_of_shared_layers_store_each_blob_once(
    registry: RegistryProcess,
) -> None:
    workers = 6
    repos = ["alpha", "beta", "gamma"]  # two workers per repository
    shared = [os.urandom(size) for size in (6 * MiB, 2 * MiB, 1 * MiB, 512 * 1024)]
    unique = [os.urandom(MiB + w) for w in range(workers)]
    configs = [json.dumps({"worker": w, "os": "linux"}).encode() for w in range(workers)]
    barrier = threading.Barrier(workers, timeout=60)

    def push(worker: int) -> list[Exchange]:
        client = BuildKit(registry.url)
        repo = repos[worker % len(repos)]
        exchanges: list[Exchange] = []
        blobs = [*shared, unique[worker], configs[worker]]
        for blob in blobs:
            barrier.wait()  # every worker HEADs, then every worker uploads the same blob at once
            head = client.head_blob(repo, sha256(blob), OCI_LAYER_GZIP)
            post = client.start_upload(repo)
            barrier.wait()
            put = client.put_upload(str(post.header("Location")), sha256(blob), blob)
            exchanges += [head, post, put]
        body = image_manifest(configs[worker], [*shared, unique[worker]])
        exchanges.append(client.put_manifest(repo, f"t{worker}", body, OCI_MANIFEST))
        return exchanges

    threads = [Background(functools.partial(push, w)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert thread.error is None, repr(thread.error)
    for thread in threads:
        statuses = [ex.status for ex in thread.result]
        assert statuses == [404, 202, 201] * 6 + [201]
        for ex in thread.result:
            if ex.status == 201:
                assert ex.header("Docker-Content-Digest") is not None

    root = registry.root
    for blob in shared:
        hex_digest = sha256(blob)[7:]
        pool = (root / "blobs" / "sha256" / hex_digest).stat()
        links = [(root / repo / "blobs" / "sha256" / hex_digest).stat() for repo in repos]
        assert [(s.st_dev, s.st_ino) for s in links] == [(pool.st_dev, pool.st_ino)] * 3, (
            f"{sha256(blob)} is stored more than once"
        )
        assert pool.st_nlink == 1 + len(repos)
    for blob in [*unique, *configs]:
        assert (root / "blobs" / "sha256" / sha256(blob)[7:]).stat().st_nlink == 2
    assert [p.name for p in (root / "blobs" / "sha256").iterdir() if p.name.startswith(".")] == []
    assert list((root / ".cache-action" / "uploads").iterdir()) == []

    for worker in range(workers):
        repo = repos[worker % len(repos)]
        client = BuildKit(registry.url)
        body = image_manifest(configs[worker], [*shared, unique[worker]])
        resolved = client.resolve(repo, f"t{worker}")
        assert resolved.header("Docker-Content-Digest") == sha256(body)
        assert client.fetch_manifest(repo, sha256(body), OCI_MANIFEST).body == body
        for blob in [*shared, unique[worker], configs[worker]]:
            got = client.connection.request(
                "GET", f"/v2/{repo}/blobs/{sha256(blob)}", layer_get_headers(OCI_LAYER_GZIP)
            )
            assert (got.status, got.body == blob) == (200, True)


def test_same_blob_finished_at_once_in_many_repositories(registry: RegistryProcess) -> None:
    """Many uploads of one digest completing together: all 201, one inode, linked everywhere.

    Small blobs make the commits land within microseconds of each other, round after round.
    """
    workers, rounds = 8, 150
    repos = [f"repo{w}" for w in range(workers)]
    blobs = [os.urandom(200 + r) for r in range(rounds)]
    barrier = threading.Barrier(workers, timeout=60)

    def push(worker: int) -> list[tuple[int, bytes]]:
        client = BuildKit(registry.url)
        results: list[tuple[int, bytes]] = []
        try:
            for blob in blobs:
                barrier.wait()
                post = client.start_upload(repos[worker])
                barrier.wait()
                put = client.put_upload(str(post.header("Location")), sha256(blob), blob)
                results.append((put.status, put.body))
        except BaseException:
            barrier.abort()
            raise
        return results

    threads = [Background(functools.partial(push, w)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert thread.error is None, repr(thread.error)
    failed = [result for thread in threads for result in thread.result if result[0] != 201]
    assert failed == []

    root = registry.root
    split: list[str] = []
    for blob in blobs:
        hex_digest = sha256(blob)[7:]
        pool = (root / "blobs" / "sha256" / hex_digest).stat()
        inodes = {(root / repo / "blobs" / "sha256" / hex_digest).stat().st_ino for repo in repos}
        if inodes != {pool.st_ino} or pool.st_nlink != 1 + workers:
            split.append(f"{hex_digest[:12]}: pool nlink {pool.st_nlink}, {len(inodes)} inodes")
    assert split == []


def test_parallel_pulls_while_pushing_another_tag(registry: RegistryProcess) -> None:
    """Readers never see a blob half-written while a writer uploads into the same repository."""
    base = os.urandom(4 * MiB)
    config = b'{"os":"linux"}'
    client = BuildKit(registry.url)
    for blob in (base, config):
        client.push_blob("cache", blob, OCI_LAYER_GZIP)
    client.put_manifest("cache", "old", image_manifest(config, [base]), OCI_MANIFEST)
    newer = os.urandom(8 * MiB)
    errors: list[str] = []

    def pull_forever(stop: threading.Event) -> int:
        reader = BuildKit(registry.url)
        pulls = 0
        while not stop.is_set():
            got = reader.connection.request(
                "GET", f"/v2/cache/blobs/{sha256(base)}", layer_get_headers(OCI_LAYER_GZIP)
            )
            if got.status != 200 or got.body != base:
                errors.append(f"{got.status} {len(got.body)}")
            head = reader.head_blob("cache", sha256(newer), OCI_LAYER_GZIP)
            if head.status == 200 and head.header("Content-Length") != str(len(newer)):
                errors.append(f"partial {head.header('Content-Length')}")
            pulls += 1
        return pulls

    stop = threading.Event()
    readers = [Background(lambda: pull_forever(stop)) for _ in range(3)]
    for reader in readers:
        reader.start()
    exchanges = client.push_blob("cache", newer, OCI_LAYER_GZIP)
    put = client.put_manifest("cache", "new", image_manifest(config, [base, newer]), OCI_MANIFEST)
    time.sleep(0.2)
    stop.set()
    for reader in readers:
        reader.join(30)
        assert reader.error is None, repr(reader.error)
        assert reader.result > 0
    assert [ex.status for ex in exchanges] == [404, 202, 201]
    assert put.status == 201
    assert errors == []


# --- graceful shutdown ---


def test_sigterm_lets_a_download_in_flight_finish(registry: RegistryProcess) -> None:
    layer = os.urandom(40 * MiB)
    assert BuildKit(registry.url).push_blob("cache", layer, OCI_LAYER_GZIP)[-1].status == 201
    connection = Connection(registry.url)
    response, _, _ = connection.begin(
        "GET", f"/v2/cache/blobs/{sha256(layer)}", layer_get_headers(OCI_LAYER_GZIP)
    )
    assert response.status == 200
    received = response.read(MiB)
    assert registry.process is not None
    registry.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    while block := response.read(MiB):
        received += block
        time.sleep(0.005)
    assert received == layer
    assert registry.process.wait(30) == 0  # one SIGTERM is enough
    assert json.loads((registry.root / ".cache-action" / "stats.json").read_bytes())[
        "bytes_out"
    ] == len(layer)


def test_sigterm_lets_the_upload_in_flight_finish(registry: RegistryProcess) -> None:
    count = 16  # MiB, sent over ~3 s
    digest = digest_of_chunks(seed=7, count=count)
    buildkit = BuildKit(registry.url)
    assert buildkit.head_blob("cache", digest, OCI_LAYER_GZIP).status == 404
    post = buildkit.start_upload("cache")
    upload_file = (
        registry.root / ".cache-action" / "uploads" / str(post.header("Docker-Upload-UUID"))
    )
    upload = Background(
        lambda: buildkit.put_upload(
            str(post.header("Location")),
            digest,
            chunks(seed=7, count=count, delay=0.2),
            size=count * MiB,
        )
    )
    upload.start()
    wait_for(lambda: file_size(upload_file) >= 2 * MiB, 30, "the upload to be under way")
    assert registry.process is not None
    registry.process.send_signal(signal.SIGTERM)
    upload.join(60)
    assert upload.error is None, repr(upload.error)
    put: Exchange = upload.result
    assert (put.status, put.header("Docker-Content-Digest")) == (201, digest)
    assert registry.process.wait(30) == 0  # one SIGTERM is enough
    assert "stopping: waiting for 1 request(s) in flight" in registry.log()

    access = json.loads((registry.root / ".cache-action" / "access.json").read_bytes())
    assert set(access["blobs"]) == {digest}
    assert access["tags"] == {} and access["manifests"] == {}
    stats = json.loads((registry.root / ".cache-action" / "stats.json").read_bytes())
    assert {k: stats[k] for k in ("requests", "blob_misses", "blobs_pushed", "bytes_in")} == {
        "requests": 3,
        "blob_misses": 1,
        "blobs_pushed": 1,
        "bytes_in": count * MiB,
    }
    assert stats["stopped_at"] >= stats["started_at"]

    registry.start()
    head = BuildKit(registry.url).head_blob("cache", digest, OCI_LAYER_GZIP)
    assert (head.status, head.header("Content-Length")) == (200, str(count * MiB))
    assert pull_digest(registry.url, "cache", digest) == (200, digest, count * MiB)
