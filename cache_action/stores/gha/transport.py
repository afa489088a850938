"""One HTTP request at a time with the standard library; `cache_action.stores.retry` retries.

urllib.request honours http_proxy/https_proxy/no_proxy like @actions/http-client does, which
self-hosted runners behind a proxy need. Redirects are not followed: neither the cache service
nor blob storage sends them, and following one would resend the bearer token elsewhere.
"""

from __future__ import annotations

import http.client
import io
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

from cache_action import __version__
from cache_action.stores.gha.errors import GhaCacheError

USER_AGENT = f"cache-action/{__version__}"


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


def _request(
    url: str, method: str, headers: Mapping[str, str], body: Any = None
) -> urllib.request.Request:
    """Only http(s): the URLs come from the cache service, and urllib would also open
    `file:` and `ftp:` ones."""
    if not url.startswith(("http://", "https://")):
        raise GhaCacheError(f"refusing a URL that is not http(s): {url.split(':', 1)[0]}:...")
    all_headers = {"User-Agent": USER_AGENT, **headers}
    return urllib.request.Request(url, data=body, method=method, headers=all_headers)  # noqa: S310


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
    request = _request(url, method, headers or {}, body)
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
    request = _request(url, method, headers or {})
    try:
        response = _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        with error:
            yield StreamedResponse(error.code, str(error.reason), error.headers, error)
        return
    with response:
        yield StreamedResponse(response.status, response.reason, response.headers, response)
