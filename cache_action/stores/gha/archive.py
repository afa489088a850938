"""Cache archives: pax tar + zstd, as actions/cache writes and reads them on Linux.

actions/cache creates `tar --posix -cf cache.tzst -P -C $GITHUB_WORKSPACE --files-from
manifest.txt --use-compress-program zstdmt`, the manifest holding paths relative to the
workspace (`.buildkit-cache`), and extracts with `tar -xf cache.tzst -P -C $GITHUB_WORKSPACE
--use-compress-program unzstd`. `create_archive` writes the same: pax headers, member names
relative to the base directory (`.buildkit-cache/blobs/...`), one zstd frame (level 3, no long
mode, multi-threaded, with a content checksum), streamed straight to the file. A file with more
than one link is stored once; its other names are tar hard-link members.

Extraction lives in `extract.py`.
"""

from __future__ import annotations

import grp
import logging
import os
import posixpath
import pwd
import re
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from cache_action.errors import InputError
from cache_action.stores.gha.errors import GhaCacheError
from cache_action.stores.gha.frames import RawFrame, index_trailer

log = logging.getLogger("cache_action.stores.gha")

MiB = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: GNU tar pads archives to whole records
ZSTD_LEVEL = 3


@dataclass
class ArchiveStats:
    members: int = 0
    files: int = 0
    hardlinks: int = 0
    bytes_in: int = 0  # file content bytes read
    size: int = 0  # archive size on disk
    skipped: list[str] = field(default_factory=list)  # special files left out
    # With blob frames: digest → [frame start, frame end, data offset in the frame, size]
    blob_frames: dict[str, list[int]] = field(default_factory=dict)


# --- create -------------------------------------------------------------------------------


