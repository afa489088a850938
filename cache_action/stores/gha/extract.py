"""Safe extraction of cache archives (see `archive.py` for the format).

`extract_archive` is the safe inverse, for archives we or actions/cache made:
- the zstd stream must end exactly where a complete frame ends (python-zstandard's reader
  silently stops at a truncated frame), and its checksum is verified; the archive can be read
  from a file or straight from a download as it arrives;
- members with absolute names or `..` components, devices, FIFOs and other specials are
  rejected; so is a member whose path passes through a symlink, a hard link to anything but an
  earlier member, and a symlink that resolves outside the destination;
- everything is written into a staging directory inside the destination, and moved into place
  (merged with what is there, as tar overwrites) only once the whole archive has extracted.
  Any error leaves the destination as it was.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import shutil
import stat
import struct
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from cache_action.stores.gha.archive import ArchiveStats, MiB
from cache_action.stores.gha.errors import GhaCacheError, UnsafeArchiveError

log = logging.getLogger("cache_action.stores.gha")

STAGING_PREFIX = ".cache-action-extract-"


# --- verify -------------------------------------------------------------------------------

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50


class ZstdFrameCheck(io.RawIOBase):
    """Passes a zstd stream through while walking its frame and block headers, so that the end
    of the input can be checked to be the end of a frame: python-zstandard's reader silently
    stops at a truncated frame. Costs a few bytes of parsing per 128 KiB block."""

    def __init__(self, source: io.RawIOBase, name: str) -> None:
        self._source = source
        self._name = name
        self._state = "magic"
        self._need = 4  # header bytes the state waits for
        self._header = bytearray()
        self._skip = 0  # content bytes to pass unparsed
        self._checksum = False
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._source.readinto(buffer) or 0
        if count:
            self._walk(memoryview(buffer)[:count])
        else:
            self._check_end()
        return count

    def tell(self) -> int:
        return self._offset

    def finish(self) -> None:
        """Read what the decompressor left (nothing, normally): the stream must end exactly
        after a complete frame."""
        while self.read(MiB):
            pass

    def _check_end(self) -> None:
        if self._offset == 0:
            raise GhaCacheError(f"{self._name} is empty, not a zstd archive")
        if self._state != "magic" or self._header or self._skip:
            raise GhaCacheError(
                f"{self._name} is truncated (a zstd frame ends at byte {self._offset})"
            )

    def _walk(self, data: memoryview) -> None:
        position, size = 0, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            take = min(self._need - len(self._header), size - position)
            self._header += data[position : position + take]
            position += take
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header, self._offset + position - len(header))
        self._offset += size

    def _expect(self, state: str, count: int) -> None:
        self._state, self._need = state, count

    def _on_header(self, header: bytes, at: int) -> None:
        if self._state == "magic":
            (magic,) = struct.unpack("<I", header)
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._expect("skippable", 4)
            elif magic == _ZSTD_MAGIC:
                self._expect("descriptor", 1)
            else:
                raise GhaCacheError(
                    f"{self._name} is not a zstd archive (bad frame magic at byte {at})"
                )
        elif self._state == "skippable":
            (self._skip,) = struct.unpack("<I", header)
            self._expect("magic", 4)
        elif self._state == "descriptor":
            self._on_descriptor(header[0])
        elif self._state == "frame header":
            self._expect("block", 3)
        elif self._state == "block":
            self._on_block(int.from_bytes(header, "little"))
        else:  # the checksum: the frame is complete
            self._expect("magic", 4)

    def _on_descriptor(self, descriptor: int) -> None:
        fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
        self._checksum, dict_flag = bool((descriptor >> 2) & 1), descriptor & 3
        if (descriptor >> 3) & 1:
            raise GhaCacheError(f"{self._name} is not a valid zstd archive (reserved bit set)")
        rest = (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
        rest += (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
        if rest:
            self._expect("frame header", rest)
        else:
            self._expect("block", 3)

    def _on_block(self, block: int) -> None:
        last, kind, block_size = block & 1, (block >> 1) & 3, block >> 3
        if kind == 3:
            raise GhaCacheError(f"{self._name} is not a valid zstd archive (reserved block type)")
        self._skip = 1 if kind == 1 else block_size
        if not last:
            self._expect("block", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._expect("magic", 4)


# --- extract ------------------------------------------------------------------------------


@dataclass
class _Extraction:
    staging: Path
    known_dirs: set[str] = field(default_factory=lambda: {""})
    links_ok: set[str] = field(default_factory=set)  # members a hard link may point at
    symlinks: list[str] = field(default_factory=list)
    dirs: dict[str, tuple[int, float]] = field(default_factory=dict)  # mode, mtime
    members: int = 0
    bytes_out: int = 0


def extract_archive(
    archive: Path, dest: Path, *, owner: tuple[int, int] | None = None
) -> ArchiveStats:
    """Safely extract the archive file `archive` into `dest`; see `extract_stream`."""
    with open(archive, "rb", buffering=0) as source:
        return extract_stream(source, dest, owner=owner, name=archive.name)


def extract_stream(
    source: io.RawIOBase,
    dest: Path,
    *,
    owner: tuple[int, int] | None = None,
    name: str = "the cache archive",
) -> ArchiveStats:
    """Safely extract the archive read from `source` (a file, or a download as it arrives)
    into `dest` (created if missing); see the module docstring.

    `owner=(uid, gid)` gives every extracted entry that owner (a container action running as
    root restoring into the runner user's workspace); by default entries belong to us."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=0o700)
    state = _Extraction(staging)
    checked = ZstdFrameCheck(source, name)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], checked), read_size=MiB, read_across_frames=True, closefd=False
        )
        # tarfile's own stream mode ("r|") re-joins its buffer on every read and takes
        # twice as long; a forward-only seekable reader lets it run in "r:" mode.
        buffered = io.BufferedReader(_ForwardReader(reader), MiB)
        with tarfile.open(fileobj=buffered, mode="r:") as tar:
            members: list[tarfile.TarInfo] = vars(tar)["members"]
            while (member := tar.next()) is not None:
                _extract_member(tar, member, state)
                members.clear()  # tarfile would keep every header in memory
        while buffered.read(MiB):  # the end-of-archive padding, and the frame's checksum
            pass
        checked.finish()
        _check_symlinks(state, dest)
        if owner is not None:
            _chown_tree(staging, owner)
        _merge(staging, dest)
        _apply_dir_metadata(dest, state.dirs)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as error:
        raise GhaCacheError(f"{name} is not a valid cache archive: {error}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %d members (%d bytes) into %s", state.members, state.bytes_out, dest)
    return ArchiveStats(members=state.members, bytes_in=state.bytes_out, size=checked.tell())


