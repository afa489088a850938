"""GhaStore (a registry root as one Actions cache archive per save) against the cache emulator +
Azurite, the REST fake for cleanup, the official `@actions/cache` client, and the CLI.

Roots are real: images pushed with skopeo through our registry process, restored roots served
by it again and pulled with skopeo.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from cache_action.errors import StoreError
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.stores.base import HitKind
from cache_action.stores.gha.archive import create_archive
from cache_action.stores.gha.store import GhaStore
from cache_action.stores.gha.version import cache_version
from cache_action.stores.gha_management import CacheManagement
from cache_action.stores.spec import GhaSpec
from tests.azurite import free_port
from tests.cli import Run, run_cache_action
from tests.components import RegistryProcess
from tests.gha_emulator import (
    BRANCH,
    DEFAULT_BRANCH,
    READ,
    WRITE,
    CacheEmulator,
    feature_token,
    fresh_dir,
    make_client,
    make_token,
)
from tests.gha_official import OfficialClient
from tests.github_rest_fake import GitHubRestFake
from tests.roots import (
    BuiltImage,
    add_image,
    add_layer,
    blob_digests,
    copy_root,
    corrupt_blob_files,
    push_into_root,
    tags,
    tree,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NS = "buildkit"
PATHS = [".buildkit-cache"]
KiB = 1024
APP, BASE = "cache/app", "cache/base"
OTHER_BRANCH = "refs/heads/other"
WRITE_TOKEN = "ghs_rest_write_5d41402abc4b2a76"  # values the REST fake accepts, not real tokens
READ_TOKEN = "ghs_rest_read_7d793037a0760186"
REST_TOKENS = {WRITE_TOKEN: "write", READ_TOKEN: "read"}


def name(scope: str = "app", ref: str = BRANCH) -> EntryName:
    return EntryName(NS, scope, ref)


def chain(scope: str = "app", *refs: str) -> list[EntryName]:
    return [name(scope, ref) for ref in (refs or (BRANCH, DEFAULT_BRANCH))]


def make_store(
    emulator: CacheEmulator,
    run: str,
    token: str | None = None,
    *,
    rest: GitHubRestFake | None = None,
    github_token: str = WRITE_TOKEN,
    github_ref: str = BRANCH,
) -> GhaStore:
    management = None
    if rest is not None:
        management = CacheManagement(github_token, rest.repository, rest.url)
    return GhaStore(make_client(emulator, token), run, management, github_ref)


def staging_leftovers(root: Path) -> list[str]:
    meta = root / ".cache-action"
    if not meta.is_dir():
        return []
    return sorted(p.name for p in meta.iterdir() if p.name.startswith(("restore-", "save-")))


# --- roots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    app_v1: BuiltImage
    app_v2: BuiltImage  # shares its first layer with v1
    base_v1: BuiltImage
    common_old: BuiltImage  # `shared` in the scope saved first
    common_new: BuiltImage  # `shared` in the scope saved last
    only_a: BuiltImage
    only_b: BuiltImage
    extra: BuiltImage  # pushed later, to change a root


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    top = tmp_path_factory.mktemp("images")
    app, base, old, new, extra = (top / n for n in ("app", "base", "old", "new", "extra"))
    shared_layer = add_layer(app, 1024 * KiB, "app-base")
    app_v1 = add_image(app, [shared_layer, add_layer(app, 512 * KiB, "app-v1")], "v1")
    app_v2 = add_image(app, [shared_layer, add_layer(app, 256 * KiB, "app-v2")], "v2")
    base_v1 = add_image(base, [add_layer(base, 768 * KiB, "base")], "v1")
    common_old = add_image(old, [add_layer(old, 200 * KiB, "old")], "shared")
    only_a = add_image(old, [add_layer(old, 100 * KiB, "only-a")], "only-a")
    common_new = add_image(new, [add_layer(new, 300 * KiB, "new")], "shared")
    only_b = add_image(new, [add_layer(new, 100 * KiB, "only-b")], "only-b")
    extra_image = add_image(extra, [add_layer(extra, 128 * KiB, "extra")], "extra")
    return Images(app_v1, app_v2, base_v1, common_old, common_new, only_a, only_b, extra_image)


@pytest.fixture(scope="module")
def source_root(images: Images, skopeo: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two repositories, three tags, a layer shared by two tags: pushed with skopeo."""
    top = tmp_path_factory.mktemp("source")
    root = top / "root"
    pushes = [(images.app_v1, APP), (images.app_v2, APP), (images.base_v1, BASE)]
    push_into_root(root, top / "work", skopeo, pushes)
    return root


