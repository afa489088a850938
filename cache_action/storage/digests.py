"""Content digests: the only identifiers storage trusts."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cache_action.errors import ErrorCode, OCIError, StoreError

_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `alg:hex`; anything but well-formed sha256/sha512 is DIGEST_INVALID, raised as
        UnsupportedDigest when only the algorithm is the problem."""
        algorithm, _, encoded = text.partition(":")
        pattern = _ENCODED.get(algorithm)
        if pattern is None and _GRAMMAR.fullmatch(text):
            raise UnsupportedDigest(text, algorithm)
        if pattern is None or not pattern.fullmatch(encoded):
            raise OCIError(
                ErrorCode.DIGEST_INVALID,
                f"invalid digest {text[:200]!r}: expected sha256:<64 hex> or sha512:<128 hex>",
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)


class UnsupportedDigest(OCIError):
    """A digest in the image-spec grammar whose algorithm is not sha256 or sha512. The image
    spec asks such digests to pass validation, so a read naming one is well formed and finds
    nothing (nothing is ever stored under it); a write with one is still refused, as we cannot
    verify it."""

    def __init__(self, text: str, algorithm: str) -> None:
        super().__init__(
            ErrorCode.DIGEST_INVALID,
            f"invalid digest {text[:200]!r}: algorithm {algorithm!r} is not supported "
            "(use sha256 or sha512)",
        )


def looks_like_digest(text: str) -> bool:
    """A reference with a colon can only be a digest (tags may not contain one)."""
    return ":" in text


class CorruptBlobError(StoreError):
    """A blob that came from a store does not match its digest or size."""
