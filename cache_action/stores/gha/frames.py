"""The zstd frames an Actions cache archive is made of, so one blob can be read by range.

An archive is still one pax tar, compressed as zstd: what actions/cache reads (`zstd -d` decodes
concatenated frames and skips skippable ones). Its bytes are laid out so a lazy restore can read
one blob without the rest:

- every pool blob's tar member (its header, its data, its padding) is a frame of its own, of
  raw blocks: layers are compressed already, so storing them as they are costs no CPU and
  the frame's size is the member's plus 3 bytes per 128 KiB;
- what lies between (directories, indexes, the access record, repositories' hard links, the
  end of the archive) is in ordinary compressed frames;
- last, a skippable frame holds the archive's index: the entry's snapshot (its repositories,
  blobs and access record) and, per blob, its frame's byte range, where the blob's data starts
  in the frame once decoded, and its size. Its last 16 bytes are a footer (`CAIDX001` and the
  index's length), so a reader finds it with one ranged GET of the archive's end.
"""

from __future__ import annotations

import json
import struct
from typing import Any

FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
# Frame header descriptor 0: no content size, no checksum, no dictionary; a window of 128 KiB
# (exponent 7 = 2^17) bounds raw blocks at 128 KiB.
RAW_FRAME_HEADER = FRAME_MAGIC + bytes([0x00, 0x38])
RAW_BLOCK_BYTES = 128 * 1024
SKIPPABLE_MAGIC = struct.pack("<I", 0x184D2A5E)
FOOTER_MAGIC = b"CAIDX001"
FOOTER_BYTES = len(FOOTER_MAGIC) + 8
INDEX_FORMAT = "cache-action/archive-index/v1"


def raw_block(data: bytes | bytearray | memoryview, last: bool) -> bytes:
    """A raw block's 3-byte header (last flag, type 0, size) followed by the data."""
    if len(data) > RAW_BLOCK_BYTES:
        raise ValueError(f"a raw block holds at most {RAW_BLOCK_BYTES} bytes")
    header = (len(data) << 3) | int(last)
    return header.to_bytes(3, "little") + bytes(data)


class RawFrame:
    """Writes a frame of raw blocks as data arrives; `close` ends it (an empty last block
    when the data was a whole number of blocks, or none at all)."""

    def __init__(self, write: Any) -> None:
        self._write = write
        self._pending = bytearray()
        self._write(RAW_FRAME_HEADER)

    def write(self, data: bytes | memoryview) -> None:
        self._pending += data
        while len(self._pending) > RAW_BLOCK_BYTES:  # keep the last block for `close`
            self._write(raw_block(memoryview(self._pending)[:RAW_BLOCK_BYTES], last=False))
            del self._pending[:RAW_BLOCK_BYTES]

    def close(self) -> None:
        self._write(raw_block(self._pending, last=True))
        self._pending.clear()


def index_trailer(document: dict[str, Any]) -> bytes:
    """The skippable frame holding the archive's index, footer last."""
    body = json.dumps({"format": INDEX_FORMAT, **document}, separators=(",", ":")).encode()
    payload = body + FOOTER_MAGIC + struct.pack("<Q", len(body))
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def index_length(footer: bytes) -> int | None:
    """The index's length from an archive's last FOOTER_BYTES, or None for an archive
    without one (an older one, or one the official client wrote)."""
    if len(footer) != FOOTER_BYTES or not footer.startswith(FOOTER_MAGIC):
        return None
    return int(struct.unpack("<Q", footer[len(FOOTER_MAGIC) :])[0])


def parse_index(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        return None
    return document
