#!/usr/bin/env python3
"""Pin action.yml's `runs.image` to a pushed image by digest, for a release commit.

    pin_action_image.py [--action-file action.yml] IMAGE DIGEST
    pin_action_image.py [--action-file action.yml] --show

The first form replaces the value of `image:` under the top-level `runs:` mapping with
`docker://IMAGE@DIGEST`, and leaves every other byte of the file (comments, quoting, line
endings) as it was. IMAGE is a lowercase repository with its registry and no tag or digest
(ghcr.io/owner/repo); DIGEST is `sha256:` and 64 lowercase hex digits, the digest of the pushed
manifest list. Running it again with the same arguments changes nothing. The second form prints
the current `runs.image` value (the release workflow's guard: a `docker://` value means the
commit is already a release commit).

Standard library only: the release workflow runs it before installing anything. The file is
read line by line, not through a YAML parser, because a parser's dump would rewrite the rest
of the file; only a block mapping `runs:` at column 0 with one `image:` key is understood, and
anything else is refused rather than guessed at. Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The OCI distribution reference grammar: a registry host (a dot or a port, or localhost, so
# that nothing resolves to Docker Hub by accident), then lowercase path components.
_HOST = r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"(?P<host>{_HOST})(?:/{_COMPONENT})+")

# `runs:` at column 0, nothing after it but an optional comment (a block mapping follows).
_RUNS = re.compile(r"runs:[ \t]*(?:#.*)?")
_IMAGE_LINE = re.compile(
    r"(?P<head>(?P<indent>[ ]+)image:[ \t]+)"
    # A quoted scalar without escapes, or a plain one of path and reference characters (not a
    # block scalar, anchor, alias, tag or flow collection).
    r"(?P<value>\"[^\"\\]*\"|'[^']*'|[A-Za-z0-9._/][A-Za-z0-9._/:@+~-]*)"
    r"(?P<tail>(?:[ \t]+(?:#.*)?)?)"  # a comment needs a space before its #
)


class BadInput(Exception):
    """What is wrong with the arguments or action.yml, as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other refusal (argparse prints the usage first).
        raise BadInput(message)


def check_image(image: str) -> None:
    if not image:
        raise BadInput("image name is empty")
    if image.startswith("docker://"):
        raise BadInput(f"image name {image!r}: give it without docker:// (added when pinning)")
    if "@" in image:
        raise BadInput(f"image name {image!r} has a digest: pass the digest as its own argument")
    if image != image.lower():
        raise BadInput(f"image name {image!r} has uppercase letters: registries need it lowercase")
    last = image.rsplit("/", 1)[-1]
    if "/" in image and ":" in last:
        raise BadInput(f"image name {image!r} has a tag: the action is pinned by digest only")
    match = IMAGE.fullmatch(image)
    if match is None:
        raise BadInput(f"image name {image!r} is not REGISTRY/OWNER/REPO")
    host = match["host"]
    if "." not in host and ":" not in host and host != "localhost":
        raise BadInput(f"image name {image!r} does not start with a registry host (ghcr.io/...)")


def check_digest(digest: str) -> None:
    if DIGEST.fullmatch(digest) is None:
        raise BadInput(f"digest {digest!r} is not sha256: followed by 64 lowercase hex digits")


def _split_lines(text: str) -> list[str]:
    """Lines with their endings, split after each \\n only (\\r\\n files keep their \\r)."""
    lines = re.split(r"(?<=\n)", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _body(line: str) -> str:
    return line.rstrip("\r\n")


def _runs_line(lines: list[str]) -> int:
    """The index of the one top-level `runs:` line."""
    runs = [i for i, line in enumerate(lines) if _RUNS.fullmatch(_body(line))]
    if not runs:
        if any(_body(line).startswith("runs:") for line in lines):
            raise BadInput("runs: is not a block mapping (runs: on its own line, keys below)")
        raise BadInput("there is no top-level runs: mapping")
    if len(runs) > 1:
        raise BadInput("there is more than one top-level runs:")
    return runs[0]


def find_image_line(text: str) -> tuple[int, re.Match[str]]:
    """Index of the `image:` line directly under the top-level `runs:`, and its match."""
    lines = _split_lines(text)
    child_indent: str | None = None
    found: list[tuple[int, re.Match[str]]] = []
    for index in range(_runs_line(lines) + 1, len(lines)):
        body = _body(lines[index])
        stripped = body.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = body[: len(body) - len(stripped)]
        if not indent:
            break  # the next top-level key: the runs mapping has ended
        child_indent = child_indent or indent
        if indent != child_indent or not stripped.startswith("image:"):
            continue  # a nested line, or another key of runs
        match = _IMAGE_LINE.fullmatch(body)
        if match is None:
            raise BadInput(f"line {index + 1}: runs.image is not a one-line scalar")
        found.append((index, match))
    if len(found) != 1:
        raise BadInput(
            "runs: has no image: key" if not found else "runs: has more than one image: key"
        )
    return found[0]


def _unquote(value: str) -> str:
    return value[1:-1] if value[:1] in "\"'" else value


def current_image(text: str) -> str:
    _, match = find_image_line(text)
    return _unquote(match["value"])


def pin(text: str, image: str, digest: str) -> str:
    """action.yml's text with runs.image set to docker://IMAGE@DIGEST, nothing else changed."""
    check_image(image)
    check_digest(digest)
    index, match = find_image_line(text)
    pinned = f"docker://{image}@{digest}"
    value = match["value"]
    quote = value[0] if value[:1] in "\"'" else ""
    lines = _split_lines(text)
    line = lines[index]
    ending = line[len(_body(line)) :]
    lines[index] = f"{match['head']}{quote}{pinned}{quote}{match['tail']}{ending}"
    return "".join(lines)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(
        prog="pin_action_image.py",
        description="Pin action.yml's runs.image to docker://IMAGE@DIGEST.",
    )
    parser.add_argument("--action-file", type=Path, default=Path("action.yml"))
    parser.add_argument("--show", action="store_true", help="print the current runs.image")
    parser.add_argument("image", nargs="?", help="REGISTRY/OWNER/REPO, lowercase, no tag")
    parser.add_argument("digest", nargs="?", help="sha256:<64 hex> of the pushed manifest list")
    arguments = parser.parse_args(list(argv))
    if arguments.show:
        if arguments.image is not None:
            raise BadInput("--show takes no IMAGE or DIGEST")
    elif arguments.image is None or arguments.digest is None:
        raise BadInput("IMAGE and DIGEST are both required (or --show)")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    try:
        arguments = _arguments(sys.argv[1:] if argv is None else argv)
        if not arguments.show:
            check_image(arguments.image)
            check_digest(arguments.digest)
        path: Path = arguments.action_file
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as error:
            raise BadInput(f"cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise BadInput(f"{path} is not UTF-8") from None
        try:
            if arguments.show:
                print(current_image(text))
                return 0
            pinned = pin(text, arguments.image, arguments.digest)
        except BadInput as error:
            raise BadInput(f"{path}: {error}") from None
    except BadInput as error:
        print(f"pin_action_image.py: {error}", file=sys.stderr)
        return 2
    reference = f"docker://{arguments.image}@{arguments.digest}"
    if pinned == text:
        print(f"{path}: runs.image is already {reference}")
        return 0
    path.write_bytes(pinned.encode("utf-8"))
    print(f"{path}: runs.image = {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
