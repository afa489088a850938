"""The content-addressed stores, each test against the local backend and real S3 (SeaweedFS).

Roots are real: images pushed with skopeo through our registry process. Transfers are counted
independently of what the store reports, by wrapping its object backend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cache_action.scopes import EntryName
from cache_action.storage.digests import Digest
from cache_action.storage.root import Storage
from cache_action.storage.snapshot import take_snapshot
from cache_action.stores.base import HitKind, StoreError
from cache_action.stores.content import ContentAddressedStore
from cache_action.stores.s3 import PART_BYTES
from tests.roots import (
    BuiltImage,
    add_image,
    add_layer,
    blob_digests,
    copy_root,
    corrupt_blob_files,
    push_blob_into_root,
    push_into_root,
    tags,
    tree,
)
from tests.seaweed import S3Server
from tests.stores_helpers import open_url

NS = "buildkit"
MAIN = "refs/heads/main"
APP = "cache/app"
TOOLS = "cache/tools"


def entry(scope: str = "app", ref: str = MAIN, namespace: str = NS) -> EntryName:
    return EntryName(namespace, scope, ref)


# --- counting and failing a backend ---------------------------------------------------------


class Recorder:
    """Wraps an ObjectBackend: records blob transfers, can fail uploads after N successes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = inner.description
        self.puts: list[tuple[str, int]] = []
        self.gets: list[str] = []
        self.fail_puts_after: int | None = None  # uploads started before the failures begin
        self._started = 0
        self._lock = threading.Lock()

    def put_blob(self, digest: Digest, source: Path) -> None:
        with self._lock:
            self._started += 1
            if self.fail_puts_after is not None and self._started > self.fail_puts_after:
                raise StoreError(f"injected upload failure of {digest}")
        size = source.stat().st_size
        self.inner.put_blob(digest, source)
        with self._lock:
            self.puts.append((str(digest), size))

    def get_blob(self, digest: Digest, target: Path) -> None:
        self.inner.get_blob(digest, target)
        with self._lock:
            self.gets.append(str(digest))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Backend:
    """One store location, and raw access to its objects (as an operator or attacker has)."""

    kind: str
    url: str
    env: Mapping[str, str]
    root: Path | None = None  # local: the store directory
    s3: S3Server | None = None
    prefix: str = ""
    recorders: list[Recorder] = field(default_factory=list)

    def open(self) -> ContentAddressedStore:
        """A new store object, as a new job would open it; transfers are recorded."""
        store = open_url(self.url, self.env)
        assert isinstance(store, ContentAddressedStore)
        recorder = Recorder(store.backend)
        store.backend = recorder
        self.recorders.append(recorder)
        return store

    def blob_keys(self) -> set[str]:
        """Digests of the blobs the store holds."""
        if self.s3 is not None:
            keys = self.s3.keys(f"{self.prefix}/blobs/")
            return {k.split("/blobs/", 1)[1].replace("/", ":", 1) for k in keys}
        assert self.root is not None
        blobs = self.root / "blobs"
        return {
            f"{p.parent.name}:{p.name}"
            for p in blobs.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    def entry_keys(self) -> set[str]:
        if self.s3 is not None:
            return {
                k.removeprefix(f"{self.prefix}/")
                for k in self.s3.keys(f"{self.prefix}/entries/")
                if k.endswith(".json")
            }
        assert self.root is not None
        entries = self.root / "entries"
        return {
            p.relative_to(self.root).as_posix()
            for p in entries.rglob("*.json")
            if not p.name.startswith(".")
        }

    def read_blob(self, digest: str) -> bytes:
        algorithm, hex_digest = digest.split(":")
        if self.s3 is not None:
            key = f"{self.prefix}/blobs/{algorithm}/{hex_digest}"
            body: bytes = self.s3.client().get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
            return body
        assert self.root is not None
        return (self.root / "blobs" / algorithm / hex_digest).read_bytes()

    def overwrite_blob(self, digest: str, data: bytes) -> None:
        """Replace a stored blob's bytes in place (bit rot, a bad actor, a broken proxy)."""
        algorithm, hex_digest = digest.split(":")
        if self.s3 is not None:
            key = f"{self.prefix}/blobs/{algorithm}/{hex_digest}"
            self.s3.client().put_object(Bucket=self.s3.bucket, Key=key, Body=data)
            return
        assert self.root is not None
        with open(self.root / "blobs" / algorithm / hex_digest, "r+b") as f:
            f.truncate(0)
            f.write(data)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        directory = tmp_path / "store"
        yield Backend("local", f"local://{directory}", {}, root=directory)
        return
    s3: S3Server = request.getfixturevalue("seaweed")
    prefix = s3.new_prefix("stores")
    yield Backend("s3", s3.url(prefix), s3.env(), s3=s3, prefix=prefix)


# --- real roots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Golden:
    """A root holding cache/app:v1, cache/app:v2 (shares two of v1's layers) and cache/tools."""

    root: Path
    layouts: Path
    v1: BuiltImage
    v2: BuiltImage
    tools: BuiltImage


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, skopeo: str) -> Golden:
    base = tmp_path_factory.mktemp("golden")
    layouts = base / "layouts"
    shared = [add_layer(layouts / "app", 300_000, "l1"), add_layer(layouts / "app", 200_000, "l2")]
    v1 = add_image(layouts / "app", [*shared, add_layer(layouts / "app", 100_000, "l3")], "v1")
    v2 = add_image(layouts / "app", [*shared, add_layer(layouts / "app", 120_000, "l4")], "v2")
    tool_layers = [add_layer(layouts / "tools", n, f"t{n}") for n in (150_000, 50_000)]
    tools = add_image(layouts / "tools", tool_layers, "latest")
    root = base / "root"
    push_into_root(root, base / "push", skopeo, [(v1, APP), (v2, APP), (tools, TOOLS)])
    assert tags(root, APP) == {"v1": v1.manifest_digest, "v2": v2.manifest_digest}
    return Golden(root, layouts, v1, v2, tools)


