"""Interoperability with the official client: `@actions/cache` (what actions/cache runs),
driven by tests/node/cache-interop.mjs against the same emulator + Azurite.

1. the official client saves a directory; our client restores and extracts it identically;
2. our client saves it (same path string → same version, same key); the official client
   restores it identically.
"""

from __future__ import annotations

import json
from pathlib import Path

from cache_action.stores.gha.archive import create_archive
from cache_action.stores.gha.version import cache_version
from tests.gha_emulator import (
    CacheEmulator,
    build_tree,
    fresh_dir,
    make_client,
    snapshot,
)
from tests.gha_official import PATHS, UPLOADS, OfficialClient


def test_official_save_then_our_restore(
    official: OfficialClient, emulator: CacheEmulator, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws-save"
    build_tree(workspace, big=1024 * 1024)
    saved = official.run(
        emulator, workspace, fresh_dir(tmp_path / "temp1"), "save", "bk-linux-1", json.dumps(PATHS)
    )
    assert saved["cacheId"] > 0, saved["log"]
    # the official client's version is ours for the same path string
    assert emulator.finalized()[0].version == cache_version(PATHS)

    client = make_client(emulator)
    restored = fresh_dir(tmp_path / "ws-restore")
    match = client.restore("bk-linux-2", ["bk-linux-"], PATHS, restored)
    assert match is not None and match.matched_key == "bk-linux-1"
    # actions/cache archives the uploads directory too: it knows nothing of our exclusions
    assert snapshot(restored) == snapshot(workspace)
    assert len(snapshot(restored)["hardlinks"]) == 5


def test_our_save_then_official_restore(
    official: OfficialClient, emulator: CacheEmulator, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws-save"
    build_tree(workspace, big=1024 * 1024)
    client = make_client(emulator)
    target = client.reserve("bk-linux-1", client.version(PATHS))
    archive = tmp_path / "cache.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    assert client.commit(target, archive) > 0

    restored = fresh_dir(tmp_path / "ws-restore")
    result = official.run(
        emulator,
        restored,
        fresh_dir(tmp_path / "temp2"),
        "restore",
        "bk-linux-1",
        json.dumps(PATHS),
        json.dumps(["bk-"]),
    )
    assert result["matchedKey"] == "bk-linux-1", result["log"]
    assert "Cache restored successfully" in result["log"]
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))
    assert len(snapshot(restored)["hardlinks"]) == 5


def test_official_client_sees_our_entry_exists(
    official: OfficialClient, emulator: CacheEmulator, tmp_path: Path
) -> None:
    """Both clients name entries alike: after our save, the official save of the same key
    and paths is the service's 409 (which it logs as info and returns -1)."""
    workspace = tmp_path / "ws"
    build_tree(workspace)
    client = make_client(emulator)
    target = client.reserve("bk-same", client.version(PATHS))
    archive = tmp_path / "cache.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    client.commit(target, archive)
    result = official.run(
        emulator, workspace, fresh_dir(tmp_path / "temp"), "save", "bk-same", json.dumps(PATHS)
    )
    assert result["cacheId"] == -1
    assert "another job may be creating this cache" in result["log"]
    assert emulator.calls_of("CreateCacheEntry")[-1].status == 409
