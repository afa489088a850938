"""When a store request is tried again, how long we wait first, and when we give up.

Every retrying request of every store goes through this module: the Actions cache service
(Twirp v2 and legacy v1 RPCs), the blob transfers to its signed URLs (the size probe, each
ranged download part, our Put Blob, azure-storage-blob's staged blocks and block list), and
S3. One `RetryPolicy` type holds the numbers; `RetryPolicy.decide` is the one rule; `retry_call`
is the one loop for the requests we send ourselves; `botocore_retry_handler` plugs the same
rule into botocore's own loop.

The rule:
- Worth another try: a connection that failed or broke, HTTP 408, 500, 502, 503, 504, or what
  a call site says (an attempt raises `Retry`: a short read, a 2xx whose body is not JSON).
  At most `attempts` tries in all. Between tries we wait `backoff(n)`, or what the server's
  `Retry-After` asks if that is longer; a `Retry-After` over `max_retry_after` ends the call
  at once (waiting less than asked would fail again, waiting more is over our budget).
- HTTP 429 (rate limited) is tried again only when `Retry-After` says when, and that is at
  most `max_retry_after`, at most `rate_limit_retries` times; otherwise `RateLimitedError`.
  @actions/cache never retries a 429; go-actions-cache backs off. A 429 without a time is
  a quota of requests that a few seconds do not restore.
- Anything else is final: the caller's own error (e.g. a 403, or the store being full; see
  `cache_action.stores.full`) propagates from the attempt untouched.

The formula: the wait before retry n (0-based) is uniform in [b·m^n, b·m^(n+1)) with
b = `base_delay`, m = `multiplier` = 1.5, its lower end capped at `max_delay`/m so no wait
exceeds `max_delay`. This is @actions/cache's backoff (its first retry waits exactly b, a
lockstep we jitter too, since a matrix of jobs saving at once retries at once), so we load
GitHub's service no harder than the official client does, and a minimum wait that grows
keeps a failing service from being retried at once, which full-jitter exponential backoff
(uniform in [0, b·2^n)) allows. The defaults (5 tries, b = 3 s for the cache service's RPCs,
1 s for data transfers) give up after 24-37 s (8-12 s) of waiting, plus the requests.

What happens to the libraries' own retries:
- azure-storage-blob (staged blocks, the block list): its retries are off (`retry_total=0`,
  see `azure_retry_options`) and each call goes through `retry_call`, so a block is retried
  by the same rule as our Put Blob; re-staging a block under the same id is idempotent.
- botocore (S3): its standard mode is left with one attempt (`botocore_config`); our
  `needs-retry` handler answers botocore's question "retry this, after how long?" with
  `decide`. botocore keeps its loop, which resends one request (one part of a multipart
  transfer, not the whole file) with a fresh signature; our loop around a boto3 call could
  only restart the whole transfer. Its adaptive mode (a client-side rate limiter, marked
  experimental by botocore) goes; S3's throttling answer, 503 SlowDown, is retried with our
  backoff. boto3's transfer manager re-reads a download whose body broke after the answer
  (`num_download_attempts`, set from the same `attempts`).
- Timeouts stay bounded: `timeout` is each request's socket timeout (connect, and each read),
  so a silent endpoint gives up after `attempts` times `timeout` plus the waits: minutes.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cache_action.errors import StoreError
from cache_action.stores.gha.redact import redact_text

log = logging.getLogger("cache_action.stores")

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
TOO_MANY_REQUESTS = 429
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


class RateLimitedError(StoreError):
    """HTTP 429 for longer than we are willing to wait."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Retry(Exception):
    """Raised by an attempt: this answer is worth another try (see the module docstring).

    `status` is the HTTP status if there was one; `retry_after` the raw `Retry-After`."""

    def __init__(
        self, problem: str, *, status: int | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.retry_after = retry_after


def check_status(status: int, reason: str, retry_after: str | None = None) -> None:
    """Raise `Retry` for an HTTP status worth another try (5xx, 408, 429); else return."""
    if status == TOO_MANY_REQUESTS or status in RETRY_STATUSES:
        raise Retry(f"HTTP {status} {reason}".rstrip(), status=status, retry_after=retry_after)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds: a non-negative number or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - now, 0.0)  # parsedate_to_datetime: naive means UTC
    return seconds if seconds >= 0 else None


