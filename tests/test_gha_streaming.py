"""Streaming archives to and from the Actions cache: the upload sends blocks while the archive
is written, the restore extracts while the download arrives, and the zstd frame walk that
catches a truncated stream without a file to look at."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path
from typing import IO, cast

import pytest
import zstandard
from azure.core.exceptions import ResourceNotFoundError

from cache_action.scopes import EntryName
from cache_action.storage.layout import Layout
from cache_action.stores.base import HitKind
from cache_action.stores.gha.archive import create_archive
from cache_action.stores.gha.errors import GhaCacheError, TransferError
from cache_action.stores.gha.extract import ZstdFrameCheck
from cache_action.stores.gha.store import GhaStore
from cache_action.stores.gha.transfer import TransferOptions
from cache_action.stores.gha.upload import BlobUpload, GrowingFile
from tests.gha_emulator import (
    BRANCH,
    CacheEmulator,
    build_tree,
    fresh_dir,
    make_client,
    snapshot,
)

pytest_plugins = ["tests.gha_fixtures"]

PATHS = [".buildkit-cache"]
UPLOADS = ".buildkit-cache/.cache-action/uploads"
MiB = 1024 * 1024
KiB = 1024


# --- the zstd frame walk --------------------------------------------------------------------


def _skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A53, len(payload)) + payload


def _frames() -> tuple[bytes, bytes]:
    """(stream, what it decompresses to): a checksummed multi-block frame, a skippable
    frame, and a frame without checksum whose header carries the content size."""
    first = os.urandom(300 * KiB) + bytes(200 * KiB)  # raw and RLE/compressed blocks
    second = b"tail " * 1000
    stream = (
        zstandard.ZstdCompressor(level=3, write_checksum=True).compress(first)
        + _skippable(b"metadata")
        + zstandard.ZstdCompressor(write_checksum=False, write_content_size=True).compress(second)
    )
    return stream, first + second


def _read_checked(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as raw:
        checked = ZstdFrameCheck(raw, path.name)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], checked), read_across_frames=True
        )
        data = reader.read()
        checked.finish()
    return bytes(data)


def test_frame_walk_accepts_concatenated_and_skippable_frames(tmp_path: Path) -> None:
    stream, content = _frames()
    path = tmp_path / "ok.zst"
    path.write_bytes(stream)
    assert _read_checked(path) == content


def test_frame_walk_rejects_every_truncation(tmp_path: Path) -> None:
    stream, _ = _frames()
    path = tmp_path / "cut.zst"
    # every cut inside the first frame's header and first blocks, then a spread over the rest
    cuts = sorted({*range(1, 40), *range(40, len(stream), 997)})
    for cut in cuts:
        path.write_bytes(stream[:cut])
        with pytest.raises(GhaCacheError, match="truncated"):
            _read_checked(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"PK\x03\x04 not zstd at all", "bad frame magic at byte 0"),
        (struct.pack("<I", 0xFD2FB528) + bytes([0b0000_1000]), "reserved bit"),
    ],
)
def test_frame_walk_names_what_is_wrong(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.zst"
    path.write_bytes(data)
    with pytest.raises(GhaCacheError, match=message):
        _read_checked(path)


# --- restore: extraction while the download arrives -----------------------------------------


def _saved_entry(emulator: CacheEmulator, tmp_path: Path, big: int) -> Path:
    """A workspace saved as entry `k-1`; returns the workspace."""
    client = make_client(emulator)
    workspace = tmp_path / "ws"
    build_tree(workspace, big=big)
    target = client.reserve("k-1", client.version(PATHS))
    archive = tmp_path / "saved.tzst"
    create_archive(workspace, PATHS, archive, exclude=[UPLOADS])
    client.commit(target, archive)
    archive.unlink()
    return workspace


def test_restore_extracts_while_downloading_in_bounded_memory(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    workspace = _saved_entry(emulator, tmp_path, big=24 * MiB)
    transfer = TransferOptions(
        min_part=MiB, max_part=MiB, download_window=3, attempts=2, base_delay=0.01
    )
    client = make_client(emulator, transfer=transfer)
    restored = fresh_dir(tmp_path / "restored")
    tracemalloc.start()
    try:
        match = client.restore("k-1", [], PATHS, restored)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert match is not None and match.exact
    assert snapshot(restored) == snapshot(workspace, exclude=(UPLOADS,))
    assert peak < 12 * MiB, peak  # three 1 MiB parts ahead, not the 24 MiB archive
    leftovers = [p for p in tmp_path.rglob("*") if p.suffix in (".tzst", ".part")]
    assert leftovers == []  # no archive file was written


def test_a_download_that_fails_midway_leaves_the_destination_untouched(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    _saved_entry(emulator, tmp_path, big=6 * MiB)
    transfer = TransferOptions(min_part=MiB, max_part=MiB, attempts=2, base_delay=0.01)
    client = make_client(emulator, transfer=transfer)
    restored = fresh_dir(tmp_path / "restored")
    (restored / "mine").write_text("kept\n")
    emulator.truncate_downloads(None)  # every GET is cut short, every retry too
    with pytest.raises(TransferError, match="incomplete after 2 attempts"):
        client.restore("k-1", [], PATHS, restored)
    assert sorted(p.name for p in restored.iterdir()) == ["mine"]


# --- save: blocks while the archive grows ---------------------------------------------------


def _uncommitted_blocks(emulator: CacheEmulator) -> int:
    (entry,) = emulator.entries
    try:
        return len(emulator.blob_client(entry).get_block_list("uncommitted")[1])
    except ResourceNotFoundError:  # no block has arrived yet
        return 0


def test_blocks_are_sent_while_the_archive_is_written(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    options = TransferOptions(block_size=MiB, single_put_max=2 * MiB, upload_concurrency=2)
    client = make_client(emulator, transfer=options)
    target = client.reserve("growing-1", client.version(PATHS))
    archive = tmp_path / "growing.tzst"
    content = os.urandom(5 * MiB + 300 * KiB)
    upload = client.start_upload(target, archive)
    with open(archive, "wb", buffering=0) as out:
        out.write(content[: 3 * MiB])
        upload.grown(3 * MiB)  # past the single-put limit: blocks 0-2 go out now
        deadline = time.monotonic() + 20
        while _uncommitted_blocks(emulator) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _uncommitted_blocks(emulator) == 3  # staged before the file is complete
        out.write(content[3 * MiB :])
        upload.grown(len(content))
    client.finish(target, upload)

    (entry,) = emulator.finalized()
    blob = emulator.blob_client(entry)
    blocks = blob.get_block_list("committed")[0]
    assert [block.size for block in blocks] == [MiB] * 5 + [300 * KiB]
    assert blob.download_blob().readall() == content
    assert entry.size == len(content)


def test_an_archive_under_the_single_put_limit_stays_one_request(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    options = TransferOptions(block_size=MiB, single_put_max=4 * MiB)
    client = make_client(emulator, transfer=options)
    target = client.reserve("small-1", client.version(PATHS))
    archive = tmp_path / "small.tzst"
    content = os.urandom(3 * MiB)
    upload = client.start_upload(target, archive)
    with open(archive, "wb", buffering=0) as out:
        for start in range(0, len(content), MiB):
            out.write(content[start : start + MiB])
            upload.grown(min(start + MiB, len(content)))
    client.finish(target, upload)
    blob = emulator.blob_client(emulator.finalized()[0])
    assert blob.get_block_list("committed")[0] == []  # one Put Blob
    assert blob.download_blob().readall() == content


def test_a_refused_part_fails_the_upload_and_stops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(bytes(10 * KiB))
    sent: list[int] = []
    lock = threading.Lock()

    def send(index: int, start: int, end: int) -> None:
        if index == 1:
            raise TransferError("part 1 refused")
        with lock:
            sent.append(index)

    upload = GrowingFile(path, KiB, 1, send)
    with pytest.raises(TransferError, match="part 1 refused"):
        upload.finish()
    assert sent == [0]  # nothing after the failed part was sent


def test_the_store_save_overlaps_archiving_and_upload(
    emulator: CacheEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through GhaStore: an archive past the single-put limit has blocks on their way while
    the archiver is still writing it, and the entry restores to the same tree."""
    options = TransferOptions(block_size=MiB, single_put_max=MiB, upload_concurrency=2)
    client = make_client(emulator, transfer=options)
    workspace = tmp_path / "ws"
    cache = build_tree(workspace)
    layer = os.urandom(6 * MiB)
    blob = Path("org/repo/blobs/sha256") / hashlib.sha256(layer).hexdigest()
    (cache / "blobs" / "sha256" / blob.name).write_bytes(layer)
    os.link(cache / "blobs" / "sha256" / blob.name, cache / blob)
    progress: list[tuple[int, int]] = []  # (archive size told, blocks submitted by then)
    original = BlobUpload.grown

    def grown(self: BlobUpload, size: int) -> None:
        original(self, size)
        progress.append((size, self.blocks_submitted))

    monkeypatch.setattr(BlobUpload, "grown", grown)
    store = GhaStore(client, "1-1")
    name = EntryName("buildkit", "app", BRANCH)
    result = store.save(Layout(cache), name)
    assert result.saved, result
    assert any(blocks and size < result.bytes_uploaded for size, blocks in progress), progress
    assert len(emulator.blob_client(emulator.finalized()[0]).get_block_list()[0]) >= 6

    restored = tmp_path / "restored" / ".buildkit-cache"
    assert store.restore(Layout(restored), [[name]]).hit == HitKind.EXACT
    assert (restored / blob).read_bytes() == layer
