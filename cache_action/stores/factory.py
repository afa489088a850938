"""Open a store from its URL: `local:///path`, `s3://bucket/prefix` or `gha`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cache_action.errors import InputError
from cache_action.stores.base import Store
from cache_action.stores.content import ContentAddressedStore
from cache_action.stores.local import LocalBackend

ACCEPTED = "local:///ABSOLUTE/PATH, s3://BUCKET[/PREFIX] or gha"


def s3_options_from_env(env: Mapping[str, str]) -> dict[str, str | None]:
    """The seed service's variables (S3_*), else boto3's own AWS_* chain decides."""
    return {
        "endpoint_url": env.get("S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3"),
        "region": env.get("S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "access_key_id": env.get("S3_ACCESS_KEY"),
        "secret_access_key": env.get("S3_SECRET_KEY"),
    }


def open_store(
    url: str,
    env: Mapping[str, str],
    setting: str = "store",
    s3_options: Mapping[str, str | None] | None = None,
    github_token: str | None = None,
) -> Store:
    """`s3_options` (region, endpoint_url, access_key_id, secret_access_key) override the
    environment's; `github_token` lets the Actions cache store clean up superseded entries."""
    if url.startswith("local://"):
        path = url.removeprefix("local://")
        if not path.startswith("/"):
            raise InputError(setting, url, f"an absolute path: {ACCEPTED}")
        return ContentAddressedStore(LocalBackend(Path(path)))
    if url.startswith("s3://"):
        from cache_action.stores.s3 import S3Backend, S3Settings  # boto3 is slow to import

        given = {key: value for key, value in (s3_options or {}).items() if value}
        settings = S3Settings.from_url(url, {**s3_options_from_env(env), **given}, setting)
        endpoint = settings.endpoint_url
        if endpoint and not endpoint.startswith(("http://", "https://")):
            variable = "S3_ENDPOINT" if env.get("S3_ENDPOINT") else "AWS_ENDPOINT_URL_S3"
            raise InputError(variable, endpoint, "an http:// or https:// URL")
        try:
            return ContentAddressedStore(S3Backend(settings))
        except ValueError as error:  # botocore refuses a malformed endpoint host or region name
            raise InputError("S3 settings", str(error), "a valid endpoint and region") from None
    if url == "gha":
        from cache_action.stores.gha.store import GhaStore

        return GhaStore.from_env(env, token=github_token)
    raise InputError(setting, url, ACCEPTED)
