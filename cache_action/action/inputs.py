"""The action's inputs, read once from `INPUT_*` and validated; nothing else reads them.

A bad value is the one thing that fails the job: the error names the input, the value and what
is accepted. Every other problem (a store outage, a registry that would not start) is a warning
and a cold cache, unless `strict` is set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cache_action.errors import InputError, OCIError
from cache_action.scopes import normalize_ref, validate_token
from cache_action.storage.layout import validate_name
from cache_action.stores.spec import LocalSpec, S3Options, S3Spec, StoreSpec, parse_store
from cache_action.units import parse_duration, parse_size

_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")
_SANITIZE = re.compile(r"[^A-Za-z0-9._-]+")


class SavePolicy(StrEnum):
    AUTO = "auto"  # save what changed, where this job may write
    ALWAYS = "always"  # save even when nothing changed since the restore
    NEVER = "never"


class RestoreMode(StrEnum):
    EAGER = "eager"  # everything before the build starts
    LAZY = "lazy"  # metadata now, each other blob on its first GET


@dataclass(frozen=True)
class Inputs:
    store: StoreSpec
    namespace: str
    scope: str
    restore_scopes: tuple[str, ...]
    branch_fallback: bool
    fallback_refs: tuple[str, ...]
    repository: str
    port: int
    mode: str
    ttl_seconds: float | None
    max_size_bytes: int | None
    save: SavePolicy
    restore: RestoreMode
    prefetch: bool
    read_only: bool
    strict: bool
    github_token: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Inputs:
        def raw(name: str, default: str = "") -> str:
            return env.get(f"INPUT_{name.upper()}", default).strip()

        s3 = S3Options(
            region=raw("s3-region"),
            endpoint_url=_endpoint(raw("s3-endpoint")),
            access_key_id=raw("s3-access-key-id"),
            secret_access_key=raw("s3-secret-access-key"),
        )
        token = raw("github-token")
        store = parse_store("store", raw("store", "gha") or "gha", s3, token)
        return cls(
            store=store,
            namespace=validate_token("namespace", raw("namespace") or _default_namespace(env)),
            scope=validate_token("scope", raw("scope") or _default_scope(env)),
            restore_scopes=tuple(
                validate_token("restore-scopes", s) for s in _list(raw("restore-scopes"))
            ),
            branch_fallback=_boolean("branch-fallback", raw("branch-fallback", "true")),
            fallback_refs=tuple(
                normalize_ref("fallback-refs", r) for r in _list(raw("fallback-refs"))
            ),
            repository=_repository(raw("repository", "cache") or "cache"),
            port=_port(raw("port", "5000") or "5000"),
            mode=_choice("mode", raw("mode", "max") or "max", ("min", "max")),
            ttl_seconds=parse_duration("ttl", raw("ttl", "7d")),
            max_size_bytes=parse_size("max-size", raw("max-size", "2GB")),
            save=SavePolicy(_choice("save", raw("save", "auto") or "auto", tuple(SavePolicy))),
            restore=_restore_mode(raw("restore", "auto") or "auto", store),
            prefetch=_boolean("prefetch", raw("prefetch", "true")),
            read_only=_boolean("read-only", raw("read-only", "false")),
            strict=_boolean("strict", raw("strict", "false")),
            github_token=token,
        )

    def secrets(self) -> list[str]:
        s3_secret = self.store.secret_access_key if isinstance(self.store, S3Spec) else None
        return [s for s in (self.github_token, s3_secret) if s]


def _list(text: str) -> list[str]:
    """Newline- or comma-separated values, blanks dropped."""
    return [item.strip() for item in re.split(r"[\n,]", text) if item.strip()]


def _boolean(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE or text == "":
        return False
    raise InputError(name, text, "true or false")


def _choice(name: str, text: str, accepted: tuple[str, ...]) -> str:
    if text not in accepted:
        raise InputError(name, text, " or ".join(accepted))
    return text


def _restore_mode(text: str, store: StoreSpec) -> RestoreMode:
    """auto: lazy where the registry can fetch from the store later (S3, the Actions cache);
    a local directory is read eagerly (it may be reachable only through a sibling)."""
    choice = _choice("restore", text, ("auto", *RestoreMode))
    if choice == "auto":
        return RestoreMode.EAGER if isinstance(store, LocalSpec) else RestoreMode.LAZY
    return RestoreMode(choice)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InputError("port", text, "a TCP port number from 1 to 65535")
    return int(text)


def _endpoint(text: str) -> str:
    if text and not (text.startswith(("http://", "https://")) and len(text.split("://", 1)[1])):
        raise InputError("s3-endpoint", text, "an http:// or https:// URL, or empty for AWS")
    return text


def _repository(text: str) -> str:
    try:
        return validate_name(text)
    except OCIError:
        raise InputError(
            "repository", text, "a lowercase registry repository name such as cache or org/cache"
        ) from None


def _default_scope(env: Mapping[str, str]) -> str:
    """`<workflow file>-<job id>`: distinct per job, stable across runs."""
    workflow_ref = env.get("GITHUB_WORKFLOW_REF", "")  # owner/repo/.github/workflows/ci.yml@ref
    workflow = workflow_ref.split("@", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    workflow = workflow or env.get("GITHUB_WORKFLOW", "") or "workflow"
    job = env.get("GITHUB_JOB", "") or "job"
    return _SANITIZE.sub("-", f"{workflow}-{job}").strip("-._")[:100] or "default"


def _default_namespace(env: Mapping[str, str]) -> str:
    """The repository (`owner.name`): one bucket can hold the caches of many repositories."""
    repository = env.get("GITHUB_REPOSITORY", "") or "buildkit"
    return _SANITIZE.sub(".", repository).strip("-._")[:100] or "buildkit"
