"""The Actions cache client against the emulator + Azurite, and its archive format."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import subprocess
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from cache_action.errors import InputError, StoreFullError
from cache_action.stores.gha.archive import create_archive
from cache_action.stores.gha.client import GhaCacheClient
from cache_action.stores.gha.config import GhaCacheConfig
from cache_action.stores.gha.errors import (
    EntryExistsError,
    GhaCacheError,
    GhaConfigError,
    QuotaError,
    RateLimitedError,
    TransferError,
    UnsafeArchiveError,
    WriteDeniedError,
)
from cache_action.stores.gha.extract import extract_archive
from cache_action.stores.gha.keys import validate_keys
from cache_action.stores.gha.legacy import LegacyCacheService
from cache_action.stores.gha.redact import redact, url_secrets
from cache_action.stores.gha.transfer import TransferOptions
from cache_action.stores.gha.version import cache_version, paths_from_input
from cache_action.stores.retry import RetryPolicy
from tests.components import require_tool
from tests.gha_emulator import (
    BRANCH,
    DEFAULT_BRANCH,
    FAST_RETRIES,
    READ,
    WRITE,
    CacheEmulator,
    build_tree,
    fresh_dir,
    gha_env,
    make_client,
    make_token,
    snapshot,
)

PATHS = [".buildkit-cache"]
UPLOADS = ".buildkit-cache/.cache-action/uploads"
MiB = 1024 * 1024


def save_tree(client: GhaCacheClient, workspace: Path, key: str, tmp: Path) -> int:
    """The action's save order: reserve first, archive only then, commit."""
    target = client.reserve(key, client.version(PATHS))
    archive = tmp / f"{key}.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    return client.commit(target, archive)


# --- version, keys, config ------------------------------------------------------------------


def test_version_matches_actions_cache_check_value() -> None:
    # reference B4: node's @actions/cache and Python agree on this value
    expected = "c242501c19ada3dcced7a83b074ccb8e79f816602d4125493924624b38591de2"
    assert cache_version(["~/.npm"]) == expected
    assert cache_version(["~/.npm"], "gzip") != expected
    assert cache_version(["~/.npm", "x"]) != expected
    assert paths_from_input("  ~/.npm\n\n!  node_modules/x \n .buildkit-cache\r\n") == [
        "~/.npm",
        "!node_modules/x",
        ".buildkit-cache",
    ]


def test_key_validation_messages() -> None:
    assert validate_keys("k" * 512, ["a", "b"]) == ["k" * 512, "a", "b"]
    assert validate_keys("k", [f"r{i}" for i in range(9)])[-1] == "r8"
    with pytest.raises(InputError, match="at most 512 characters"):
        validate_keys("k" * 513)
    with pytest.raises(InputError, match="without commas") as error:
        validate_keys("main", ["a,b"])
    assert error.value.name == "restore-keys"
    with pytest.raises(InputError, match="at most 10 keys"):
        validate_keys("k", [f"r{i}" for i in range(10)])
    with pytest.raises(InputError, match="non-empty"):
        validate_keys("")


@pytest.mark.parametrize(
    ("env", "protocol", "url"),
    [
        ({"ACTIONS_RESULTS_URL": "https://results/"}, "v2", "https://results/"),
        (
            {"ACTIONS_RESULTS_URL": "https://r/", "ACTIONS_CACHE_URL": "https://c/x/"},
            "v2",
            "https://r/",
        ),
        ({"ACTIONS_CACHE_URL": "https://c/x"}, "v1", "https://c/x/"),
        (
            {
                "ACTIONS_RESULTS_URL": "https://r/",
                "ACTIONS_CACHE_URL": "https://c/",
                "GITHUB_SERVER_URL": "https://ghes.example.com",
            },
            "v1",
            "https://c/",
        ),
        (
            {"ACTIONS_RESULTS_URL": "https://r/", "GITHUB_SERVER_URL": "https://acme.ghe.com"},
            "v2",
            "https://r/",
        ),
        (
            {
                "ACTIONS_RESULTS_URL": "https://r/",
                "ACTIONS_CACHE_URL": "https://c/",
                "ACTIONS_CACHE_API_FORCE_VERSION": "v1",
            },
            "v1",
            "https://c/",
        ),
        (
            {
                "ACTIONS_RESULTS_URL": "https://r/",
                "ACTIONS_CACHE_URL": "https://c/",
                "ACTIONS_CACHE_SERVICE_V2": "false",
            },
            "v1",
            "https://c/",
        ),
        (
            {
                "ACTIONS_RESULTS_URL": "https://r/",
                "ACTIONS_CACHE_URL": "https://c/",
                "ACTIONS_CACHE_SERVICE_V2": "True",
            },
            "v2",
            "https://r/",
        ),
    ],
)
def test_config_chooses_protocol(env: dict[str, str], protocol: str, url: str) -> None:
    config = GhaCacheConfig.from_env({**env, "ACTIONS_RUNTIME_TOKEN": "secret-token"})
    assert (config.protocol, config.service_url) == (protocol, url)
    assert "secret-token" not in repr(config)


