"""Streaming archives to and from the Actions cache: the upload sends blocks while the archive
is written, the restore extracts while the download arrives, and the zstd frame walk that
catches a truncated stream without a file to look at."""

from __future__ import annotations

import hashlib
import os
import struct
import time
import tracemalloc
from pathlib import Path
from typing import IO, cast

import pytest
import zstandard
from azure.core.exceptions import ResourceNotFoundError

from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.stores.base import HitKind
from cache_action.stores.gha.archive import create_archive
from cache_action.stores.gha.errors import GhaCacheError, TransferError
from cache_action.stores.gha.extract import ZstdFrameCheck
from cache_action.stores.gha.store import GhaStore
from cache_action.stores.gha.transfer import TransferOptions
from cache_action.stores.gha.upload import BlockPipeline
from cache_action.stores.retry import RetryPolicy
from tests.gha_emulator import (
    BRANCH,
    CacheEmulator,
    build_tree,
    fresh_dir,
    make_client,
    snapshot,
)

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
        min_part=MiB,
        max_part=MiB,
        download_window=3,
        retry=RetryPolicy(attempts=2, base_delay=0.01),
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
    transfer = TransferOptions(
        min_part=MiB, max_part=MiB, retry=RetryPolicy(attempts=2, base_delay=0.01)
    )
    client = make_client(emulator, transfer=transfer)
    restored = fresh_dir(tmp_path / "restored")
    (restored / "mine").write_text("kept\n")
    emulator.truncate_downloads(None)  # every GET is cut short, every retry too
    with pytest.raises(TransferError, match="incomplete after 2 attempts"):
        client.restore("k-1", [], PATHS, restored)
    assert sorted(p.name for p in restored.iterdir()) == ["mine"]


# --- save: blocks while the archive is produced ---------------------------------------------


def _uncommitted_blocks(emulator: CacheEmulator) -> int:
    (entry,) = emulator.entries
    try:
        return len(emulator.blob_client(entry).get_block_list("uncommitted")[1])
    except ResourceNotFoundError:  # no block has arrived yet
        return 0


def test_blocks_are_sent_while_the_archive_is_written(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    options = TransferOptions(block_size=MiB, upload_concurrency=2)
    client = make_client(emulator, transfer=options)
    target = client.reserve("growing-1", client.version(PATHS))
    content = os.urandom(5 * MiB + 300 * KiB)
    upload = client.start_upload(target)
    upload.write(content[: 3 * MiB])  # three full blocks: on their way now
    deadline = time.monotonic() + 20
    while _uncommitted_blocks(emulator) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _uncommitted_blocks(emulator) >= 2  # staged before the archive is complete
    upload.write(content[3 * MiB :])
    client.finish(target, upload)

    (entry,) = emulator.finalized()
    blob = emulator.blob_client(entry)
    blocks = blob.get_block_list("committed")[0]
    assert [block.size for block in blocks] == [MiB] * 5 + [300 * KiB]
    assert blob.download_blob().readall() == content
    assert entry.size == len(content)


def test_an_archive_that_fits_one_block_is_one_put_blob(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    client = make_client(emulator, transfer=TransferOptions(block_size=4 * MiB))
    target = client.reserve("small-1", client.version(PATHS))
    content = os.urandom(3 * MiB)
    upload = client.start_upload(target)
    for start in range(0, len(content), MiB):
        upload.write(content[start : start + MiB])
    client.finish(target, upload)
    blob = emulator.blob_client(emulator.finalized()[0])
    assert blob.get_block_list("committed")[0] == []  # one Put Blob
    assert blob.download_blob().readall() == content


def test_upload_memory_is_the_blocks_in_flight_not_the_archive(
    emulator: CacheEmulator, tmp_path: Path
) -> None:
    options = TransferOptions(block_size=2 * MiB, upload_concurrency=2)
    client = make_client(emulator, transfer=options)
    target = client.reserve("bounded-1", client.version(PATHS))
    content = os.urandom(40 * MiB)
    tracemalloc.start()
    try:
        upload = client.start_upload(target)
        for start in range(0, len(content), 512 * KiB):
            upload.write(content[start : start + 512 * KiB])
        client.finish(target, upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MiB, peak  # 3 buffers of 2 MiB (+ the SDK's request), not 40 MiB
    blob = emulator.blob_client(emulator.finalized()[0])
    assert blob.download_blob().readall() == content


def test_a_refused_block_fails_the_upload_and_stops_the_rest() -> None:
    sent: list[int] = []

    def send(index: int, offset: int, data: memoryview) -> None:
        if index == 1:
            raise TransferError("block 1 refused")
        sent.append(index)

    pipeline = BlockPipeline(KiB, 1, send)
    with pytest.raises(TransferError, match="block 1 refused"):
        for _ in range(10):
            pipeline.write(bytes(KiB))
        pipeline.finish()
    pipeline.abort()
    assert sent == [0]  # nothing after the refused block was sent


def test_the_store_save_uploads_while_archiving_and_writes_no_archive(
    emulator: CacheEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through GhaStore: blocks are handed to the senders while the archiver is still
    writing, no archive file appears anywhere, and the entry restores to the same tree."""
    options = TransferOptions(block_size=MiB, upload_concurrency=2)
    client = make_client(emulator, transfer=options)
    workspace = tmp_path / "ws"
    cache = build_tree(workspace)
    layer = os.urandom(6 * MiB)
    blob = Path("org/repo/blobs/sha256") / hashlib.sha256(layer).hexdigest()
    (cache / "blobs" / "sha256" / blob.name).write_bytes(layer)
    os.link(cache / "blobs" / "sha256" / blob.name, cache / blob)
    progress: list[tuple[int, int]] = []  # (bytes written, blocks handed off by then)
    original = BlockPipeline.write

    def write(self: BlockPipeline, data: bytes) -> int:
        written = original(self, data)
        progress.append((self.size, self.blocks))
        return written

    monkeypatch.setattr(BlockPipeline, "write", write)
    store = GhaStore(client, "1-1")
    name = EntryName("buildkit", "app", BRANCH)
    before = set(tmp_path.rglob("*"))
    result = store.save(Storage.open(cache), name)
    assert result.saved, result
    assert any(blocks and size < result.bytes_uploaded for size, blocks in progress), progress
    committed = emulator.blob_client(emulator.finalized()[0]).get_block_list()[0]
    assert len(committed) == -(-result.bytes_uploaded // MiB)
    new_files = {p for p in set(tmp_path.rglob("*")) - before if "emulator" not in p.parts}
    assert {p.name for p in new_files} <= {"saved.json", "restored.json", "lock"}, new_files

    restored = tmp_path / "restored" / ".buildkit-cache"
    assert store.restore(Storage.open(restored), [[name]]).hit == HitKind.EXACT
    assert (restored / blob).read_bytes() == layer
