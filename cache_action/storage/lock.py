"""One writer per root: serve holds the lock for its whole life, gc and prune while they run."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from cache_action.errors import RootLockedError
from cache_action.storage.layout import Layout


@contextlib.contextmanager
def root_lock(layout: Layout, purpose: str) -> Iterator[None]:
    layout.create()
    fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RootLockedError(
                f"{layout.root} is in use by {holder}; stop it before running {purpose}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)
