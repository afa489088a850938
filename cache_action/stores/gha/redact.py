"""Keep the secret of a signed URL (its `sig` query value) out of logs and messages."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_SIG = re.compile(r"(?i)((?:^|[?&;\s\"'])sig=)[^&#\s\"']*")
MASK = "***"


def redact(url: str) -> str:
    """`url` with the value of every `sig` query parameter replaced by `***`."""
    return _SIG.sub(lambda match: match.group(1) + MASK, url)


def redact_text(text: str) -> str:
    """Any `sig=VALUE` in free text (an exception message quoting a URL) masked."""
    return _SIG.sub(lambda match: match.group(1) + MASK, text)


def url_secrets(url: str) -> list[str]:
    """The values to register with `::add-mask::`: each `sig`, raw and URL-decoded, as
    @actions/cache masks them."""
    raw = [value for name, value in _raw_query(url) if name.lower() == "sig" and value]
    found: list[str] = []
    for value in raw + [unquote(value) for value in raw]:
        if value not in found:
            found.append(value)
    return found


def _raw_query(url: str) -> list[tuple[str, str]]:
    return [part.partition("=")[::2] for part in urlsplit(url).query.split("&") if part]