def test_config_errors_and_cache_mode() -> None:
    with pytest.raises(GhaConfigError, match="ACTIONS_RUNTIME_TOKEN"):
        GhaCacheConfig.from_env({"ACTIONS_RESULTS_URL": "https://r/"})
    with pytest.raises(GhaConfigError, match="ACTIONS_RESULTS_URL"):
        GhaCacheConfig.from_env({"ACTIONS_RUNTIME_TOKEN": "t"})
    with pytest.raises(GhaConfigError, match="ACTIONS_CACHE_URL"):
        GhaCacheConfig.from_env(
            {"ACTIONS_RUNTIME_TOKEN": "t", "GITHUB_SERVER_URL": "https://ghes.example.com"}
        )
    with pytest.raises(GhaConfigError, match="ACTIONS_CACHE_API_FORCE_VERSION"):
        GhaCacheConfig.from_env(
            {
                "ACTIONS_RUNTIME_TOKEN": "t",
                "ACTIONS_RESULTS_URL": "https://r/",
                "ACTIONS_CACHE_API_FORCE_VERSION": "v3",
            }
        )
    base = {"ACTIONS_RUNTIME_TOKEN": "t", "ACTIONS_RESULTS_URL": "https://r/"}
    modes = {
        "": (True, True),
        " Read ": (True, False),
        "write": (True, True),
        "write-only": (False, True),
        "none": (False, False),
        "bogus": (True, True),
    }
    for mode, expected in modes.items():
        config = GhaCacheConfig.from_env({**base, "ACTIONS_CACHE_MODE": mode})
        assert (config.readable, config.writable) == expected, mode


def test_redact_hides_the_signature() -> None:
    url = "https://acct.blob.core.windows.net/c/b?sv=2025-01-05&se=x&sr=b&sp=r&sig=AbC%2Bd%3D"
    assert (
        redact(url) == "https://acct.blob.core.windows.net/c/b?sv=2025-01-05&se=x&sr=b&sp=r&sig=***"
    )
    assert url_secrets(url) == ["AbC%2Bd%3D", "AbC+d="]


# --- archives ---------------------------------------------------------------------------------


