"""The one retry policy and the one full-store test: the rule and the formula without sleeping,
then S3 through real botocore against a server that answers what S3 servers answer."""

from __future__ import annotations

import email.utils
import http.client
import itertools
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from cache_action.errors import StoreError, StoreFullError
from cache_action.storage.digests import Digest
from cache_action.stores.full import is_full
from cache_action.stores.retry import (
    DEFAULT_POLICY,
    TRANSFER_POLICY,
    RateLimitedError,
    Retry,
    RetryPolicy,
    azure_failure,
    botocore_failure,
    botocore_retry_handler,
    check_status,
    retry_after_seconds,
    retry_call,
)
from cache_action.stores.s3 import S3Backend
from cache_action.stores.spec import S3Spec
from tests.http_fake import serve_in_thread, shut_down

NOW = 1_800_000_000.0


class Clock:
    """Sleeps that only move the clock; what was slept is kept."""

    def __init__(self) -> None:
        self.now = NOW
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def run(
    answers: list[Any], policy: RetryPolicy, clock: Clock | None = None, **kwargs: Any
) -> tuple[Any, int, Clock]:
    """retry_call over scripted answers: an exception is raised, anything else returned."""
    clock = clock or Clock()
    calls = itertools.count(1)
    seen = 0

    def attempt() -> Any:
        nonlocal seen
        seen = next(calls)
        answer = answers[min(seen, len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    result = retry_call("op", attempt, policy, sleep=clock.sleep, clock=clock, **kwargs)
    return result, seen, clock


# --- the formula ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [DEFAULT_POLICY, TRANSFER_POLICY, RetryPolicy(base_delay=0.2)])
def test_backoff_is_jittered_within_the_formula_and_bounded(policy: RetryPolicy) -> None:
    rng = random.Random(7)
    jittered = RetryPolicy(
        base_delay=policy.base_delay, max_delay=policy.max_delay, jitter=rng.random
    )
    for retry in range(12):
        low = min(policy.base_delay * 1.5**retry, policy.max_delay / 1.5)
        waits = [jittered.backoff(retry) for _ in range(200)]
        assert all(low <= wait < low * 1.5 for wait in waits), (retry, min(waits), max(waits))
        assert max(waits) <= policy.max_delay
        assert len(set(waits)) > 150  # jittered, also at the cap and on the first retry
        assert max(waits) - min(waits) > 0.4 * low  # spread over the range, not bunched
    bottom = RetryPolicy(base_delay=policy.base_delay, jitter=lambda: 0.0)
    top = RetryPolicy(base_delay=policy.base_delay, jitter=lambda: 1.0)
    assert [bottom.backoff(n) for n in range(3)] == pytest.approx(
        [policy.base_delay, policy.base_delay * 1.5, policy.base_delay * 2.25]
    )
    assert top.backoff(0) == pytest.approx(policy.base_delay * 1.5)


def test_the_default_policies_give_up_within_a_minute_of_waiting() -> None:
    for policy, low, high in ((DEFAULT_POLICY, 24.0, 37.0), (TRANSFER_POLICY, 8.0, 12.5)):
        failures = [OSError("reset")] * policy.attempts
        with pytest.raises(StoreError, match=f"failed after {policy.attempts} attempts"):
            run(failures, policy)
        worst = sum(
            RetryPolicy(base_delay=policy.base_delay, jitter=lambda: 1.0).backoff(n)
            for n in range(policy.attempts - 1)
        )
        best = sum(
            RetryPolicy(base_delay=policy.base_delay, jitter=lambda: 0.0).backoff(n)
            for n in range(policy.attempts - 1)
        )
        assert low <= best < worst <= high


# --- the loop -------------------------------------------------------------------------------

FAST = RetryPolicy(attempts=4, base_delay=1.0, jitter=lambda: 0.5)


def test_transient_failures_are_retried_with_backoff_until_an_answer() -> None:
    answers = [OSError("refused"), Retry("HTTP 502", status=502), http.client.IncompleteRead(b"")]
    result, calls, clock = run([*answers, "done"], FAST)
    assert (result, calls) == ("done", 4)
    assert clock.slept == [1.25, 1.875, 2.8125]  # b·1.5^n · (1 + 0.5·0.5)


def test_it_gives_up_after_the_attempts_with_the_last_problem() -> None:
    clock = Clock()
    with pytest.raises(StoreError, match=r"^op: failed after 4 attempts: HTTP 503 busy$"):
        run([Retry("HTTP 503 busy", status=503)], FAST, clock)
    assert len(clock.slept) == 3

    def exhausted(tries: int, problem: str) -> Exception:
        return KeyError(f"{tries}/{problem}")

    with pytest.raises(KeyError, match="4/connection error: reset"):
        run([ConnectionResetError("reset")], FAST, exhausted=exhausted)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 416, 501, 507])
