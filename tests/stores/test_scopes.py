"""Which entries a job restores (and in what order) and the one it may write, per event.

The contexts are built the way the runner presents them: GITHUB_* variables plus the event
payload file at GITHUB_EVENT_PATH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cache_action.errors import InputError
from cache_action.scopes import (
    EntryName,
    GitContext,
    ScopePlan,
    normalize_ref,
    plan_scopes,
    validate_token,
)

REPO = "octo/app"
MAIN = "refs/heads/main"
NS = "buildkit"


def context(
    tmp_path: Path,
    event_name: str,
    ref: str,
    payload: dict[str, Any] | None = None,
    base_ref: str = "",
    default_branch: str | None = "main",
) -> GitContext:
    event: dict[str, Any] = dict(payload or {})
    if default_branch is not None:
        event.setdefault("repository", {"full_name": REPO, "default_branch": default_branch})
    path = tmp_path / f"event-{event_name}.json"
    path.write_text(json.dumps(event))
    env = {
        "GITHUB_EVENT_NAME": event_name,
        "GITHUB_EVENT_PATH": str(path),
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_REF": ref,
        "GITHUB_BASE_REF": base_ref,
    }
    return GitContext.from_env(env)


def chain_refs(plan: ScopePlan, index: int = 0) -> list[str]:
    return [name.ref for name in plan.restore_chains[index]]


def fork_pr(number: int, fork: str = "mallory/app") -> dict[str, Any]:
    return {
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"ref": "patch-1", "repo": {"full_name": fork}},
            "base": {"ref": "main", "repo": {"full_name": REPO}},
        },
    }


# --- restore chains per event -------------------------------------------------------------


def test_push_to_a_branch_restores_branch_then_default_and_writes_the_branch(
    tmp_path: Path,
) -> None:
    git = context(tmp_path, "push", "refs/heads/feature/login")
    plan = plan_scopes(git, NS, "app")
    assert chain_refs(plan) == ["refs/heads/feature/login", MAIN]
    assert plan.save_to == EntryName(NS, "app", "refs/heads/feature/login")
    assert plan.read_only_reason is None


def test_push_to_the_default_branch_lists_it_once(tmp_path: Path) -> None:
    plan = plan_scopes(context(tmp_path, "push", MAIN), NS, "app")
    assert chain_refs(plan) == [MAIN]
    assert plan.save_to == EntryName(NS, "app", MAIN)


def test_the_default_branch_comes_from_the_event_payload(tmp_path: Path) -> None:
    git = context(tmp_path, "push", "refs/heads/topic", default_branch="trunk")
    assert chain_refs(plan_scopes(git, NS, "app")) == ["refs/heads/topic", "refs/heads/trunk"]


def test_pull_request_restores_pr_then_base_then_default(tmp_path: Path) -> None:
    git = context(
        tmp_path,
        "pull_request",
        "refs/pull/7/merge",
        {"number": 7, "pull_request": {"number": 7}},
        base_ref="release/2.x",
    )
    plan = plan_scopes(git, NS, "app")
    assert chain_refs(plan) == ["refs/pull/7/merge", "refs/heads/release/2.x", MAIN]
    assert plan.save_to == EntryName(NS, "app", "refs/pull/7/merge")


def test_pull_request_from_a_fork_writes_only_its_pr_scope(tmp_path: Path) -> None:
    git = context(tmp_path, "pull_request", "refs/pull/8/merge", fork_pr(8), base_ref="main")
    plan = plan_scopes(git, NS, "app")
    assert chain_refs(plan) == ["refs/pull/8/merge", MAIN]
    assert plan.save_to is not None
    assert plan.save_to.ref == "refs/pull/8/merge"


def test_pull_request_target_writes_the_pr_ref_never_the_base_branch(tmp_path: Path) -> None:
    # pull_request_target runs with the base branch's ref and token: GITHUB_REF is main.
    git = context(tmp_path, "pull_request_target", MAIN, fork_pr(9), base_ref="main")
    assert git.untrusted
    plan = plan_scopes(git, NS, "app")
    assert plan.save_to == EntryName(NS, "app", "refs/pull/9/merge")
    assert chain_refs(plan) == ["refs/pull/9/merge", MAIN]


def test_pull_request_target_without_a_readable_payload_writes_nothing(tmp_path: Path) -> None:
    env = {
        "GITHUB_EVENT_NAME": "pull_request_target",
        "GITHUB_EVENT_PATH": str(tmp_path / "missing.json"),
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_REF": MAIN,
    }
    plan = plan_scopes(GitContext.from_env(env), NS, "app")
    assert plan.save_to is None
    assert plan.read_only_reason is not None
    assert "pull_request_target" in plan.read_only_reason
    assert chain_refs(plan) == [MAIN]


def test_issue_comment_on_a_pull_request_writes_its_pr_scope(tmp_path: Path) -> None:
    payload = {"issue": {"number": 12, "pull_request": {"url": "https://api.github.com/x"}}}
    git = context(tmp_path, "issue_comment", MAIN, payload)
    assert git.untrusted
    plan = plan_scopes(git, NS, "app")
    assert plan.save_to == EntryName(NS, "app", "refs/pull/12/merge")
    assert chain_refs(plan) == ["refs/pull/12/merge", MAIN]


def test_issue_comment_on_a_plain_issue_is_read_only(tmp_path: Path) -> None:
    git = context(tmp_path, "issue_comment", MAIN, {"issue": {"number": 13}})
    plan = plan_scopes(git, NS, "app")
    assert plan.save_to is None
    assert plan.read_only_reason is not None
    assert "issue_comment" in plan.read_only_reason
    assert chain_refs(plan) == [MAIN]


def test_workflow_run_from_a_fork_never_writes_the_default_branch(tmp_path: Path) -> None:
    payload = {
        "workflow_run": {"head_repository": {"full_name": "mallory/app"}, "pull_requests": []}
    }
    git = context(tmp_path, "workflow_run", MAIN, payload)
    plan = plan_scopes(git, NS, "app")
    assert git.untrusted
    assert plan.save_to is None
    assert plan.read_only_reason is not None
    assert "workflow_run" in plan.read_only_reason
    assert chain_refs(plan) == [MAIN]


def test_workflow_run_from_a_fork_with_a_known_pr_writes_that_pr(tmp_path: Path) -> None:
    payload = {
        "workflow_run": {
            "head_repository": {"full_name": "mallory/app"},
            "pull_requests": [{"number": 21}],
        }
    }
    plan = plan_scopes(context(tmp_path, "workflow_run", MAIN, payload), NS, "app")
    assert plan.save_to == EntryName(NS, "app", "refs/pull/21/merge")
    assert chain_refs(plan) == ["refs/pull/21/merge", MAIN]


def test_workflow_run_from_the_same_repository_writes_its_ref(tmp_path: Path) -> None:
    payload = {"workflow_run": {"head_repository": {"full_name": REPO}, "pull_requests": []}}
    git = context(tmp_path, "workflow_run", MAIN, payload)
    assert not git.untrusted
    plan = plan_scopes(git, NS, "app")
    assert plan.save_to == EntryName(NS, "app", MAIN)


def test_workflow_run_without_head_repository_is_treated_as_a_fork(tmp_path: Path) -> None:
    git = context(tmp_path, "workflow_run", MAIN, {"workflow_run": {}})
    assert git.untrusted
    assert plan_scopes(git, NS, "app").save_to is None


def test_tag_push_restores_the_tag_then_default_and_writes_the_tag(tmp_path: Path) -> None:
    plan = plan_scopes(context(tmp_path, "push", "refs/tags/v1.2.0"), NS, "app")
    assert chain_refs(plan) == ["refs/tags/v1.2.0", MAIN]
    assert plan.save_to == EntryName(NS, "app", "refs/tags/v1.2.0")


# --- settings -------------------------------------------------------------------------------


def test_read_only_keeps_the_restore_chain_and_writes_nothing(tmp_path: Path) -> None:
    git = context(tmp_path, "push", "refs/heads/feature")
    writable = plan_scopes(git, NS, "app")
    plan = plan_scopes(git, NS, "app", read_only=True)
    assert plan.save_to is None
    assert plan.read_only_reason == "read-only was requested"
    assert plan.restore_chains == writable.restore_chains


def test_read_only_on_pull_request_target_still_restores_the_pr_first(tmp_path: Path) -> None:
    git = context(tmp_path, "pull_request_target", MAIN, fork_pr(9), base_ref="main")
    plan = plan_scopes(git, NS, "app", read_only=True)
    assert plan.save_to is None
    assert chain_refs(plan) == ["refs/pull/9/merge", MAIN]


def test_extra_scopes_get_the_same_chain_and_only_the_main_scope_is_written(
    tmp_path: Path,
) -> None:
    git = context(
        tmp_path, "pull_request", "refs/pull/3/merge", {"pull_request": {"number": 3}}, "dev"
    )
    plan = plan_scopes(git, NS, "linux-amd64", extra_scopes=["linux-arm64", "linux-amd64", "base"])
    assert [chain[0].scope for chain in plan.restore_chains] == [
        "linux-amd64",
        "linux-arm64",
        "base",
    ]
    expected = ["refs/pull/3/merge", "refs/heads/dev", MAIN]
    for chain in plan.restore_chains:
        assert [name.ref for name in chain] == expected
        assert {name.scope for name in chain} == {chain[0].scope}
        assert {name.namespace for name in chain} == {NS}
    assert plan.save_to == EntryName(NS, "linux-amd64", "refs/pull/3/merge")


def test_fallback_refs_come_last_in_order_without_duplicates(tmp_path: Path) -> None:
    git = context(tmp_path, "push", "refs/heads/feature")
    plan = plan_scopes(
        git, NS, "app", fallback_refs=["refs/heads/develop", MAIN, "refs/heads/release"]
    )
    assert chain_refs(plan) == [
        "refs/heads/feature",
        MAIN,
        "refs/heads/develop",
        "refs/heads/release",
    ]


def test_without_branch_fallback_only_own_ref_and_explicit_fallbacks(tmp_path: Path) -> None:
    git = context(tmp_path, "pull_request", "refs/pull/4/merge", {"number": 4}, base_ref="dev")
    plan = plan_scopes(git, NS, "app", branch_fallback=False)
    assert chain_refs(plan) == ["refs/pull/4/merge"]
    plan = plan_scopes(git, NS, "app", branch_fallback=False, fallback_refs=["refs/heads/x"])
    assert chain_refs(plan) == ["refs/pull/4/merge", "refs/heads/x"]


# --- entry names: no key prefix of one entry matches another ---------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("refs/heads/main", "refs/heads/main-old"),
        ("refs/heads/feat", "refs/heads/feat/x"),
        ("refs/heads/v1", "refs/heads/v1.0"),
        ("refs/pull/1/merge", "refs/pull/12/merge"),
    ],
)
def test_ref_prefixes_never_match_each_other(one: str, other: str) -> None:
    a, b = EntryName(NS, "app", one), EntryName(NS, "app", other)
    assert a.prefix != b.prefix
    key_of_b = b.prefix + "0000000000001-abc.json"
    key_of_a = a.prefix + "0000000000001-abc.json"
    assert not key_of_b.startswith(a.prefix)
    assert not key_of_a.startswith(b.prefix)


def test_scope_and_namespace_prefixes_never_match_each_other() -> None:
    base = EntryName("build", "app", MAIN).prefix
    for other in (EntryName("buildkit", "app", MAIN), EntryName("build", "app-x", MAIN)):
        assert not other.prefix.startswith(base)


def test_the_ref_is_one_path_component_of_the_key() -> None:
    prefix = EntryName(NS, "app", "refs/heads/feat/x/../y").prefix
    assert prefix.count("/") == 3
    assert ".." not in prefix.split("/")


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("main", "refs/heads/main"),
        ("feature/x", "refs/heads/feature/x"),
        ("heads/dev", "refs/heads/dev"),
        ("tags/v1", "refs/tags/v1"),
        ("pull/5/merge", "refs/pull/5/merge"),
        ("refs/heads/main", "refs/heads/main"),
        ("  refs/tags/v2 \n", "refs/tags/v2"),
    ],
)
def test_refs_are_normalised(value: str, expected: str) -> None:
    assert normalize_ref("ref", value) == expected


@pytest.mark.parametrize("value", ["", "   ", "main branch", "refs/heads/a,b", "refs/", "a\tb"])
def test_bad_refs_are_rejected_naming_setting_and_value(value: str) -> None:
    with pytest.raises(InputError) as caught:
        normalize_ref("fallback-ref", value)
    message = str(caught.value)
    assert message.startswith("fallback-ref: ")
    assert repr(value) in message
    assert "git ref" in message


@pytest.mark.parametrize("value", ["app", "linux-amd64", "a.b_c-d", "9", "x" * 100])
def test_good_tokens_are_accepted(value: str) -> None:
    assert validate_token("scope", value) == value


@pytest.mark.parametrize(
    "value", ["", "-app", ".hidden", "a b", "a/b", "../x", "x" * 101, "app\n", "é"]
)
def test_bad_tokens_are_rejected_naming_setting_and_value(value: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_token("scope", value)
    message = str(caught.value)
    assert message.startswith("scope: ")
    assert repr(value) in message
    assert "A-Z a-z 0-9" in message


def test_an_entry_name_too_long_for_a_key_is_rejected_naming_the_scope() -> None:
    name = EntryName(NS, "s" * 100, "refs/heads/" + "/".join(["deep"] * 60))
    with pytest.raises(InputError) as caught:
        _ = name.prefix
    assert str(caught.value).startswith("scope: ")
