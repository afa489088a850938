"""Build the store a spec names; all parsing happened at the edge (spec.py, runner.py)."""

from __future__ import annotations

from cache_action.errors import InputError
from cache_action.runner import RunnerContext
from cache_action.stores.base import Store
from cache_action.stores.content import ContentAddressedStore
from cache_action.stores.local import LocalBackend
from cache_action.stores.spec import GhaSpec, LocalSpec, S3Spec, StoreSpec


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