class _ForwardReader(io.RawIOBase):
    """A decompressed stream that tarfile may `seek` forward in (skipping data it does not
    read, padding); a backward seek is an error."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._source.readinto(buffer)  # type: ignore[attr-defined]
        self._position += count
        return int(count)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
            raise io.UnsupportedOperation("the archive stream can only seek forward")
        while self._position < target:
            skipped = self._source.read(min(MiB, target - self._position))
            if not skipped:
                break
            self._position += len(skipped)
        return self._position


def member_path(name: str) -> str:
    """The member's path relative to the destination ('' for the destination itself), or
    UnsafeArchiveError for absolute names and `..` components."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"archive member {name!r} has an empty or invalid name")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} has a `..` component")
    return "/".join(parts)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, state: _Extraction) -> None:
    rel = member_path(member.name)
    state.members += 1
    if rel == "":
        if not member.isdir():
            raise UnsafeArchiveError(
                f"archive member {member.name!r} would replace the destination"
            )
        return  # the destination's own metadata stays as it is
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = "device" if member.isdev() else "FIFO" if member.isfifo() else "special file"
        raise UnsafeArchiveError(f"archive member {member.name!r} is a {kind}")
    _ensure_dir(state, rel.rpartition("/")[0], member.name)
    target = state.staging / rel
    if member.isdir():
        _extract_dir(member, rel, target, state)
        return
    _clear(target, member.name)
    if member.isreg():
        _extract_file(tar, member, target, state)
    elif member.issym():
        os.symlink(member.linkname, target)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
        state.symlinks.append(rel)
    else:
        _extract_hard_link(member, target, state)
    state.links_ok.add(rel)


