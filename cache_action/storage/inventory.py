"""What a root holds: repositories, tags, blobs and bytes on disk (shared inodes counted once)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cache_action.storage.root import Storage


@dataclass
class Inventory:
    repositories: dict[str, list[str]] = field(default_factory=dict)
    blobs: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"repositories": self.repositories, "blobs": self.blobs, "bytes": self.bytes}


def take_inventory(storage: Storage) -> Inventory:
    layout, indexes = storage.layout, storage.indexes
    inventory = Inventory()
    blob_dirs = [layout.root / "blobs"]
    for name in layout.repositories():
        index = indexes.read(name)
        inventory.repositories[name] = index.tags() if index else []
        blob_dirs.append(layout.repository(name) / "blobs")
    seen: set[tuple[int, int]] = set()
    digests: set[str] = set()
    for blob_dir in blob_dirs:
        for path in blob_files(blob_dir):
            info = path.stat()
            digests.add(f"{path.parent.name}:{path.name}")
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                inventory.bytes += info.st_size
    inventory.blobs = len(digests)
    return inventory


def blob_files(blob_dir: Path) -> list[Path]:
    """Blob files under `blob_dir/<alg>/`, temp files excluded."""
    if not blob_dir.is_dir():
        return []
    found = []
    for algorithm_dir in blob_dir.iterdir():
        if algorithm_dir.is_dir():
            with os.scandir(algorithm_dir) as entries:
                found += [
                    Path(e.path) for e in entries if e.is_file() and not e.name.startswith(".")
                ]
    return found