@dataclass
class Tries:
    """What one call has been through so far."""

    failures: int = 0  # failed tries that count against `attempts`
    rate_limited: int = 0  # 429s waited out


@dataclass(frozen=True)
class GiveUp:
    """`decide`'s answer when there is no other try."""

    message: str
    rate_limited: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_delay: float = 3.0
    multiplier: float = 1.5
    max_delay: float = 30.0  # no single backoff wait is longer
    rate_limit_retries: int = 2
    max_retry_after: float = 60.0  # the longest Retry-After (429 or 5xx) we wait out
    timeout: float = 30.0  # socket timeout of one request (connect, and each read)
    jitter: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (0 = the first retry), in seconds."""
        low = min(self.base_delay * self.multiplier**retry, self.max_delay / self.multiplier)
        return low * (1 + (self.multiplier - 1) * self.jitter())

    def decide(self, failure: Retry, tries: Tries, now: float) -> float | GiveUp:
        """How long to wait before the next try after `failure`, or why there is none.
        Counts the failure in `tries`."""
        retry_after = retry_after_seconds(failure.retry_after, now)
        if failure.status == TOO_MANY_REQUESTS:
            if (
                retry_after is None
                or retry_after > self.max_retry_after
                or tries.rate_limited >= self.rate_limit_retries
            ):
                when = (
                    f"; it resets in {retry_after:g} s"
                    if retry_after is not None
                    else " (no Retry-After)"
                )
                return GiveUp(
                    f"rate limited (HTTP 429){when}; gave up after {tries.rate_limited + 1} tries",
                    rate_limited=True,
                    retry_after=retry_after,
                )
            tries.rate_limited += 1
            return retry_after
        tries.failures += 1
        if tries.failures >= self.attempts:
            return GiveUp(failure.problem)
        if retry_after is not None and retry_after > self.max_retry_after:
            return GiveUp(f"{failure.problem}; it asks to wait {retry_after:g} s")
        return max(self.backoff(tries.failures - 1), retry_after or 0.0)


DEFAULT_POLICY = RetryPolicy()  # the cache service's RPCs: @actions/cache's 3 s
TRANSFER_POLICY = RetryPolicy(base_delay=1.0)  # data: blob storage and S3


def failed_after(what: str, kind: type[StoreError] = StoreError) -> Callable[[int, str], Exception]:
    """`retry_call`'s default `exhausted`: "WHAT: failed after N attempts: PROBLEM"."""
    return lambda tries, problem: kind(f"{what}: failed after {tries} attempts: {problem}")


