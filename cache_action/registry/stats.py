"""This run's counters: what the job summary and `/_cache/stats` report. Counted by the
storage façade (storage/repository.py), the one place every request's reads and writes pass."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunStats:
    started_at: float = field(default_factory=time.time)
    stopped_at: float | None = None
    requests: int = 0
    manifest_hits: int = 0
    manifest_misses: int = 0
    blob_hits: int = 0
    blob_misses: int = 0
    blobs_pushed: int = 0
    manifests_pushed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    blobs_fetched: int = 0  # from the store, on first use (a lazy restore)
    bytes_fetched: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