def test_archive_names_members_like_actions_cache(tmp_path: Path) -> None:
    tar = require_tool("tar")
    require_tool("unzstd")
    workspace = tmp_path / "ws"
    build_tree(workspace, big=2 * MiB)
    archive = tmp_path / "cache.tzst"
    stats = create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    listing = subprocess.run(
        [tar, "-tvf", str(archive), "-P", "--use-compress-program", "unzstd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    names = [line.split()[5] for line in listing]
    assert names[0] == ".buildkit-cache/"
    assert all(name.startswith(".buildkit-cache/") for name in names)
    assert ".buildkit-cache/.cache-action/access.json" in names
    assert not any(name.startswith(UPLOADS) for name in names)
    # every pool blob is stored once; its repository names are hard-link members
    assert stats.hardlinks == 5
    assert sum(" link to .buildkit-cache/blobs/sha256/" in line for line in listing) == 5
    assert archive.stat().st_size < 2 * MiB + 256 * 1024  # the random 2 MiB, not twice
    # pax format, one zstd frame with a checksum (what `zstd -t` verifies)
    with open(archive, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read(1024)
    assert raw[257:263] == b"ustar\x00"
    frame = zstandard.get_frame_parameters(archive.read_bytes()[:18])
    assert frame.has_checksum


def test_our_archive_extracts_with_the_official_tar_command(tmp_path: Path) -> None:
    tar = require_tool("tar")
    require_tool("unzstd")
    workspace = tmp_path / "ws"
    build_tree(workspace)
    archive = tmp_path / "cache.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    restored = fresh_dir(tmp_path / "restored")
    # tar.js `extractTar`, verbatim for Linux with zstd-without-long
    subprocess.run(
        [tar, "-xf", str(archive), "-P", "-C", str(restored), "--use-compress-program", "unzstd"],
        check=True,
    )
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))
    assert snapshot(restored)["hardlinks"]  # links came back as links


def test_official_tar_archive_extracts_with_ours(tmp_path: Path) -> None:
    tar = require_tool("tar")
    require_tool("zstdmt")
    workspace = tmp_path / "ws"
    build_tree(workspace)
    folder = fresh_dir(tmp_path / "tmpdir")
    (folder / "manifest.txt").write_text(".buildkit-cache")
    # tar.js `createTar`, verbatim for Linux with zstd-without-long (cwd = the temp folder)
    subprocess.run(
        [
            tar,
            "--posix",
            "-cf",
            "cache.tzst",
            "--exclude",
            "cache.tzst",
            "-P",
            "-C",
            str(workspace),
            "--files-from",
            "manifest.txt",
            "--use-compress-program",
            "zstdmt",
        ],
        cwd=folder,
        check=True,
    )
    restored = fresh_dir(tmp_path / "restored")
    stats = extract_archive(folder / "cache.tzst", restored)
    assert stats.members > 10
    assert snapshot(restored) == snapshot(workspace)
    assert len(snapshot(restored)["hardlinks"]) == 5
    assert not [p for p in restored.iterdir() if p.name.startswith(".cache-action-extract-")]


def test_extract_merges_into_an_existing_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    build_tree(workspace)
    archive = tmp_path / "cache.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    dest = fresh_dir(tmp_path / "dest")
    (dest / "src").mkdir()
    (dest / "src" / "main.c").write_text("untouched\n")
    (dest / ".buildkit-cache" / "org" / "repo").mkdir(parents=True)
    (dest / ".buildkit-cache" / "org" / "repo" / "index.json").write_text("stale\n")
    (dest / ".buildkit-cache" / "local-only").write_text("kept\n")
    extract_archive(archive, dest)
    assert (dest / "src" / "main.c").read_text() == "untouched\n"
    assert (dest / ".buildkit-cache" / "local-only").read_text() == "kept\n"
    assert (dest / ".buildkit-cache" / "org" / "repo" / "index.json").read_text() == (
        '{"manifests": []}\n'
    )


def _zstd_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(buffer.getvalue()))
    return path


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


