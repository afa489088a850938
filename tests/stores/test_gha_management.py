"""CacheManagement (the Actions cache REST API through PyGithub's requester) against a local
fake of the endpoints (tests/github_rest_fake.py): what it lists, what it deletes — and, as
important, what it never deletes — and how it behaves when the token may not."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest

from cache_action.scopes import EntryName
from cache_action.stores.gha_management import CacheManagement, CleanupDeniedError
from tests.github_rest_fake import NOT_ACCESSIBLE, GitHubRestFake

WRITE_TOKEN = "ghs_write_0123456789abcdef"  # test values the fake accepts, not real tokens
READ_TOKEN = "ghs_read_0123456789abcdef"
TOKENS = {WRITE_TOKEN: "write", READ_TOKEN: "read"}
MAIN = "refs/heads/main"
FEATURE = "refs/heads/feature"


@pytest.fixture
def fake() -> Iterator[GitHubRestFake]:
    with GitHubRestFake(tokens=TOKENS) as server:
        yield server


def manage(fake: GitHubRestFake, token: str = WRITE_TOKEN) -> CacheManagement:
    return CacheManagement(token, fake.repository, fake.url)


def prefix(scope: str, ref: str) -> str:
    return EntryName("buildkit", scope, ref).prefix


def test_listing_follows_pages_past_100(fake: GitHubRestFake) -> None:
    mine = [fake.add(MAIN, f"{prefix('app', MAIN)}{run}-1").key for run in range(250)]
    fake.add(MAIN, f"{prefix('other', MAIN)}1-1")  # another scope: not asked for
    fake.add(MAIN, "npm-linux-abc")  # not ours at all

    listed = manage(fake).list_entries(prefix("app", MAIN))

    assert sorted(entry.key for entry in listed) == sorted(mine)
    assert len({entry.id for entry in listed}) == 250
    pages = fake.requests_of("GET", "/actions/caches")
    assert [(r.param("page"), r.param("per_page")) for r in pages] == [
        ("1", "100"),
        ("2", "100"),
        ("3", "100"),
    ]
    assert {r.param("key") for r in pages} == {prefix("app", MAIN)}
    assert all(r.param("ref") is None for r in pages)
    first = listed[0]
    assert (first.ref, first.size) == (MAIN, 1024)
    assert first.created_at.endswith("Z")


def test_listing_exactly_100_asks_for_the_empty_next_page(fake: GitHubRestFake) -> None:
    for run in range(100):
        fake.add(MAIN, f"{prefix('app', MAIN)}{run}-1")
    fake.add(FEATURE, f"{prefix('app', MAIN)}100-1")  # same prefix, another GitHub ref
    listed = manage(fake).list_entries(prefix("app", MAIN), MAIN)
    assert len({entry.key for entry in listed}) == 100
    assert {entry.ref for entry in listed} == {MAIN}
    pages = fake.requests_of("GET", "/actions/caches")
    assert 1 <= len(pages) <= 2
    assert {r.param("ref") for r in pages} == {MAIN}


def test_requests_carry_the_token_and_the_documented_paths(fake: GitHubRestFake) -> None:
    management = manage(fake)
    management.list_entries("buildkit/")
    management.usage()
    for request in fake.requests:
        assert request.header("Authorization") == f"token {WRITE_TOKEN}"
        assert request.header("User-Agent")
        assert request.header("Accept") in ("*/*", "application/vnd.github+json")
        version = request.header("X-GitHub-Api-Version")
        assert version in (None, "2022-11-28"), version
    assert [r.path for r in fake.requests] == [
        f"/repos/{fake.repository}/actions/caches",
        f"/repos/{fake.repository}/actions/cache/usage",
    ]


def test_delete_superseded_deletes_only_older_entries_of_one_scope_and_ref(
    fake: GitHubRestFake,
) -> None:
    own = prefix("app", FEATURE)
    old = [fake.add(FEATURE, f"{own}{run}-1") for run in (1, 2, 3)]
    kept = fake.add(FEATURE, f"{own}4-1")
    survivors = [
        fake.add(FEATURE, f"{own}5-1"),  # saved after ours by a concurrent job: not superseded
        fake.add(MAIN, f"{own}0-1"),  # same key prefix under another GitHub ref
        fake.add(FEATURE, f"{prefix('app2', FEATURE)}1-1"),  # scope `app2` is not `app`
        fake.add(FEATURE, f"{prefix('base', FEATURE)}1-1"),  # another scope
        fake.add(FEATURE, f"{prefix('app', 'refs/heads/feature-x')}1-1"),  # another of our refs
        fake.add(FEATURE, f"{prefix('app', 'refs/heads/feature/x')}1-1"),
        fake.add(MAIN, f"{prefix('app', MAIN)}1-1"),
    ]
    # older than the kept entry by creation, though listed by last access first
    fake.add(FEATURE, f"{own}0-1", created_at=fake.epoch - timedelta(days=1))
    older_but_recently_used = fake.caches()[-1]

    deleted = manage(fake).delete_superseded(own, kept.key, FEATURE)

    expected = {entry.id for entry in [*old, older_but_recently_used]}
    assert {entry.id for entry in deleted} == expected
    assert {r.path.rsplit("/", 1)[1] for r in fake.requests_of("DELETE")} == {
        str(i) for i in expected
    }
    assert fake.keys() == {kept.key, *(entry.key for entry in survivors)}


def test_delete_superseded_checks_the_ref_itself(fake: GitHubRestFake) -> None:
    """A server that ignores the `ref` filter lists every ref's entries: still only ours go."""
    fake.ignore_ref_filter = True
    own = prefix("app", MAIN)
    old = fake.add(MAIN, f"{own}1-1")
    elsewhere = fake.add(FEATURE, f"{own}2-1")  # older than ours, same key prefix, other ref
    kept = fake.add(MAIN, f"{own}3-1")
    deleted = manage(fake).delete_superseded(own, kept.key, MAIN)
    assert [entry.id for entry in deleted] == [old.id]
    assert fake.keys() == {elsewhere.key, kept.key}
    assert fake.requests_of("GET", "/actions/caches")[0].param("ref") == MAIN