@pytest.fixture
def job_root(tmp_path: Path, golden: Golden) -> Path:
    """A job's root after its build: a copy of the golden root."""
    return copy_root(golden.root, tmp_path / "job")


def add_blob(root: Path, repository: str, data: bytes) -> str:
    """Write one more blob into a repository with the storage API (a pushed cache layer)."""
    digest = Digest.of(data)
    Storage.open(root).blobs.put_bytes(repository, digest, data)
    return str(digest)


def root_blob_sizes(root: Path) -> dict[str, int]:
    return take_snapshot(Storage.open(root)).blobs


def assert_sound(root: Path) -> None:
    """Every blob file hashes to its name; no temp file is left behind."""
    assert corrupt_blob_files(root) == []


# --- round trip, skip, incremental transfers ------------------------------------------------


def test_round_trip_of_a_real_root_is_byte_identical(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    blobs = root_blob_sizes(job_root)
    saved = backend.open().save(Storage.open(job_root), entry())
    assert saved.saved
    assert saved.skipped_reason is None
    assert saved.blobs_uploaded == len(blobs)
    assert saved.bytes_uploaded == sum(blobs.values())
    assert sorted(backend.recorders[0].puts) == sorted(blobs.items())
    assert backend.blob_keys() == set(blobs)
    assert backend.entry_keys() == {saved.key}

    target = tmp_path / "restored"
    result = backend.open().restore(Storage.open(target), [[entry()]])
    assert result.hit == HitKind.EXACT
    assert result.restored_key == saved.key
    assert result.tags_dropped == []
    assert result.blobs_downloaded == len(blobs)
    assert result.bytes_downloaded == sum(blobs.values())
    assert sorted(backend.recorders[1].gets) == sorted(blobs)
    restored, original = tree(target), tree(job_root)
    assert sorted(restored) == sorted(original)
    for path, data in original.items():
        assert restored[path] == data, path
    assert_sound(target)


def test_second_save_without_change_is_skipped(backend: Backend, job_root: Path) -> None:
    first = backend.open().save(Storage.open(job_root), entry())
    assert first.saved
    second_store = backend.open()
    second = second_store.save(Storage.open(job_root), entry())
    assert not second.saved
    assert second.skipped_reason is not None
    assert backend.recorders[1].puts == []
    assert backend.entry_keys() == {first.key}


def test_save_right_after_restore_without_change_is_skipped(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    first = backend.open().save(Storage.open(job_root), entry())
    target = tmp_path / "next-job"
    store = backend.open()
    assert store.restore(Storage.open(target), [[entry()]]).hit == HitKind.EXACT
    result = store.save(Storage.open(target), entry())
    assert not result.saved
    assert result.skipped_reason == "nothing changed since the restore"
    assert backend.entry_keys() == {first.key}


def test_save_after_restore_that_found_nothing_is_not_skipped(
    backend: Backend, job_root: Path
) -> None:
    """A root that was already there (a self-hosted runner) but that the store lacks."""
    store = backend.open()
    assert store.restore(Storage.open(job_root), [[entry()]]).hit == HitKind.NONE
    result = store.save(Storage.open(job_root), entry())
    assert result.saved, result.skipped_reason
    assert backend.blob_keys() == set(root_blob_sizes(job_root))


def test_unchanged_root_saved_to_another_scope_is_not_skipped(
    backend: Backend, job_root: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry("amd64")).saved
    result = backend.open().save(Storage.open(job_root), entry("arm64"))
    assert result.saved, result.skipped_reason
    assert result.blobs_uploaded == 0  # the blobs are shared by every scope
    assert len(backend.entry_keys()) == 2


def test_save_after_one_new_layer_uploads_exactly_that_blob(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    before = backend.blob_keys()
    layer = os.urandom(256 * 1024)
    digest = push_blob_into_root(job_root, tmp_path / "push", APP, layer)

    result = backend.open().save(Storage.open(job_root), entry())
    assert result.saved
    assert (result.blobs_uploaded, result.bytes_uploaded) == (1, len(layer))
    assert backend.recorders[1].puts == [(digest, len(layer))]
    assert backend.blob_keys() - before == {digest}
    assert backend.read_blob(digest) == layer


def test_save_after_a_new_image_revision_uploads_only_its_new_blobs(
    backend: Backend, job_root: Path, golden: Golden, tmp_path: Path, skopeo: str
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    before = backend.blob_keys()
    layouts = tmp_path / "layouts"
    new_layer = add_layer(layouts, 180_000, "l5")
    v3 = add_image(layouts, [*golden.v2.layers[:2], new_layer], "v3")
    push_into_root(job_root, tmp_path / "push", skopeo, [(v3, APP)])

    result = backend.open().save(Storage.open(job_root), entry())
    new = {v3.manifest_digest, v3.config_digest, new_layer.digest}
    sizes = root_blob_sizes(job_root)
    assert {d for d, _ in backend.recorders[1].puts} == new
    assert result.blobs_uploaded == 3
    assert result.bytes_uploaded == sum(sizes[d] for d in new)
    assert backend.blob_keys() - before == new


def test_restore_into_a_root_with_some_blobs_downloads_only_the_rest(
    backend: Backend, job_root: Path, golden: Golden, tmp_path: Path, skopeo: str
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    target = tmp_path / "warm"
    push_into_root(target, tmp_path / "push", skopeo, [(golden.v1, APP)])
    present = blob_digests(target)
    assert golden.v1.blobs <= present

    result = backend.open().restore(Storage.open(target), [[entry()]])
    expected = set(root_blob_sizes(job_root)) - present
    assert expected  # v2's own layer, config and manifest, and all of cache/tools
    assert set(backend.recorders[1].gets) == expected
    assert len(backend.recorders[1].gets) == len(expected)
    assert result.blobs_downloaded == len(expected)
    assert result.bytes_downloaded == sum(root_blob_sizes(job_root)[d] for d in expected)
    assert tags(target, APP) == tags(job_root, APP)
    assert tags(target, TOOLS) == tags(job_root, TOOLS)
    assert result.tags_dropped == []
    assert_sound(target)


def test_restore_twice_downloads_nothing_the_second_time(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    target = tmp_path / "restored"
    assert backend.open().restore(Storage.open(target), [[entry()]]).blobs_downloaded > 0
    again = backend.open().restore(Storage.open(target), [[entry()]])
    assert again.hit == HitKind.EXACT
    assert (again.blobs_downloaded, again.bytes_downloaded) == (0, 0)
    assert backend.recorders[2].gets == []


# --- corrupt data -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_corrupt_blob_drops_only_the_tags_that_need_it(
    backend: Backend,
    job_root: Path,
    golden: Golden,
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    victim = golden.v2.layers[2].digest  # only app:v2 uses it
    data = backend.read_blob(victim)
    flipped = bytes([data[0] ^ 0xFF]) + data[1:]  # same size: only the digest check sees it
    bad = flipped if damage == "flipped" else data[: len(data) // 2]
    backend.overwrite_blob(victim, bad)

    target = tmp_path / "restored"
    with caplog.at_level(logging.WARNING):
        result = backend.open().restore(Storage.open(target), [[entry()]])
    assert result.tags_dropped == [f"{APP}:v2"]
    assert tags(target, APP) == {"v1": golden.v1.manifest_digest}
    assert tags(target, TOOLS) == {"latest": golden.tools.manifest_digest}
    assert victim not in blob_digests(target)
    assert_sound(target)
    assert victim in caplog.text


def test_corrupt_shared_layer_drops_every_tag_using_it(
    backend: Backend, job_root: Path, golden: Golden, tmp_path: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    shared = golden.v1.layers[0].digest
    assert shared == golden.v2.layers[0].digest
    backend.overwrite_blob(shared, os.urandom(len(backend.read_blob(shared))))

    target = tmp_path / "restored"
    result = backend.open().restore(Storage.open(target), [[entry()]])
    assert sorted(result.tags_dropped) == [f"{APP}:v1", f"{APP}:v2"]
    assert tags(target, APP) == {}
    assert tags(target, TOOLS) == {"latest": golden.tools.manifest_digest}
    assert shared not in blob_digests(target)
    assert_sound(target)


def stored_blobs(store: ContentAddressedStore) -> list[str]:
    objects = store.backend.list_objects("blobs/")
    return [o.key.removeprefix("blobs/").replace("/", ":", 1) for o in objects]


def test_a_corrupt_blob_is_repaired_by_the_next_save(
    backend: Backend, job_root: Path, golden: Golden, tmp_path: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    victim = golden.v2.layers[2].digest
    garbage = os.urandom(len(backend.read_blob(victim)))
    if backend.root is None:
        backend.overwrite_blob(victim, garbage)
    else:  # a new file: the root that saved it shares the old inode (blobs are never edited)
        stored = backend.root / "blobs" / victim.replace(":", "/")
        stored.unlink()
        stored.write_bytes(garbage)
    backend.open().restore(Storage.open(tmp_path / "first"), [[entry()]])
    assert victim not in stored_blobs(backend.open())  # the bad copy is gone

    add_blob(job_root, APP, b"a change, so the save is not skipped")
    resaved = backend.open().save(Storage.open(job_root), entry())
    assert resaved.saved and resaved.blobs_uploaded == 2  # the new blob and the repaired one
    result = backend.open().restore(Storage.open(tmp_path / "second"), [[entry()]])
    assert result.tags_dropped == []
    assert tags(tmp_path / "second", APP)["v2"] == golden.v2.manifest_digest


def test_store_garbage_collection_spares_young_and_referenced_blobs(
    backend: Backend, job_root: Path, golden: Golden
) -> None:
    store = backend.open()
    assert store.save(Storage.open(job_root), entry()).saved
    saved = set(stored_blobs(store))
    orphan = Digest.of(b"uploaded by a save that has not written its entry yet")
    with tempfile.NamedTemporaryFile() as source:
        source.write(b"uploaded by a save that has not written its entry yet")
        source.flush()
        store.backend.put_blob(orphan, Path(source.name))
    assert store.collect_garbage() == 0  # young: a concurrent save may still name it
    assert str(orphan) in stored_blobs(store)
    assert store.collect_garbage(grace_seconds=-1) == 1  # old and unnamed: gone
    assert set(stored_blobs(store)) == saved  # everything an entry names stays


def test_corrupt_entry_manifest_falls_back_to_the_previous_entry(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    store = backend.open()
    first = store.save(Storage.open(job_root), entry())
    add_blob(job_root, APP, b"second save")
    second = backend.open().save(Storage.open(job_root), entry())
    assert second.saved
    if backend.s3 is not None:
        key = f"{backend.prefix}/{second.key}"
        backend.s3.client().put_object(Bucket=backend.s3.bucket, Key=key, Body=b"{not json")
    else:
        assert backend.root is not None
        (backend.root / second.key).write_bytes(b"{not json")
    result = backend.open().restore(Storage.open(tmp_path / "restored"), [[entry()]])
    assert result.restored_key == first.key
    assert result.hit == HitKind.EXACT


# --- scopes, refs and fallbacks -------------------------------------------------------------


def image_root(
    tmp_path: Path, skopeo: str, label: str, images: Sequence[tuple[str, int]]
) -> tuple[Path, dict[str, BuiltImage]]:
    """A root with cache/app:<tag> images of one fresh layer each: (tag, layer size)."""
    layouts = tmp_path / f"layouts-{label}"
    built = {
        tag: add_image(layouts, [add_layer(layouts, size, f"{label}-{tag}")], tag)
        for tag, size in images
    }
    root = tmp_path / f"root-{label}"
    push_into_root(root, tmp_path / f"push-{label}", skopeo, [(i, APP) for i in built.values()])
    return root, built


def test_matrix_restore_unions_blobs_and_the_newest_entry_wins_a_tag(
    backend: Backend, tmp_path: Path, skopeo: str
) -> None:
    root_a, a = image_root(tmp_path, skopeo, "a", [("latest", 40_000), ("only-a", 30_000)])
    root_b, b = image_root(tmp_path, skopeo, "b", [("latest", 50_000), ("only-b", 20_000)])
    assert backend.open().save(Storage.open(root_a), entry("amd64")).saved
    time.sleep(0.01)
    assert backend.open().save(Storage.open(root_b), entry("arm64")).saved
    union = set(root_blob_sizes(root_a)) | set(root_blob_sizes(root_b))

    for order in (["amd64", "arm64"], ["arm64", "amd64"]):
        target = tmp_path / f"merged-{order[0]}"
        result = backend.open().restore(Storage.open(target), [[entry(s)] for s in order])
        assert result.hit == HitKind.EXACT
        assert result.tags_dropped == []
        assert tags(target, APP) == {
            "latest": b["latest"].manifest_digest,  # arm64 saved last
            "only-a": a["only-a"].manifest_digest,
            "only-b": b["only-b"].manifest_digest,
        }
        assert union <= blob_digests(target)
        assert union <= blob_digests(target / APP)
        assert_sound(target)

    time.sleep(0.01)
    add_blob(root_a, APP, b"amd64 rebuilt")
    assert backend.open().save(Storage.open(root_a), entry("amd64")).saved
    target = tmp_path / "merged-again"
    backend.open().restore(Storage.open(target), [[entry("arm64")], [entry("amd64")]])
    assert tags(target, APP)["latest"] == a["latest"].manifest_digest


def test_matrix_restore_with_a_missing_scope_is_partial(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    assert backend.open().save(Storage.open(job_root), entry("amd64")).saved
    result = backend.open().restore(
        Storage.open(tmp_path / "r"), [[entry("amd64")], [entry("never-saved")]]
    )
    assert result.hit == HitKind.PARTIAL
    assert len(result.restored) == 1


def test_branch_fallback_exact_partial_and_none(
    backend: Backend, job_root: Path, tmp_path: Path
) -> None:
    feat, main = entry(ref="refs/heads/feat"), entry(ref=MAIN)
    store = backend.open()
    assert store.restore(Storage.open(tmp_path / "cold"), [[feat, main]]).hit == HitKind.NONE
    on_main = store.save(Storage.open(job_root), main)

    first = tmp_path / "first-run"
    result = backend.open().restore(Storage.open(first), [[feat, main]])
    assert result.hit == HitKind.PARTIAL
    assert result.restored_key == on_main.key
    assert tags(first, APP) == tags(job_root, APP)

    add_blob(first, APP, b"built on feat")
    on_feat = backend.open().save(Storage.open(first), feat)
    assert on_feat.saved
    assert on_feat.key.split("/")[3] == "refs%2Fheads%2Ffeat"

    result = backend.open().restore(Storage.open(tmp_path / "second-run"), [[feat, main]])
    assert result.hit == HitKind.EXACT
    assert result.restored_key == on_feat.key


@pytest.mark.parametrize(
    ("saved_ref", "wanted_ref"),
    [
        ("refs/heads/main-old", MAIN),
        ("refs/heads/feat/x", "refs/heads/feat"),
        ("refs/heads/feat", "refs/heads/feat/x"),
        ("refs/pull/12/merge", "refs/pull/1/merge"),
    ],
)
def test_a_ref_never_restores_another_ref_sharing_its_prefix(
    backend: Backend, job_root: Path, tmp_path: Path, saved_ref: str, wanted_ref: str
) -> None:
    assert backend.open().save(Storage.open(job_root), entry(ref=saved_ref)).saved
    target = tmp_path / "r"
    result = backend.open().restore(Storage.open(target), [[entry(ref=wanted_ref)]])
    assert result.hit == HitKind.NONE
    assert blob_digests(target) == set()


# --- concurrency ----------------------------------------------------------------------------


def run_together(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Start every job at the same instant; re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(30)
            results[index] = jobs[index]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]
    return results


def test_concurrent_saves_lose_nothing(backend: Backend, golden: Golden, tmp_path: Path) -> None:
    plan = [("amd64", 0), ("arm64", 1), ("riscv", 2)] + [("shared", i) for i in range(3, 7)]
    roots = []
    for _scope, index in plan:
        root = copy_root(golden.root, tmp_path / f"job{index}")
        add_blob(root, APP, f"job {index} ".encode() * 5000)
        add_blob(root, TOOLS, os.urandom(64 * 1024))
        roots.append(root)
    snapshots = [take_snapshot(Storage.open(root)) for root in roots]
    stores = [backend.open() for _ in plan]
    jobs = [
        (lambda s=s, r=r, n=n: s.save(Storage.open(r), entry(n[0])))
        for s, r, n in zip(stores, roots, plan, strict=True)
    ]
    results = run_together(jobs)
    assert all(result.saved for result in results)

    stored = backend.blob_keys()
    for snapshot in snapshots:
        assert set(snapshot.blobs) <= stored
    for (scope, index), result in zip(plan[:3], results[:3], strict=True):
        target = tmp_path / f"restored-{scope}"
        restored = backend.open().restore(Storage.open(target), [[entry(scope)]])
        assert restored.restored_key == result.key
        assert blob_digests(target) == blob_digests(roots[index])
        assert restored.tags_dropped == []

    shared_keys = [r.key for r in results[3:]]
    newest = max(shared_keys)
    target = tmp_path / "restored-shared"
    restored = backend.open().restore(Storage.open(target), [[entry("shared")]])
    assert restored.restored_key == newest
    winner = roots[3 + shared_keys.index(newest)]
    assert blob_digests(target) == blob_digests(winner)
    assert restored.tags_dropped == []
    assert_sound(target)


def test_a_concurrent_reader_never_sees_half_an_entry(
    backend: Backend, job_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert backend.open().save(Storage.open(job_root), entry()).saved
    expected_tags = tags(job_root, APP)
    stop = threading.Event()
    saves: list[str] = []

    def writer() -> None:
        store = backend.open()
        for i in range(6):
            add_blob(job_root, APP, os.urandom(100_000) + str(i).encode())
            saves.append(store.save(Storage.open(job_root), entry()).key)
        stop.set()

    def reader() -> int:
        rounds = 0
        while not stop.is_set() or rounds == 0:
            target = tmp_path / f"reader-{rounds}"
            result = backend.open().restore(Storage.open(target), [[entry()]])
            assert result.hit == HitKind.EXACT
            assert result.tags_dropped == []
            assert tags(target, APP) == expected_tags
            assert_sound(target)
            rounds += 1
        return rounds

    with caplog.at_level(logging.WARNING):
        _, rounds = run_together([writer, reader])
    assert rounds >= 1
    assert len(saves) == 6
    assert "corrupt" not in caplog.text
    assert "could not restore" not in caplog.text


# --- failures -------------------------------------------------------------------------------


def test_interrupted_save_publishes_no_entry(
    backend: Backend, job_root: Path, golden: Golden, tmp_path: Path
) -> None:
    first = backend.open().save(Storage.open(job_root), entry())
    new = {add_blob(job_root, APP, os.urandom(50_000)) for _ in range(4)}

    store = backend.open()
    backend.recorders[-1].fail_puts_after = 2
    with pytest.raises(StoreError, match="injected upload failure"):
        store.save(Storage.open(job_root), entry())
    assert backend.entry_keys() == {first.key}
    result = backend.open().restore(Storage.open(tmp_path / "after-failure"), [[entry()]])
    assert result.restored_key == first.key
    assert blob_digests(tmp_path / "after-failure") == blob_digests(golden.root)

    already = {d for d, _ in backend.recorders[-2].puts}
    retry = backend.open().save(Storage.open(job_root), entry())
    assert retry.saved
    assert {d for d, _ in backend.recorders[-1].puts} == new - already
    assert backend.entry_keys() == {first.key, retry.key}


# --- retention, listing, deletion -----------------------------------------------------------


def test_only_the_newest_entries_per_ref_are_kept(backend: Backend, job_root: Path) -> None:
    others = [
        backend.open().save(Storage.open(job_root), entry(ref="refs/heads/main-old")),
        backend.open().save(Storage.open(job_root), entry(ref="refs/heads/main/x")),
        backend.open().save(Storage.open(job_root), entry(scope="tools")),
    ]
    keys = []
    for i in range(4):
        add_blob(job_root, APP, f"revision {i}".encode())
        keys.append(backend.open().save(Storage.open(job_root), entry()).key)
        time.sleep(0.002)
    assert backend.entry_keys() == {*keys[-2:], *(o.key for o in others)}
    store = backend.open()
    assert [e.key for e in store.entries_of(entry())] == [keys[3], keys[2]]
    assert store.restore(Storage.open(job_root.parent / "r"), [[entry()]]).restored_key == keys[3]


def test_list_entries_and_delete(backend: Backend, job_root: Path, tmp_path: Path) -> None:
    names = [
        entry("app", MAIN),
        entry("app", "refs/heads/feat/x"),
        entry("tools", "refs/pull/1/merge"),
        entry("app", MAIN, namespace="build"),  # a namespace that prefixes another
    ]
    started = time.time()
    saved = {}
    for name in names:
        add_blob(job_root, APP, name.prefix.encode())
        saved[name] = backend.open().save(Storage.open(job_root), name).key
    finished = time.time()

    store = backend.open()
    listed = store.list_entries(NS)
    assert sorted((e.name, e.key) for e in listed) == sorted(
        (n, k) for n, k in saved.items() if n.namespace == NS
    )
    for info in listed:
        assert info.size > 0
        assert started - 1 <= info.created_at <= finished + 1
    assert [(e.name, e.key) for e in store.list_entries("build")] == [(names[3], saved[names[3]])]

    feat = next(e for e in listed if e.name.ref == "refs/heads/feat/x")
    store.delete(feat)
    assert {e.key for e in backend.open().list_entries(NS)} == {
        saved[names[0]],
        saved[names[2]],
    }
    result = backend.open().restore(Storage.open(tmp_path / "r"), [[names[1], names[0]]])
    assert result.hit == HitKind.PARTIAL
    assert result.restored_key == saved[names[0]]


# --- backend specifics ----------------------------------------------------------------------


def test_local_store_works_through_a_symlinked_directory(job_root: Path, tmp_path: Path) -> None:
    real = tmp_path / "real-store"
    real.mkdir()
    link = tmp_path / "store-link"
    link.symlink_to(real)
    store = open_url(f"local://{link}", {})
    assert isinstance(store, ContentAddressedStore)
    saved = store.save(Storage.open(job_root), entry())
    assert saved.saved
    assert [e.key for e in store.list_entries(NS)] == [saved.key]
    result = store.restore(Storage.open(tmp_path / "r"), [[entry()]])
    assert result.restored_key == saved.key
    assert blob_digests(tmp_path / "r") == blob_digests(job_root)


def test_local_store_keeps_each_blob_once_for_every_scope_and_ref(
    job_root: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "store"
    store = open_url(f"local://{directory}", {})
    for scope, ref in [("a", MAIN), ("b", MAIN), ("a", "refs/heads/dev")]:
        add_blob(job_root, APP, f"{scope} {ref}".encode())
        assert store.save(Storage.open(job_root), entry(scope, ref)).saved
    files = [p for p in (directory / "blobs").rglob("*") if p.is_file()]
    assert sorted(f"{p.parent.name}:{p.name}" for p in files) == sorted(blob_digests(job_root))


def test_s3_large_blob_is_uploaded_multipart_and_restored(
    seaweed: S3Server, job_root: Path, tmp_path: Path
) -> None:
    prefix = seaweed.new_prefix("multipart")
    data = os.urandom(PART_BYTES + 3 * 1024 * 1024)
    digest = add_blob(job_root, APP, data)
    store = open_url(seaweed.url(prefix), seaweed.env())
    assert store.save(Storage.open(job_root), entry()).saved
    algorithm, hex_digest = digest.split(":")
    head = seaweed.client().head_object(
        Bucket=seaweed.bucket, Key=f"{prefix}/blobs/{algorithm}/{hex_digest}"
    )
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"]  # a multipart upload's ETag: md5-of-parts "-" part count

    target = tmp_path / "r"
    result = open_url(seaweed.url(prefix), seaweed.env()).restore(Storage.open(target), [[entry()]])
    assert result.tags_dropped == []
    path = target / "blobs" / algorithm / hex_digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hex_digest


def test_s3_wrong_credentials_fail_as_store_errors_without_the_secret(
    seaweed: S3Server, job_root: Path, tmp_path: Path
) -> None:
    env = {**seaweed.env(), "S3_SECRET_KEY": "not-the-secret-0123456789"}
    store = open_url(seaweed.url(seaweed.new_prefix("badauth")), env)
    with pytest.raises(StoreError) as restore_error:
        store.restore(Storage.open(tmp_path / "r"), [[entry()]])
    with pytest.raises(StoreError) as save_error:
        store.save(Storage.open(job_root), entry())
    for error in (restore_error.value, save_error.value):
        assert "not-the-secret-0123456789" not in str(error)
        assert seaweed.secret_key not in str(error)


def test_s3_read_only_credentials_restore_but_fail_to_save_cleanly(
    seaweed: S3Server, job_root: Path, tmp_path: Path
) -> None:
    prefix = seaweed.new_prefix("readonly")
    saved = open_url(seaweed.url(prefix), seaweed.env()).save(Storage.open(job_root), entry())
    reader = open_url(seaweed.url(prefix), seaweed.env(readonly=True))
    result = reader.restore(Storage.open(tmp_path / "r"), [[entry()]])
    assert result.restored_key == saved.key

    add_blob(job_root, APP, b"a layer the reader cannot upload")
    with pytest.raises(StoreError) as caught:
        reader.save(Storage.open(job_root), entry())
    assert "AccessDenied" in str(caught.value) or "Access Denied" in str(caught.value)
    entries = set(seaweed.keys(f"{prefix}/entries/"))
    assert entries == {f"{prefix}/{saved.key}"}
