"""Crash-safe file primitives: nothing partial is ever visible under its final name."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort on filesystems that refuse directory fsync."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(final: Path) -> Path:
    """A sibling temp name: same filesystem as the target, so the rename is atomic."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")


def write_temp(final: Path, data: bytes) -> Path:
    """`data` in an fsynced temp file beside `final`, ready to be renamed or linked there."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename: readers see the old file or the whole new one."""
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def link_or_copy(source: Path, target: Path) -> None:
    """Publish `source` under `target` (hard link, else a verified-by-construction copy).

    An existing target is left alone: targets are content-addressed, so it is the same bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return
    except FileExistsError:
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    tmp = temp_name(target)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