def test_delete_superseded_never_deletes_when_its_own_entry_is_not_listed(
    fake: GitHubRestFake,
) -> None:
    own = prefix("app", MAIN)
    fake.add(MAIN, f"{own}1-1")
    assert manage(fake).delete_superseded(own, f"{own}2-1", MAIN) == []
    assert fake.requests_of("DELETE") == []
    assert fake.keys() == {f"{own}1-1"}


@pytest.mark.parametrize(
    ("token", "repository", "status"),
    [
        (READ_TOKEN, None, 403),  # `Resource not accessible by integration` on DELETE
        ("ghs_not_a_known_token", None, 401),  # `Bad credentials`
        (WRITE_TOKEN, "someone/else", 404),  # a repository the token cannot see
    ],
)
def test_denied_advises_once_then_does_nothing(
    fake: GitHubRestFake,
    caplog: pytest.LogCaptureFixture,
    token: str,
    repository: str | None,
    status: int,
) -> None:
    own = prefix("app", MAIN)
    for run in range(3):
        fake.add(MAIN, f"{own}{run}-1")
    management = CacheManagement(token, repository or fake.repository, fake.url)
    with caplog.at_level(logging.INFO, logger="cache_action"):
        with pytest.raises(CleanupDeniedError) as denied:
            management.delete_superseded(own, f"{own}2-1", MAIN)
        sent = len(fake.requests)
        assert management.delete_superseded(own, f"{own}2-1", MAIN) == []
        assert management.delete_superseded(own, f"{own}1-1", MAIN) == []
    assert len(fake.requests) == sent  # later calls ask nothing
    assert fake.requests[-1].status == status
    advice = str(denied.value)
    assert "actions: write" in advice
    assert f"HTTP {status}" in advice
    assert token not in caplog.text and token not in advice
    assert len(fake.caches()) == 3  # nothing was deleted


def test_server_errors_are_raised_not_mistaken_for_a_denial(fake: GitHubRestFake) -> None:
    from github import GithubException

    own = prefix("app", MAIN)
    fake.add(MAIN, f"{own}1-1")
    fake.add(MAIN, f"{own}2-1")
    management = manage(fake)
    fake.fail(500, methods=["GET"])
    with pytest.raises(GithubException) as error:
        management.delete_superseded(own, f"{own}2-1", MAIN)
    assert error.value.status == 500
    # not remembered as denied: the next save cleans up
    assert [e.key for e in management.delete_superseded(own, f"{own}2-1", MAIN)] == [f"{own}1-1"]


def test_delete_key_deletes_that_exact_key_under_every_ref(fake: GitHubRestFake) -> None:
    key = f"{prefix('app', MAIN)}1-1"
    fake.add(MAIN, key)
    fake.add(FEATURE, key)
    fake.add(MAIN, f"{key}0")  # a longer key with the same prefix stays
    manage(fake).delete_key(key)
    (request,) = fake.requests_of("DELETE")
    assert request.path == f"/repos/{fake.repository}/actions/caches"
    assert request.param("key") == key
    assert request.status == 200
    assert fake.keys() == {f"{key}0"}


def test_usage_is_parsed_and_unavailable_is_none(
    fake: GitHubRestFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add(MAIN, "a", size=1000)
    fake.add(FEATURE, "b", size=234)
    usage = manage(fake).usage()
    assert usage is not None
    assert (usage.active_bytes, usage.active_count) == (1234, 2)
    fake.fail(403, methods=["GET"], message=NOT_ACCESSIBLE)
    with caplog.at_level(logging.INFO, logger="cache_action"):
        assert manage(fake).usage() is None
    assert "HTTP 403" in caplog.text


@pytest.mark.parametrize("trailing", ["", "/"])
def test_ghes_api_url_with_a_path(trailing: str) -> None:
    with GitHubRestFake(tokens=TOKENS, prefix="/api/v3") as ghes:
        own = prefix("app", MAIN)
        for run in range(1, 4):
            ghes.add(MAIN, f"{own}{run}-1")
        management = CacheManagement(WRITE_TOKEN, ghes.repository, ghes.url + trailing)
        assert len(management.list_entries(own)) == 3
        deleted = management.delete_superseded(own, f"{own}3-1", MAIN)
        assert sorted(e.key for e in deleted) == [f"{own}1-1", f"{own}2-1"]
        usage = management.usage()
        assert usage is not None and usage.active_count == 1
        assert ghes.requests
        assert all(r.path.startswith("/api/v3/repos/") for r in ghes.requests)
        assert all(r.status in (200, 204) for r in ghes.requests)
