"""Cache key rules of @actions/cache (cache.js `checkKey` and the key count check)."""

from __future__ import annotations

from collections.abc import Sequence

from cache_action.errors import InputError

MAX_KEY_LENGTH = 512
MAX_KEYS = 10  # primary key + restore keys


def _shown(key: str) -> str:
    return key if len(key) <= 80 else f"{key[:60]}…({len(key)} characters)"


def validate_key(key: str, setting: str = "key") -> str:
    if not key:
        raise InputError(setting, key, "a non-empty cache key")
    if len(key) > MAX_KEY_LENGTH:
        raise InputError(
            setting, _shown(key), f"a cache key of at most {MAX_KEY_LENGTH} characters"
        )
    if "," in key:
        raise InputError(setting, _shown(key), "a cache key without commas")
    return key


def validate_keys(key: str, restore_keys: Sequence[str] = ()) -> list[str]:
    """The primary key and the restore keys, validated; returns them in order."""
    if isinstance(restore_keys, str):
        raise TypeError("restore_keys must be a sequence of keys, not one string")
    keys = [key, *restore_keys]
    if len(keys) > MAX_KEYS:
        raise InputError(
            "restore-keys",
            f"{len(keys)} keys",
            f"at most {MAX_KEYS} keys in all (the primary key and up to {MAX_KEYS - 1} "
            "restore keys)",
        )
    validate_key(key)
    for restore_key in restore_keys:
        validate_key(restore_key, "restore-keys")
    return keys
