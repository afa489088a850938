"""One HTTP request at a time with the standard library, and the retry loop around it.

urllib.request honours http_proxy/https_proxy/no_proxy like @actions/http-client does, which
self-hosted runners behind a proxy need. Redirects are not followed: neither the cache service
nor blob storage sends them, and following one would resend the bearer token elsewhere.

Retries (reference B9, with two deliberate differences):
- 500/502/503/504 and connection errors are retried with @actions/cache's backoff (first wait
  `base_delay`, then random in [base·1.5^n, base·1.5^(n+1))), at most `attempts` tries. The
  official client gives up at once on connection refused/reset; a post stage that loses its
  cache over one reset connection is worse than a few seconds of waiting.
- 429 is retried only when `Retry-After` says how long (seconds or an HTTP date) and that is
  at most `max_rate_limit_wait`, at most `rate_limit_retries` times; otherwise RateLimitedError.
  The official client never retries 429; go-actions-cache backs off.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from typing import IO, Any

from cache_action import __version__
from cache_action.stores.gha.errors import GhaCacheError, RateLimitedError
from cache_action.stores.gha.redact import redact_text

log = logging.getLogger("cache_action.stores.gha")

USER_AGENT = f"cache-action/{__version__}"
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 3.0
    multiplier: float = 1.5
    rate_limit_retries: int = 2
    max_rate_limit_wait: float = 60.0
    timeout: float = 30.0  # socket timeout of one request (connect, and each read)

    def delay(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (0-based), as @actions/cache waits."""
        if attempt <= 0:
            return self.base_delay
        low = self.base_delay * self.multiplier**attempt
        return random.uniform(low, low * self.multiplier)


DEFAULT_POLICY = RetryPolicy()


@dataclass
class Response:
    status: int
    reason: str
    headers: Message
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect())


def send(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | memoryview | IO[bytes] | io.RawIOBase | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request; any HTTP status is returned, connection failures raise OSError or
    http.client.HTTPException."""
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return Response(response.status, response.reason, response.headers, response.read())
    except urllib.error.HTTPError as error:
        try:
            data = error.read()
        except (OSError, http.client.HTTPException):
            data = b""
        finally:
            error.close()
        return Response(error.code, str(error.reason), error.headers, data)


@dataclass
class StreamedResponse:
    """A response whose body is read by the caller, in pieces."""

    status: int
    reason: str
    headers: Message
    body: IO[bytes]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@contextmanager
def stream(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0
) -> Iterator[StreamedResponse]:
    """Like `send`, but the body stays on the socket for the caller to read."""
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    request = urllib.request.Request(url, method=method, headers=all_headers)
    try:
        response = _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        with error:
            yield StreamedResponse(error.code, str(error.reason), error.headers, error)
        return
    with response:
        yield StreamedResponse(response.status, response.reason, response.headers, response)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
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
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
        return max(seconds, 0.0)
    return seconds if seconds >= 0 else None


def with_retries(
    what: str,
    attempt_once: Callable[[], Response],
    policy: RetryPolicy,
    *,
    retry_if: Callable[[Response], str | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Response:
    """Run `attempt_once` until it returns a response that is not 5xx-retryable or 429.

    `retry_if` may name a reason to retry a response anyway (e.g. an unparsable 2xx body).
    Returns the final response (which may be any non-retryable status)."""
    attempt = 0
    rate_limited = 0
    while True:
        problem: str
        wait: float | None = None
        try:
            response = attempt_once()
        except (OSError, http.client.HTTPException) as error:
            problem = f"connection error: {redact_text(str(error)) or type(error).__name__}"
        else:
            if response.status == 429:
                retry_after = retry_after_seconds(response.header("Retry-After"))
                if (
                    retry_after is None
                    or retry_after > policy.max_rate_limit_wait
                    or rate_limited >= policy.rate_limit_retries
                ):
                    when = (
                        f"; it resets in {retry_after:g} s"
                        if retry_after is not None
                        else " (no Retry-After)"
                    )
                    raise RateLimitedError(
                        f"{what}: rate limited by the cache service (HTTP 429){when}; "
                        f"gave up after {rate_limited + 1} tries",
                        retry_after,
                    )
                rate_limited += 1
                log.warning(
                    "%s: rate limited (HTTP 429), waiting %g s as Retry-After asks",
                    what,
                    retry_after,
                )
                sleep(retry_after)
                continue
            reason = retry_if(response) if retry_if is not None else None
            if response.status in RETRYABLE_STATUSES:
                problem = f"HTTP {response.status} {response.reason}"
            elif reason is not None:
                problem = reason
            else:
                return response
        attempt += 1
        if attempt >= policy.attempts:
            raise GhaCacheError(f"{what}: failed after {attempt} attempts: {problem}")
        wait = policy.delay(attempt - 1)
        log.info(
            "%s: attempt %d of %d failed (%s); retrying in %.2f s",
            what,
            attempt,
            policy.attempts,
            problem,
            wait,
        )
        sleep(wait)
