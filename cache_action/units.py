"""Durations (`30m`, `36h`, `7d`) and sizes (`500MiB`, `2GB`) as users write them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from cache_action.errors import InputError

# ASCII digits only: `\d` would also take other scripts' digits, which float() accepts.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?", re.IGNORECASE | re.ASCII)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?b?|b)?", re.IGNORECASE | re.ASCII)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}

DURATION_FORMS = "a number with a unit s, m, h, d or w (e.g. 30m, 36h, 7d), or 0 for none"
SIZE_FORMS = (
    "a number with a unit B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB "
    "(e.g. 500MiB, 2GB), or 0 for none"
)


def parse_duration(setting: str, text: str) -> float | None:
    """Seconds, or None for '' / '0' (no limit)."""
    value = text.strip()
    if value in ("", "0"):
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        raise InputError(setting, text, DURATION_FORMS)
    seconds = float(match[1]) * _SECONDS[(match[2] or "s").lower()]
    if not math.isfinite(seconds):  # hundreds of digits overflow a float
        raise InputError(setting, text, DURATION_FORMS)
    return seconds or None


def parse_size(setting: str, text: str) -> int | None:
    """Bytes, or None for '' / '0' (no limit). Exact: no float rounding of large values."""
    value = text.strip()
    if value in ("", "0"):
        return None
    match = _SIZE.fullmatch(value)
    if match is None:
        raise InputError(setting, text, SIZE_FORMS)
    power = _POWERS[match[2].lower()] if match[2] else 0
    base = 1024 if match[3] else 1000
    number = Decimal(match[1])
    size = int(number * base**power)
    if size == 0 and number != 0:  # "0.5B" is not "no limit"
        raise InputError(setting, text, f"{SIZE_FORMS}; at least 1 byte")
    return size or None