def test_final_statuses_are_not_retried(status: int) -> None:
    check_status(status, "no")  # returns: not worth another try

    def attempt() -> str:
        check_status(status, "no")
        raise StoreError(f"HTTP {status}")

    clock = Clock()
    with pytest.raises(StoreError, match=f"HTTP {status}"):
        retry_call("op", attempt, FAST, sleep=clock.sleep, clock=clock)
    assert clock.slept == []


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 429])
def test_retry_statuses_raise_retry(status: int) -> None:
    with pytest.raises(Retry) as caught:
        check_status(status, "Reason", "3")
    assert caught.value.status == status and caught.value.retry_after == "3"
    assert caught.value.problem == f"HTTP {status} Reason"


def test_a_5xx_retry_after_is_honoured_up_to_the_bound() -> None:
    policy = RetryPolicy(attempts=3, base_delay=1.0, max_retry_after=20.0, jitter=lambda: 0.0)
    _, calls, clock = run([Retry("busy", status=503, retry_after="7"), "ok"], policy)
    assert (calls, clock.slept) == (2, [7.0])
    _, _, clock = run([Retry("busy", status=503, retry_after="0.2"), "ok"], policy)
    assert clock.slept == [1.0]  # never less than the backoff
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    _, _, clock = run([Retry("busy", status=503, retry_after=date), "ok"], policy)
    assert clock.slept == [pytest.approx(12.0)]
    clock = Clock()
    with pytest.raises(StoreError, match="it asks to wait 21 s"):
        run([Retry("busy", status=503, retry_after="21")], policy, clock)
    assert clock.slept == []


def test_429_waits_only_for_a_bounded_retry_after_a_bounded_number_of_times() -> None:
    policy = RetryPolicy(attempts=5, max_retry_after=30.0, rate_limit_retries=2)
    limited = Retry("HTTP 429", status=429, retry_after="4")
    _, calls, clock = run([limited, limited, "ok"], policy)
    assert (calls, clock.slept) == (3, [4.0, 4.0])  # not counted as failures

    clock = Clock()
    with pytest.raises(RateLimitedError, match="no Retry-After") as caught:
        run([Retry("HTTP 429", status=429)], policy, clock)
    assert caught.value.retry_after is None and clock.slept == []
    clock = Clock()
    with pytest.raises(RateLimitedError, match="resets in 31 s; gave up after 1 tries") as caught:
        run([Retry("HTTP 429", status=429, retry_after="31")], policy, clock)
    assert caught.value.retry_after == 31 and clock.slept == []  # over the bound: no wait
    clock = Clock()
    with pytest.raises(RateLimitedError, match="gave up after 3 tries"):
        run([limited], policy, clock)
    assert clock.slept == [4.0, 4.0]
    date = email.utils.formatdate(NOW + 9, usegmt=True)
    _, _, clock = run([Retry("HTTP 429", status=429, retry_after=date), "ok"], policy)
    assert clock.slept == [pytest.approx(9.0)]


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("120", NOW) == 120.0
    assert retry_after_seconds(" 1.5 ", NOW) == 1.5
    assert retry_after_seconds(email.utils.formatdate(NOW + 30, usegmt=True), NOW) == 30.0
    assert retry_after_seconds(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0
    for bad in (None, "", "-1", "soon", "Mon, 99 Foo 2020"):
        assert retry_after_seconds(bad, NOW) is None


def test_other_exceptions_end_the_call_at_once() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="bug"):
        run([ValueError("bug"), "never"], FAST, clock)
    assert clock.slept == []


# --- the libraries' errors ------------------------------------------------------------------


def test_azure_connection_errors_are_worth_another_try() -> None:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )

    for error in (ServiceRequestError("refused"), ServiceResponseError("reset by peer")):
        retry = azure_failure(error)
        assert retry is not None and retry.problem.startswith("connection error")
    assert azure_failure(ClientAuthenticationError("bad signature")) is None


def test_botocore_failures_are_classified_like_ours() -> None:
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    for error in (
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectTimeoutError(endpoint_url="http://x"),
    ):
        assert botocore_failure(None, error) is not None
    assert botocore_failure(None, NoCredentialsError()) is None

    def answer(status: int, code: str, headers: dict[str, str] | None = None) -> Any:
        return (_HttpResponse(status, headers or {}), {"Error": {"Code": code}})

    retry = botocore_failure(answer(503, "SlowDown", {"Retry-After": "2"}), None)
    assert retry is not None and (retry.status, retry.retry_after) == (503, "2")
    assert botocore_failure(answer(400, "RequestTimeout"), None) is not None
    for status, code in ((403, "AccessDenied"), (404, "NoSuchKey"), (507, "XMinioStorageFull")):
        assert botocore_failure(answer(status, code), None) is None


@dataclass
class _HttpResponse:
    status_code: int
    headers: dict[str, str]


def test_the_botocore_handler_counts_the_tries_of_one_request() -> None:
    from botocore.exceptions import EndpointConnectionError

    handler = botocore_retry_handler(FAST, clock=Clock())
    request: dict[str, Any] = {}
    error = EndpointConnectionError(endpoint_url="http://x")
    waits = [handler(caught_exception=error, request_dict=request) for _ in range(4)]
    assert waits == [1.25, 1.875, 2.8125, None]  # the 4th failure is the last of 4 attempts
    assert handler(caught_exception=error, request_dict={}) == 1.25  # another request
    assert handler(response=None, caught_exception=None, request_dict={}) is None