UNSAFE = {
    "absolute name": [_info("/tmp/evil-absolute", data=b"x")],
    "dot-dot name": [_info(".buildkit-cache/../../evil-dotdot", data=b"x")],
    "symlink escaping by ..": [_info(".buildkit-cache/esc", tarfile.SYMTYPE, link="../../outside")],
    "symlink to an absolute path outside": [
        _info(".buildkit-cache/etc", tarfile.SYMTYPE, link="/etc")
    ],
    "symlink chain that resolves outside": [
        _info(".buildkit-cache/here", tarfile.SYMTYPE, link="."),
        _info(".buildkit-cache/up", tarfile.SYMTYPE, link="here/../.."),
    ],
    "write through a symlink": [
        _info(".buildkit-cache/inner", tarfile.DIRTYPE),
        _info(".buildkit-cache/link", tarfile.SYMTYPE, link="inner"),
        _info(".buildkit-cache/link/file", data=b"through"),
    ],
    "hard link outside": [_info(".buildkit-cache/pw", tarfile.LNKTYPE, link="/etc/passwd")],
    "hard link with ..": [_info(".buildkit-cache/pw", tarfile.LNKTYPE, link="../outside-file")],
    "hard link to a file not in the archive": [
        _info(".buildkit-cache/pw", tarfile.LNKTYPE, link="src/main.c")
    ],
    "character device": [_info(".buildkit-cache/null", tarfile.CHRTYPE)],
    "FIFO": [_info(".buildkit-cache/pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archives_are_rejected_and_change_nothing(tmp_path: Path, case: str) -> None:
    good = [_info(".buildkit-cache", tarfile.DIRTYPE), _info(".buildkit-cache/ok", data=b"ok")]
    archive = _zstd_tar(tmp_path / "evil.tzst", good + UNSAFE[case])
    dest = fresh_dir(tmp_path / "outer" / "ws")
    (dest / "src").mkdir()
    (dest / "src" / "main.c").write_text("mine\n")
    (tmp_path / "outer" / "outside-file").write_text("secret\n")
    before = snapshot(tmp_path / "outer")
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, dest)
    assert snapshot(tmp_path / "outer") == before
    assert not Path("/tmp/evil-absolute").exists()


def test_a_safe_inside_symlink_and_hardlink_are_accepted(tmp_path: Path) -> None:
    archive = _zstd_tar(
        tmp_path / "ok.tzst",
        [
            _info("a/", tarfile.DIRTYPE),
            _info("a/file", data=b"data"),
            _info("a/link", tarfile.SYMTYPE, link="file"),
            _info("a/up", tarfile.SYMTYPE, link="../a/file"),
            _info("a/hard", tarfile.LNKTYPE, link="a/file"),
        ],
    )
    dest = fresh_dir(tmp_path / "ws")
    extract_archive(archive, dest)
    assert (dest / "a" / "up").read_bytes() == b"data"
    assert os.stat(dest / "a" / "hard").st_ino == os.stat(dest / "a" / "file").st_ino


@pytest.mark.parametrize("cut", [1, 4, 0.5])
def test_truncated_archive_is_rejected_before_anything_is_written(
    tmp_path: Path, cut: float
) -> None:
    workspace = tmp_path / "ws"
    build_tree(workspace)
    archive = tmp_path / "cache.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    data = archive.read_bytes()
    archive.write_bytes(data[: -int(cut) if cut >= 1 else int(len(data) * cut)])
    dest = fresh_dir(tmp_path / "dest")
    with pytest.raises(GhaCacheError, match="truncated"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []


def test_archiving_and_extracting_stream_instead_of_buffering(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / ".buildkit-cache").mkdir(parents=True)
    (workspace / ".buildkit-cache" / "big").write_bytes(os.urandom(48 * MiB))
    archive = tmp_path / "cache.tzst"
    tracemalloc.start()
    try:
        create_archive(workspace, PATHS, archive)
        _, create_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        extract_archive(archive, fresh_dir(tmp_path / "dest"))
        _, extract_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert create_peak < 12 * MiB, create_peak
    assert extract_peak < 12 * MiB, extract_peak
    assert (tmp_path / "dest" / ".buildkit-cache" / "big").stat().st_size == 48 * MiB


# --- the service: round trips -----------------------------------------------------------------


def test_save_and_restore_round_trip(emulator: CacheEmulator, tmp_path: Path) -> None:
    client = make_client(emulator)
    workspace = tmp_path / "ws"
    build_tree(workspace)
    entry_id = save_tree(client, workspace, "buildkit-linux-1", tmp_path)
    assert entry_id == emulator.finalized()[0].id
    # a small archive is one Put Blob: no blocks
    blob = emulator.blob_client(emulator.finalized()[0])
    assert blob.get_block_list("committed")[0] == []

    restored = fresh_dir(tmp_path / "restored")
    match = client.restore("buildkit-linux-1", ["buildkit-linux-"], PATHS, restored)
    assert match is not None and match.exact and match.matched_key == "buildkit-linux-1"
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))

    # the wire format of @actions/cache: snake_case, int64 as a string, key first in restore_keys
    create = emulator.calls_of("CreateCacheEntry")[0]
    assert create.request == {"key": "buildkit-linux-1", "version": client.version(PATHS)}
    assert create.headers["Authorization"].startswith("Bearer ")
    finalize = emulator.calls_of("FinalizeCacheEntryUpload")[0].request
    assert isinstance(finalize["size_bytes"], str) and int(finalize["size_bytes"]) > 0
    lookup = emulator.calls_of("GetCacheEntryDownloadURL")[0].request
    assert lookup["restore_keys"] == ["buildkit-linux-1", "buildkit-linux-"]


def test_round_trip_of_a_multi_block_archive(emulator: CacheEmulator, tmp_path: Path) -> None:
    client = make_client(
        emulator, transfer=TransferOptions(retry=RetryPolicy(attempts=3, base_delay=0.01))
    )
    block = client.transfer.block_size
    workspace = tmp_path / "ws"
    build_tree(workspace, big=2 * block + 5 * MiB)
    target = client.reserve("big-1", client.version(PATHS))
    archive = tmp_path / "big.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    size = archive.stat().st_size
    client.commit(target, archive)

    blocks = emulator.blob_client(emulator.finalized()[0]).get_block_list("committed")[0]
    assert [b.size for b in blocks[:-1]] == [block] * (math.ceil(size / block) - 1)
    assert sum(b.size for b in blocks) == size

    match = client.lookup("big-1", [], PATHS)
    assert match is not None
    downloaded = tmp_path / "downloaded.tzst"
    assert client.download(match, downloaded) == size
    assert _sha256(downloaded) == _sha256(archive)
    restored = fresh_dir(tmp_path / "restored")
    client.extract(downloaded, restored)
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_matching_order_scopes_and_versions(emulator: CacheEmulator, tmp_path: Path) -> None:
    version = cache_version(PATHS)
    emulator.put_entry(DEFAULT_BRANCH, "deps-linux-aaa", version, b"main")
    client = make_client(emulator)

    def matched(key: str, restore: list[str], paths: list[str] = PATHS) -> str | None:
        match = client.lookup(key, restore, paths)
        return match.matched_key if match else None

    # only the default branch has it: found through the fallback scope
    assert matched("deps-linux-bbb", ["deps-linux-"]) == "deps-linux-aaa"
    emulator.put_entry(BRANCH, "deps-linux-old", version, b"1")
    emulator.put_entry(BRANCH, "deps-linux-new", version, b"2")
    emulator.put_entry(BRANCH, "deps-linux-bbb", version, b"3")
    emulator.put_entry(BRANCH, "deps-linux-bbb-later", version, b"4")
    # exact beats a newer prefix match; the current branch beats the default branch
    assert matched("deps-linux-bbb", ["deps-linux-"]) == "deps-linux-bbb"
    # prefix of the primary key: the newest
    assert matched("deps-linux-b", []) == "deps-linux-bbb-later"
    # restore keys in order, newest among each prefix's matches
    assert matched("deps-mac-1", ["deps-linux-n", "deps-linux-"]) == "deps-linux-new"
    assert matched("deps-mac-1", ["deps-linux-"]) == "deps-linux-bbb-later"
    # another version (other paths) does not match
    assert matched("deps-linux-bbb", ["deps-linux-"], ["other/path"]) is None
    assert matched("nothing", ["no-"]) is None

    # saves go to the current branch; the same key may exist on another branch
    workspace = tmp_path / "ws"
    build_tree(workspace)
    save_tree(client, workspace, "deps-linux-aaa", tmp_path)
    assert sorted(e.scope for e in emulator.finalized() if e.key == "deps-linux-aaa") == [
        BRANCH,
        DEFAULT_BRANCH,
    ]


# --- the service: refusals ------------------------------------------------------------------


def test_existing_entry_is_a_409_before_any_archiving(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    client = make_client(emulator)
    workspace = tmp_path / "ws"
    build_tree(workspace)
    save_tree(client, workspace, "k-1", tmp_path)
    with pytest.raises(EntryExistsError, match="already exists"):
        client.reserve("k-1", client.version(PATHS))
    assert emulator.calls_of("CreateCacheEntry")[-1].status == 409
    # the facade reports it as "not saved" (informational) and uploads nothing
    archive = tmp_path / "k-1.tzst"
    assert client.save("k-1", PATHS, archive) is None
    assert len(emulator.calls_of("FinalizeCacheEntryUpload")) == 1
    # another job (same token scopes) reserving the same key while ours is pending also gets 409
    client.reserve("k-2", client.version(PATHS))
    with pytest.raises(EntryExistsError):
        make_client(emulator).reserve("k-2", client.version(PATHS))


def test_read_only_token_and_cache_modes(emulator: CacheEmulator, tmp_path: Path) -> None:
    version = cache_version(PATHS)
    emulator.put_entry(DEFAULT_BRANCH, "k-main", version, b"main")
    read_only = make_client(emulator, make_token([(DEFAULT_BRANCH, READ)]))
    with pytest.raises(WriteDeniedError, match="cache write denied:"):
        read_only.reserve("k-new", version)
    archive = tmp_path / "ready.tzst"
    archive.write_bytes(b"never uploaded")
    assert read_only.save("k-new", PATHS, archive) is None
    assert read_only.lookup("k-main", [], PATHS) is not None  # reading still works
    assert not [e for e in emulator.entries if e.key == "k-new"]

    calls = len(emulator.calls)
    read_mode = make_client(emulator, ACTIONS_CACHE_MODE="read")
    with pytest.raises(WriteDeniedError, match="ACTIONS_CACHE_MODE=read"):
        read_mode.reserve("k-new", version)
    write_only = make_client(emulator, ACTIONS_CACHE_MODE="write-only")
    assert write_only.lookup("k-main", [], PATHS) is None
    assert len(emulator.calls) == calls  # neither asked the service


def test_read_denied_is_a_miss(emulator: CacheEmulator) -> None:
    emulator.put_entry(BRANCH, "k", cache_version(PATHS), b"x")
    client = make_client(emulator, make_token([(BRANCH, WRITE)]))
    assert client.lookup("k", [], PATHS) is None
    assert emulator.calls_of("GetCacheEntryDownloadURL")[-1].status == 403


# --- the service: retries -------------------------------------------------------------------


def test_429_waits_for_retry_after_then_succeeds(emulator: CacheEmulator) -> None:
    emulator.put_entry(BRANCH, "k", cache_version(PATHS), b"x")
    client = make_client(emulator)
    emulator.fail(429, methods=["GetCacheEntryDownloadURL"], retry_after=1)
    started = time.monotonic()
    assert client.lookup("k", [], PATHS) is not None
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in emulator.calls_of("GetCacheEntryDownloadURL")] == [429, 200]


def test_429_without_a_usable_retry_after_gives_up(emulator: CacheEmulator) -> None:
    client = make_client(emulator)
    emulator.fail(429, methods=["CreateCacheEntry"], retry_after=600)
    started = time.monotonic()
    with pytest.raises(RateLimitedError, match="resets in 600 s") as error:
        client.reserve("k", client.version(PATHS))
    assert error.value.retry_after == 600
    assert time.monotonic() - started < 5
    emulator.fail(429, methods=["CreateCacheEntry"])
    with pytest.raises(RateLimitedError, match="no Retry-After"):
        client.reserve("k", client.version(PATHS))
    emulator.fail(429, count=10, methods=["CreateCacheEntry"], retry_after=0)
    with pytest.raises(RateLimitedError, match="after 3 tries"):  # bounded: 2 retries
        client.reserve("k", client.version(PATHS))
    assert len(emulator.calls_of("CreateCacheEntry")) == 5


def test_503_and_dropped_connections_are_retried(emulator: CacheEmulator, tmp_path: Path) -> None:
    client = make_client(emulator)
    emulator.fail(503, count=2, methods=["CreateCacheEntry"])
    emulator.fail(0, count=1, methods=["FinalizeCacheEntryUpload"])
    workspace = tmp_path / "ws"
    build_tree(workspace)
    assert save_tree(client, workspace, "k", tmp_path) > 0
    assert [c.status for c in emulator.calls_of("CreateCacheEntry")] == [503, 503, 200]
    assert [c.status for c in emulator.calls_of("FinalizeCacheEntryUpload")] == [0, 200]
    emulator.fail(500, count=5, methods=["GetCacheEntryDownloadURL"])
    with pytest.raises(GhaCacheError, match="failed after 5 attempts: HTTP 500"):
        client.lookup("k", [], PATHS)


def test_quota_exhausted_is_reported(emulator: CacheEmulator) -> None:
    client = make_client(emulator)
    emulator.fail(403, methods=["CreateCacheEntry"], message="insufficient usage to create cache")
    with pytest.raises(QuotaError, match="quota"):
        client.reserve("k", client.version(PATHS))


@pytest.mark.parametrize("status", [403, 429, 500])
def test_a_full_cache_is_a_store_full_error_and_never_retried(
    emulator: CacheEmulator, status: int
) -> None:
    client = make_client(emulator)
    message = "insufficient usage to create cache entry"
    emulator.fail(status, count=5, methods=["CreateCacheEntry"], message=message, retry_after=0)
    with pytest.raises(StoreFullError, match="delete caches") as caught:
        client.reserve("k", client.version(PATHS))
    assert isinstance(caught.value, QuotaError) and isinstance(caught.value, GhaCacheError)
    assert "10 GB" in str(caught.value) and message in str(caught.value)
    assert len(emulator.calls_of("CreateCacheEntry")) == 1  # as @actions/cache: no retry


def test_a_full_cache_on_the_legacy_service(emulator: CacheEmulator) -> None:
    env = gha_env(emulator, ACTIONS_CACHE_URL=emulator.v1_url)
    env["GITHUB_SERVER_URL"] = "https://ghes.example.com"
    client = GhaCacheClient(GhaCacheConfig.from_env(env), policy=FAST_RETRIES)
    emulator.fail(400, methods=["reserveCache"], message="insufficient usage")
    with pytest.raises(QuotaError, match="quota") as caught:
        client.reserve("v1-key", client.version(PATHS))
    assert isinstance(caught.value, StoreFullError)
    assert [call.status for call in emulator.calls_of("reserveCache")] == [400]


# --- blob writes ----------------------------------------------------------------------------


def test_blocks_and_the_block_list_are_retried_by_the_policy(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    retry = RetryPolicy(attempts=3, base_delay=0.01)
    transfer = TransferOptions(block_size=MiB, upload_concurrency=2, retry=retry)
    client = make_client(emulator, transfer=transfer)
    workspace = tmp_path / "ws"
    build_tree(workspace, big=3 * MiB)
    emulator.fail_uploads(503, count=2, methods=["PutBlock"], retry_after=0)
    emulator.fail_uploads(0, count=1, methods=["PutBlock"])  # a dropped connection
    emulator.fail_uploads(500, count=2, methods=["PutBlockList"])
    save_tree(client, workspace, "blocks", tmp_path)
    blocks = [status for api, status in emulator.uploads if api == "PutBlock"]
    assert sorted(set(blocks)) == [0, 201, 503] and blocks.count(503) == 2
    committed = emulator.blob_client(emulator.finalized()[0]).get_block_list("committed")[0]
    assert blocks.count(201) == len(committed) >= 4
    lists = [status for api, status in emulator.uploads if api == "PutBlockList"]
    assert lists == [500, 500, 201]
    restored = fresh_dir(tmp_path / "restored")
    assert client.restore("blocks", [], PATHS, restored) is not None
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))

    # a block refused every time: the save fails after the policy's attempts, not the SDK's
    emulator.fail_uploads(503, count=10, methods=["PutBlock"])
    emulator.uploads.clear()
    with pytest.raises(TransferError, match="failed after 3 attempts: HTTP 503"):
        save_tree(client, workspace, "blocks-2", tmp_path)
    assert emulator.uploads.count(("PutBlock", 503)) <= 3 * 2  # two blocks in flight at most