@pytest.fixture
def job_root(source_root: Path, tmp_path: Path) -> Path:
    return copy_root(source_root, tmp_path / "job" / "root")


def assert_same_root(restored: Path, source: Path) -> None:
    assert tree(restored) == tree(source)  # every blob byte, index.json, oci-layout
    for repository in (APP, BASE):
        assert tags(restored, repository) == tags(source, repository)
    assert blob_digests(restored) == blob_digests(source)
    assert corrupt_blob_files(restored) == []


def skopeo_pull(skopeo: str, address: str, reference: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{address}/{reference}",
            f"oci:{target}:pulled",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_of_a_pushed_root_serves_every_image(
    emulator: CacheEmulator,
    job_root: Path,
    source_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
) -> None:
    saved = make_store(emulator, "100-1").save(Storage.open(job_root), name())
    assert saved.saved and saved.skipped_reason is None
    assert saved.key == f"{NS}/app/refs%2Fheads%2Ffeature/100-1"
    (entry,) = emulator.finalized()
    assert (entry.key, entry.scope, entry.version) == (saved.key, BRANCH, cache_version(PATHS))
    assert saved.bytes_uploaded == entry.size
    assert saved.blobs_uploaded == len(_pool(source_root))  # every blob once, in one archive
    assert staging_leftovers(job_root) == []
    # the archive holds the root as .buildkit-cache/, without our transient bookkeeping
    data = emulator.blob_client(entry).download_blob().readall()
    names = _archive_names(data)
    assert all(n == ".buildkit-cache" or n.startswith(".buildkit-cache/") for n in names)
    assert ".buildkit-cache/cache/app/index.json" in names
    assert not {n for n in names if "/.cache-action/" in n} - {
        ".buildkit-cache/.cache-action/access.json",
        ".buildkit-cache/.cache-action/saved.json",
    }

    restored = tmp_path / "next-job" / "root"
    result = make_store(emulator, "101-1").restore(Storage.open(restored), [chain()])
    assert result.hit is HitKind.EXACT
    assert result.restored_key == saved.key
    assert result.bytes_downloaded == entry.size
    assert result.blobs_downloaded == len(_pool(source_root))
    assert result.tags_dropped == []
    assert_same_root(restored, source_root)
    assert staging_leftovers(restored) == []

    server = RegistryProcess(restored, tmp_path / "ready.json", tmp_path / "registry.log").start()
    try:
        for image, repository in (
            (images.app_v1, APP),
            (images.app_v2, APP),
            (images.base_v1, BASE),
        ):
            pulled = tmp_path / "pulled" / repository / image.tag
            skopeo_pull(skopeo, server.address, f"{repository}:{image.tag}", pulled)
            for digest in image.blobs:
                relative = Path("blobs", *digest.split(":"))
                assert (pulled / relative).read_bytes() == (image.layout / relative).read_bytes()
    finally:
        assert server.stop() == 0, server.log()


def _pool(root: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (root / "blobs" / "sha256").iterdir()}


def _archive_names(data: bytes) -> list[str]:
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        return [member.name for member in tar]


# --- skipping -----------------------------------------------------------------------------------


def test_save_is_skipped_when_nothing_changed(
    emulator: CacheEmulator,
    job_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
) -> None:
    first = make_store(emulator, "1-1").save(Storage.open(job_root), name())
    assert first.saved
    again = make_store(emulator, "2-1").save(Storage.open(job_root), name())
    assert (again.saved, again.skipped_reason) == (False, "nothing changed since the restore")

    restored = copy_root(job_root, tmp_path / "restored")  # the next job starts from a restore
    shutil.rmtree(restored)
    assert (
        make_store(emulator, "3-1").restore(Storage.open(restored), [chain()]).hit is HitKind.EXACT
    )
    creates = len(emulator.calls_of("CreateCacheEntry"))
    unchanged = make_store(emulator, "3-1").save(Storage.open(restored), name())
    assert unchanged.skipped_reason == "nothing changed since the restore"
    assert len(emulator.calls_of("CreateCacheEntry")) == creates  # not even asked

    push_into_root(restored, tmp_path / "push", skopeo, [(images.extra, APP)])
    changed = make_store(emulator, "3-1").save(Storage.open(restored), name())
    assert changed.saved and changed.key.endswith("/3-1")
    assert "extra" in tags(restored, APP)


def test_an_empty_root_is_not_saved(emulator: CacheEmulator, tmp_path: Path) -> None:
    result = make_store(emulator, "1-1").save(Storage.open(tmp_path / "empty"), name())
    assert (result.saved, result.skipped_reason) == (False, "the cache is empty")
    assert emulator.calls == []


def test_same_key_saved_twice_is_skipped_not_an_error(
    emulator: CacheEmulator, job_root: Path, images: Images, skopeo: str, tmp_path: Path
) -> None:
    other = copy_root(job_root, tmp_path / "other" / "root")
    push_into_root(other, tmp_path / "push", skopeo, [(images.extra, APP)])
    assert make_store(emulator, "5-2").save(Storage.open(job_root), name()).saved
    second = make_store(emulator, "5-2").save(Storage.open(other), name())
    assert second.saved is False
    assert second.skipped_reason == "another job already saved this entry"
    assert emulator.calls_of("CreateCacheEntry")[-1].status == 409
    assert len(emulator.calls_of("FinalizeCacheEntryUpload")) == 1  # nothing uploaded again
    assert staging_leftovers(other) == []
    (entry,) = emulator.finalized()
    assert entry.key.endswith("/5-2")


def test_read_only_token_is_skipped_with_the_reason(
    emulator: CacheEmulator, job_root: Path
) -> None:
    token = make_token([(BRANCH, READ), (DEFAULT_BRANCH, READ)])
    result = make_store(emulator, "1-1", token).save(Storage.open(job_root), name())
    assert result.saved is False
    assert result.skipped_reason is not None
    assert result.skipped_reason.startswith("the cache is read-only here")
    assert "cache write denied" in result.skipped_reason
    assert emulator.entries == []
    assert staging_leftovers(job_root) == []


# --- restore chains -----------------------------------------------------------------------------


def test_own_ref_is_exact_a_fallback_ref_is_partial(
    emulator: CacheEmulator,
    job_root: Path,
    source_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
) -> None:
    main_token = make_token([(DEFAULT_BRANCH, READ | WRITE)])
    assert (
        make_store(emulator, "1-1", main_token)
        .save(Storage.open(job_root), name("app", DEFAULT_BRANCH))
        .saved
    )
    feature_root = copy_root(job_root, tmp_path / "feature" / "root")
    push_into_root(feature_root, tmp_path / "push", skopeo, [(images.extra, APP)])
    feature = make_store(emulator, "2-1").save(Storage.open(feature_root), name())
    assert feature.saved

    # the feature branch's job finds its own entry
    own = tmp_path / "own"
    result = make_store(emulator, "3-1").restore(Storage.open(own), [chain()])
    assert (result.hit, result.restored_key) == (HitKind.EXACT, feature.key)
    assert result.restored[0].name == name()
    assert "extra" in tags(own, APP)

    # another branch falls back to main's entry: a partial hit
    other_token = make_token([(OTHER_BRANCH, READ | WRITE), (DEFAULT_BRANCH, READ)])
    fallback = tmp_path / "fallback"
    result = make_store(emulator, "4-1", other_token).restore(
        Storage.open(fallback), [chain("app", OTHER_BRANCH, DEFAULT_BRANCH)]
    )
    assert result.hit is HitKind.PARTIAL
    assert result.restored_key.startswith(name("app", DEFAULT_BRANCH).prefix)
    assert result.restored[0].name == name("app", DEFAULT_BRANCH)
    assert_same_root(fallback, source_root)  # main's content, not the feature branch's

    # no fallback: a miss, and the root holds nothing
    miss = tmp_path / "miss"
    result = make_store(emulator, "5-1", other_token).restore(
        Storage.open(miss), [chain("app", OTHER_BRANCH)]
    )
    assert (result.hit, result.restored) == (HitKind.NONE, [])
    assert tree(miss) == {}


@pytest.mark.parametrize("order", ["newest-first", "newest-last"])
def test_two_scopes_merge_and_the_newest_tag_wins(
    emulator: CacheEmulator,
    images: Images,
    skopeo: str,
    tmp_path: Path,
    order: str,
) -> None:
    older, newer = tmp_path / "older", tmp_path / "newer"
    push_into_root(older, tmp_path / "p1", skopeo, [(images.common_old, APP), (images.only_a, APP)])
    push_into_root(newer, tmp_path / "p2", skopeo, [(images.common_new, APP), (images.only_b, APP)])
    assert make_store(emulator, "1-1").save(Storage.open(older), name("a")).saved
    assert make_store(emulator, "2-1").save(Storage.open(newer), name("b")).saved

    chains = [chain("a"), chain("b")]
    if order == "newest-first":
        chains.reverse()
    merged = tmp_path / "merged"
    result = make_store(emulator, "3-1").restore(Storage.open(merged), chains)
    assert result.hit is HitKind.EXACT
    assert {entry.name.scope for entry in result.restored} == {"a", "b"}
    assert tags(merged, APP) == {
        "shared": images.common_new.manifest_digest,
        "only-a": images.only_a.manifest_digest,
        "only-b": images.only_b.manifest_digest,
    }
    assert blob_digests(merged) == blob_digests(older) | blob_digests(newer)
    assert corrupt_blob_files(merged) == []


def test_a_missing_scope_makes_the_hit_partial(
    emulator: CacheEmulator, job_root: Path, tmp_path: Path
) -> None:
    assert make_store(emulator, "1-1").save(Storage.open(job_root), name("app")).saved
    result = make_store(emulator, "2-1").restore(
        Storage.open(tmp_path / "r"), [chain("app"), chain("never-saved")]
    )
    assert result.hit is HitKind.PARTIAL
    assert [entry.name.scope for entry in result.restored] == ["app"]


# --- bad archives -------------------------------------------------------------------------------


def _valid_archive(root: Path, tmp_path: Path) -> bytes:
    archive = tmp_path / "valid.tzst"
    create_archive(root.parent, [root.name], archive, arcname=".buildkit-cache")
    return archive.read_bytes()


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _without_label(root: Path, tmp_path: Path) -> bytes:
    archive = tmp_path / "other.tzst"
    create_archive(root.parent, [root.name], archive, arcname="some-other-dir")
    return archive.read_bytes()


BAD_ARCHIVES = {
    "truncated": lambda root, tmp: _valid_archive(root, tmp)[: -100 * KiB],
    "bit-flipped": lambda root, tmp: _flip_middle(_valid_archive(root, tmp)),
    "not-zstd": lambda root, tmp: os.urandom(64 * KiB),
    "no-buildkit-cache": _without_label,
}


@pytest.mark.parametrize("damage", sorted(BAD_ARCHIVES))
def test_a_bad_archive_is_a_store_error_and_the_root_is_unchanged(
    emulator: CacheEmulator,
    job_root: Path,
    source_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
    damage: str,
) -> None:
    data = BAD_ARCHIVES[damage](source_root, tmp_path)
    emulator.put_entry(BRANCH, f"{name().prefix}9-1", cache_version(PATHS), data)
    # the job's root already holds something of its own
    push_into_root(job_root, tmp_path / "push", skopeo, [(images.extra, APP)])
    before = tree(job_root)
    with pytest.raises(StoreError):
        make_store(emulator, "10-1").restore(Storage.open(job_root), [chain()])
    assert tree(job_root) == before
    assert staging_leftovers(job_root) == []
    assert not (job_root / ".cache-action" / "restored.json").exists()


# --- cleanup through the REST API ---------------------------------------------------------------


def test_superseded_entries_are_deleted_after_a_save(
    emulator: CacheEmulator,
    job_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with GitHubRestFake(tokens=REST_TOKENS, emulator=emulator) as rest:
        main_token = make_token([(DEFAULT_BRANCH, READ | WRITE)])
        main_store = make_store(emulator, "1-1", main_token, rest=rest, github_ref=DEFAULT_BRANCH)
        main_key = main_store.save(Storage.open(job_root), name("app", DEFAULT_BRANCH)).key
        base_key = (
            make_store(emulator, "2-1", rest=rest).save(Storage.open(job_root), name("base")).key
        )
        first = make_store(emulator, "3-1", rest=rest).save(Storage.open(job_root), name("app"))
        assert rest.requests_of("DELETE") == []  # nothing superseded yet

        push_into_root(job_root, tmp_path / "push", skopeo, [(images.extra, APP)])
        second = make_store(emulator, "4-1", rest=rest).save(Storage.open(job_root), name("app"))
        assert second.saved
        assert rest.keys() == {main_key, base_key, second.key}
        (deleted,) = rest.requests_of("DELETE")
        assert deleted.status == 204
        listing = rest.requests_of("GET", "/actions/caches")[-1]
        assert (listing.param("key"), listing.param("ref")) == (name("app").prefix, BRANCH)
        assert first.key not in {e.key for e in emulator.entries}  # gone from the service

        # the newest entry is what the next job restores
        restored = tmp_path / "restored"
        result = make_store(emulator, "5-1").restore(Storage.open(restored), [chain()])
        assert result.restored_key == second.key
        assert "extra" in tags(restored, APP)

        # a token that may only read: saved all the same, one warning, nothing deleted
        push_into_root(restored, tmp_path / "push2", skopeo, [(images.only_a, APP)])
        read_only = make_store(emulator, "6-1", rest=rest, github_token=READ_TOKEN)
        third = read_only.save(Storage.open(restored), name("app"))
        assert third.saved
        assert rest.requests_of("DELETE")[-1].status == 403
        # the advice travels with the result: the action annotates it
        assert [w for w in third.warnings if "actions: write" in w], third.warnings
        assert rest.keys() == {main_key, base_key, second.key, third.key}


def test_without_a_github_token_nothing_is_deleted(
    emulator: CacheEmulator, job_root: Path, images: Images, skopeo: str, tmp_path: Path
) -> None:
    store = GhaStore.open(
        GhaSpec(),
        RunnerContext.from_env(
            {
                "ACTIONS_RESULTS_URL": emulator.url,
                "ACTIONS_RUNTIME_TOKEN": feature_token(),
                "GITHUB_RUN_ID": "7",
                "GITHUB_REF": BRANCH,
                "GITHUB_REPOSITORY": "octo-org/octo-repo",
            }
        ),
    )
    assert store.management is None and store.run_suffix == "7-1"
    assert store.save(Storage.open(job_root), name()).key.endswith("/7-1")
    with pytest.raises(StoreError, match="GITHUB_TOKEN"):
        store.list_entries(NS)


def test_list_and_delete_entries(emulator: CacheEmulator, job_root: Path) -> None:
    with GitHubRestFake(tokens=REST_TOKENS, emulator=emulator) as rest:
        store = make_store(emulator, "1-1", rest=rest)
        saved = store.save(Storage.open(job_root), name("app"))
        make_store(emulator, "1-1", rest=rest).save(Storage.open(job_root), name("base"))
        listed = {entry.key: entry for entry in store.list_entries(NS)}
        assert set(listed) == {saved.key, f"{name('base').prefix}1-1"}
        assert listed[saved.key].name == name("app")
        assert listed[saved.key].size == emulator.finalized()[0].size
        created = [entry.created_at for entry in listed.values()]
        assert created[0] > 1.7e9 and created[0] != created[1]  # the API's created_at
        store.delete(listed[saved.key])
        assert [e.key for e in store.list_entries(NS)] == [f"{name('base').prefix}1-1"]
        store.delete(listed[saved.key])  # already gone: not an error
        denied = make_store(emulator, "1-1", rest=rest, github_token=READ_TOKEN)
        with pytest.raises(StoreError, match="403"):
            denied.delete(store.list_entries(NS)[0])


# --- interoperability with @actions/cache -------------------------------------------------------


def test_official_client_restores_what_we_saved(
    official: OfficialClient,
    emulator: CacheEmulator,
    job_root: Path,
    source_root: Path,
    tmp_path: Path,
) -> None:
    saved = make_store(emulator, "1-1").save(Storage.open(job_root), name())
    workspace = fresh_dir(tmp_path / "workspace")
    result = official.run(
        emulator,
        workspace,
        fresh_dir(tmp_path / "runner-temp"),
        "restore",
        saved.key,
        json.dumps(PATHS),
        json.dumps([name().prefix]),
    )
    assert result["matchedKey"] == saved.key, result["log"]
    assert_same_root(workspace / ".buildkit-cache", source_root)


def test_we_restore_what_the_official_client_saved(
    official: OfficialClient,
    emulator: CacheEmulator,
    source_root: Path,
    tmp_path: Path,
) -> None:
    workspace = fresh_dir(tmp_path / "workspace")
    copy_root(source_root, workspace / ".buildkit-cache")
    key = f"{name().prefix}41-1"
    saved = official.run(
        emulator, workspace, fresh_dir(tmp_path / "runner-temp"), "save", key, json.dumps(PATHS)
    )
    assert saved["cacheId"] > 0, saved["log"]

    restored = tmp_path / "restored"
    result = make_store(emulator, "42-1").restore(Storage.open(restored), [chain()])
    assert (result.hit, result.restored_key) == (HitKind.EXACT, key)
    assert_same_root(restored, source_root)


# --- the CLI, as a job runs it ------------------------------------------------------------------


def runner_env(emulator_url: str, rest: GitHubRestFake | None, run_id: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_")) and k != "CI"
    }
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "ACTIONS_RESULTS_URL": emulator_url,
            "ACTIONS_RUNTIME_TOKEN": feature_token(),
            "GITHUB_RUN_ID": run_id,
            "GITHUB_RUN_ATTEMPT": "2",
            "GITHUB_REF": BRANCH,
            "GITHUB_REPOSITORY": rest.repository if rest else "octo-org/octo-repo",
            "GITHUB_TOKEN": WRITE_TOKEN,
            "GITHUB_API_URL": rest.url if rest else "http://127.0.0.1:9/",
            "GITHUB_SERVER_URL": "https://github.com",
        }
    )
    return env