def _extract_dir(member: tarfile.TarInfo, rel: str, target: Path, state: _Extraction) -> None:
    existing = _lstat(target)
    if existing is None:
        os.mkdir(target, 0o700)
    elif not stat.S_ISDIR(existing.st_mode):
        raise UnsafeArchiveError(f"archive member {member.name!r} replaces a non-directory")
    state.known_dirs.add(rel)
    state.dirs[rel] = (member.mode & 0o7777, member.mtime)


def _extract_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, state: _Extraction
) -> None:
    source = tar.extractfile(member)
    if source is None:  # tarfile gives None for anything but a regular file
        raise UnsafeArchiveError(f"archive member {member.name!r} has no content")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        written = 0
        while chunk := source.read(MiB):
            os.write(fd, chunk)
            written += len(chunk)
        if written != member.size:
            raise GhaCacheError(f"archive member {member.name!r} is truncated")
        os.fchmod(fd, member.mode & 0o777)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    state.bytes_out += written


def _extract_hard_link(member: tarfile.TarInfo, target: Path, state: _Extraction) -> None:
    """A hard link to an earlier member of this archive, and nothing else."""
    source_rel = member_path(member.linkname)
    if source_rel not in state.links_ok:
        raise UnsafeArchiveError(
            f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
            "which is not an earlier file of the archive"
        )
    os.link(state.staging / source_rel, target, follow_symlinks=False)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _ensure_dir(state: _Extraction, rel: str, member: str) -> None:
    """Create the member's parent directories; none of them may be a symlink."""
    if rel in state.known_dirs:
        return
    parent, _, _ = rel.rpartition("/")
    _ensure_dir(state, parent, member)
    path = state.staging / rel
    existing = _lstat(path)
    if existing is None:
        os.mkdir(path, 0o755)  # a parent the archive does not list: tar's default mode
    elif stat.S_ISLNK(existing.st_mode):
        raise UnsafeArchiveError(
            f"archive member {member!r} would be written through symlink {rel!r}"
        )
    elif not stat.S_ISDIR(existing.st_mode):
        raise UnsafeArchiveError(f"archive member {member!r} needs {rel!r} to be a directory")
    state.known_dirs.add(rel)


def _clear(target: Path, member: str) -> None:
    """A later member of the same name replaces an earlier one, as tar does; never a dir."""
    existing = _lstat(target)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise UnsafeArchiveError(f"archive member {member!r} would replace a directory")
    os.unlink(target)


def _check_symlinks(state: _Extraction, dest: Path) -> None:
    """Each symlink, resolved with the whole tree in place, must stay inside the tree. An
    absolute target is accepted only when it names a path inside `dest` itself."""
    root = os.path.realpath(state.staging)
    dest_real = os.path.realpath(dest)
    for rel in state.symlinks:
        link = state.staging / rel
        target = os.readlink(link)
        if os.path.isabs(target):
            inside = posixpath.normpath(target)
            if not (inside == dest_real or inside.startswith(dest_real + "/")):
                raise UnsafeArchiveError(
                    f"symlink {rel!r} points outside the destination: {target!r}"
                )
            resolved = os.path.realpath(os.path.join(root, os.path.relpath(inside, dest_real)))
        else:
            resolved = os.path.realpath(link)
        if not (resolved == root or resolved.startswith(root + "/")):
            raise UnsafeArchiveError(f"symlink {rel!r} points outside the destination: {target!r}")


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    uid, gid = owner
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), uid, gid)


def _merge(staging: Path, dest: Path) -> None:
    """Move the staged tree into `dest`: new names are renamed in, directories that exist on
    both sides are merged, anything else at a staged name is replaced."""
    for entry in sorted(os.listdir(staging)):
        source = staging / entry
        target = dest / entry
        source_st = os.lstat(source)
        target_st = _lstat(target)
        if target_st is None:
            os.rename(source, target)
        elif stat.S_ISDIR(source_st.st_mode) and stat.S_ISDIR(target_st.st_mode):
            _merge(source, target)
        else:
            if stat.S_ISDIR(target_st.st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)
            os.rename(source, target)


def _apply_dir_metadata(dest: Path, dirs: dict[str, tuple[int, float]]) -> None:
    """Directory modes and times last, deepest first, as tar delays them."""
    for rel in sorted(dirs, key=lambda item: item.count("/"), reverse=True):
        mode, mtime = dirs[rel]
        path = dest / rel
        os.chmod(path, mode, follow_symlinks=False)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
