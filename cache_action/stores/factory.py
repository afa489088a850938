"""Build the store a spec names; all parsing happened at the edge (spec.py, runner.py)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from cache_action.errors import InputError, StoreError
from cache_action.runner import CacheServiceVariables, RunnerContext
from cache_action.scopes import GitContext
from cache_action.storage.remote import BlobSource
from cache_action.stores.base import Store
from cache_action.stores.content import ContentAddressedStore
from cache_action.stores.local import LocalBackend
from cache_action.stores.spec import (
    GhaSpec,
    LocalSpec,
    S3Spec,
    StoreSpec,
    spec_from_json,
    spec_to_json,
)


def open_store(spec: StoreSpec, runner: RunnerContext) -> Store:
    if isinstance(spec, LocalSpec):
        return ContentAddressedStore(LocalBackend(spec.path))
    if isinstance(spec, S3Spec):
        from cache_action.stores.s3 import S3Backend  # boto3 is slow to import

        try:
            return ContentAddressedStore(S3Backend(spec))
        except ValueError as error:  # botocore refuses a malformed endpoint host or region name
            raise InputError("S3 settings", str(error), "a valid endpoint and region") from None
    if isinstance(spec, GhaSpec):
        from cache_action.stores.gha.store import GhaStore

        return GhaStore.open(spec, runner)
    raise AssertionError(f"unknown store spec {spec!r}")


def open_blob_source(spec: StoreSpec, runner: RunnerContext) -> BlobSource:
    """Where a lazy restore's blobs come from later: the same store, blob by blob."""
    if isinstance(spec, GhaSpec):
        from cache_action.stores.gha.store import GhaStore

        return GhaStore.open(spec, runner).blobs
    store = open_store(spec, runner)
    if not isinstance(store, ContentAddressedStore):
        raise StoreError(f"{store.description} keeps no blobs a lazy restore can read")
    return store.blob_source()


def write_source_file(path: Path, spec: StoreSpec, runner: RunnerContext) -> None:
    """What the registry needs to fetch blobs from the store, secrets included: a file only
    its owner (root) may read, which the registry reads once and deletes."""
    document = {"store": spec_to_json(spec), "cache_service": asdict(runner.cache_service)}
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(document, out)


def read_source_file(path: Path) -> BlobSource:
    """The blob source `write_source_file` described; the file is gone afterwards."""
    try:
        document = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    runner = RunnerContext(
        git=GitContext(repository="", ref="", event_name=""),
        cache_service=CacheServiceVariables(**document.get("cache_service", {})),
    )
    return open_blob_source(spec_from_json(document["store"]), runner)
