"""One registry root opened for use: the storage pieces wired together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cache_action.storage.access import AccessRecord
from cache_action.storage.blobs import BlobStore
from cache_action.storage.index import IndexStore
from cache_action.storage.layout import Layout
from cache_action.storage.remote import RemoteBlobs
from cache_action.storage.uploads import Uploads


@dataclass
class Storage:
    layout: Layout
    indexes: IndexStore
    blobs: BlobStore
    uploads: Uploads
    access: AccessRecord
    remote: RemoteBlobs

    @classmethod
    def open(cls, root: Path | str) -> Storage:
        layout = Layout(root)
        layout.create()
        indexes = IndexStore(layout)
        remote = RemoteBlobs.load(layout)
        blobs = BlobStore(layout, indexes, remote)
        uploads = Uploads(layout, blobs)
        return cls(layout, indexes, blobs, uploads, AccessRecord.load(layout), remote)
