"""Durations and sizes as users write them (`ttl`, `max-size`, CACHE_TTL): every accepted form,
exact values, and errors that name the setting and the accepted forms."""

from __future__ import annotations

import pytest

from cache_action.errors import InputError
from cache_action.units import DURATION_FORMS, SIZE_FORMS, parse_duration, parse_size

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 604800


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 30 * MINUTE),
        ("36h", 36 * HOUR),
        ("7d", 7 * DAY),
        ("2w", 2 * WEEK),
        ("90", 90),
        ("90s", 90),
        ("1.5h", 1.5 * HOUR),
        ("0.5s", 0.5),
        ("7D", 7 * DAY),
        ("30M", 30 * MINUTE),  # minutes: no unit means months
        (" 7d ", 7 * DAY),
        ("7 d", 7 * DAY),
        ("0007d", 7 * DAY),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("ttl", text) == seconds


@pytest.mark.parametrize("text", ["", "0", " 0 ", "0d", "0.0h", "00"])
def test_zero_or_empty_duration_means_no_limit(text: str) -> None:
    assert parse_duration("ttl", text) is None


@pytest.mark.parametrize(
    "text",
    [
        "7days",
        "-1d",
        "+7d",
        ".5h",
        "1.5.2h",
        "d",
        "1e3",
        "7y",
        "1h30m",
        "7d d",
        "inf",
        "nan",
        "٣d",  # an Arabic-Indic digit: float() takes it, the setting must not
        "\uff13\uff10m",  # fullwidth digits
        "9" * 400,  # overflows a float to infinity
    ],
)
def test_invalid_durations_name_the_setting_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_duration("CACHE_TTL", text)
    assert str(caught.value) == f"CACHE_TTL: {text!r} is not valid; expected {DURATION_FORMS}"
    assert caught.value.name == "CACHE_TTL"
    assert "30m, 36h, 7d" in DURATION_FORMS


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GB", 2_000_000_000),
        ("500MiB", 500 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        ("10KB", 10_000),
        ("10kb", 10_000),
        ("10K", 10_000),
        ("10KiB", 10_240),
        ("10ki", 10_240),
        ("1TB", 10**12),
        ("1TiB", 1024**4),
        ("100", 100),
        ("100B", 100),
        ("100b", 100),
        ("2 GB", 2_000_000_000),
        (" 2GB ", 2_000_000_000),
        ("0.5KB", 500),
        ("8.2MB", 8_200_000),  # float arithmetic gives 8199999
        ("1.005GB", 1_005_000_000),  # and 1004999999 here
        ("9007199254740993", 9_007_199_254_740_993),  # beyond a float's 53 bits
        ("1.9B", 1),  # whole bytes, rounded down
    ],
)
def test_sizes(text: str, size: int) -> None:
    result = parse_size("max-size", text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("text", ["", "0", "0B", "0MB", "0.0GiB"])
def test_zero_or_empty_size_means_no_limit(text: str) -> None:
    assert parse_size("max-size", text) is None


def test_a_huge_size_is_a_number_not_a_crash() -> None:
    text = "9" * 400 + "GB"
    result = parse_size("--max-size", text)
    assert isinstance(result, int) and result > 10**400


@pytest.mark.parametrize(
    "text",
    ["2PB", "2GBs", "2GiBB", "-5MB", "lots", "MB", "1,000", "1_000", "1e9", "٣MB", "2 G B"],
)
def test_invalid_sizes_name_the_setting_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_size("max-size", text)
    assert str(caught.value) == f"max-size: {text!r} is not valid; expected {SIZE_FORMS}"
    assert "500MiB, 2GB" in SIZE_FORMS


@pytest.mark.parametrize("text", ["0.5B", "0.4", "0.0001KB"])
def test_a_size_below_one_byte_is_an_error_not_no_limit(text: str) -> None:
    """Rounding it to 0 would silently turn the budget off."""
    with pytest.raises(InputError) as caught:
        parse_size("max-size", text)
    assert str(caught.value).startswith(f"max-size: {text!r} is not valid; expected {SIZE_FORMS}")
    assert "at least 1 byte" in str(caught.value)
