"""Opening a store from a URL as the CLI does: the spec parsed with the S3_* variables given."""

from __future__ import annotations

from collections.abc import Mapping

from cache_action.runner import RunnerContext
from cache_action.stores.base import Store
from cache_action.stores.factory import open_store
from cache_action.stores.spec import S3Options, parse_store


def open_url(url: str, env: Mapping[str, str] | None = None) -> Store:
    variables = dict(env or {})
    return open_store(
        parse_store("store", url, S3Options.from_env(variables)),
        RunnerContext.from_env(variables),
    )
