"""What the registry saw: when each tag, manifest and blob was last written or read, and this
run's counters. Prune keeps what builds use; the job summary reports the counters.

The record lives in `.cache-action/access.json` (archived with the root, so it survives between
jobs); it is written atomically, every few seconds while dirty and at shutdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from cache_action.storage.digests import Digest
from cache_action.storage.files import write_atomic
from cache_action.storage.layout import Layout

Clock = Callable[[], float]
SECTIONS = ("tags", "manifests", "blobs")


class AccessRecord:
    """Last-use times keyed `repo:tag` (tags), `repo@digest` (manifests) and `digest` (blobs)."""

    def __init__(self, layout: Layout, clock: Clock = time.time) -> None:
        self.layout = layout
        self.clock = clock
        self.times: dict[str, dict[str, float]] = {section: {} for section in SECTIONS}
        self.dirty = False

    @classmethod
    def load(cls, layout: Layout, clock: Clock = time.time) -> AccessRecord:
        record = cls(layout, clock)
        try:
            document = json.loads(layout.access_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return record
        for section in SECTIONS:
            entries = document.get(section) if isinstance(document, dict) else None
            if isinstance(entries, dict):
                record.times[section] = {
                    str(k): float(v) for k, v in entries.items() if isinstance(v, int | float)
                }
        return record

    def touch_tag(self, name: str, tag: str) -> None:
        self._touch("tags", f"{name}:{tag}")

    def touch_manifest(self, name: str, digest: Digest) -> None:
        self._touch("manifests", f"{name}@{digest}")
        self._touch("blobs", str(digest))

    def touch_blob(self, digest: Digest) -> None:
        self._touch("blobs", str(digest))

    def tag_time(self, name: str, tag: str) -> float | None:
        return self.times["tags"].get(f"{name}:{tag}")

    def blob_time(self, digest: Digest) -> float | None:
        return self.times["blobs"].get(str(digest))

    def forget(self, section: str, keys: set[str]) -> None:
        """Drop entries of things that no longer exist (after gc or prune)."""
        entries = self.times[section]
        for key in keys & entries.keys():
            del entries[key]
            self.dirty = True

    def snapshot(self) -> bytes | None:
        """The record as JSON if it changed since the last snapshot (taken on the loop thread)."""
        if not self.dirty:
            return None
        self.dirty = False
        return json.dumps({"version": 1, **self.times}, sort_keys=True).encode()

    def flush(self) -> None:
        data = self.snapshot()
        if data is not None:
            write_atomic(self.layout.access_path, data)

    def _touch(self, section: str, key: str) -> None:
        self.times[section][key] = self.clock()
        self.dirty = True


def write_stats(layout: Layout, stats: Mapping[str, Any]) -> None:
    """The last run's counters, for the post stage's summary and `stats`."""
    write_atomic(layout.stats_path, json.dumps(dict(stats), indent=1).encode() + b"\n")


def read_stats(layout: Layout) -> dict[str, Any] | None:
    try:
        document = json.loads(layout.stats_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return document if isinstance(document, dict) else None