def test_put_blob_is_retried_and_refusals_are_final(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    client = make_client(emulator)  # FAST_TRANSFER: 3 attempts
    workspace = tmp_path / "ws"
    build_tree(workspace)
    emulator.fail_uploads(500, count=1, methods=["PutBlob"])
    emulator.fail_uploads(429, count=1, methods=["PutBlob"], retry_after=0)
    save_tree(client, workspace, "one", tmp_path)
    assert emulator.uploads == [("PutBlob", 500), ("PutBlob", 429), ("PutBlob", 201)]

    emulator.uploads.clear()
    emulator.fail_uploads(503, count=3, methods=["PutBlob"])
    with pytest.raises(TransferError, match="failed after 3 attempts: HTTP 503"):
        save_tree(client, workspace, "two", tmp_path)
    assert emulator.uploads == [("PutBlob", 503)] * 3

    emulator.uploads.clear()
    emulator.fail_uploads(403, count=1, methods=["PutBlob"])
    with pytest.raises(TransferError, match="HTTP 403"):
        save_tree(client, workspace, "three", tmp_path)
    assert emulator.uploads == [("PutBlob", 403)]


# --- downloads ------------------------------------------------------------------------------


def test_truncated_download_is_detected_and_leaves_nothing(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    emulator.put_entry(BRANCH, "k", cache_version(PATHS), data)
    client = make_client(emulator)
    emulator.truncate_downloads(None)  # every GET is cut short
    match = client.lookup("k", [], PATHS)
    assert match is not None and "/blob/" in match.download_url
    dest = tmp_path / "dl" / "cache.tzst"
    with pytest.raises(TransferError, match="incomplete after 3 attempts"):
        client.download(match, dest)
    assert list((tmp_path / "dl").iterdir()) == []

    emulator.truncate_downloads(1)  # one short response: resumed, then complete
    assert client.download(match, dest) == len(data)
    assert dest.read_bytes() == data
    ranges = [r for method, r, _ in emulator.downloads if method == "GET"]
    half = len(data) // 2  # the emulator cut the first answer in half: resume from there
    assert ranges[-2:] == [f"bytes=0-{len(data) - 1}", f"bytes={half}-{len(data) - 1}"]


def test_download_uses_parallel_ranges(emulator: CacheEmulator, tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 123)
    emulator.put_entry(BRANCH, "k", cache_version(PATHS), data)
    emulator.proxy_downloads = True
    transfer = TransferOptions(
        min_part=2 * MiB, max_part=2 * MiB, retry=RetryPolicy(attempts=2, base_delay=0.01)
    )
    client = make_client(emulator, transfer=transfer)
    match = client.lookup("k", [], PATHS)
    assert match is not None
    dest = tmp_path / "cache.tzst"
    assert client.download(match, dest) == len(data)
    assert dest.read_bytes() == data
    assert emulator.downloads[0][0] == "HEAD"
    gets = sorted(str(r) for method, r, _ in emulator.downloads if method == "GET")
    part = 2 * MiB
    expected = sorted(
        f"bytes={a}-{min(a + part, len(data)) - 1}" for a in range(0, len(data), part)
    )
    assert gets == expected
    assert all(status == 206 for *_, status in emulator.downloads[1:])


def test_no_signature_in_logs(
    emulator: CacheEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.truncate_downloads(1)
    client = make_client(emulator)
    workspace = tmp_path / "ws"
    build_tree(workspace)
    save_tree(client, workspace, "k", tmp_path)
    match = client.restore("k", [], PATHS, fresh_dir(tmp_path / "restored"))
    assert match is not None
    secrets = url_secrets(match.download_url)
    assert secrets and caplog.text
    assert "sig=***" in caplog.text
    for secret in secrets:
        assert secret not in caplog.text
    assert secrets[0] not in repr(match) and secrets[0] not in str(match)


# --- legacy v1 ------------------------------------------------------------------------------


def test_legacy_v1_round_trip_and_refusals(emulator: CacheEmulator, tmp_path: Path) -> None:
    env = gha_env(emulator, ACTIONS_CACHE_URL=emulator.v1_url)
    env["GITHUB_SERVER_URL"] = "https://ghes.example.com"
    config = GhaCacheConfig.from_env(env)
    assert config.protocol == "v1"
    service = LegacyCacheService(config, FAST_RETRIES, chunk_size=MiB, concurrency=3)
    client = GhaCacheClient(config, service=service)
    workspace = tmp_path / "ws"
    build_tree(workspace, big=3 * MiB)
    entry_id = save_tree(client, workspace, "v1-key", tmp_path)
    chunks = emulator.calls_of("uploadChunk")
    assert len(chunks) == math.ceil((emulator.finalized()[0].size or 0) / MiB) >= 3
    assert entry_id == emulator.finalized()[0].id

    restored = fresh_dir(tmp_path / "restored")
    match = client.restore("v1-ke", ["v1-"], PATHS, restored)
    assert match is not None and match.matched_key == "v1-key"
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))
    lookup = emulator.calls_of("getCacheEntry")[-1].request
    assert lookup["keys"] == ["v1-ke,v1-"]

    with pytest.raises(EntryExistsError):
        client.reserve("v1-key", client.version(PATHS))
    read_only = GhaCacheConfig.from_env(
        {**env, "ACTIONS_RUNTIME_TOKEN": make_token([(BRANCH, READ)])}
    )
    with pytest.raises(WriteDeniedError, match="cache write denied:"):
        GhaCacheClient(read_only, policy=FAST_RETRIES).reserve("v1-other", client.version(PATHS))
    assert client.lookup("v1-missing", [], PATHS) is None
