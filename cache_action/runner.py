"""What the GitHub runner tells a job, read once from the environment at the edge (the action's
stages, the CLI) and passed down typed: nothing below reads the environment itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cache_action.scopes import GitContext

DEFAULT_RUNNER_TEMP = "/github/runner_temp"  # where the runner mounts RUNNER_TEMP in an action


@dataclass(frozen=True)
class CacheServiceVariables:
    """The Actions cache service's variables (reference B1): which protocol, where, how."""

    results_url: str = ""  # ACTIONS_RESULTS_URL (v2)
    cache_url: str = ""  # ACTIONS_CACHE_URL (v1, GHES)
    runtime_token: str = field(default="", repr=False)  # ACTIONS_RUNTIME_TOKEN
    cache_mode: str = ""  # ACTIONS_CACHE_MODE
    service_v2: str = ""  # ACTIONS_CACHE_SERVICE_V2, when a user sets it
    force_version: str = ""  # ACTIONS_CACHE_API_FORCE_VERSION
    server_url: str = ""  # GITHUB_SERVER_URL: GHES speaks v1 only

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CacheServiceVariables:
        return cls(
            results_url=env.get("ACTIONS_RESULTS_URL", ""),
            cache_url=env.get("ACTIONS_CACHE_URL", ""),
            runtime_token=env.get("ACTIONS_RUNTIME_TOKEN", ""),
            cache_mode=env.get("ACTIONS_CACHE_MODE", ""),
            service_v2=env.get("ACTIONS_CACHE_SERVICE_V2", ""),
            force_version=env.get("ACTIONS_CACHE_API_FORCE_VERSION", ""),
            server_url=env.get("GITHUB_SERVER_URL", ""),
        )


@dataclass(frozen=True)
class RunnerContext:
    git: GitContext
    run_id: str = ""
    run_attempt: str = "1"
    api_url: str = "https://api.github.com"
    temp: Path = Path(DEFAULT_RUNNER_TEMP)
    cache_service: CacheServiceVariables = field(default_factory=CacheServiceVariables)
    # GITHUB_TOKEN is not given to actions; the CLI may have one in its environment.
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunnerContext:
        return cls(
            git=GitContext.from_env(env),
            run_id=env.get("GITHUB_RUN_ID", ""),
            run_attempt=env.get("GITHUB_RUN_ATTEMPT", "") or "1",
            api_url=env.get("GITHUB_API_URL", "") or "https://api.github.com",
            temp=Path(env.get("RUNNER_TEMP") or DEFAULT_RUNNER_TEMP),
            cache_service=CacheServiceVariables.from_env(env),
            token=env.get("GITHUB_TOKEN", ""),
        )
