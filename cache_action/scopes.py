"""Which cache entries a job may read, and the one it may write.

An entry is named by a namespace (the repository's cache), a scope (an image or a matrix
variant) and a git ref. A job restores, per scope, the first entry found along
current ref → pull request base → default branch → extra fallbacks, and merges the scopes;
it writes only to its own scope and ref. On events that run untrusted code with the base
branch's identity (pull_request_target, issue_comment, workflow_run from a fork) it writes
only to the pull request's own ref, or nowhere: a fork must never poison a trusted cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cache_action.errors import InputError

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_REF = re.compile(r"refs/[^\s,]{1,250}")
MAX_KEY_LENGTH = 512


def validate_token(setting: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InputError(
            setting,
            value,
            "1-100 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    return value


def normalize_ref(setting: str, value: str) -> str:
    """Accept `main`, `heads/main` or `refs/heads/main`; return the full ref."""
    ref = value.strip()
    if ref and not ref.startswith("refs/"):
        ref = f"refs/{ref}" if ref.startswith(("heads/", "tags/", "pull/")) else f"refs/heads/{ref}"
    if not _REF.fullmatch(ref):
        raise InputError(setting, value, "a git ref such as main or refs/heads/main (no commas)")
    return ref


@dataclass(frozen=True, order=True)
class EntryName:
    namespace: str
    scope: str
    ref: str

    @property
    def prefix(self) -> str:
        """Key prefix of this (namespace, scope, ref); the ref is quoted so no prefix of one
        ref's keys can match another ref's (`main` vs `main-old`, `feat` vs `feat/x`)."""
        prefix = f"{self.namespace}/{self.scope}/{quote(self.ref, safe='')}/"
        if len(prefix) > MAX_KEY_LENGTH - 40:
            raise InputError("scope", self.scope, "a shorter scope or ref (cache keys ≤ 512)")
        return prefix


@dataclass(frozen=True)
class GitContext:
    """What the runner tells us about the event; parsed once from the environment."""

    repository: str
    ref: str
    event_name: str
    base_ref: str | None = None
    default_branch: str | None = None
    pull_request: int | None = None
    untrusted: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitContext:
        event = _load_event(env.get("GITHUB_EVENT_PATH"))
        name = env.get("GITHUB_EVENT_NAME", "")
        repository = env.get("GITHUB_REPOSITORY", "")
        base = env.get("GITHUB_BASE_REF") or None
        default = _dig(event, "repository", "default_branch")
        return cls(
            repository=repository,
            ref=env.get("GITHUB_REF") or "refs/heads/local",
            event_name=name,
            base_ref=f"refs/heads/{base}" if base else None,
            default_branch=f"refs/heads/{default}" if isinstance(default, str) else None,
            pull_request=_pull_request_number(name, event),
            untrusted=_is_untrusted(name, event, repository),
        )


@dataclass(frozen=True)
class ScopePlan:
    save_to: EntryName | None
    restore_chains: tuple[tuple[EntryName, ...], ...]
    read_only_reason: str | None = None


def plan_scopes(
    git: GitContext,
    namespace: str,
    scope: str,
    extra_scopes: Sequence[str] = (),
    branch_fallback: bool = True,
    fallback_refs: Sequence[str] = (),
    read_only: bool = False,
) -> ScopePlan:
    write_ref, reason = _write_ref(git)
    own_ref = write_ref or git.ref  # read-only still restores the job's own ref (a PR's) first
    if read_only:
        write_ref, reason = None, "read-only was requested"
    refs = [own_ref]
    if branch_fallback:
        refs += [r for r in (git.ref, git.base_ref, git.default_branch) if r]
    refs += list(fallback_refs)
    chain_refs = list(dict.fromkeys(refs))
    scopes = list(dict.fromkeys([scope, *extra_scopes]))
    chains = tuple(tuple(EntryName(namespace, s, ref) for ref in chain_refs) for s in scopes)
    save_to = EntryName(namespace, scope, write_ref) if write_ref else None
    return ScopePlan(save_to, chains, reason)


def _write_ref(git: GitContext) -> tuple[str | None, str | None]:
    """Where this job may write, and why not when it may not."""
    if not git.untrusted:
        return git.ref, None
    if git.pull_request is not None:
        return f"refs/pull/{git.pull_request}/merge", None
    return None, f"a {git.event_name} event from a fork may not write the cache"


def _is_untrusted(event_name: str, event: dict[str, Any], repository: str) -> bool:
    if event_name == "pull_request_target":
        return True
    if event_name == "issue_comment":
        return True
    if event_name == "workflow_run":
        head = _dig(event, "workflow_run", "head_repository", "full_name")
        return bool(head != repository)
    return False


def _pull_request_number(event_name: str, event: dict[str, Any]) -> int | None:
    candidates: list[Any] = []
    if event_name.startswith("pull_request"):
        candidates.append(_dig(event, "pull_request", "number") or event.get("number"))
    elif event_name == "issue_comment" and _dig(event, "issue", "pull_request"):
        candidates.append(_dig(event, "issue", "number"))
    elif event_name == "workflow_run":
        prs = _dig(event, "workflow_run", "pull_requests") or []
        candidates += [pr.get("number") for pr in prs if isinstance(pr, dict)]
    return next((n for n in candidates if isinstance(n, int)), None)


def _load_event(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return event if isinstance(event, dict) else {}


def _dig(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document