def cli(env: Mapping[str, str], *args: str, cwd: Path) -> Run:
    return run_cache_action(env, *args, cwd=cwd)


def assert_no_secrets(env: Mapping[str, str], *runs: Run) -> None:
    secrets = [env["ACTIONS_RUNTIME_TOKEN"], env["GITHUB_TOKEN"]]
    for run in runs:
        text = run.stdout + run.stderr
        for secret in secrets:
            assert secret not in text
        assert re.findall(r"sig=(?!\*\*\*)", text) == []  # every signature masked


def test_cli_save_and_restore_with_the_runner_environment(
    emulator: CacheEmulator,
    job_root: Path,
    source_root: Path,
    images: Images,
    skopeo: str,
    tmp_path: Path,
) -> None:
    with GitHubRestFake(tokens=REST_TOKENS, emulator=emulator) as rest:
        env = runner_env(emulator.url, rest, "700")
        common = ["--store", "gha", "--scope", "app", "--ref", "feature"]
        save = cli(env, "save", "--root", str(job_root), *common, cwd=tmp_path)
        assert save.code == 0, save.stderr
        assert save.json["saved"] is True
        assert save.json["key"] == f"{name().prefix}700-2"
        assert "uploaded" in save.stderr and "sig=***" in save.stderr  # logged, masked

        restored = tmp_path / "restored"
        restore = cli(env, "restore", "--root", str(restored), *common, cwd=tmp_path)
        assert restore.code == 0, restore.stderr
        assert restore.json["hit"] == "exact"
        assert [e["key"] for e in restore.json["restored"]] == [save.json["key"]]
        assert_same_root(restored, source_root)

        unchanged = cli(env, "save", "--root", str(restored), *common, cwd=tmp_path)
        assert unchanged.json["skipped_reason"] == "nothing changed since the restore"

        push_into_root(restored, tmp_path / "push", skopeo, [(images.extra, APP)])
        env_next = runner_env(emulator.url, rest, "701")
        changed = cli(env_next, "save", "--root", str(restored), *common, cwd=tmp_path)
        assert changed.code == 0, changed.stderr
        assert changed.json["key"] == f"{name().prefix}701-2"
        assert rest.keys() == {changed.json["key"]}  # the run-700 entry was superseded
        assert {r.header("Authorization") for r in rest.requests} == {f"token {WRITE_TOKEN}"}
        assert_no_secrets(env, save, restore, unchanged, changed)