# --- full stores ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (403, "", "insufficient usage to create cache entry"),  # GitHub v2 (Twirp msg)
        (400, "", "Cache reservation failed: insufficient usage"),  # GitHub v1 message
        (400, "XMinioAdminBucketQuotaExceeded", "Bucket quota exceeded"),  # MinIO quota
        (507, "XMinioStorageFull", "Storage backend has reached its minimum free drive"),
        (500, "XMinioStorageFull", "Storage backend has reached its minimum free disk"),
        (403, "QuotaExceeded", ""),  # Ceph RGW, versitygw
        (403, "InsufficientStorageSpace", ""),  # Huawei OBS bucket quota
        (400, "XRustfsQuotaExceeded", ""),  # RustFS
        (507, "InsufficientStorage", ""),
        (507, "", ""),  # any 507
    ],
)
def test_full_store_answers(status: int, code: str, message: str) -> None:
    assert is_full(status, code, message)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (403, "AccessDenied", "Access Denied."),
        (400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size."),
        # SeaweedFS 4.48 over its bucket quota: not distinguishable from a passing failure
        (500, "InternalError", "We encountered an internal error, please try again."),
        (503, "SlowDown", "Please reduce your request rate."),
        (429, "", "rate limited"),
        (404, "NoSuchKey", ""),
        (403, "", "cache write denied: the token has no writable cache scope"),
    ],
)
def test_answers_that_are_not_a_full_store(status: int, code: str, message: str) -> None:
    assert not is_full(status, code, message)


# --- S3 through botocore --------------------------------------------------------------------


@dataclass
class FakeS3:
    """Answers the next requests from `script` (status, code, headers); then 200s. Each
    request is kept as (method, path)."""

    script: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str) -> tuple[int, str, dict[str, str]]:
        with self.lock:
            self.requests.append((method, path))
            return self.script.pop(0) if self.script else (200, "", {})


@pytest.fixture
def fake_s3() -> Iterator[tuple[FakeS3, str]]:
    state = FakeS3()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, code, headers = state.answer(self.command, self.path)
            body = b""
            if status >= 300:
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{code} says no</Message><RequestId>1</RequestId></Error>"
                ).encode()
            self.send_response(status)
            for name, value in {"ETag": '"e"', **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_PUT = do_GET = do_POST = do_DELETE = do_HEAD = _reply

    server = serve_in_thread(Handler)
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        shut_down(server)


def s3_backend(endpoint: str, attempts: int = 3) -> S3Backend:
    settings = S3Spec(
        bucket="cache",
        prefix="ci/",
        region="us-east-1",
        endpoint_url=endpoint,
        access_key_id="AKFAKE",
        secret_access_key="fake-secret",
    )
    return S3Backend(settings, policy=RetryPolicy(attempts=attempts, base_delay=0.01))


def test_s3_transient_answers_are_retried_by_the_policy(fake_s3: tuple[FakeS3, str]) -> None:
    state, endpoint = fake_s3
    backend = s3_backend(endpoint, attempts=4)
    state.script = [
        (503, "SlowDown", {}),
        (500, "InternalError", {}),
        (429, "", {"Retry-After": "0"}),
    ]
    backend.put_object("entries/a", b"x")
    assert [method for method, _ in state.requests] == ["PUT"] * 4

    state.requests.clear()
    state.script = [(500, "InternalError", {})] * 4
    with pytest.raises(StoreError, match="InternalError") as caught:
        backend.put_object("entries/b", b"x")
    assert not isinstance(caught.value, StoreFullError)
    assert len(state.requests) == 4  # the policy's attempts, not botocore's


def test_s3_429_without_retry_after_is_not_retried(fake_s3: tuple[FakeS3, str]) -> None:
    state, endpoint = fake_s3
    state.script = [(429, "TooManyRequests", {})]
    with pytest.raises(StoreError, match="TooManyRequests"):
        s3_backend(endpoint).put_object("entries/a", b"x")
    assert len(state.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(507, "XMinioStorageFull"), (400, "XMinioAdminBucketQuotaExceeded"), (403, "QuotaExceeded")],
)
def test_a_full_bucket_is_a_store_full_error_and_not_retried(
    fake_s3: tuple[FakeS3, str], tmp_path: Path, status: int, code: str
) -> None:
    state, endpoint = fake_s3
    backend = s3_backend(endpoint)
    state.script = [(status, code, {})]
    with pytest.raises(StoreFullError, match="the bucket is full") as caught:
        backend.put_object("entries/a", b"x")
    assert code in str(caught.value) and "raise the bucket's quota" in str(caught.value)
    assert len(state.requests) == 1

    # boto3's upload_file wraps the ClientError in S3UploadFailedError: still found
    state.requests.clear()
    state.script = [(status, code, {})]
    blob = tmp_path / "blob"
    blob.write_bytes(b"layer")
    digest = Digest.parse("sha256:" + "ab" * 32)
    with pytest.raises(StoreFullError, match=code):
        backend.put_blob(digest, blob)
    assert len(state.requests) == 1
