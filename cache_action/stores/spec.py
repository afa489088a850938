"""Where a cache lives, parsed once at the edge into one typed spec: the action's `store` and
`s3-*` inputs, the service's BUILDKIT_CACHE_REPO and S3_* variables, the CLI's --store.
`factory.open_store` only builds what a spec says.

The action reads S3 settings from its inputs only (and boto3 its AWS_* chain): the service's
S3_* variables in a job's environment must not change where the action writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cache_action.errors import InputError

ACCEPTED = "local:///ABSOLUTE/PATH, s3://BUCKET[/PREFIX] or gha"


@dataclass(frozen=True)
class LocalSpec:
    path: Path

    @property
    def url(self) -> str:
        return f"local://{self.path}"


@dataclass(frozen=True)
class S3Spec:
    bucket: str
    prefix: str = ""  # "" or "a/b/": every key is prefixed with it
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores; None: AWS
    access_key_id: str | None = None  # None: boto3's AWS chain
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class GhaSpec:
    """The GitHub Actions cache; the token (optional) deletes superseded entries."""

    github_token: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return "gha"


StoreSpec = LocalSpec | S3Spec | GhaSpec


@dataclass(frozen=True)
class S3Options:
    """The S3 settings a URL does not carry; `endpoint_setting` names the endpoint's source."""

    region: str = ""
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    endpoint_setting: str = "s3-endpoint"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Options:
        """The service's and the CLI's variables: S3_*, then AWS's own names for the endpoint
        and region (credentials without S3_* come from boto3's AWS chain)."""
        endpoint_setting = "S3_ENDPOINT" if env.get("S3_ENDPOINT") else "AWS_ENDPOINT_URL_S3"
        return cls(
            region=env.get("S3_REGION")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION", ""),
            endpoint_url=env.get("S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3", ""),
            access_key_id=env.get("S3_ACCESS_KEY", ""),
            secret_access_key=env.get("S3_SECRET_KEY", ""),
            endpoint_setting=endpoint_setting,
        )


def parse_store(
    setting: str, url: str, s3: S3Options | None = None, github_token: str = ""
) -> StoreSpec:
    """`setting` names where `url` came from, for the message when it is not valid."""
    text = url.strip()
    if text.startswith("local://"):
        path = text.removeprefix("local://")
        if not path.startswith("/"):
            raise InputError(setting, url, f"an absolute path: {ACCEPTED}")
        return LocalSpec(Path(path))
    if text.startswith("s3://"):
        return _s3_spec(setting, url, s3 or S3Options())
    if text == "gha":
        return GhaSpec(github_token)
    raise InputError(setting, url, ACCEPTED)


def _s3_spec(setting: str, url: str, options: S3Options) -> S3Spec:
    bucket, _, prefix = url.strip().removeprefix("s3://").partition("/")
    if not bucket:
        raise InputError(setting, url, "s3://BUCKET[/PREFIX]")
    endpoint = options.endpoint_url.strip()
    if endpoint and not (
        endpoint.startswith(("http://", "https://")) and endpoint.split("://", 1)[1]
    ):
        raise InputError(options.endpoint_setting, endpoint, "an http:// or https:// URL")
    prefix = prefix.strip("/")
    return S3Spec(
        bucket=bucket,
        prefix=f"{prefix}/" if prefix else "",
        region=options.region or None,
        endpoint_url=endpoint or None,
        access_key_id=options.access_key_id or None,
        secret_access_key=options.secret_access_key or None,
    )


def spec_to_json(spec: StoreSpec) -> dict[str, object]:
    """For a process the spec is handed to (the registry fetching a lazy restore's blobs):
    secrets included, so it goes only into a file only root can read."""
    if isinstance(spec, LocalSpec):
        return {"type": "local", "path": str(spec.path)}
    if isinstance(spec, S3Spec):
        return {"type": "s3", **{k: v for k, v in asdict(spec).items() if v is not None}}
    return {"type": "gha", "github_token": spec.github_token}


def spec_from_json(document: Mapping[str, object]) -> StoreSpec:
    kind = document.get("type")
    fields = {k: v for k, v in document.items() if k != "type"}
    if kind == "local":
        return LocalSpec(Path(str(fields["path"])))
    if kind == "s3":
        return S3Spec(**{k: str(v) for k, v in fields.items()})
    if kind == "gha":
        return GhaSpec(str(fields.get("github_token", "")))
    raise ValueError(f"unknown store type {kind!r}")
