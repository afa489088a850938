"""One writer per root: serve holds the lock for its whole life, gc, prune, restore and save
while they run.

The lock is a flock on `.cache-action/lock`, so it works across processes and containers that
mount the same root. Within one process it is shared: the standalone service saves and prunes
the root it serves (under the lock its server holds), and the action's post stage saves what it
has just pruned, each through the same `root_lock` call the other entry points use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from cache_action.errors import RootLockedError
from cache_action.storage.layout import Layout

_held: dict[Path, tuple[int, int]] = {}  # lock file → (its descriptor, holders in this process)
_guard = threading.Lock()


@contextlib.contextmanager
def root_lock(layout: Layout, purpose: str) -> Iterator[None]:
    layout.create()
    path = layout.lock_path
    with _guard:
        fd, holders = _held.get(path) or (_acquire(path, layout, purpose), 0)
        _held[path] = (fd, holders + 1)
    try:
        yield
    finally:
        with _guard:  # the last holder releases it, whichever thread that is
            fd, holders = _held.pop(path)
            if holders > 1:
                _held[path] = (fd, holders - 1)
            else:
                os.close(fd)


def _acquire(path: Path, layout: Layout, purpose: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RootLockedError(
            f"{layout.root} is in use by {holder}; stop it before running {purpose}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{purpose} (pid {os.getpid()})".encode(), 0)
    return fd