def create_archive(
    base_dir: Path,
    paths: Sequence[str],
    out_file: Path,
    *,
    exclude: Iterable[str] = (),
    level: int = ZSTD_LEVEL,
    threads: int = -1,
    arcname: str | None = None,
) -> ArchiveStats:
    """Archive `paths` (relative to `base_dir`, or absolute inside it) into `out_file`; see
    `write_archive`. The file is removed if archiving fails, and never archives itself."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out_file, "wb") as out:
            return write_archive(
                base_dir,
                paths,
                out,
                exclude=exclude,
                level=level,
                threads=threads,
                arcname=arcname,
                not_this=out_file.resolve(),
            )
    except BaseException:
        out_file.unlink(missing_ok=True)
        raise


def write_archive(
    base_dir: Path,
    paths: Sequence[str],
    out: ArchiveSink,
    *,
    exclude: Iterable[str] = (),
    level: int = ZSTD_LEVEL,
    threads: int = -1,
    arcname: str | None = None,
    not_this: Path | None = None,
    index: dict[str, Any] | None = None,
    pending: PendingFiles | None = None,
) -> ArchiveStats:
    """Archive `paths` (relative to `base_dir`, or absolute inside it) into the writable `out`
    (a file, or an upload that sends the archive as it is produced).

    `index` (the Actions cache store's): lay the archive out for reading one blob by range
    (frames.py): each pool blob in a raw frame of its own, and a last skippable frame with
    `index` and every blob's byte range. Without it, one compressed frame as actions/cache
    writes.

    `exclude` names subtrees relative to `base_dir` (`.buildkit-cache/.cache-action/uploads`)
    that are left out with everything below them. `threads=-1` uses every CPU (zstdmt).
    `arcname` stores a single path under another name (a root archived as `.buildkit-cache`
    wherever it lives); `exclude` is then relative to that name. `not_this` is a file left
    out wherever it is met (the archive being written). `pending` names files still arriving:
    each is archived in its place, once it is there."""
    base = base_dir.resolve()
    relative = [_relative_to_base(base, path) for path in paths]
    if not relative:
        raise InputError("path", list(paths), "at least one path to archive")
    if arcname is not None and len(relative) != 1:
        raise InputError("path", list(paths), "exactly one path when it is renamed")
    skip = {_normalize_exclude(item) for item in exclude}
    stats = ArchiveStats()
    counted = _CountingSink(out)
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    sink = cast(IO[bytes], counted)
    with compressor.stream_writer(sink, write_size=MiB, closefd=False) as zstd:
        framed = _Frames(zstd, counted) if index is not None else None
        writer = _TarWriter(framed)
        for rel in relative:
            source = base / rel if rel != "." else base
            if not os.path.lexists(source):
                raise InputError("path", rel, f"a file or directory under {base}")
            name = _relative_to_base(base, arcname) if arcname is not None else rel
            _add_tree(writer, zstd, source, name, _Walk(skip, not_this, pending), stats)
        writer.finish(zstd)
        zstd.flush(zstandard.FLUSH_FRAME)
    if index is not None:
        counted.write(index_trailer({**index, "blobs": stats.blob_frames}))
    stats.size = counted.size
    log.info(
        "archived %d members (%d files, %d hard links, %d bytes) into %d bytes",
        stats.members,
        stats.files,
        stats.hardlinks,
        stats.bytes_in,
        stats.size,
    )
    return stats


class PendingFiles(Protocol):
    """Files that will be there, but may not be yet, while the archive is written."""

    def names_in(self, directory: str) -> Iterable[str]: ...

    def wait_for(self, path: str) -> None:
        """Return once `path` is there; raise when it will not be."""
        ...


@dataclass(frozen=True)
class _Walk:
    """What the walk leaves out, and what it waits for."""

    skip: set[str]
    not_this: Path | None
    pending: PendingFiles | None

    def leaves_out(self, path: str, name: str) -> bool:
        if name in self.skip or (name.startswith("./") and name[2:] in self.skip):
            return True
        return self.not_this is not None and path == str(self.not_this)

    def children(self, path: str) -> list[str]:
        with os.scandir(path) as entries:
            names = {entry.name for entry in entries}
        if self.pending is not None:
            names.update(self.pending.names_in(path))
        return sorted(names)

    def wait_for(self, path: str) -> None:
        if self.pending is not None:
            self.pending.wait_for(path)


class ArchiveSink(Protocol):
    """Where an archive goes: a file, or an upload (`upload.ArchiveUpload`)."""

    def write(self, data: Any) -> int: ...


class _CountingSink:
    """Counts what the compressor writes (an upload has no `tell`)."""

    def __init__(self, out: ArchiveSink) -> None:
        self._out = out
        self.size = 0

    def write(self, data: Any) -> int:
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            flush()


_POOL_BLOB = re.compile(r"[^/]+/blobs/([a-z0-9]+)/([a-f0-9]{32,128})")


def _pool_digest(name: str) -> str | None:
    """`<root>/blobs/<alg>/<hex>`: a pool blob, which gets a frame of its own."""
    match = _POOL_BLOB.fullmatch(name)
    return f"{match[1]}:{match[2]}" if match else None


def _relative_to_base(base: Path, path: str) -> str:
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            rel = candidate.resolve().relative_to(base).as_posix()
        except ValueError:
            raise InputError("path", path, f"a path inside {base}") from None
    else:
        rel = posixpath.normpath(candidate.as_posix())
    if rel == ".." or rel.startswith("../"):
        raise InputError("path", path, f"a path inside {base} (archives hold no `..` names)")
    return rel


def _normalize_exclude(item: str) -> str:
    rel = posixpath.normpath(item.strip("/"))
    if rel in ("", ".") or rel.startswith("../"):
        raise InputError("exclude", item, "a subdirectory relative to the archive base")
    return rel


def _add_tree(
    writer: _TarWriter, out: IO[bytes], source: Path, arcname: str, walk: _Walk, stats: ArchiveStats
) -> None:
    """`source` and, for a directory, everything below it, depth first in name order."""
    stack = [(str(source), arcname)]
    while stack:
        path, name = stack.pop()
        if walk.leaves_out(path, name):
            continue
        walk.wait_for(path)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            writer.add(out, name, path, st, stats)
            for child in reversed(walk.children(path)):
                stack.append((os.path.join(path, child), posixpath.join(name, child)))
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            writer.add(out, name, path, st, stats)
        else:
            log.warning("not archiving %s: not a file, directory or symlink", name)
            stats.skipped.append(name)


class _Frames:
    """Switches between the compressed stream and raw frames of blob members (frames.py)."""

    def __init__(self, compressed: Any, counted: _CountingSink) -> None:
        self._compressed = compressed
        self._counted = counted

    @property
    def position(self) -> int:
        return self._counted.size

    def open_raw(self) -> tuple[RawFrame, int]:
        """End the compressed frame and start a raw one; where it starts."""
        self._compressed.flush(zstandard.FLUSH_FRAME)
        start = self._counted.size
        return RawFrame(self._counted.write), start


class _TarWriter:
    """pax headers from tarfile, file data copied straight into the compressor; with frames,
    each pool blob member goes into a raw frame of its own."""

    def __init__(self, frames: _Frames | None = None) -> None:
        self.frames = frames
        self.raw: RawFrame | None = None  # the blob member being written, with frames
        self.offset = 0
        self.inodes: dict[tuple[int, int], str] = {}
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    def add(
        self, out: IO[bytes], name: str, path: str, st: os.stat_result, stats: ArchiveStats
    ) -> None:
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = self._user(st.st_uid), self._group(st.st_gid)
        info.mtime = st.st_mtime
        copy = 0
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        else:
            inode = (st.st_dev, st.st_ino)
            first = self.inodes.get(inode) if st.st_nlink > 1 else None
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
                stats.hardlinks += 1
            else:
                if st.st_nlink > 1:
                    self.inodes[inode] = name
                info.type = tarfile.REGTYPE
                info.size = copy = st.st_size
                stats.files += 1
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        digest = _pool_digest(name) if info.type == tarfile.REGTYPE else None
        frames = self.frames if digest is not None else None
        if frames is not None:
            self.raw, start = frames.open_raw()
        self._write(out, header)
        if copy:
            self._copy(out, path, copy, name)
            stats.bytes_in += copy
        if frames is not None and self.raw is not None and digest is not None:
            self.raw.close()
            self.raw = None
            stats.blob_frames[digest] = [start, frames.position, len(header), copy]
        stats.members += 1

    def _copy(self, out: IO[bytes], path: str, size: int, name: str) -> None:
        remaining = size
        with open(path, "rb", buffering=0) as source:
            while remaining:
                chunk = source.read(min(MiB, remaining))
                if not chunk:
                    raise GhaCacheError(f"{name} shrank while it was archived")
                self._write(out, chunk)
                remaining -= len(chunk)
            if source.read(1):
                raise GhaCacheError(f"{name} grew while it was archived")
        padding = -size % BLOCK
        if padding:
            self._write(out, bytes(padding))

    def finish(self, out: IO[bytes]) -> None:
        self._write(out, bytes(2 * BLOCK))
        padding = -self.offset % RECORD
        if padding:
            self._write(out, bytes(padding))

    def _write(self, out: IO[bytes], data: bytes) -> None:
        if self.raw is not None:
            self.raw.write(data)
        else:
            out.write(data)
        self.offset += len(data)

    def _user(self, uid: int) -> str:
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = ""
        return self.users[uid]

    def _group(self, gid: int) -> str:
        if gid not in self.groups:
            try:
                self.groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self.groups[gid] = ""
        return self.groups[gid]
