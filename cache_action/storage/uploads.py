"""Upload sessions: bytes stream to a temp file while being hashed; commit verifies, then renames.

Sessions live in memory (a hash state cannot be persisted) with their data under
`.cache-action/uploads/`; a restart forgets them and deletes the files, and idle sessions are
purged. Hashing and writing run in a worker thread, overlapped with reading the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cache_action.errors import ErrorCode, OCIError
from cache_action.storage.blobs import BlobStore
from cache_action.storage.digests import Digest, Hasher
from cache_action.storage.layout import Layout

BATCH_BYTES = 1 << 20
STALE_AFTER_SECONDS = 3600.0


@dataclass
class UploadSession:
    id: str
    name: str
    path: Path
    algorithm: str = "sha256"
    offset: int = 0
    hasher: Hasher = field(default_factory=hashlib.sha256)
    updated: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def expect(self, digest: Digest) -> None:
        """Hash with the digest's algorithm from the start when the digest is known up front."""
        if self.offset == 0 and digest.algorithm != self.algorithm:
            self.algorithm = digest.algorithm
            self.hasher = digest.hasher()


class Uploads:
    def __init__(self, layout: Layout, blobs: BlobStore) -> None:
        self.layout = layout
        self.blobs = blobs
        self._sessions: dict[str, UploadSession] = {}

    def start(self, name: str) -> UploadSession:
        self.layout.uploads_dir.mkdir(parents=True, exist_ok=True)
        session_id = str(uuid.uuid4())
        path = self.layout.uploads_dir / session_id
        path.touch()
        session = UploadSession(session_id, name, path)
        self._sessions[session_id] = session
        return session

    def get(self, name: str, session_id: str) -> UploadSession:
        session = self._sessions.get(session_id)
        if session is None or session.name != name:
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {session_id[:100]!r} is unknown")
        return session

    async def append(
        self, session: UploadSession, chunks: AsyncIterator[bytes], limit: int | None = None
    ) -> int:
        """Stream `chunks` onto the session; returns the bytes written. Over `limit` → error."""
        loop = asyncio.get_running_loop()
        written = 0
        sink = await asyncio.to_thread(open, session.path, "ab")
        with sink:
            pending: asyncio.Future[None] | None = None
            try:
                async for batch in _batched(chunks):
                    written += sum(map(len, batch))
                    if limit is not None and written > limit:
                        raise OCIError(
                            ErrorCode.SIZE_INVALID,
                            f"body is longer than the declared {limit} bytes",
                        )
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, _write, sink, session, batch)
            finally:
                if pending is not None:
                    await pending
        session.updated = time.monotonic()
        return written

    def rewind(self, session: UploadSession, offset: int, hasher: Hasher) -> None:
        """Undo a rejected chunk: the session returns to a consistent state."""
        with open(session.path, "rb+") as f:
            f.truncate(offset)
        session.offset = offset
        session.hasher = hasher

    async def finish(self, session: UploadSession, digest: Digest) -> int:
        """Verify the whole upload against `digest`, then publish it. Returns its size."""
        self._sessions.pop(session.id, None)
        try:
            actual = await asyncio.to_thread(_final_digest, session, digest.algorithm)
            if actual != digest.hex:
                raise OCIError(
                    ErrorCode.DIGEST_INVALID,
                    f"digest mismatch: the upload hashes to {digest.algorithm}:{actual}, "
                    f"not {digest}",
                )
            await asyncio.to_thread(_fsync_file, session.path)
            await asyncio.to_thread(self.blobs.commit, session.name, digest, session.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                session.path.unlink()
        return session.offset

    def cancel(self, session: UploadSession) -> None:
        self._sessions.pop(session.id, None)
        with contextlib.suppress(FileNotFoundError):
            session.path.unlink()

    def purge_stale(self, max_idle: float = STALE_AFTER_SECONDS) -> int:
        """Forget sessions idle for longer than `max_idle` seconds; returns how many."""
        now = time.monotonic()
        stale = [s for s in self._sessions.values() if now - s.updated > max_idle]
        for session in stale:
            if not session.lock.locked():
                self.cancel(session)
        return len(stale)

    def clear(self) -> None:
        """At startup: no session survives a restart."""
        self._sessions.clear()
        if self.layout.uploads_dir.is_dir():
            for leftover in self.layout.uploads_dir.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _write(sink: BinaryIO, session: UploadSession, parts: list[bytes]) -> None:
    sink.writelines(parts)
    for data in parts:
        session.hasher.update(data)
        session.offset += len(data)


def _final_digest(session: UploadSession, algorithm: str) -> str:
    if algorithm == session.algorithm:
        return session.hasher.hexdigest()
    hasher = hashlib.new(algorithm)  # chunked upload hashed with sha256, finished as sha512
    with open(session.path, "rb") as f:
        while block := f.read(BATCH_BYTES):
            hasher.update(block)
    return hasher.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


async def _batched(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Group network reads into ~1 MiB batches for the worker thread, without copying them."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= BATCH_BYTES:
            yield parts
            parts, size = [], 0
    if parts:
        yield parts