def test_cli_with_a_dead_cache_service_warns_and_goes_on(tmp_path: Path, job_root: Path) -> None:
    """Nothing listens on the service port: a warning and exit 0, exit 2 with --strict. The
    client retries connection errors with @actions/cache's back-off (~30 s), so the three runs
    go in parallel."""
    env = runner_env(f"http://127.0.0.1:{free_port()}/", None, "800")
    common = ["--store", "gha", "--scope", "app", "--ref", "feature"]
    empty, empty_strict = tmp_path / "empty", tmp_path / "empty-strict"
    commands = [  # one root each: a root is locked while a command works on it
        ["restore", "--root", str(empty), *common],
        ["restore", "--root", str(empty_strict), *common, "--strict"],
        ["save", "--root", str(job_root), *common],
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        restore, strict, save = pool.map(lambda args: cli(env, *args, cwd=tmp_path), commands)
    assert restore.code == 0, restore.stderr
    assert restore.stdout == ""
    assert "warning: restore failed, continuing without cache" in restore.stderr
    assert "connection" in restore.stderr.lower()
    assert save.code == 0, save.stderr
    assert "warning: save failed, continuing without cache" in save.stderr
    assert strict.code == 2
    assert "error: restore from GitHub Actions cache failed" in strict.stderr
    assert "Traceback" not in restore.stderr + strict.stderr + save.stderr
    assert tree(empty) == tree(empty_strict) == {}
    assert_no_secrets(env, restore, strict, save)


def test_a_save_warns_when_the_repository_cache_is_nearly_full(
    emulator: CacheEmulator, job_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cache_action.stores.gha.store as gha_store

    with GitHubRestFake(tokens=REST_TOKENS, emulator=emulator) as rest:
        roomy = make_store(emulator, "1-1", rest=rest).save(Storage.open(job_root), name("app"))
        assert roomy.saved and roomy.warnings == []  # KBs of a 10 GB allowance
        usage = sum(entry.size_in_bytes for entry in rest.caches())
        monkeypatch.setattr(gha_store, "REPOSITORY_LIMIT", int(usage * 1.1))
        full = make_store(emulator, "2-1", rest=rest).save(Storage.open(job_root), name("other"))
    assert full.saved
    (warning,) = full.warnings
    assert "GB" in warning and "max-size" in warning
    assert rest.requests_of("GET", "/actions/cache/usage")
