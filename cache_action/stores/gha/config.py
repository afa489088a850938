"""Which cache protocol, where, with which token: parsed once from the environment.

A container action never receives `ACTIONS_CACHE_SERVICE_V2` from the runner (only JavaScript
actions do), so we do not follow @actions/cache's rule (v2 only when that variable is set).
As the reference recommends for a container action:

1. `ACTIONS_CACHE_API_FORCE_VERSION=v1|v2` (go-actions-cache's override) wins;
2. GHES (GITHUB_SERVER_URL not github.com, *.ghe.com or *.localhost) → v1;
3. `ACTIONS_CACHE_SERVICE_V2` set by the user: a false word (false, 0, no, off) → v1, any other
   non-empty value → v2;
4. otherwise v2 when ACTIONS_RESULTS_URL is set, else v1 when only ACTIONS_CACHE_URL is set.

ACTIONS_CACHE_MODE (`none|read|write|write-only`, runner ≥ 2.336) decides readable/writable;
unset or unknown values allow both, as in @actions/cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from cache_action.runner import CacheServiceVariables
from cache_action.stores.gha.errors import GhaConfigError

Protocol = Literal["v1", "v2"]

KNOWN_MODES = ("none", "read", "write", "write-only")
_FALSE_WORDS = {"0", "false", "no", "off"}


def is_ghes(server_url: str | None) -> bool:
    """@actions/cache's `isGhes()`: any host but github.com, *.ghe.com and *.localhost."""
    host = (urlsplit(server_url or "https://github.com").hostname or "").strip().upper()
    return not (host == "GITHUB.COM" or host.endswith(".GHE.COM") or host.endswith(".LOCALHOST"))


def choose_protocol(variables: CacheServiceVariables) -> Protocol:
    forced = variables.force_version.strip().lower()
    if forced:
        if forced not in ("v1", "v2"):
            raise GhaConfigError(
                f"ACTIONS_CACHE_API_FORCE_VERSION: {forced!r} is not valid; expected v1 or v2"
            )
        return "v1" if forced == "v1" else "v2"
    if is_ghes(variables.server_url or None):
        return "v1"
    flag = variables.service_v2.strip().lower()
    if flag:
        return "v1" if flag in _FALSE_WORDS else "v2"
    if not variables.results_url and variables.cache_url:
        return "v1"
    return "v2"


@dataclass(frozen=True)
class GhaCacheConfig:
    protocol: Protocol
    service_url: str
    token: str = field(repr=False)
    mode: str = ""  # ACTIONS_CACHE_MODE, trimmed and lower-cased; "" when unset

    @property
    def readable(self) -> bool:
        return self.mode not in KNOWN_MODES or self.mode in ("read", "write")

    @property
    def writable(self) -> bool:
        return self.mode not in KNOWN_MODES or self.mode in ("write", "write-only")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GhaCacheConfig:
        return cls.from_variables(CacheServiceVariables.from_env(env))

    @classmethod
    def from_variables(cls, variables: CacheServiceVariables) -> GhaCacheConfig:
        protocol = choose_protocol(variables)
        if protocol == "v2":
            url = variables.results_url.strip()
            if not url:
                raise GhaConfigError(
                    "ACTIONS_RESULTS_URL is not set: the GitHub Actions cache service (v2) needs "
                    "it; the runner sets it for actions of a job (runner ≥ 2.308)"
                )
        else:
            url = (variables.cache_url or variables.results_url).strip()
            if not url:
                raise GhaConfigError(
                    "ACTIONS_CACHE_URL is not set: the legacy GitHub Actions cache service (v1, "
                    "GHES) needs it; the runner sets it for actions of a job"
                )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            name = "ACTIONS_RESULTS_URL" if protocol == "v2" else "ACTIONS_CACHE_URL"
            raise GhaConfigError(f"{name}: {url!r} is not an http(s) URL")
        if protocol == "v1" and not url.endswith("/"):
            url += "/"  # the v1 resource paths are appended to it
        token = variables.runtime_token.strip()
        if not token:
            raise GhaConfigError(
                "ACTIONS_RUNTIME_TOKEN is not set: the GitHub Actions cache service needs it; "
                "the runner sets it for actions of a job"
            )
        mode = variables.cache_mode.strip().lower()
        return cls(protocol=protocol, service_url=url, token=token, mode=mode)