def retry_call(
    what: str,
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    exhausted: Callable[[int, str], Exception] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> T:
    """`attempt()` until it returns, by the policy's rule. An attempt raises `Retry` for an
    answer worth another try; connection errors (OSError, HTTPException) count as one; any
    other exception ends the call. When the tries run out: `exhausted(tries, last problem)`
    is raised (a StoreError "WHAT: failed after N attempts: PROBLEM" by default), or
    RateLimitedError for a 429 we do not wait out."""
    tries = Tries()
    while True:
        try:
            return attempt()
        except Retry as retry:
            failure = retry
        except CONNECTION_ERRORS as error:
            detail = redact_text(str(error)) or type(error).__name__
            failure = Retry(f"connection error: {detail}")
        decision = policy.decide(failure, tries, clock())
        if isinstance(decision, GiveUp):
            if decision.rate_limited:
                raise RateLimitedError(f"{what}: {decision.message}", decision.retry_after)
            raise (exhausted or failed_after(what))(tries.failures, decision.message)
        if failure.status == TOO_MANY_REQUESTS:
            log.warning(
                "%s: rate limited (HTTP 429), waiting %g s as Retry-After asks", what, decision
            )
        else:
            log.info(
                "%s: attempt %d of %d failed (%s); retrying in %.2f s",
                what,
                tries.failures,
                policy.attempts,
                failure.problem,
                decision,
            )
        sleep(decision)


# --- azure-storage-blob ---------------------------------------------------------------------


def azure_retry_options() -> dict[str, Any]:
    """BlobClient keywords: the SDK's own retries off, `retry_call` retries instead."""
    return {"retry_total": 0}


def azure_failure(error: Exception) -> Retry | None:
    """An azure-core error as a `Retry` when it is worth another try, else None."""
    from azure.core.exceptions import (
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(error, ServiceRequestError | ServiceResponseError):
        first = (redact_text(str(error)).splitlines() or [type(error).__name__])[0]
        return Retry(f"connection error: {first}")
    status = getattr(error, "status_code", None)
    if isinstance(error, HttpResponseError) and isinstance(status, int):
        headers: Mapping[str, str] = getattr(error.response, "headers", None) or {}
        try:
            check_status(status, str(error.reason or ""), headers.get("Retry-After"))
        except Retry as retry:
            return retry
    return None


# --- botocore -------------------------------------------------------------------------------


def botocore_config(policy: RetryPolicy) -> dict[str, Any]:
    """botocore.config.Config keywords: bounded timeouts, its own retries off (our handler
    decides, see `botocore_retry_handler`)."""
    return {
        "connect_timeout": min(10.0, policy.timeout),
        "read_timeout": policy.timeout,
        "retries": {"total_max_attempts": 1, "mode": "standard"},
    }


# botocore's standard mode also retries these error codes whatever their status (throttling
# and timeouts answered with a 400).
_BOTOCORE_RETRY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
    }
)


def botocore_failure(response: Any, caught_exception: Exception | None) -> Retry | None:
    """botocore's `needs-retry` arguments as a `Retry` when worth another try, else None."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if caught_exception is not None:
        if isinstance(caught_exception, HTTPClientError | BotoConnectionError):
            return Retry(f"connection error: {redact_text(str(caught_exception))}")
        return None
    if response is None:
        return None
    http_response, parsed = response
    status = int(getattr(http_response, "status_code", 0) or 0)
    error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
    code = str(error.get("Code") or "")
    retry_after = (getattr(http_response, "headers", None) or {}).get("Retry-After")
    if code in _BOTOCORE_RETRY_CODES and status not in RETRY_STATUSES | {TOO_MANY_REQUESTS}:
        return Retry(f"HTTP {status} {code}", retry_after=retry_after)
    try:
        check_status(status, code, retry_after)
    except Retry as retry:
        return retry
    return None


def botocore_retry_handler(
    policy: RetryPolicy, clock: Callable[[], float] = time.time
) -> Callable[..., float | None]:
    """A handler for botocore's `needs-retry` event: seconds to wait, or None (no retry).

    botocore passes the same `request_dict` on every try of one request; its `context`
    keeps our count of that request's tries."""

    def needs_retry(
        response: Any = None,
        caught_exception: Exception | None = None,
        request_dict: dict[str, Any] | None = None,
        operation: Any = None,
        **_: Any,
    ) -> float | None:
        failure = botocore_failure(response, caught_exception)
        if failure is None:
            return None
        context = (request_dict if request_dict is not None else {}).setdefault("context", {})
        tries: Tries = context.setdefault("cache_action_tries", Tries())
        decision = policy.decide(failure, tries, clock())
        what = f"S3 {getattr(operation, 'name', 'request')}"
        if isinstance(decision, GiveUp):
            log.info("%s: giving up: %s", what, decision.message)
            return None
        log.info(
            "%s: attempt %d of %d failed (%s); retrying in %.2f s",
            what,
            tries.failures + tries.rate_limited,
            policy.attempts,
            failure.problem,
            decision,
        )
        return decision

    return needs_retry
