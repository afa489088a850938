"""The entry `version`: which paths and compression an entry holds, as @actions/cache hashes it.

`sha256_hex("|".join(paths + [compression] + ["1.0"]))` on Linux (cacheUtils.js
`getCacheVersion`). `paths` are the raw patterns the user wrote (actions/cache's `path` input,
split on newlines), never the resolved files: two jobs find each other's entries only when
their path strings and compression label agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

ZSTD_WITHOUT_LONG: Final = "zstd-without-long"  # what @actions/cache 6.x uses when zstd exists
GZIP: Final = "gzip"
VERSION_SALT: Final = "1.0"

_NEGATION_SPACES = re.compile(r"^!\s+")


def cache_version(
    paths: Sequence[str], compression: str = ZSTD_WITHOUT_LONG, *, windows_only: bool = False
) -> str:
    """The `version` field of every cache request for an entry of `paths`."""
    if isinstance(paths, str):
        raise TypeError("paths must be a sequence of path strings, not one string")
    components = [*paths]
    if compression:
        components.append(compression)
    if windows_only:  # @actions/cache on win32 without enableCrossOsArchive
        components.append("windows-only")
    components.append(VERSION_SALT)
    return hashlib.sha256("|".join(components).encode()).hexdigest()


def paths_from_input(text: str) -> list[str]:
    """actions/cache's `path` input as a list: split on newlines, `!  x` → `!x`, trimmed,
    empty lines dropped (actionUtils.ts `getInputAsArray`)."""
    lines = (_NEGATION_SPACES.sub("!", line).strip() for line in text.strip().split("\n"))
    return [line for line in lines if line]
